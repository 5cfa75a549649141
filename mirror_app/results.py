"""What a run leaves behind, one folder per run under ``output-dir``:

    config.json        the resolved run config
    metrics.csv        one row per evaluated round (round, phase, audio_top1, audio_top5,
                       audio_macro_f1, av_top1, bytes, failures, seconds, ...)
    clients.csv        one row per client per round: task, status, bytes sent and received,
                       training and client set-up seconds
    per_class_f1.csv   audio model per-class F1 at every evaluated round (long format)
    timeline.csv       wall-clock times (``time.time()``) of the server's steps: at start-up (round -1)
                       process-started, app-imported, components-start, config-checked, dataset-loaded,
                       strategy-built; then per round round-start, instructions-made, replies-in,
                       aggregated, evaluated, recorded; with
                       clients.csv's started_at/finished_at it tells where a round's seconds go
    phase1.pt          checkpoint at the end of phase 1 (two-phase strategies)
    model.pt           final checkpoint: {"state": groups, "teacher": groups or None}
    summary.json       final metrics, the evaluation protocol's results (last round, mean of the last
                       5 evaluated rounds, test metrics at the best-dev round), collapsed rounds and the
                       partition summary; written last, so its presence marks a finished run

Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from flwr.common import log

METRIC_COLUMNS = [
    "round",
    "phase_index",
    "phase",
    "audio_top1",
    "audio_top5",
    "audio_macro_f1",
    "av_top1",
    "av_top5",
    "dev_audio_top1",
    "dev_audio_top5",
    "dev_audio_macro_f1",
    "dev_av_top1",
    "audio_only_share",
    "audio_clients",
    "av_clients",
    "audio_majority_share",
    "av_majority_share",
    "audio_av_agreement",
    "distill_kept_share",
    "clients",
    "failures",
    "bytes_to_clients",
    "bytes_from_clients",
    "fallbacks",
    "secagg_clipped",
    "secagg_skipped",
    "epsilon",
    "seconds",
]
MACHINE_KEYS = ("output-dir", "data-dir")  # where a run wrote and read on its machine: kept out of records and cards
MISSING_PREFIX = "av_top1_missing"  # AV top-1 at a test-time share of clips without video: one column per share
TIMELINE_COLUMNS = ["round", "event", "at"]


def metric_columns(rows: list[dict]) -> list[str]:
    """metrics.csv's columns: METRIC_COLUMNS with the AV top-1 under each test-time missing share after av_top5."""
    extra = sorted(
        {k for r in rows for k in r if k.startswith(MISSING_PREFIX)}, key=lambda k: int(k[len(MISSING_PREFIX) :])
    )
    at = METRIC_COLUMNS.index("av_top5") + 1
    return METRIC_COLUMNS[:at] + extra + METRIC_COLUMNS[at:]


STARTUP_ROUND = -1  # timeline.csv's round of the ServerApp's start-up steps
TEST_KEYS = ("audio_top1", "audio_top5", "audio_macro_f1")  # the audio model's test metrics of the summary
LAST_N = 5  # summary.json "last5_mean": mean over this many last evaluated rounds
COLLAPSE_SHARE = 0.9  # a model whose most frequent predicted class takes this share of the test clips...
COLLAPSE_FROM_ROUND = 3  # ...at an evaluated round >= this one is collapsed
MODEL_NAMES = {"audio": "audio", "av": "audiovisual"}
# round statistics that are shares, not counts: a metrics.csv row holds their mean over the rounds since the last one
MEAN_STATS = ("distill_kept_share",)


def _trained(rows: list[dict]) -> list[dict]:
    """The evaluated rows after training started (round 0 is the initial model)."""
    return [r for r in rows if r.get("round", 0) > 0]


def _mean(values: list) -> float | None:
    values = [float(v) for v in values if v is not None and v == v]  # v == v: not NaN
    return sum(values) / len(values) if values else None


