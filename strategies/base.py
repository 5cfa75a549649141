"""The phase schedule every method runs on, as a Flower strategy.

* ``Instruction``: what one client does in a round (task, groups sent, groups returned);
* ``Phase``: a stage of training that turns a client's modality into an instruction;
* ``PhasedStrategy``: a Flower strategy (on ``flwr.server.strategy.FedAvg``) that runs a schedule of
  phases, sends each client only the parameter groups its instruction names, and averages each group over
  exactly the clients that returned it. Who takes part is :mod:`.census`; how a group is averaged and
  which updates are refused is :mod:`.aggregation`; metrics, checkpoints and resume files go to the
  recorder it is given (mirror_app.results.RunRecorder).

A method is a ``PhasedStrategy`` subclass that returns its phase schedule from ``build_phases`` and
declares the client tasks its instructions name in ``client_tasks`` (the shared ones are in
clients/tasks.py; a method's own live in its folder). Registered methods are listed in
``strategies/__init__.py``; any other is given by dotted path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any, ClassVar

import numpy as np
from flwr.common import FitIns, FitRes, Parameters, Scalar, log, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from clients.base import FIXED_ARRAYS, GROUP_SIZES, Task, group_examples
from data.partition import AUDIO, AUDIOVISUAL, attacked_partitions
from mirror_app.core.config import ConfigError, RunConfig
from mirror_app.core.groups import (
    AUDIO_HEAD,
    AUDIO_MODEL,
    AV_MODEL,
    GROUPS,
    TEACHER_PREFIX,
    flatten,
    get_groups,
    nbytes,
    unflatten,
)
from mirror_app.core.privacy import PrivacyLedger
from mirror_app.core.secure import LAYOUT as SECURE_LAYOUT
from mirror_app.core.secure import SLOT as SECURE_SLOT

from .aggregation import MAX_EXAMPLES, GroupAggregator, check_update, update_norm
from .census import Census
from .protection import Protection

AV_SLOT = "av/"  # state slot of a method's separate audiovisual model (UniFL, Harmony)


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
    # reply metrics of this phase's clients -> the metrics.csv column of their mean over a round's updates,
    # weighted by example counts (e.g. the distillation's share of samples distilled)
    reply_means: ClassVar[dict[str, str]] = {}

    def instruction(self, modality: str) -> Instruction | None:
        raise NotImplementedError

    def start(self, strategy: PhasedStrategy) -> None:
        """Called once, before the phase's first round."""


