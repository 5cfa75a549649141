"""Shared pieces of every modality-aware strategy.

* ``Instruction``: what one client does in a round (task, groups sent, groups returned);
* ``Phase``: a stage of training that turns a client's modality into an instruction;
* ``PhasedStrategy``: a Flower strategy that runs a schedule of phases, sends each client
  only the parameter groups its instruction names, and averages each group over exactly
  the clients that returned it (``aggregate_group``, Flower's weighted mean by default).

A new method is a new ``PhasedStrategy`` subclass that returns its phase schedule from
``build_phases`` (plus one registry line in ``strategies/__init__.py``).
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any, Callable

import numpy as np
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    GetPropertiesIns,
    Parameters,
    Scalar,
    Status,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAdam, FedAvg, FedAvgM
from flwr.server.strategy.aggregate import aggregate

from mirror_app.config import ConfigError, RunConfig
from data.partition import AUDIO, AUDIOVISUAL
from mirror_app.models import (
    AUDIO_MODEL,
    AV_MODEL,
    GROUPS,
    TEACHER_PREFIX,
    flatten,
    get_groups,
    group_sizes,
    nbytes,
    unflatten,
)
AV_SLOT = "av/"  # state slot of a method's separate audiovisual model (UniFL, Harmony)
NODE_WAIT_SECONDS = 120.0  # longest wait for enough nodes before round 1
NODE_SETTLE_SECONDS = 10.0  # stop waiting once the node count has not changed this long
MAX_EXAMPLES = 10**9  # example-count bound for a client that did not report its partition size


def draw_clients(seed: int, server_round: int, eligible: list, k: int) -> list:
    """The clients of a round: ``k`` of ``eligible`` (ordered by partition id), drawn from the seed and round."""
    return random.Random(seed * 100_003 + server_round).sample(eligible, min(k, len(eligible)))


def partition_summary(properties: list[dict]) -> dict:
    """How the data is spread over the clients (their reported properties): counts per modality, clips per
    client and distinct classes per client (min / median / max; None where no client reported it)."""
    def spread(key: str) -> dict | None:
        values = [int(p[key]) for p in properties if key in p]
        if not values:
            return None
        return {"min": min(values), "median": float(np.median(values)), "max": max(values)}

    modalities = [p.get("modality") for p in properties]
    return {"clients": len(properties), "audio_only": modalities.count(AUDIO),
            "audiovisual": modalities.count(AUDIOVISUAL), "clips": spread("num-examples"),
            "classes": spread("num-classes")}


def partition_line(summary: dict) -> str:
    """``partition_summary`` as one log line."""
    def span(what: str) -> str:
        s = summary[what]
        return "n/a" if s is None else f"min {s['min']} / median {s['median']:g} / max {s['max']}"

    return (f"partitions: {summary['clients']} clients ({summary['audio_only']} audio-only, "
            f"{summary['audiovisual']} audiovisual); clips per client {span('clips')}; "
            f"classes per client {span('classes')}")


def make_server_optimizer(cfg: RunConfig, initial: list[np.ndarray]) -> FedAvg:
    """A Flower strategy whose aggregate_fit applies its server-side rule to one group."""
    params = ndarrays_to_parameters([a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a
                                     for a in initial])
    if cfg.aggregator == "fedadam":
        return FedAdam(initial_parameters=params, eta=cfg.server_lr, accept_failures=True)
    if cfg.aggregator == "fedavgm":
        return FedAvgM(initial_parameters=params, server_momentum=cfg.server_momentum, accept_failures=True)
    raise ValueError(f"no server optimiser for aggregator {cfg.aggregator!r}")


@dataclass(frozen=True)
class Instruction:
    """What one client does in a round.

    ``slot`` names which copy of the groups on the server the client trains: "" is the main
    model; a method that keeps a second copy (UniFL's and Harmony's audiovisual model keep
    their own audio encoder) stores it under ``"<slot><group>"`` keys of the strategy state.
    """

    task: str
    send: tuple[str, ...]  # groups sent to the client ("teacher/<group>" for frozen teacher copies)
    train: tuple[str, ...]  # groups the client trains and must return
    slot: str = ""


class Phase:
    """A stage of training. Subclasses map a client modality to an instruction (or None)."""

    name = "phase"

    def instruction(self, modality: str) -> Instruction | None:
        raise NotImplementedError

    def start(self, strategy: "PhasedStrategy") -> None:
        """Called once, before the phase's first round."""