def best_dev_row(rows: list[dict]) -> dict | None:
    """The trained row with the best dev audio top-1 (strictly better only: the earliest round wins a tie),
    as summary.json records it; None without dev metrics."""
    best = None
    for row in _trained(rows):
        dev = row.get("dev_audio_top1")
        if dev is not None and dev == dev and (best is None or dev > best["dev_audio_top1"]):
            best = row
    if best is None:
        return None
    return {
        "round": best["round"],
        "phase": best.get("phase"),
        "dev_audio_top1": best["dev_audio_top1"],
        **{k: best.get(k) for k in (*TEST_KEYS, "av_top1")},
    }


def protocol_summary(rows: list[dict], product_phases: tuple[str, ...] | list[str] = ()) -> dict:
    """``last``, ``last5_mean`` and ``best_dev`` of the audio model, derived from the metrics rows alone
    (so a resumed run gets the same answer). Round 0, the initial model, is never chosen nor averaged;
    ``last5_mean`` and ``best_dev`` look at the product phases only (where they ran).

    ``best_dev`` is the headline: chosen among the rounds of ``product_phases`` (the phases that hold the
    method's product, e.g. ModalityMirror's distillation; all rounds when empty or when none of them ran),
    which ``best_dev["within"]`` names. ``best_dev_all_rounds`` is the same rule over every round."""
    trained = _trained(rows)
    last = trained[-1] if trained else (rows[-1] if rows else {})
    within = [p for p in product_phases if any(r.get("phase") == p for r in trained)]
    tail = [r for r in trained if not within or r.get("phase") in within][-LAST_N:]
    out: dict[str, Any] = {
        "last": {"round": last.get("round"), **{k: last.get(k) for k in TEST_KEYS}},
        "last5_mean": {
            "rounds": len(tail),
            "from_round": tail[0]["round"] if tail else None,
            "to_round": tail[-1]["round"] if tail else None,
            **{k: _mean([r.get(k) for r in tail]) for k in TEST_KEYS},
        },
    }
    overall = best_dev_row(rows)
    best = best_dev_row([r for r in rows if r.get("phase") in within]) if within else overall
    if best is None:
        out["best_dev"] = None
        out["best_dev_reason"] = (
            "no dev metrics were recorded: the run has no dev split (dev-fraction = 0, or too "
            "few training clips per class to carve one)"
        )
    else:
        out["best_dev"] = {**best, "within": ", ".join(within) if within else "all rounds"}
    out["best_dev_all_rounds"] = overall
    return out


def phase_summary(rows: list[dict]) -> dict[str, dict]:
    """Per phase, in the order they ran: where it left the audio model (its last evaluated round's test
    metrics, AV top-1, the audio model's majority share and its agreement with the AV model), the same at its
    first evaluated round (``first``: a phase that starts by collapsing the audio model shows it there), and its
    own best-dev round (:func:`best_dev_row` among its rounds)."""
    keys = (*TEST_KEYS, "av_top1", "audio_majority_share", "audio_av_agreement")
    out: dict[str, dict] = {}
    for row in _trained(rows):
        record = out.setdefault(row["phase"], {"first": {"round": row["round"], **{k: row.get(k) for k in keys}}})
        record |= {"round": row["round"], **{k: row.get(k) for k in keys}}
    for phase, record in out.items():
        record["best_dev"] = best_dev_row([r for r in rows if r.get("phase") == phase])
    return out


def is_collapsed(row: dict, model: str) -> bool:
    """Whether ``model`` ("audio" or "av") predicts one class for >= COLLAPSE_SHARE of the test clips at
    ``row``'s round (only rounds >= COLLAPSE_FROM_ROUND count)."""
    share = row.get(f"{model}_majority_share")
    return row.get("round", 0) >= COLLAPSE_FROM_ROUND and share is not None and share >= COLLAPSE_SHARE