class PhasedStrategy(Protection, FedAvg):
    """Runs ``build_phases(cfg)`` one after the other in a single Flower run."""

    model_groups: tuple[str, ...] = GROUPS  # the parameter groups of the model this method trains
    # task name -> client task, for every task the phases' instructions name (the clients run them from here)
    client_tasks: ClassVar[dict[str, Task]] = {}
    label: ClassVar[str] = ""  # the method's name in tables and figures (the class name when empty)
    table_label: ClassVar[str] = ""  # its row in Table 1 where that says more than ``label`` (label when empty)
    # the phases whose rounds hold the method's product (its headline best-dev round is chosen among them;
    # empty: all rounds), e.g. ModalityMirror's distillation phase
    product_phases: ClassVar[tuple[str, ...]] = ()
    # a Table 1 row for the model this method's first phase left behind, within the same run ("" for none)
    phase1_label: ClassVar[str] = ""
    compared: ClassVar[bool] = False  # one of the methods of the comparison (`make table1`)
    # a row of Table 1 that is this project's, not the paper's (a stronger baseline, a method of our own)
    beyond_paper: ClassVar[bool] = False
    # Table 1's group of rows: "paper" (the paper's method), "baseline" (its baselines), "related" (related
    # methods), "project" (this project's additions and controls)
    family: ClassVar[str] = "related"
    # run config this method fixes (a registered variant of another method, e.g. its phase 1 read another way);
    # strategies.resolve_config applies it and refuses a run config that asks for another value
    settings: ClassVar[dict[str, Any]] = {}
    # the groups of the audio-only model this method evaluates and exports (state keys of the main slot)
    audio_groups: ClassVar[tuple[str, ...]] = AUDIO_MODEL
    audio_model_text: ClassVar[str] = "audio encoder + audio head."  # what that model is, for the model card
    audio_classifier: ClassVar[str] = AUDIO_HEAD  # the group that classifies the audio embedding (a recipe's row)

    @classmethod
    def outside_information(cls, cfg: RunConfig) -> str:
        """What the method knows beyond the clients' clips ('' for nothing): a recipe's row."""
        return ""

    @classmethod
    def server_model(cls, model, cfg: RunConfig, classes: list[str]):
        """The model this method trains, made from the server's dual encoder (itself by default)."""
        return model

    @classmethod
    def model_from_state(cls, model, cfg: RunConfig, classes: list[str], state: dict):
        """The layout of ``server_model``, to be filled from a checkpoint's ``state`` (what `export` calls); a
        method whose ``server_model`` does work the checkpoint makes unnecessary overrides this."""
        return cls.server_model(model, cfg, classes)

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
        self.check_client_tasks()
        # a differentially private run draws its clients from the operating system's entropy (amplification by
        # sampling assumes nobody knows who was drawn), unless a study asks for repeatable, private-in-name-only runs
        # central DP: a full census (each group's expected count needs every client's modality) and, by default,
        # Poisson draws, which its accountant assumes
        self.census = Census(
            cfg.clients_per_round,
            "full" if cfg.dp == "central" else cfg.census,
            secret=cfg.dp != "off" and not cfg.dp_insecure_seeded_noise,
            poisson=cfg.dp == "central" and cfg.dp_sampling == "poisson",
        )
        # the node count -> why the nodes cannot each hold clips ('' when they can); set by the ServerApp
        self.federation_check: Callable[[int], str] | None = None
        self.simulated = True  # simulated nodes (the ServerApp says when they are deployed ones)
        self.initial_encoders: dict[str, str] = {}  # what the encoders started from (the ServerApp says)
        self.fixed = self.fixed_positions(model)
        self.aggregator = GroupAggregator(cfg, self.fixed)
        self.ledger = (
            PrivacyLedger(cfg.dp, cfg.dp_noise_multiplier, cfg.dp_delta, cfg.dp_sampling) if cfg.dp != "off" else None
        )
        self._denominators: dict[str, float] = {}  # central DP: state key -> what its round's sum is divided by
        self.secure_skips, self.secure_clipped, self.secure_values, self.secure_halted = {}, 0.0, 0, 0
        self._secure_skipped = self._secure_clipped_round = 0
        self.attacked: set[int] | None = None  # partitions of the simulated attackers (attack-fraction), once known
        self._release: tuple[int, int] = (0, 0)  # this round's (most groups in one update, clients it drew from)
        self._drawn: list[str] = []  # this round's clients
        self._started: set[int] = set()
        self._pending: dict[str, tuple[Instruction, int]] = {}
        self._secure_layout: Scalar = ""  # this round's secure-aggregation layout (mirror_app.core.secure)
        self._round_stats: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self.round_offset = 0  # rounds done before this process started (a resumed run)

    # ---------------------------------------------------------------- schedule
    def build_phases(self, cfg: RunConfig) -> list[tuple[Phase, int]]:
        raise NotImplementedError

    @classmethod
    def privacy_plan(cls, cfg: RunConfig, num_clients: int) -> list[tuple[float, int, int]]:
        """The (effective noise multiplier, eligible clients, clients per round) of every round this method would
        release with ``dp`` on and ``num_clients`` clients (a seeded ``missing-rate`` share of them audio-only), as
        the run's privacy ledger records them: the pre-run check's epsilon for ``dp-target-epsilon``
        (``core.privacy.spent`` with the run's ``dp-sampling``). Local DP: one unsampled Gaussian per release of the
        client that could release most often (every round its modality trains), the bound the run guarantees before
        it draws anyone (``spent`` at q = 1). Every trained group counts here, a fixed classifier's too (the run's
        ledger leaves out a group nothing trains: :meth:`released_groups`), so the plan's epsilon is never below the
        ledger's."""
        from mirror_app.core.privacy import effective_multiplier

        audio = int(round(cfg.missing_rate * num_clients))
        counts = {AUDIO: audio, AUDIOVISUAL: num_clients - audio}
        phases = cls.build_phases(cls.__new__(cls), cfg)
        if cfg.dp == "local":  # against the server: the worst client releases in every round its modality trains
            worst = max(sum(r for phase, r in phases if phase.instruction(m) is not None) for m in counts if counts[m])
            return [(cfg.dp_noise_multiplier, 1, 1)] * worst
        plan: list[tuple[float, int, int]] = []
        for phase, rounds in phases:
            given = {m: phase.instruction(m) for m in counts}
            eligible = sum(counts[m] for m, ins in given.items() if ins is not None)
            groups = max((len(ins.train) for m, ins in given.items() if ins is not None and counts[m]), default=1)
            sigma = effective_multiplier(cfg.dp_noise_multiplier, cfg.dp, groups)
            plan += [(sigma, eligible, cfg.clients_per_round)] * rounds
        return plan

    def fixed_positions(self, model) -> dict[str, set[int]]:
        """Per state key (slots included), the positions in its list of arrays of those nothing trains (a fixed
        classifier: core.heads.fixed_keys); clients are told them (fit config ``fixed-arrays``)."""
        from mirror_app.core.groups import group_keys
        from mirror_app.core.heads import fixed_keys

        fixed = fixed_keys(model)
        if not fixed:
            return {}
        out: dict[str, set[int]] = {}
        for g in self.model_groups:
            positions = {i for i, k in enumerate(group_keys(model, g)) if k in fixed}
            if positions:
                out[g] = positions
        return out | {AV_SLOT + g: p for g, p in out.items()}  # and in the separate AV model's slot

    def released_groups(self, ins: Instruction) -> int:
        """How many of ``ins``'s trained groups a client's update releases: those with an array something trains (a
        fixed random head's group releases nothing), at least one."""
        full = [g for g in ins.train if len(self.fixed.get(ins.slot + g, ())) == len(self.state[ins.slot + g])]
        return max(len(ins.train) - len(full), 1)

    def fixed_text(self, groups: tuple[str, ...], slot: str = "") -> str:
        """The fit config ``fixed-arrays``: 'group:i,j;...' for ``groups`` (by name, without the slot)."""
        return ";".join(
            f"{g}:{','.join(map(str, sorted(self.fixed[slot + g])))}" for g in groups if slot + g in self.fixed
        )

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

    @classmethod
    def display_name(cls) -> str:
        return cls.label or cls.__name__

    def check_client_tasks(self) -> None:
        """Every task an instruction of this schedule names must be declared in ``client_tasks``, where the
        clients look it up: a plug-in method that forgets one fails here, before any client starts."""
        for phase, _ in self.phases:
            for modality in (AUDIO, AUDIOVISUAL):
                ins = phase.instruction(modality)
                if ins is not None and ins.task not in self.client_tasks:
                    raise ConfigError(
                        f"strategy {self.cfg.strategy!r}: phase {phase.name!r} gives {modality} clients task "
                        f"{ins.task!r}, which {type(self).__name__}.client_tasks does not declare "
                        f"(it declares {sorted(self.client_tasks)})"
                    )

    @property
    def properties(self) -> dict[str, dict]:
        """Node id -> what the node reported (modality, partition id, clips, classes)."""
        return self.census.properties

    @property
    def partitions(self) -> dict | None:
        return self.census.partitions

    # ------------------------------------------------------------ Flower hooks
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(flatten(self.state, self.model_groups))

    def stamp(self, server_round: int, event: str) -> None:
        """Note the wall-clock time of ``event`` in round ``server_round`` (the run's timeline.csv)."""
        if self.recorder:
            self.recorder.stamp(server_round, event)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        server_round += self.round_offset  # Flower counts from 1 again in a resumed run
        self.stamp(server_round, "round-start")
        index, phase = self.phase_at(server_round)
        if index not in self._started:
            self._started.add(index)
            phase.start(self)
        if not self.census.nodes:  # round 1: before anyone is asked, can every node hold clips?
            clients = self.census.connect(client_manager)
            problem = self.federation_check(len(clients)) if self.federation_check else ""
            if problem:
                raise ConfigError(problem)
        clients = self.census.take(client_manager)
        if self.attacked is None:
            self.attacked = self.attackers(self.census.nodes)
            modalities = [p.get("modality") for p in self.properties.values()]
            problem = self.secure_problem(self.cfg, {m: modalities.count(m) for m in (AUDIO, AUDIOVISUAL)})
            if problem and self.census.mode == "full":  # a sampled census does not know every node yet
                raise ConfigError(problem)
        takes = lambda modality: phase.instruction(modality) is not None  # noqa: E731
        chosen, pool = self.census.draw(clients, server_round, self.cfg.seed, takes)
        if self.recorder and self.recorder.partitions is None:
            self.recorder.partitions = self.partitions
        # G, the most groups one update spans, over every client the round could have drawn (not only the drawn)
        present = {p.get("modality") for p in self.properties.values()} or {AUDIO, AUDIOVISUAL}
        possible = [phase.instruction(m) for m in (AUDIO, AUDIOVISUAL) if m in present]
        self._release = (max((self.released_groups(ins) for ins in possible if ins), default=1), pool)
        self._drawn = list(chosen)
        if self.cfg.dp == "central":
            self._denominators = self.central_denominators(phase, chosen, pool)
        if not chosen:
            if self.cfg.dp == "central" and self.cfg.dp_sampling == "poisson" and pool:
                self.release_noise_only(server_round, phase)  # the round released noise alone: still counted
                return []
            raise RuntimeError(f"no connected client can take part in phase {phase.name!r}")
        secure = self.secure_fields(phase, chosen) if self.cfg.secure_aggregation else {}
        self._secure_layout = secure.get(SECURE_LAYOUT, "")
        out = []
        self._pending = {}
        sent: dict[Instruction, tuple[Parameters, int, str]] = {}  # serialised once per instruction, for its clients
        for cid in chosen:
            ins = phase.instruction(self.properties[cid]["modality"])
            if ins not in sent:
                arrays = self.arrays_for(ins.send, ins.slot)
                sizes = ",".join(str(len(self.arrays_for((g,), ins.slot))) for g in ins.send)
                sent[ins] = (ndarrays_to_parameters(arrays), nbytes(arrays), sizes)
            parameters, size, sizes = sent[ins]
            self._pending[cid] = (ins, size)
            config: dict[str, Scalar] = {
                "task": ins.task,
                "groups": ",".join(ins.send),
                GROUP_SIZES: sizes,
                "server-round": server_round,
                "phase": phase.name,
                **({FIXED_ARRAYS: self.fixed_text(ins.train, ins.slot)} if self.fixed else {}),
                **self.fit_config_extra(),
                **({**secure, SECURE_SLOT: ins.slot} if secure else {}),
            }
            out.append((clients[cid], FitIns(parameters, config)))
        self.stamp(server_round, "instructions-made")
        return out

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list):
        server_round += self.round_offset
        self.stamp(server_round, "replies-in")
        _, phase = self.phase_at(server_round)
        results = sorted(results, key=lambda r: self._order(r[0].cid))  # the same sum order in every run
        contributions: dict[str, list[tuple[list[np.ndarray], int]]] = {}
        owners: dict[str, list[int]] = {}  # per state key: the index in rows of each contribution
        rejected = 0
        bytes_down = bytes_up = 0
        answered = set()
        rows: list[tuple[dict, list[str]]] = []  # client rows and the state keys each one's update went to
        accepted: list[tuple[dict, int]] = []  # (reply metrics, examples) of the updates averaged in
        for proxy, res in results:
            ins, down = self._pending.get(proxy.cid, (None, 0))
            answered.add(proxy.cid)
            bytes_down += down
            arrays = parameters_to_ndarrays(res.parameters)
            up = nbytes(arrays)
            bytes_up += up
            self.census.heard(proxy.cid, res.metrics)  # what the device has now (a schedule may have taken its camera)
            limit = int(self.properties.get(proxy.cid, {}).get("num-examples", MAX_EXAMPLES))
            refused = str(res.metrics.get("refused", ""))  # the client could not do its task, and said why
            if self.cfg.secure_aggregation and not refused:  # its update is inside the sum: nothing to refuse
                row = self._client_row(server_round, phase, proxy.cid, ins, down, up, res, "")
                rows.append((row, [ins.slot + g for g in str(res.metrics.get("groups", "")).split(",") if g]))
                accepted.append((res.metrics, int(res.num_examples)))
                continue
            problem = refused or (
                self.check_update(ins, res, arrays, limit) if ins else "client was not sent an instruction"
            )
            row = self._client_row(server_round, phase, proxy.cid, ins, down, up, res, problem)
            if problem:
                row["status"] = "failed" if refused else "rejected"
                rows.append((row, []))
                rejected += 1
                log(WARNING, "round %s: client %s %s: %s", server_round, proxy.cid, row["status"], problem)
                continue
            accepted.append((res.metrics, int(res.num_examples)))
            names = str(res.metrics["groups"]).split(",")
            groups = unflatten(arrays, names, [len(self.state[ins.slot + g]) for g in names])
            weights = group_examples(res.metrics)  # groups that learnt from fewer clips (those with a frame)
            uniform = self.cfg.dp == "local"  # the server learns no count under local DP: every client weighs 1
            for g in names:
                weight = 1 if uniform else weights.get(g, int(res.num_examples))
                contributions.setdefault(ins.slot + g, []).append((groups[g], weight))
                owners.setdefault(ins.slot + g, []).append(len(rows))  # the row of that contribution
            row["update_norm"] = float(
                np.sqrt(sum(update_norm(groups[g], self.state[ins.slot + g]) ** 2 for g in names))
            )
            rows.append((row, [ins.slot + g for g in names]))
        unanswered = 0
        for cid, (ins, down) in self._pending.items():
            if cid not in answered:  # failed clients still downloaded the model
                unanswered += 1
                bytes_down += down
                rows.append((self._client_row(server_round, phase, cid, ins, down, 0, None, "failed"), []))
        self.aggregator.fallbacks, self.aggregator.kept = set(), {}
        if self.cfg.secure_aggregation:
            self.aggregate_secure(results)
        # central DP under Poisson draws releases every group someone could have trained, contributors or not
        released = {**dict.fromkeys(self._denominators), **dict.fromkeys(contributions)}
        for g in released:
            self.state[g] = self.aggregate_group(g, contributions.get(g, []), server_round)
        fallbacks = self.aggregator.fallbacks  # groups aggregated by the median for want of contributors
        kept = {g: {owners[g][i] for i in idx} for g, idx in self.aggregator.kept.items()}  # Krum's choice: rows
        if self.recorder:
            for i, (row, keys) in enumerate(rows):
                self.recorder.client_row(
                    row
                    | {
                        "fallback_groups": ";".join(k for k in keys if k in fallbacks),
                        "kept_groups": ";".join(k for k in keys if i in kept.get(k, ())),
                    }
                )
        trained = [row["modality"] for row, keys in rows if keys]
        self._round_stats = {
            "clients": len(results) - rejected,
            "failures": unanswered + rejected,  # (SecAgg+'s workflow lists a dropped client's failure twice)
            "bytes_to_clients": bytes_down,
            "bytes_from_clients": bytes_up,
            "fallbacks": len(fallbacks),
            "audio_clients": trained.count(AUDIO),
            "av_clients": trained.count(AUDIOVISUAL),
            "audio_only_share": self.census.audio_only_share(),
        }
        for reply, column in phase.reply_means.items():  # over the updates averaged in, by example counts
            said = [(float(m[reply]), n) for m, n in accepted if reply in m]
            if sum(n for _, n in said):
                self._round_stats[column] = sum(v * n for v, n in said) / sum(n for _, n in said)
        if self.cfg.secure_aggregation:  # values beyond the clipping range (SecAgg+ clipped them), groups skipped
            self._round_stats["secagg_clipped"] = self._secure_clipped_round
            self._round_stats["secagg_skipped"] = self._secure_skipped
        self.record_privacy()
        for failure in failures:
            if isinstance(failure, BaseException):
                log(WARNING, "round %s: a client failed: %s", server_round, failure)
        self.stamp(server_round, "aggregated")
        return ndarrays_to_parameters(flatten(self.state, self.model_groups)), dict(self._round_stats)

    def record_privacy(self) -> None:
        """The round's DP release in the ledger: central, the round's mechanism; local, every client drawn (each may
        have sent a noised update, accepted, rejected or late), by identity."""
        if self.ledger is None:
            return
        groups, eligible = self._release
        drawn = [self.identity(cid) for cid in self._drawn]
        self._round_stats["epsilon"] = self.ledger.record(groups, self.cfg.clients_per_round, eligible, drawn)

    def identity(self, cid: str) -> str:
        """Who a node is, for the privacy ledger and clients.csv: its partition where it has one (a simulation, or
        a node configured with one), else its node id."""
        pid = int(self.properties.get(cid, {}).get("partition-id", -1))
        return f"partition {pid}" if pid >= 0 else f"node {cid}"

    def central_denominators(self, phase: Phase, chosen: list[str], eligible: int) -> dict[str, float]:
        """Central DP: what each state key's clipped sum is divided by this round. Poisson draws: the expected count
        of its contributors, q x the eligible clients whose instruction trains it (q = clients-per-round /
        eligible), so that one client moves it by at most C / that count whoever arrives; fixed draws: nothing here
        (the contributors that arrive, :meth:`.aggregation.GroupAggregator.private`)."""
        if self.cfg.dp_sampling != "poisson" or not eligible:
            return {}
        q = min(1.0, self.cfg.clients_per_round / eligible)
        trainers: dict[str, int] = {}
        for props in self.properties.values():
            ins = phase.instruction(props.get("modality", ""))
            for g in ins.train if ins else ():
                trainers[ins.slot + g] = trainers.get(ins.slot + g, 0) + 1
        return {key: q * n for key, n in trainers.items() if n}

    def release_noise_only(self, server_round: int, phase: Phase) -> None:
        """A Poisson round that drew nobody: every group someone could have trained still gets its noise (divided
        by its expected count), and the round is accounted like any other."""
        log(INFO, "round %s: the Poisson draw chose no client; the round releases noise alone", server_round)
        for g in self._denominators:
            self.state[g] = self.aggregate_group(g, [], server_round)
        self._round_stats = {"clients": 0, "failures": 0, "audio_only_share": self.census.audio_only_share()}
        self.record_privacy()

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
        self.stamp(server_round, "evaluated")
        stats, self._round_stats = self._round_stats, {}
        seconds = time.perf_counter() - self._t0
        if self.recorder:
            self.recorder.round(server_round, self.total_rounds, index + 1, phase.name, metrics, stats, seconds)
            if server_round == self.phase_end(index) and server_round > 0:
                self.recorder.checkpoint("model.pt" if last else f"phase{index + 1}.pt", self.state, self.teacher)
            if 0 < server_round and not last:  # what a resumed run needs, after every round (atomic)
                self.recorder.save_resume_state(server_round, self.resume_state(), seconds)
            self.stamp(server_round, "recorded")
            if last:
                self.recorder.finish(
                    metrics,
                    [(phase.name, rounds) for phase, rounds in self.phases],
                    self.product_phases,
                    {
                        "privacy": self.privacy_summary(),
                        "missingness": self.missingness_summary(),
                        "census": self.census.summary(),
                        "secure_aggregation": self.secure_summary(),
                        "federation": {
                            "kind": "simulation" if self.simulated else "deployment",
                            "initial_encoders": self.initial_encoders,
                        },
                    },
                )
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        return (1.0 - scalars["audio_top1"], scalars) if "audio_top1" in scalars else None

    def _order(self, cid: str) -> tuple[int, str]:
        return self.census.order(cid)

    # ------------------------------------------------------------------- resume
    def resume_state(self) -> dict:
        """Everything a resumed run needs besides the run config: weights, teacher, server optimisers."""
        import pickle

        return {
            "state": self.state,
            "teacher": self.teacher,
            "inner": pickle.dumps(self.aggregator.inner),
            "privacy": self.ledger.state() if self.ledger is not None else {},
        }

    def restore(self, done_rounds: int, saved: dict, elapsed: float) -> None:
        """Continue after round ``done_rounds`` from ``resume_state()`` as saved then."""
        import pickle

        if not 0 < done_rounds < self.total_rounds:
            raise ValueError(f"cannot resume after round {done_rounds} of {self.total_rounds}")
        self.state, self.teacher = dict(saved["state"]), saved["teacher"]
        self.aggregator.inner = pickle.loads(saved["inner"])
        if self.ledger is not None:
            self.ledger.restore(saved.get("privacy"))
        self.round_offset = done_rounds
        self._t0 -= elapsed
        # phases that already began must not run their start hook again (its effects are restored)
        self._started = {i for i in range(len(self.phases)) if self.phase_end(i - 1) < done_rounds}

    def missingness_summary(self) -> dict:
        """How video went missing in this run: per client, per clip, over time (the schedule, with the audio-only
        share it sets from each change on), and at test time."""
        from data.partition import audio_only_partitions, audio_only_share, parse_schedule

        cfg = self.cfg
        schedule = parse_schedule(cfg.missing_schedule)

        nodes = self.census.nodes
        return {
            "missing_rate": cfg.missing_rate,
            # the seeded audio-only partitions of a simulation (a deployed node's own config decides for it)
            "audio_only_partitions": audio_only_partitions(nodes, cfg.missing_rate, cfg.seed).tolist()
            if self.simulated and nodes
            else None,
            "sample_missing_video": cfg.sample_missing_video,
            "schedule": [
                {"round": at, "change": change, "audio_only_share": audio_only_share(cfg.missing_rate, schedule, at)}
                for at, change in schedule
            ],
            "eval_missing_video": list(cfg.eval_missing_shares),
        }

    def attackers(self, num_partitions: int) -> set[int]:
        """The partitions of the simulated attackers (run config attack, attack-fraction) among ``num_partitions``,
        as the clients' attack mod draws them; recorded for summary.json."""
        cfg = self.cfg
        if cfg.attack == "none" or cfg.attack_fraction <= 0:
            return set()
        attacked = attacked_partitions(num_partitions, cfg.attack_fraction, cfg.seed).tolist()
        where = "simulation" if self.simulated else "deployment: nodes whose own node config names the attack"
        log(INFO, "attackers (%s): partitions %s of %d (%s)", cfg.attack, attacked, num_partitions, where)
        if self.recorder:
            self.recorder.attack = {
                "attack": cfg.attack,
                "fraction": cfg.attack_fraction,
                "partitions": attacked,
                "of": num_partitions,
                "honoured_by": where,
                **({"scale": cfg.attack_scale} if cfg.attack == "scale" else {}),
                **({"std": cfg.attack_std} if cfg.attack == "gaussian" else {}),
            }
        return set(attacked)

    def fit_config_extra(self) -> dict[str, Scalar]:
        """Extra entries of every fit config (a method's own settings for its clients)."""
        return {}

    # ------------------------------------------------------------ shared pieces
    def aggregate_group(
        self, key: str, contributions: list[tuple[list[np.ndarray], int]], server_round: int
    ) -> list[np.ndarray]:
        """Aggregate one group (state key) over exactly the clients that returned it (:mod:`.aggregation`; central
        DP under Poisson draws divides by the group's expected count of contributors)."""
        return self.aggregator(key, self.state[key], contributions, server_round, self._denominators.get(key))

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
            self.aggregator.inner.pop(slot + g, None)

    def audio_model_state(self) -> dict:
        """The audio-only model this method evaluates (and `export` ships): the ``audio_groups`` of the state."""
        return {g: self.state[g] for g in self.audio_groups}

    def av_model_state(self) -> dict:
        """The audiovisual model: the frozen teacher once distillation started, else the ``av/`` slot
        where a method keeps a separate audiovisual model, else the main model."""
        if self.teacher is not None:
            return {g: self.teacher[g] for g in AV_MODEL}
        slot = AV_SLOT if AV_SLOT + AV_MODEL[0] in self.state else ""
        return {g: self.state[slot + g] for g in AV_MODEL}

    def snapshot_teacher(self, groups: tuple[str, ...] = AV_MODEL) -> None:
        """Freeze a copy of ``groups`` of the main model as the teacher."""
        self.teacher = {g: [a.copy() for a in self.state[g]] for g in groups}

    def check_update(self, ins: Instruction, res: FitRes, arrays: list[np.ndarray], limit: int = MAX_EXAMPLES) -> str:
        """Why an update must not be averaged in ('' when it is fine); see :func:`.aggregation.check_update`."""
        current = {g: self.state[ins.slot + g] for g in ins.train}
        return check_update(ins.train, current, res, arrays, limit)

    # ------------------------------------------------------------------ helpers
    def _client_row(self, server_round, phase, cid, ins, down, up, res, problem) -> dict:
        props = self.properties.get(cid, {})
        m = res.metrics if res is not None else {}  # a failed client returned nothing
        nan = float("nan")
        return {
            "round": server_round,
            "phase": phase.name,
            "node_id": cid,
            "partition_id": props.get("partition-id", -1),
            "client": self.identity(cid),
            "modality": str(m.get("modality", props.get("modality", ""))),
            "task": ins.task if ins else "",
            "status": "rejected" if problem and res is not None else ("failed" if problem else "ok"),
            "num_examples": int(res.num_examples) if res is not None else 0,
            "bytes_received": down,
            "bytes_sent": up,
            "train_loss": float(m.get("train-loss", nan)),
            "train_seconds": float(m.get("train-seconds", nan)),
            "setup_seconds": float(m.get("setup-seconds", nan)),
            "workspace_built": int(m.get("workspace-built", 0)),
            "ray_node": str(m.get("ray-node", "")),
            "started_at": float(m.get("started-at", nan)),
            "finished_at": float(m.get("finished-at", nan)),
            "problem": problem,
            "attacker": int(props.get("partition-id", -1)) in (self.attacked or set()),
        }
