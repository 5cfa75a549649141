"""The privacy a differentially private run has spent: (epsilon, delta) from dp-accounting's RDP accountant.

Each round is one Poisson-subsampled Gaussian mechanism: a client takes part with probability q, the run's
``clients-per-round`` over the clients that phase can draw from (all of them, or only the audiovisual ones
in distillation), and its update is released with Gaussian noise of the effective noise multiplier sigma_eff.
With ``dp = local`` a client's whole update is clipped to C and noised with sigma x C, so sigma_eff = sigma.
With ``dp = central`` Flower's wrapper clips and noises each parameter group on its own (sensitivity C / n,
noise sigma x C / n): a client whose update spans G groups meets G Gaussian mechanisms of multiplier sigma,
which compose to one of sigma / sqrt(G). The sampling here is without replacement of a fixed number of clients,
which the Poisson accounting approximates (the usual practice in DP-FedAvg).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import groupby

ORDERS = [*range(2, 65), 80, 96, 128, 192, 256]  # RDP orders (integers: exact for the subsampled Gaussian)


def round_event(noise_multiplier: float, sampling_rate: float):
    """One round's mechanism, as a dp-accounting event."""
    from dp_accounting import dp_event

    return dp_event.PoissonSampledDpEvent(sampling_rate, dp_event.GaussianDpEvent(noise_multiplier))


def spent(rounds: list[tuple[float, float]], delta: float) -> float:
    """Epsilon after the rounds ``[(noise multiplier, sampling rate), ...]`` at ``delta`` (consecutive equal rounds
    composed as one self-composed event); 0 for no rounds."""
    if not rounds:
        return 0.0
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    accountant = rdp.RdpAccountant(ORDERS)
    for (sigma, q), run in groupby(rounds):
        accountant.compose(dp_event.SelfComposedDpEvent(round_event(sigma, q), len(list(run))))
    return float(accountant.get_epsilon(delta))


def effective_multiplier(noise_multiplier: float, mode: str, groups: int) -> float:
    """sigma_eff of one client's round: sigma for local DP, sigma / sqrt(G) for central DP over G groups."""
    return noise_multiplier / math.sqrt(groups) if mode == "central" else noise_multiplier


@dataclass
class PrivacyLedger:
    """The rounds a run has released, and the epsilon they spend."""

    mode: str
    noise_multiplier: float
    delta: float
    rounds: list[tuple[float, float]] = field(default_factory=list)

    def record(self, groups: int, clients_per_round: int, eligible: int) -> float:
        """Add one round in which ``clients_per_round`` of ``eligible`` clients released updates of up to
        ``groups`` parameter groups; returns the epsilon spent so far."""
        q = min(1.0, clients_per_round / max(eligible, 1))
        self.rounds.append((effective_multiplier(self.noise_multiplier, self.mode, groups), q))
        return self.epsilon()

    def epsilon(self) -> float:
        return spent(self.rounds, self.delta)