def collapse_summary(rows: list[dict]) -> dict:
    """Per model: whether the last evaluated round is collapsed, and every collapsed round."""
    out: dict[str, Any] = {"threshold": COLLAPSE_SHARE, "from_round": COLLAPSE_FROM_ROUND}
    for model in MODEL_NAMES:
        rounds = [r["round"] for r in rows if is_collapsed(r, model)]
        out[model] = {
            "last_round_collapsed": bool(rows) and is_collapsed(rows[-1], model),
            "rounds": rounds,
            "last_share": rows[-1].get(f"{model}_majority_share") if rows else None,
        }
    return out


def megabytes_per_round(metrics: pd.DataFrame) -> float | None:
    """Mean megabytes on the wire per round (to plus from the clients) of a run's metrics.csv rows. A row holds
    the bytes of every round since the previous evaluated one (eval-every > 1), so the total is divided by the
    rounds, not by the rows; None without rounds or byte columns."""
    if not {"bytes_to_clients", "bytes_from_clients"} <= set(metrics.columns):
        return None
    rounds = int(metrics["round"].max()) if len(metrics) else 0
    return float((metrics["bytes_to_clients"] + metrics["bytes_from_clients"]).sum() / rounds / 1e6) if rounds else None


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2)))


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    frame = pd.DataFrame(rows, columns=columns)
    atomic_write(path, lambda p: frame.to_csv(p, index=False))


class Curves:
    """Live curves of a run for TensorBoard, in ``<run>/tensorboard`` (torch.utils.tensorboard's writer):
    per round the audio and audiovisual test metrics (top-1, top-5, macro-F1) and the dev ones, the phase
    (``phase/index``, and a ``phase/boundaries`` text at each phase's first round), bytes to and from the
    clients, clients that took part and failures, and the clients' training losses (mean per modality and
    a histogram). Flushed every round, so ``tensorboard --logdir results`` shows a run while it trains."""

    SCALARS = {
        "audio_top1": "audio/top1",
        "audio_top5": "audio/top5",
        "audio_macro_f1": "audio/macro_f1",
        "av_top1": "av/top1",
        "av_top5": "av/top5",
        "av_macro_f1": "av/macro_f1",
        "dev_audio_top1": "dev/audio_top1",
        "dev_audio_top5": "dev/audio_top5",
        "dev_audio_macro_f1": "dev/audio_macro_f1",
        "dev_av_top1": "dev/av_top1",
    }
    STATS = {  # per-kind and per-modality counts of the round
        "audio_only_share": "clients/audio_only_share",
        "audio_clients": "clients/audio_trained",
        "av_clients": "clients/audiovisual_trained",
        "epsilon": "privacy/epsilon",
    }

    def __init__(self, folder: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)
        self.phase: str | None = None

    def round(self, step: int, phase_index: int, phase: str, metrics: dict, stats: dict, clients: list[dict]) -> None:
        w = self.writer
        w.add_scalar("phase/index", phase_index, step)
        if phase != self.phase:
            w.add_text("phase/boundaries", f"round {step}: phase {phase_index} `{phase}` starts", step)
            self.phase = phase
        for key, tag in self.SCALARS.items():
            if isinstance(metrics.get(key), (int, float)):
                w.add_scalar(tag, metrics[key], step)
        for key in (k for k in metrics if k.startswith(MISSING_PREFIX)):
            w.add_scalar(f"av/top1_missing_video_{key[len(MISSING_PREFIX) :]}pct", metrics[key], step)
        for key, tag in self.STATS.items():
            if isinstance(stats.get(key), (int, float)):
                w.add_scalar(tag, stats[key], step)
        if step > 0:
            for key in ("bytes_to_clients", "bytes_from_clients", "clients", "failures"):
                w.add_scalar(f"round/{key}", stats.get(key, 0), step)
        losses = [r for r in clients if r.get("status") == "ok" and r.get("train_loss") == r.get("train_loss")]
        for modality in sorted({r["modality"] for r in losses}):
            values = [float(r["train_loss"]) for r in losses if r["modality"] == modality]
            w.add_scalar(f"client_loss/{modality}", sum(values) / len(values), step)
        if losses:
            w.add_histogram("client_loss/all", np.asarray([float(r["train_loss"]) for r in losses]), step)
        w.flush()

    def close(self) -> None:
        self.writer.close()


