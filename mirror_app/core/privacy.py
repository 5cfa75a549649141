"""The privacy a differentially private run has spent: (epsilon, delta) from dp-accounting's RDP accountant.

``dp = central`` (the server clips and noises; the adversary is whoever sees the published model): each round is
one Poisson-subsampled Gaussian mechanism. A client takes part with probability q, the run's ``clients-per-round``
over the clients the phase can draw from (all of them, or only the audiovisual ones in distillation), which
holds only when the draw is secret (drawn from the operating system's entropy; with ``dp-insecure-seeded-noise``
the draw follows from the run seed, and so does the noise: no privacy at all, whatever epsilon says). Flower's
wrapper clips and noises each parameter group on its own (sensitivity C / n, noise sigma x C / n): a client whose
update spans G groups meets G Gaussian mechanisms of multiplier sigma, which compose to one of sigma / sqrt(G),
with G the most groups any client the round could have drawn trains. The sampling is without replacement of a
fixed number of clients, which the Poisson accounting approximates (the usual practice in DP-FedAvg).

``dp = local`` (each client clips its whole update to C and adds noise of std sigma x the sensitivity; the
adversary is the server itself): the server chooses the clients and sees every noised update, so sampling gives
no amplification. A client's epsilon is the Gaussian mechanism of multiplier sigma composed over the rounds in
which it released an update; the run reports its worst client and its median client. The sensitivity follows
``dp-neighbouring``: replacing one client's data moves its clipped update by up to 2 C (``replace``, the default),
adding or removing it by C (``add-remove``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon of the Gaussian mechanism of multiplier ``noise_multiplier`` composed ``releases`` times, no sampling
    (a local-DP client's guarantee against the server); 0 for no release."""
    if releases <= 0:
        return 0.0
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    accountant = rdp.RdpAccountant(ORDERS)
    accountant.compose(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(noise_multiplier), releases))
    return float(accountant.get_epsilon(delta))


def sensitivity(clipping_norm: float, neighbouring: str) -> float:
    """How far one client's clipped update can move under the neighbouring relation: 2 C (replace), C (add-remove)."""
    return 2 * clipping_norm if neighbouring == "replace" else clipping_norm


@dataclass
class PrivacyLedger:
    """What a run has released, and the epsilon it spends: per round (central) or per client (local)."""

    mode: str
    noise_multiplier: float
    delta: float
    rounds: list[tuple[float, float]] = field(default_factory=list)  # central: (sigma_eff, q) per round
    releases: dict[int, int] = field(default_factory=dict)  # local: partition id -> rounds it released an update
    local_rounds: int = 0  # local: rounds recorded

    def record(self, groups: int, clients_per_round: int, eligible: int, released: Sequence[int] = ()) -> float:
        """Add one round in which ``clients_per_round`` of ``eligible`` clients (those listed in ``released`` by
        partition id, for local DP) released updates of up to ``groups`` parameter groups; returns the epsilon
        spent so far (local: the worst client's)."""
        if self.mode == "local":
            self.local_rounds += 1
            for pid in released:
                self.releases[int(pid)] = self.releases.get(int(pid), 0) + 1
        else:
            q = min(1.0, clients_per_round / max(eligible, 1))
            self.rounds.append((effective_multiplier(self.noise_multiplier, self.mode, groups), q))
        return self.epsilon()

    def epsilon(self) -> float:
        """The run's epsilon: central, over its rounds; local, its worst client's."""
        if self.mode == "local":
            return gaussian_epsilon(self.noise_multiplier, max(self.releases.values(), default=0), self.delta)
        return spent(self.rounds, self.delta)

    def median_client(self) -> float:
        """Local DP: the epsilon of the median client among those that released anything."""
        counts = sorted(self.releases.values())
        return gaussian_epsilon(self.noise_multiplier, counts[(len(counts) - 1) // 2], self.delta) if counts else 0.0

    def state(self) -> dict:
        return {"rounds": list(self.rounds), "releases": dict(self.releases), "local_rounds": self.local_rounds}

    def restore(self, saved) -> None:
        """From :meth:`state` (or the list of rounds an older resume file kept)."""
        saved = {"rounds": saved} if isinstance(saved, list) else dict(saved or {})
        self.rounds = list(saved.get("rounds", []))
        self.releases = {int(k): int(v) for k, v in saved.get("releases", {}).items()}
        self.local_rounds = int(saved.get("local_rounds", 0))
