"""Per-group aggregation and update validation.

Each parameter group (strategy state key) is aggregated over exactly the clients that returned it, by run
config ``aggregator``, with Flower's own rules:

* ``fedavg`` / ``fedprox``: the example-weighted mean (``flwr.server.strategy.aggregate.aggregate``);
* ``fedadam`` / ``fedavgm``: one Flower FedAdam / FedAvgM instance per group, fed only that group's updates, so
  each group keeps its own server optimiser state;
* ``fedmedian``, ``fedtrimmedavg`` (``trim-beta``), ``krum`` / multi-Krum (``num-malicious``, ``krum-keep``) and
  ``bulyan`` (``num-malicious``): Flower's ``aggregate_median``, ``aggregate_trimmed_avg``, ``aggregate_krum`` and
  ``aggregate_bulyan``. A group with too few contributors for Krum (more than 2 f + 2) or Bulyan (4 f + 3 or
  more) is aggregated by the median instead, said in one line and recorded (``fallbacks``). Krum and multi-Krum
  are :func:`krum`: Flower's ``aggregate_krum`` computed once, also naming whose updates it kept (``clients.csv``
  ``kept_groups``).

Before the rule: example counts are capped so that no client weighs more than ``max-client-weight`` of a
group (a lying count does not buy the average), and each update (the client's weights minus the group's
current ones) is clipped to ``max-update-norm`` times the round's median update norm of that group.

``dp = central``: :func:`mirror_app.core.privacy.central_release` per group: every update clipped to
``dp-clipping-norm`` C, summed (each client weighs 1), Gaussian noise of std ``dp-noise-multiplier`` x the
sensitivity added, divided by the group's expected count of contributors (``dp-sampling = "poisson"``: sensitivity
C, add-remove) or by its contributors (``"fixed"``: 2 C, replace-one); the noise from the operating system's entropy
(Flower's wrapper draws from NumPy's global generator, which a seed anyone can read would make recomputable).
Integer arrays (counters) are never released: the group keeps its value.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from logging import WARNING

import numpy as np
from flwr.common import Code, FitRes, Status, log, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAdam, FedAvg, FedAvgM
from flwr.server.strategy.aggregate import _compute_distances as krum_distances
from flwr.server.strategy.aggregate import (
    aggregate,
    aggregate_bulyan,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)

from clients.base import group_examples
from mirror_app.core.config import RunConfig
from mirror_app.core.groups import unflatten
from mirror_app.core.privacy import central_release, central_sensitivity

MAX_EXAMPLES = 10**9  # example-count bound for a client that did not report its partition size
Contribution = tuple[list[np.ndarray], float]  # a client's arrays of one group and its weight (example count)

# rule name -> (cfg, contributions) -> arrays; each is Flower's function for that rule (Krum: :func:`krum`, which
# also names the updates it kept)
RULES: dict[str, Callable[[RunConfig, list], list[np.ndarray]]] = {
    "fedavg": lambda cfg, c: aggregate(c),
    "fedprox": lambda cfg, c: aggregate(c),
    "fedmedian": lambda cfg, c: aggregate_median(c),
    "fedtrimmedavg": lambda cfg, c: aggregate_trimmed_avg(c, cfg.trim_beta),
    "bulyan": lambda cfg, c: aggregate_bulyan(list(c), cfg.num_malicious, aggregate_krum, to_keep=0),
}
SERVER_OPTIMIZERS = ("fedadam", "fedavgm")


def min_contributors(cfg: RunConfig) -> int:
    """The fewest updates of a group the run's rule accepts (Krum: more than 2 f + 2; Bulyan: 4 f + 3)."""
    f = cfg.num_malicious
    return {"krum": 2 * f + 3, "bulyan": 4 * f + 3}.get(cfg.aggregator, 1)


def krum(contributions: list[Contribution], num_malicious: int, keep: int) -> tuple[list[np.ndarray], list[int]]:
    """Flower's ``aggregate_krum(contributions, num_malicious, keep)`` and the indices of the updates it kept (sorted):
    the one of lowest score (Krum, ``keep`` 0) or the example-weighted mean of the ``keep`` lowest (multi-Krum), a
    score being the sum of squared distances to its n - f - 2 nearest updates. Its steps with Flower's own distance
    and mean functions, in its tie and summation order, so that the distances are computed once. A group with fewer
    than ``keep`` updates keeps all of them, said in one line (Flower's function would keep ``keep - n``)."""
    distances = krum_distances([arrays for arrays, _ in contributions])
    nearest = max(1, len(contributions) - num_malicious - 2)
    scores = [float(np.sum(row[np.argsort(row)[1 : nearest + 1]])) for row in distances]
    if keep > len(scores):  # Flower's slice would keep keep - n updates: at most all of them
        log(
            WARNING,
            "multi-Krum: krum-keep %d but only %d updates in the group: all %d kept",
            keep,
            len(scores),
            len(scores),
        )
        keep = len(scores)
    if keep > 0:
        chosen = np.argsort(scores)[::-1][len(scores) - keep :].tolist()
        return aggregate([contributions[i] for i in chosen]), sorted(chosen)
    best = int(np.argmin(scores))
    return contributions[best][0], [best]