class RunRecorder:
    SAVED = (  # resume.pt
        "metrics",
        "clients",
        "per_class",
        "per_class_dev",
        "timeline",
        "pending",
        "means",
        "partitions",
        "attack",
    )

    def __init__(self, run_dir: Path, config: dict, classes: list[str], tensorboard: bool = False):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.classes = classes
        self._start()
        write_json(self.dir / "config.json", config)
        self.curves = Curves(self.dir / "tensorboard") if tensorboard else None
        self._curved = 0  # client rows already given to the curves

    def _start(self) -> None:
        """The rows of a run that has recorded nothing yet."""
        self.metrics: list[dict] = []
        self.clients: list[dict] = []
        self.per_class: list[dict] = []
        self.per_class_dev: list[dict] = []
        self.timeline: list[dict] = []
        self.pending: dict[str, float] = {}  # counts of rounds without evaluation, for the next row
        self.means: dict[str, list[float]] = {}  # MEAN_STATS of rounds without evaluation, for the next row
        self.partitions: dict | None = None  # set by the strategy once it knows the connected clients
        self.attack: dict | None = None  # the simulated attackers (set by the strategy), for summary.json

    def save_resume_state(self, server_round: int, strategy_state: dict, seconds: float) -> None:
        """``resume.pt``: what ``resume`` needs to continue after ``server_round`` (atomic, every round)."""
        payload = {
            "round": server_round,
            "seconds": seconds,
            "strategy": strategy_state,
            "recorder": {name: getattr(self, name) for name in self.SAVED},
        }
        atomic_write(self.dir / RESUME_FILE, lambda p: torch.save(payload, p))

    @classmethod
    def reopen(cls, run_dir: Path, saved: dict, classes: list[str], tensorboard: bool = False) -> RunRecorder:
        """The recorder of an interrupted run, from its saved state (:func:`load_resume_state`)."""
        rec = cls.__new__(cls)
        rec.dir, rec.classes = Path(run_dir), classes
        rec._start()
        for name in cls.SAVED:  # a resume file of an older version may lack some (they start empty)
            if name in saved["recorder"]:
                setattr(rec, name, saved["recorder"][name])
        # events after the resume point (written before the interruption) are dropped
        rec.curves = Curves(rec.dir / "tensorboard", purge_step=saved["round"] + 1) if tensorboard else None
        rec._curved = len(rec.clients)
        return rec

    def client_row(self, row: dict) -> None:
        self.clients.append(row)

    def stamp(self, server_round: int, event: str, at: float | None = None) -> None:
        """A timeline.csv row: ``event`` of ``server_round`` happened at ``at`` (now by default)."""
        self.timeline.append({"round": server_round, "event": event, "at": time.time() if at is None else at})

    def round(
        self, server_round: int, total: int, phase_index: int, phase: str, metrics: dict, stats: dict, seconds: float
    ) -> None:
        """Record one round; rounds without evaluation fold their counts into the next row."""
        for key in (
            "clients",
            "failures",
            "bytes_to_clients",
            "bytes_from_clients",
            "fallbacks",
            "audio_clients",
            "av_clients",
        ):
            self.pending[key] = self.pending.get(key, 0) + stats.get(key, 0)
        for key in ("secagg_clipped", "secagg_skipped"):  # a secure-aggregation run only: values SecAgg+ clipped,
            if key in stats:  # groups left untrained for want of contributors
                self.pending[key] = self.pending.get(key, 0) + stats[key]
        if "audio_only_share" in stats:  # the census's view at this round: the latest value, not a sum
            self.pending["audio_only_share"] = stats["audio_only_share"]
        if "epsilon" in stats:  # privacy spent so far: the latest value, not a sum
            self.pending["epsilon"] = stats["epsilon"]
        for key in MEAN_STATS:  # per-round shares: their mean over the rounds the row stands for
            if key in stats:
                self.means.setdefault(key, []).append(stats[key])
        line = f"[phase {phase_index} {phase}] round {server_round}/{total}"
        if metrics:
            row = {"round": server_round, "phase_index": phase_index, "phase": phase, "seconds": round(seconds, 2)}
            row.update({k: v for k, v in metrics.items() if k in METRIC_COLUMNS or k.startswith(MISSING_PREFIX)})
            row.update(self.pending)
            row.update({key: sum(values) / len(values) for key, values in self.means.items()})
            self.pending, self.means = {}, {}
            self.metrics.append(row)
            for name, f1 in zip(self.classes, metrics.get("audio_per_class_f1", [])):
                self.per_class.append({"round": server_round, "class": name, "f1": f1})
            for name, f1 in zip(self.classes, metrics.get("dev_audio_per_class_f1", [])):
                self.per_class_dev.append({"round": server_round, "class": name, "f1": f1})
            write_csv(self.dir / "metrics.csv", self.metrics, metric_columns(self.metrics))
            write_csv(self.dir / "per_class_f1.csv", self.per_class, ["round", "class", "f1"])
            if self.per_class_dev:  # the same on the dev split: what selects classes without looking at test
                write_csv(self.dir / "per_class_f1_dev.csv", self.per_class_dev, ["round", "class", "f1"])
            line += f"  audio top-1 {metrics['audio_top1']:.3f}  AV top-1 {metrics['av_top1']:.3f}"
            if "dev_audio_top1" in metrics:
                line += f"  dev audio top-1 {metrics['dev_audio_top1']:.3f}"
            self._warn_collapse(row, metrics)
        if self.clients:
            write_csv(self.dir / "clients.csv", self.clients)
        write_csv(self.dir / "timeline.csv", self.timeline, TIMELINE_COLUMNS)
        failures = stats.get("failures", 0)
        if failures:
            line += f"  failures {failures}"
        if "epsilon" in stats:
            line += f"  epsilon {stats['epsilon']:.2f}"
        if self.curves:
            self.curves.round(server_round, phase_index, phase, metrics, stats, self.clients[self._curved :])
            self._curved = len(self.clients)
        log(INFO, "%s  %.1f s", line, seconds)

    def _warn_collapse(self, row: dict, metrics: dict) -> None:
        """One warning per model per run, at its first collapsed round (earlier rows, resumed ones included,
        tell whether it was already given)."""
        for model, name in MODEL_NAMES.items():
            if not is_collapsed(row, model) or any(is_collapsed(r, model) for r in self.metrics[:-1]):
                continue
            index = metrics.get(f"{model}_majority_class")
            label = self.classes[index] if isinstance(index, int) and 0 <= index < len(self.classes) else "?"
            log(
                WARNING,
                "round %d: the %s model predicts one class (%r) for %.0f %% of the test clips: collapsed; "
                "see docs/datasets.md 'Label skew'",
                row["round"],
                name,
                label,
                100 * row[f"{model}_majority_share"],
            )

    def checkpoint(self, name: str, state: dict, teacher: dict | None) -> None:
        payload = {
            "state": {g: [torch.from_numpy(a.copy()) for a in arrays] for g, arrays in state.items()},
            "teacher": None
            if teacher is None
            else {g: [torch.from_numpy(a.copy()) for a in arrays] for g, arrays in teacher.items()},
            "classes": self.classes,
        }
        atomic_write(self.dir / name, lambda p: torch.save(payload, p))

    def finish(
        self,
        metrics: dict,
        schedule: list[tuple[str, int]] | None = None,
        product_phases: tuple[str, ...] = (),
        sections: dict | None = None,
    ) -> None:
        """summary.json; ``schedule``: (phase, rounds) of every phase the method ran; ``product_phases``: those
        among which the headline best-dev round is chosen (:func:`protocol_summary`); ``sections``: the method's
        own entries (``privacy``: the (epsilon, delta) a differentially private run spent; ``missingness``: how
        video went missing; ``census``: how many nodes it asked)."""
        final = {k: v for k, v in metrics.items() if not isinstance(v, list)}
        first = self.metrics[0] if self.metrics else {}
        summary = {"final": final, "initial_audio_top1": first.get("audio_top1")}
        summary["phases"] = phase_summary(self.metrics)
        if schedule is not None:
            summary["schedule"] = [{"phase": name, "rounds": int(rounds)} for name, rounds in schedule]
        summary |= protocol_summary(self.metrics, product_phases)
        summary["collapse"] = collapse_summary(self.metrics)
        summary["partitions"] = self.partitions
        summary["attack"] = self.attack
        summary |= sections or {}
        write_csv(self.dir / "timeline.csv", self.timeline, TIMELINE_COLUMNS)
        write_json(self.dir / "summary.json", summary)
        (self.dir / RESUME_FILE).unlink(missing_ok=True)  # a finished run is not resumed
        if self.curves:
            self.curves.close()
        log(INFO, "run finished; results in %s", self.dir)