class PhasedStrategy(FedAvg):
    """Runs ``build_phases(cfg)`` one after the other in a single Flower run."""

    model_groups: tuple[str, ...] = GROUPS  # the parameter groups of the model this method trains

    @classmethod
    def server_model(cls, model, cfg: RunConfig, classes: list[str]):
        """The model this method trains, made from the server's dual encoder (itself by default)."""
        return model

    def __init__(
        self,
        cfg: RunConfig,
        model,
        evaluator: Callable[[dict, dict], dict] | None = None,
        recorder=None,
        teacher: dict | None = None,
    ) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=1,
            min_evaluate_clients=0,
            min_available_clients=1,
            accept_failures=True,
        )
        self.cfg = cfg
        self.model = model  # layout reference and initial weights; never trained here
        self.state: dict[str, list[np.ndarray]] = dict(get_groups(model, self.model_groups))
        self.teacher: dict[str, list[np.ndarray]] | None = teacher
        self.evaluator = evaluator
        self.recorder = recorder
        self.phases: list[tuple[Phase, int]] = self.build_phases(cfg)
        if self.total_rounds < 1:
            raise ConfigError(f"strategy {cfg.strategy!r} has no rounds to run with this config")
        self.properties: dict[str, dict] = {}  # cid -> {"modality", "partition-id", ...}
        self._started: set[int] = set()
        self._inner: dict[str, FedAvg] = {}  # per-group Flower server optimisers (fedadam, fedavgm)
        self._waited = False
        self.partitions: dict | None = None  # partition_summary of the nodes first queried
        self._pending: dict[str, tuple[Instruction, int]] = {}
        self._round_stats: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self.round_offset = 0  # rounds done before this process started (a resumed run)

    # ---------------------------------------------------------------- schedule
    def build_phases(self, cfg: RunConfig) -> list[tuple[Phase, int]]:
        raise NotImplementedError

    @property
    def total_rounds(self) -> int:
        return sum(r for _, r in self.phases)

    def phase_at(self, server_round: int) -> tuple[int, Phase]:
        """Phase index and phase of ``server_round`` (round 0 belongs to the first phase)."""
        end = 0
        for i, (phase, rounds) in enumerate(self.phases):
            end += rounds
            if server_round <= end:
                return i, phase
        return len(self.phases) - 1, self.phases[-1][0]

    def phase_end(self, index: int) -> int:
        return sum(r for _, r in self.phases[: index + 1])

    # ------------------------------------------------------------ Flower hooks
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(flatten(self.state, self.model_groups))

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        server_round += self.round_offset  # Flower counts from 1 again in a resumed run
        index, phase = self.phase_at(server_round)
        if index not in self._started:
            self._started.add(index)
            phase.start(self)
        clients = self._connected_clients(client_manager)
        # Every node is asked once for its modality and partition; clients are then drawn from
        # the nodes ordered by partition id, so that a seed gives the same clients in every run
        # (Flower draws node IDs at random per run).
        self._query_properties([c for c in clients if c not in self.properties], clients)
        if self.partitions is None and self.properties:
            self.partitions = partition_summary(list(self.properties.values()))
            log(INFO, "%s", partition_line(self.partitions))
            if self.recorder:
                self.recorder.partitions = self.partitions
        eligible = sorted((c for c in clients if c in self.properties
                           and phase.instruction(self.properties[c]["modality"])), key=self._order)
        chosen = draw_clients(self.cfg.seed, server_round, eligible, self.cfg.clients_per_round)
        if not chosen:
            raise RuntimeError(f"no connected client can take part in phase {phase.name!r}")
        out = []
        self._pending = {}
        for cid in chosen:
            ins = phase.instruction(self.properties[cid]["modality"])
            arrays = self.arrays_for(ins.send, ins.slot)
            self._pending[cid] = (ins, nbytes(arrays))
            config: dict[str, Scalar] = {
                "task": ins.task,
                "groups": ",".join(ins.send),
                "server-round": server_round,
                "phase": phase.name,
                **self.fit_config_extra(),
            }
            out.append((clients[cid], FitIns(ndarrays_to_parameters(arrays), config)))
        return out

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list):
        server_round += self.round_offset
        _, phase = self.phase_at(server_round)
        results = sorted(results, key=lambda r: self._order(r[0].cid))  # the same sum order in every run
        contributions: dict[str, list[tuple[list[np.ndarray], int]]] = {}
        rejected = 0
        bytes_down = bytes_up = 0
        answered = set()
        for proxy, res in results:
            ins, down = self._pending.get(proxy.cid, (None, 0))
            answered.add(proxy.cid)
            bytes_down += down
            arrays = parameters_to_ndarrays(res.parameters)
            up = nbytes(arrays)
            bytes_up += up
            limit = int(self.properties.get(proxy.cid, {}).get("num-examples", MAX_EXAMPLES))
            problem = self.check_update(ins, res, arrays, limit) if ins else "client was not sent an instruction"
            row = self._client_row(server_round, phase, proxy.cid, ins, down, up, res, problem)
            if self.recorder:
                self.recorder.client_row(row)
            if problem:
                rejected += 1
                log(WARNING, "round %s: update of client %s rejected: %s", server_round, proxy.cid, problem)
                continue
            names = str(res.metrics["groups"]).split(",")
            groups = unflatten(arrays, names, group_sizes(self.model, names))
            for g in names:
                contributions.setdefault(ins.slot + g, []).append((groups[g], int(res.num_examples)))
        for cid, (ins, down) in self._pending.items():
            if cid not in answered:  # failed clients still downloaded the model
                bytes_down += down
                if self.recorder:
                    self.recorder.client_row(self._client_row(server_round, phase, cid, ins, down, 0, None, "failed"))
        for g, contribs in contributions.items():
            self.state[g] = self.aggregate_group(g, contribs, server_round)
        self._round_stats = {
            "clients": len(results) - rejected,
            "failures": len(failures) + rejected,
            "bytes_to_clients": bytes_down,
            "bytes_from_clients": bytes_up,
        }
        for failure in failures:
            if isinstance(failure, BaseException):
                log(WARNING, "round %s: a client failed: %s", server_round, failure)
        return ndarrays_to_parameters(flatten(self.state, self.model_groups)), dict(self._round_stats)

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []  # evaluation is centralised on the held-out test split

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters):
        if self.round_offset and server_round == 0:
            return None  # a resumed run: the rounds so far are already recorded
        server_round += self.round_offset
        index, phase = self.phase_at(server_round)
        last = server_round == self.total_rounds
        metrics: dict[str, Any] = {}
        if self.evaluator and (server_round % self.cfg.eval_every == 0 or last):
            metrics = self.evaluator(self.audio_model_state(), self.av_model_state())
        stats, self._round_stats = self._round_stats, {}
        seconds = time.perf_counter() - self._t0
        if self.recorder:
            self.recorder.round(server_round, self.total_rounds, index + 1, phase.name, metrics, stats, seconds)
            if server_round == self.phase_end(index) and server_round > 0:
                self.recorder.checkpoint("model.pt" if last else f"phase{index + 1}.pt", self.state, self.teacher)
            if 0 < server_round and not last:  # what a resumed run needs, after every round (atomic)
                self.recorder.save_resume_state(server_round, self.resume_state(), seconds)
            if last:
                self.recorder.finish(metrics)
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        return (1.0 - scalars["audio_top1"], scalars) if "audio_top1" in scalars else None

    def _order(self, cid: str) -> tuple[int, str]:
        """Sort key of a node: its partition id (stable across runs), then its node id."""
        return int(self.properties.get(cid, {}).get("partition-id", -1)), cid

    # ------------------------------------------------------------------- resume
    def resume_state(self) -> dict:
        """Everything a resumed run needs besides the run config: weights, teacher, server optimisers."""
        import pickle

        return {"state": self.state, "teacher": self.teacher, "inner": pickle.dumps(self._inner)}

    def restore(self, done_rounds: int, saved: dict, elapsed: float) -> None:
        """Continue after round ``done_rounds`` from ``resume_state()`` as saved then."""
        import pickle

        if not 0 < done_rounds < self.total_rounds:
            raise ValueError(f"cannot resume after round {done_rounds} of {self.total_rounds}")
        self.state, self.teacher = dict(saved["state"]), saved["teacher"]
        self._inner = pickle.loads(saved["inner"])
        self.round_offset = done_rounds
        self._t0 -= elapsed
        # phases that already began must not run their start hook again (its effects are restored)
        self._started = {i for i in range(len(self.phases)) if self.phase_end(i - 1) < done_rounds}

    def fit_config_extra(self) -> dict[str, Scalar]:
        """Extra entries of every fit config (a method's own settings for its clients)."""
        return {}

    # ------------------------------------------------------------ shared pieces
    def aggregate_group(self, key: str, contributions: list[tuple[list[np.ndarray], int]],
                        server_round: int) -> list[np.ndarray]:
        """Aggregate one group (state key) over exactly the clients that returned it.

        ``aggregator`` fedavg/fedprox: Flower's weighted mean by example count. fedadam/fedavgm:
        a Flower FedAdam/FedAvgM instance per group, fed only that group's updates, so each
        group keeps its own server optimiser state.
        """
        dtypes = [a.dtype for a in self.state[key]]
        if self.cfg.aggregator in ("fedavg", "fedprox"):
            merged = aggregate(contributions)
        else:
            inner = self._inner.get(key)
            if inner is None:
                inner = self._inner[key] = make_server_optimizer(self.cfg, self.state[key])
            results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {}))
                       for arrays, n in contributions]
            parameters, _ = inner.aggregate_fit(server_round, results, [])
            merged = parameters_to_ndarrays(parameters)
        return [np.asarray(a).astype(d, copy=False) for a, d in zip(merged, dtypes)]

    def arrays_for(self, names: tuple[str, ...], slot: str = "") -> list[np.ndarray]:
        out = []
        for name in names:
            if name.startswith(TEACHER_PREFIX):
                if self.teacher is None:
                    raise RuntimeError(f"{name} requested but no teacher is set")
                out.extend(self.teacher[name.removeprefix(TEACHER_PREFIX)])
            else:
                out.extend(self.state[slot + name])
        return out

    def copy_slot(self, groups: tuple[str, ...], slot: str) -> None:
        """Start a second copy of ``groups`` under ``slot`` from the main model's current weights."""
        for g in groups:
            self.state[slot + g] = [a.copy() for a in self.state[g]]
            self._inner.pop(slot + g, None)

    def audio_model_state(self) -> dict:
        return {g: self.state[g] for g in AUDIO_MODEL}

    def av_model_state(self) -> dict:
        """The audiovisual model: the frozen teacher once distillation started, else the ``av/`` slot
        where a method keeps a separate audiovisual model, else the main model."""
        if self.teacher is not None:
            return dict(self.teacher)
        slot = AV_SLOT if AV_SLOT + AV_MODEL[0] in self.state else ""
        return {g: self.state[slot + g] for g in AV_MODEL}

    def snapshot_teacher(self) -> None:
        self.teacher = {g: [a.copy() for a in self.state[g]] for g in AV_MODEL}

    def check_update(self, ins: Instruction, res: FitRes, arrays: list[np.ndarray],
                     limit: int = MAX_EXAMPLES) -> str:
        """Why an update must not be averaged in ('' when it is fine). ``limit``: the most examples
        the client can have (the partition size it reported)."""
        names = [n for n in str(res.metrics.get("groups", "")).split(",") if n]
        if not 0 < res.num_examples <= limit:
            return f"example count {res.num_examples} is outside [1, {limit}] (the client's partition size)"
        if sorted(names) != sorted(ins.train):
            return f"returned groups {names}, expected {list(ins.train)}"
        try:
            groups = unflatten(arrays, names, group_sizes(self.model, names))
        except (KeyError, ValueError) as exc:
            return str(exc)
        for g in names:
            for a, ref in zip(groups[g], self.state[ins.slot + g]):
                if a.shape != ref.shape:
                    return f"group {g}: shape {a.shape} != {ref.shape}"
                if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                    return f"group {g} has NaN or Inf values"
        return ""

    # ------------------------------------------------------------------ helpers
    def _client_row(self, server_round, phase, cid, ins, down, up, res, problem) -> dict:
        props = self.properties.get(cid, {})
        return {
            "round": server_round,
            "phase": phase.name,
            "node_id": cid,
            "partition_id": props.get("partition-id", -1),
            "modality": props.get("modality", ""),
            "task": ins.task if ins else "",
            "status": "rejected" if problem and res is not None else ("failed" if problem else "ok"),
            "num_examples": int(res.num_examples) if res is not None else 0,
            "bytes_received": down,
            "bytes_sent": up,
            "train_loss": float(res.metrics.get("train-loss", float("nan"))) if res is not None else float("nan"),
            "train_seconds": float(res.metrics.get("train-seconds", float("nan"))) if res is not None else float("nan"),
            "setup_seconds": float(res.metrics.get("setup-seconds", float("nan"))) if res is not None else float("nan"),
            "workspace_built": int(res.metrics.get("workspace-built", 0)) if res is not None else 0,
            "problem": problem,
        }

    def _connected_clients(self, client_manager: ClientManager) -> dict[str, ClientProxy]:
        """Connected clients; before round 1, wait until enough nodes are there or their number settles."""
        if not self._waited:
            self._waited = True
            deadline = time.monotonic() + NODE_WAIT_SECONDS
            seen, since = -1, time.monotonic()
            while time.monotonic() < deadline:
                count = client_manager.num_available()
                if count >= self.cfg.clients_per_round:
                    break
                if count != seen:
                    seen, since = count, time.monotonic()
                elif time.monotonic() - since > NODE_SETTLE_SECONDS:
                    break
                time.sleep(0.5)
            count = client_manager.num_available()
            if count < self.cfg.clients_per_round:
                raise ConfigError(
                    f"run config 'clients-per-round' = {self.cfg.clients_per_round} is invalid: only "
                    f"{count} SuperNodes are connected (simulate more with "
                    f"`flwr run . --federation-config \"num-supernodes=N\"`, or lower clients-per-round)"
                )
        return client_manager.all()

    def _query_properties(self, cids: list[str], clients: dict[str, ClientProxy]) -> None:
        """Ask clients for their modality and partition (once per client, in parallel)."""
        if not cids:
            return
        ins = GetPropertiesIns(config={})

        def ask(cid: str):
            try:
                return cid, clients[cid].get_properties(ins, timeout=None, group_id=0).properties
            except Exception as exc:  # a client that cannot answer is skipped this round
                log(WARNING, "client %s did not report its modality: %s", cid, exc)
                return cid, None

        with ThreadPoolExecutor(max_workers=min(32, len(cids))) as pool:
            for cid, props in pool.map(ask, cids):
                if props and props.get("modality") in (AUDIO, AUDIOVISUAL):
                    self.properties[cid] = dict(props)