def make_server_optimizer(cfg: RunConfig, initial: list[np.ndarray]) -> FedAvg:
    """A Flower strategy whose aggregate_fit applies its server-side rule to one group."""
    params = ndarrays_to_parameters(
        [a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a for a in initial]
    )
    if cfg.aggregator == "fedadam":
        return FedAdam(initial_parameters=params, eta=cfg.server_lr, accept_failures=True)
    if cfg.aggregator == "fedavgm":
        return FedAvgM(initial_parameters=params, server_momentum=cfg.server_momentum, accept_failures=True)
    raise ValueError(f"no server optimiser for aggregator {cfg.aggregator!r}")


def capped_weights(counts: list[float], share: float) -> list[float]:
    """Example counts -> weights in which none exceeds ``share`` of their sum: the k largest are cut to the level t
    at which t = share x (k t + the rest), the smallest k for which the next one is already below t (water-filling).
    With ``share`` x n <= 1 every weight is equal."""
    w = np.asarray(counts, dtype=np.float64)
    n = w.size
    if share >= 1 or n == 0:
        return w.tolist()
    if share * n <= 1:
        return [1.0] * n
    order = np.sort(w)[::-1]
    if order[0] <= share * order.sum():
        return w.tolist()
    for k in range(1, n):
        if share * k >= 1:
            break
        t = share * order[k:].sum() / (1 - share * k)
        if order[k] <= t:
            return np.minimum(w, t).tolist()
    return [1.0] * n


def _floating(arrays: list[np.ndarray]) -> list[int]:
    return [i for i, a in enumerate(arrays) if np.issubdtype(a.dtype, np.floating)]


def update_norm(arrays: list[np.ndarray], current: list[np.ndarray]) -> float:
    """L2 norm of ``arrays - current`` over the floating-point arrays of a group."""
    return float(np.sqrt(sum(float(np.sum((arrays[i] - current[i]) ** 2.0)) for i in _floating(current))))


def bound_norms(current: list[np.ndarray], contributions: list[Contribution], factor: float) -> list[Contribution]:
    """Each update clipped to ``factor`` x the median update norm of these contributions (a client whose update
    is larger is pulled back along its own direction)."""
    norms = [update_norm(arrays, current) for arrays, _ in contributions]
    bound = factor * float(np.median(norms))
    out = []
    for (arrays, n), norm in zip(contributions, norms):
        if norm > bound > 0:
            scale = bound / norm
            arrays = [
                current[i] + (a - current[i]) * scale if i in set(_floating(current)) else a
                for i, a in enumerate(arrays)
            ]
        out.append((arrays, n))
    return out


