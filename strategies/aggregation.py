"""Per-group aggregation and update validation.

Each parameter group (strategy state key) is averaged over exactly the clients that returned it. Run config
``aggregator`` fedavg/fedprox: Flower's weighted mean by example count. fedadam/fedavgm: one Flower
FedAdam/FedAvgM instance per group, fed only that group's updates, so each group keeps its own server
optimiser state.
"""

from __future__ import annotations

import numpy as np
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAdam, FedAvg, FedAvgM
from flwr.server.strategy.aggregate import aggregate

from mirror_app.core.config import RunConfig
from mirror_app.core.groups import unflatten

MAX_EXAMPLES = 10**9  # example-count bound for a client that did not report its partition size


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


class GroupAggregator:
    """Aggregates one group at a time; ``inner`` holds the per-group Flower server optimisers."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.inner: dict[str, FedAvg] = {}

    def __call__(
        self, key: str, current: list[np.ndarray], contributions: list[tuple[list[np.ndarray], int]], server_round: int
    ) -> list[np.ndarray]:
        """The new value of group ``key`` (now ``current``) from ``(arrays, num_examples)`` contributions."""
        dtypes = [a.dtype for a in current]
        if self.cfg.aggregator in ("fedavg", "fedprox"):
            merged = aggregate(contributions)
        else:
            inner = self.inner.get(key)
            if inner is None:
                inner = self.inner[key] = make_server_optimizer(self.cfg, current)
            results = [
                (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {}))
                for arrays, n in contributions
            ]
            parameters, _ = inner.aggregate_fit(server_round, results, [])
            merged = parameters_to_ndarrays(parameters)
        return [np.asarray(a).astype(d, copy=False) for a, d in zip(merged, dtypes)]


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
    if sorted(names) != sorted(expected):
        return f"returned groups {names}, expected {list(expected)}"
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