RESUME_FILE = "resume.pt"
RESUME_IGNORED = ("resume", "output-dir", "round-timeout", "device", "tensorboard")  # may differ in a resumed run


class ResumeError(ValueError):
    """A run folder cannot be resumed; the message says why."""


def load_resume_state(run_dir: Path, config: dict) -> dict:
    """The state saved after the last completed round of ``run_dir``, checked against ``config``."""
    run_dir = Path(run_dir)
    key = f"run config 'resume' = {str(run_dir)!r} is invalid"
    if (run_dir / "summary.json").is_file():
        raise ResumeError(f"{key}: that run finished (summary.json exists); nothing to resume")
    if not (run_dir / RESUME_FILE).is_file() or not (run_dir / "config.json").is_file():
        raise ResumeError(
            f"{key}: no {RESUME_FILE} and config.json there (a run folder keeps them after its first round)"
        )
    before = json.loads((run_dir / "config.json").read_text())
    changed = sorted(k for k in set(before) | set(config) if k not in RESUME_IGNORED and before.get(k) != config.get(k))
    if changed:
        diff = ", ".join(f"{k}: {before.get(k)!r} -> {config.get(k)!r}" for k in changed[:4])
        raise ResumeError(f"{key}: the run was made with other settings ({diff}); resume with the same run config")
    try:
        saved = torch.load(run_dir / RESUME_FILE, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same error for the user
        raise ResumeError(f"{key}: {RESUME_FILE} is unreadable ({type(exc).__name__})") from None
    return saved


def apply_checkpoint(model: torch.nn.Module, path: str | Path, groups: tuple[str, ...]) -> dict | None:
    """Load the groups of ``model.pt`` at ``path`` that ``groups`` names into ``model`` (run config
    'init-checkpoint'); returns its teacher groups. A checkpoint whose groups do not fit the model (another
    classifier, backbone or embedding size) is a ConfigError naming the key, not a failure inside a round."""
    from mirror_app.core.config import ConfigError
    from mirror_app.core.groups import set_groups

    state, teacher = load_checkpoint(path)
    try:
        set_groups(model, {g: a for g, a in state.items() if g in groups})
    except ValueError as exc:
        raise ConfigError(
            f"run config 'init-checkpoint' = {str(path)!r} does not fit this run's model ({exc}): give the "
            "classifier, classifier-heads, backbones and embed-dim of the run that wrote it"
        ) from None
    return teacher


def load_checkpoint(path: str | Path) -> tuple[dict, dict | None]:
    """``model.pt`` -> (state groups, teacher groups or None) as numpy arrays."""
    payload = torch.load(path, map_location="cpu", weights_only=True)

    def to_np(groups):
        return None if groups is None else {g: [t.numpy() for t in ts] for g, ts in groups.items()}

    return to_np(payload["state"]), to_np(payload.get("teacher"))