class GroupAggregator:
    """Aggregates one group at a time; ``inner`` holds the per-group Flower server optimisers, ``fallbacks`` the
    groups the current round aggregated by the median for want of contributors, and ``kept`` the indices of the
    contributions Krum kept, per group (the strategy clears both every round)."""

    def __init__(self, cfg: RunConfig, fixed: dict[str, set[int]] | None = None) -> None:
        self.cfg = cfg
        # per state key, the positions of the arrays nothing trains (core.heads.fixed_keys): a DP release keeps them
        self.fixed = fixed or {}
        self.inner: dict[str, FedAvg] = {}
        self.fallbacks: set[str] = set()
        self.kept: dict[str, list[int]] = {}

    def __call__(
        self,
        key: str,
        current: list[np.ndarray],
        contributions: list[Contribution],
        server_round: int,
        denominator: float | None = None,
    ) -> list[np.ndarray]:
        """The new value of group ``key`` (now ``current``) from ``(arrays, num_examples)`` contributions
        (``denominator``: central DP's expected count of contributors under Poisson draws)."""
        cfg = self.cfg
        dtypes = [a.dtype for a in current]
        if cfg.max_client_weight < 1:
            weights = capped_weights([n for _, n in contributions], cfg.max_client_weight)
            contributions = [(arrays, w) for (arrays, _), w in zip(contributions, weights)]
        if cfg.max_update_norm > 0:
            contributions = bound_norms(current, contributions, cfg.max_update_norm)
        if cfg.dp == "central":
            merged = self.private(key, current, contributions, server_round, denominator)
        elif cfg.aggregator in SERVER_OPTIMIZERS:
            inner = self.inner.get(key)
            if inner is None:
                inner = self.inner[key] = make_server_optimizer(cfg, current)
            parameters, _ = inner.aggregate_fit(server_round, _fit_results(contributions), [])
            merged = parameters_to_ndarrays(parameters)
        else:
            rule = cfg.aggregator
            if len(contributions) < min_contributors(cfg):
                log(
                    WARNING,
                    "round %s: group %s has %d updates, %s needs at least %d (num-malicious %d): median instead",
                    server_round,
                    key,
                    len(contributions),
                    rule,
                    min_contributors(cfg),
                    cfg.num_malicious,
                )
                self.fallbacks.add(key)
                rule = "fedmedian"
            if rule == "krum":  # which updates it kept is recorded too (clients.csv kept_groups)
                merged, self.kept[key] = krum(contributions, cfg.num_malicious, cfg.krum_keep)
            else:
                merged = RULES[rule](cfg, contributions)
        return [np.asarray(a).astype(d, copy=False) for a, d in zip(merged, dtypes)]

    def private(
        self,
        key: str,
        current: list[np.ndarray],
        contributions: list[Contribution],
        server_round: int,
        denominator: float | None = None,
    ) -> list[np.ndarray]:
        """Central DP for one group (:func:`mirror_app.core.privacy.central_release`): the contributors' updates
        (their arrays minus ``current``) clipped to C and summed, noise of std sigma x the sampling's sensitivity
        added, divided by ``denominator`` (Poisson draws: the expected count) or the contributors (fixed draws).
        A zero update, or none at all, is a release like any other. The noise comes from a generator of its own,
        never NumPy's global one: the operating system's entropy (:func:`noise_generator`). Integer arrays
        (counters) keep their value: they are never released."""
        cfg = self.cfg
        fixed = self.fixed.get(key, set())
        floats = [i for i in _floating(current) if i not in fixed]  # a fixed classifier is never released
        if denominator is None:  # fixed-size draws: the contributors that arrived
            denominator = len(contributions)
        if not floats or denominator <= 0:
            return [a.copy() for a in current]
        updates = [[np.asarray(arrays[i], np.float64) - current[i] for i in floats] for arrays, _ in contributions]
        step = central_release(
            updates,
            [current[i].shape for i in floats],
            cfg.dp_clipping_norm,
            cfg.dp_noise_multiplier,
            central_sensitivity(cfg.dp_clipping_norm, cfg.dp_sampling),
            denominator,
            noise_generator(cfg, server_round, key),
        )
        out = [a.copy() for a in current]
        for i, s in zip(floats, step):
            out[i] = (current[i] + s).astype(current[i].dtype)
        return out


def noise_generator(cfg: RunConfig, *context: int | str) -> np.random.Generator:
    """The generator of a DP noise draw: seeded by the operating system's entropy, so that nobody holding the run
    config can recompute the noise; with ``dp-insecure-seeded-noise`` (simulation studies that need repeatable
    digits, at the price of any privacy) seeded by the run seed and ``context`` (round, group, partition, ...)."""
    if not cfg.dp_insecure_seeded_noise:
        return np.random.default_rng()
    return np.random.default_rng([cfg.seed, *(zlib.crc32(str(c).encode()) for c in context)])


def _fit_results(contributions: list[Contribution]) -> list:
    return [
        (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(arrays)), n, {})) for arrays, n in contributions
    ]


def check_update(
    expected: tuple[str, ...],
    current: dict[str, list[np.ndarray]],
    res: FitRes,
    arrays: list[np.ndarray],
    limit: int = MAX_EXAMPLES,
) -> str:
    """Why an update must not be averaged in ('' when it is fine).

    ``expected``: the groups the client was told to train; ``current``: those groups' server values
    (how many arrays each has, and their shapes); ``limit``: the most examples the client can have (the
    partition size it reported).
    """
    names = [n for n in str(res.metrics.get("groups", "")).split(",") if n]
    if not 0 < res.num_examples <= limit:
        return f"example count {res.num_examples} is outside [1, {limit}] (the client's partition size)"
    weights = group_examples(res.metrics)
    untrained = {g for g, n in weights.items() if n == 0}  # sent, not trained (no clip could train it): not returned
    if sorted(names) != sorted(set(expected) - untrained) or not untrained <= set(expected):
        return f"returned groups {names}, expected {list(expected)}" + (
            f" less those it says it could not train {sorted(untrained)}" if untrained else ""
        )
    if any(not 0 <= n <= res.num_examples for n in weights.values()):
        return f"group-examples {weights} outside [0, the reply's {res.num_examples} examples]"
    try:
        groups = unflatten(arrays, names, [len(current[g]) for g in names])
    except ValueError as exc:
        return str(exc)
    for g in names:
        for a, ref in zip(groups[g], current[g]):
            if a.shape != ref.shape:
                return f"group {g}: shape {a.shape} != {ref.shape}"
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                return f"group {g} has NaN or Inf values"
    return ""
