"""Differential privacy: the releases a run makes (clipping and noise, :func:`clip_update`, :func:`central_release`,
:func:`local_release`: the functions the strategy, the clients and the audit all call) and what they spend,
(epsilon, delta) from dp-accounting's RDP accountant. The draw of a round's clients and the accountant are one
mechanism, chosen by ``dp-sampling``:

``dp = central`` (the server clips and noises; the adversary is whoever sees the published model):

* ``poisson`` (the default, as DP-FedAvg, McMahan et al. 2018): each eligible client is drawn on its own with
  probability q = clients-per-round / eligible, secretly (the operating system's entropy). A parameter group's new
  value is its current one plus the sum of the clipped updates (each at most C) and Gaussian noise of std
  sigma x C, divided by the group's *expected* count q x (the eligible clients that train it), whoever arrived:
  adding or removing one client moves the sum by at most C. Accounted as ``PoissonSampledDpEvent(q, Gaussian)``
  under add-remove. A round that draws nobody still releases noise, and is counted.
* ``fixed``: exactly clients-per-round of the eligible clients, secretly; the sum divided by the group's
  contributors n, noise sigma x 2 C / n: replacing one client's data moves the sum by at most 2 C. Accounted as
  ``SampledWithoutReplacementDpEvent`` under replace-one.

Every group is clipped and noised on its own (noise multiplier sigma on each): a client whose update spans G groups
meets G Gaussian mechanisms, which compose to one of multiplier sigma / sqrt(G), G the most groups any client the
round could have drawn trains.

``dp = local`` (each client clips its whole update to C and adds noise of std sigma x the sensitivity; the
adversary is the server itself): the server chooses the clients and sees every noised update, so sampling gives
no amplification. A client's epsilon is the Gaussian mechanism of multiplier sigma composed over the rounds in
which it may have released an update (every round it was drawn in: the server cannot tell a late reply from none);
the run reports its worst client and its median client, each keyed by its identity (partition id, or node id on a
deployed node without one). The sensitivity follows ``dp-neighbouring``: replacing one client's data moves its
clipped update by up to 2 C (``replace``, the default), adding or removing it by C (``add-remove``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np

ORDERS = [*range(2, 65), 80, 96, 128, 192, 256]  # RDP orders (integers: exact for the subsampled Gaussian)
SAMPLINGS = ("poisson", "fixed")
# a central-DP round: (noise multiplier per client, eligible clients N, clients-per-round k); q = k / N
Round = tuple[float, int, int]


def floating(arrays: Sequence[np.ndarray]) -> list[int]:
    """Indices of the floating-point arrays (the ones DP clips and noises; counters are never released)."""
    return [i for i, a in enumerate(arrays) if np.issubdtype(np.asarray(a).dtype, np.floating)]


def clip_update(update: Sequence[np.ndarray], clipping_norm: float) -> list[np.ndarray]:
    """``update`` scaled down to L2 norm ``clipping_norm`` over all its arrays (FlatClip, Flower's
    ``clip_inputs_inplace``), as float64 copies; an update of norm 0, or no arrays at all, is returned as it is
    (Flower's divides by the norm)."""
    out = [np.asarray(a, dtype=np.float64).copy() for a in update]
    norm = math.sqrt(sum(float(np.sum(a * a)) for a in out))
    if norm > clipping_norm > 0:
        out = [a * (clipping_norm / norm) for a in out]
    return out


def central_sensitivity(clipping_norm: float, sampling: str) -> float:
    """How far one client moves a group's clipped sum: C when it is added or removed (Poisson), 2 C when its data is
    replaced (fixed-size draws)."""
    return clipping_norm if sampling == "poisson" else 2 * clipping_norm


def central_release(
    updates: Sequence[Sequence[np.ndarray]],
    shapes: Sequence[tuple[int, ...]],
    clipping_norm: float,
    noise_multiplier: float,
    sensitivity: float,
    denominator: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """One group's central-DP step: each update (a list of arrays of ``shapes``) clipped to C, summed, Gaussian noise
    of std ``noise_multiplier`` x ``sensitivity`` added, divided by ``denominator`` (the expected count under Poisson
    sampling, the contributors under fixed-size draws). No update at all releases the noise alone."""
    total = [np.zeros(s) for s in shapes]
    for update in updates:
        for t, a in zip(total, clip_update(update, clipping_norm)):
            t += a
    std = noise_multiplier * sensitivity
    return [(t + rng.normal(0.0, std, t.shape)) / denominator for t in total]


def local_release(
    update: Sequence[np.ndarray], clipping_norm: float, std: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """One client's local-DP release: its update clipped to C and Gaussian noise of std ``std`` (sigma x the
    sensitivity) added to every value. An empty update releases nothing."""
    return [a + rng.normal(0.0, std, a.shape) for a in clip_update(update, clipping_norm)]


def sensitivity(clipping_norm: float, neighbouring: str) -> float:
    """How far one client's clipped update can move under the neighbouring relation: 2 C (replace), C (add-remove)."""
    return 2 * clipping_norm if neighbouring == "replace" else clipping_norm


def round_event(noise_multiplier: float, eligible: int, k: int, sampling: str):
    """One central-DP round, as a dp-accounting event: Poisson sampling at q = k / eligible, or a draw of k of
    ``eligible`` without replacement."""
    from dp_accounting import dp_event

    gaussian = dp_event.GaussianDpEvent(noise_multiplier)
    if sampling == "poisson":
        return dp_event.PoissonSampledDpEvent(min(1.0, k / max(eligible, 1)), gaussian)
    return dp_event.SampledWithoutReplacementDpEvent(max(eligible, k), min(k, max(eligible, 1)), gaussian)


def accountant(sampling: str):
    """dp-accounting's RDP accountant under the neighbouring relation of ``sampling``: add-remove for Poisson,
    replace-one for fixed-size draws."""
    from dp_accounting import privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    relation = privacy_accountant.NeighboringRelation
    return rdp.RdpAccountant(ORDERS, relation.ADD_OR_REMOVE_ONE if sampling == "poisson" else relation.REPLACE_ONE)


def spent(rounds: Iterable[Round], delta: float, sampling: str = "poisson") -> float:
    """Epsilon after the central-DP rounds ``[(noise multiplier, eligible, k), ...]`` at ``delta`` (consecutive equal
    rounds composed as one self-composed event); 0 for no rounds."""
    from dp_accounting import dp_event

    rounds = [(float(s), int(n), int(k)) for s, n, k in rounds]
    if not rounds:
        return 0.0
    acc = accountant(sampling)
    for (sigma, eligible, k), run in groupby(rounds):
        acc.compose(dp_event.SelfComposedDpEvent(round_event(sigma, int(eligible), int(k), sampling), len(list(run))))
    return float(acc.get_epsilon(delta))


def effective_multiplier(noise_multiplier: float, mode: str, groups: int) -> float:
    """sigma_eff of one client's round: sigma for local DP, sigma / sqrt(G) for central DP over G groups."""
    return noise_multiplier / math.sqrt(groups) if mode == "central" else noise_multiplier


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon of the Gaussian mechanism of multiplier ``noise_multiplier`` composed ``releases`` times, no sampling
    (a local-DP client's guarantee against the server); 0 for no release."""
    if releases <= 0:
        return 0.0
    from dp_accounting import dp_event

    acc = accountant("poisson")  # no sampling: the relation only fixes what the multiplier is relative to
    acc.compose(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(noise_multiplier), releases))
    return float(acc.get_epsilon(delta))


@dataclass
class PrivacyLedger:
    """What a run has released, and the epsilon it spends: per round (central) or per client (local)."""

    mode: str
    noise_multiplier: float
    delta: float
    sampling: str = "poisson"
    rounds: list[Round] = field(default_factory=list)  # central: (sigma_eff, eligible, k) per round
    releases: dict[str, int] = field(default_factory=dict)  # local: client identity -> rounds it may have released
    local_rounds: int = 0  # local: rounds recorded

    def record(self, groups: int, clients_per_round: int, eligible: int, released: Sequence[str] = ()) -> float:
        """Add one round drawn from ``eligible`` clients (``clients_per_round`` of them, or that many expected),
        whose updates span up to ``groups`` parameter groups; for local DP, ``released`` names (by identity) every
        client that may have released a noised update. Returns the epsilon spent so far (local: the worst
        client's)."""
        if self.mode == "local":
            self.local_rounds += 1
            for who in released:
                self.releases[str(who)] = self.releases.get(str(who), 0) + 1
        else:
            self.rounds.append(
                (effective_multiplier(self.noise_multiplier, self.mode, groups), int(eligible), int(clients_per_round))
            )
        return self.epsilon()

    def epsilon(self) -> float:
        """The run's epsilon: central, over its rounds; local, its worst client's."""
        if self.mode == "local":
            return gaussian_epsilon(self.noise_multiplier, max(self.releases.values(), default=0), self.delta)
        return spent(self.rounds, self.delta, self.sampling)

    def median_client(self) -> float:
        """Local DP: the epsilon of the median client among those that released anything."""
        counts = sorted(self.releases.values())
        return gaussian_epsilon(self.noise_multiplier, counts[(len(counts) - 1) // 2], self.delta) if counts else 0.0

    def state(self) -> dict:
        return {
            "rounds": [list(r) for r in self.rounds],
            "releases": dict(self.releases),
            "local_rounds": self.local_rounds,
        }

    def restore(self, saved) -> None:
        """From :meth:`state`."""
        saved = dict(saved or {})
        self.rounds = [(float(s), int(n), int(k)) for s, n, k in saved.get("rounds", [])]
        self.releases = {str(k): int(v) for k, v in saved.get("releases", {}).items()}
        self.local_rounds = int(saved.get("local_rounds", 0))


# what the server receives from each client, by mode: the reply metrics and the census properties it may see
# (docs/security.md's table; clients/mods.py and clients/base.py keep to it, a test observes it)
IDENTITY = ("modality", "partition-id")  # which client answered and what it has: every mode needs them
REPLY_NEEDS = ("groups",)  # which groups the reply carries (derived from the instruction and the modality)


def disclosure(dp: str, secure_aggregation: bool) -> str:
    """The name of what a run lets the server see of a client: plain, central-dp, local-dp, secagg, secagg+local-dp."""
    if secure_aggregation:
        return "secagg+local-dp" if dp == "local" else "secagg"
    return {"central": "central-dp", "local": "local-dp"}.get(dp, "plain")


def hides_client_values(dp: str, secure_aggregation: bool) -> bool:
    """Whether the mode keeps per-client values (example counts, losses, timings) from the server: local DP (the
    server is the adversary) and secure aggregation (it sees only sums)."""
    return disclosure(dp, secure_aggregation) not in ("plain", "central-dp")
