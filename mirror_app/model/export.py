"""Export a finished run's audio-only model for devices without a camera.

    python -m mirror_app.model.export results/<run>              # -> results/<run>/export/
    python -m mirror_app.model.export results/<run> --out DIR    # what `make export RUN=... OUT=...` runs

Writes, into a temporary folder renamed into place once everything is checked:

    model.onnx      the audio model (audio encoder + the audio head the method evaluates), ONNX opset 17,
                    input ``features`` (batch, frames, mel bins), output ``probabilities`` (batch, classes);
                    batch is dynamic, and time too where the backbone allows it (not the ast* transformers,
                    whose patch grid is fixed)
    model.ts        the same model as TorchScript (torch.jit.trace)
    model.json      the front end (sample rate, fbank settings, frames, normalisation), the class names,
                    the method, and the export format version that `predict` checks
    MODEL_CARD.md   how the model was made and how good it is, with per_class_f1.png

At export time ONNX Runtime and PyTorch score a batch of the run's test features (and, where time is
dynamic, the same clips at another length): the largest difference in probabilities is printed, and the
export fails above 1e-4.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. The torch.export-based exporter
(``dynamo=True``) exports the ast* transformers as well, but specialises the time axis of tdnn-small to
the example's length (``MaxPool1d`` under torch.export), so the small default model would lose its dynamic
time axis; the TorchScript exporter keeps it, for both backbones, with the same parity.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

EXPORT_FORMAT = 1  # bumped when model.json or the model's input/output change; predict refuses others
OPSET = 17
PARITY_LIMIT = 1e-4
PARITY_BATCH = 16


class ExportError(ValueError):
    """The run cannot be exported; the message says why and what would work."""


class AudioModel(nn.Module):
    """features (batch, frames, mel bins), as the front end makes them -> class probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model.audio_logits(features), dim=1)


@dataclass
class Run:
    dir: Path
    config: dict
    summary: dict
    cfg: object  # RunConfig
    strategy: type  # PhasedStrategy subclass
    cache: object  # data.cache.FeatureCache
    state: dict


def load_run(run_dir: str | Path, data_dir: str = "") -> Run:
    """A finished run's config, summary, weights and dataset; an ExportError for anything missing."""
    from mirror_app.core.config import ConfigError, read_config
    from mirror_app.results import load_checkpoint
    from strategies import resolve_config

    run = Path(run_dir).expanduser().resolve()
    if not run.is_dir():
        raise ExportError(f"run folder {run_dir!r} does not exist (give a folder under results/)")
    for name in ("config.json", "summary.json", "model.pt"):
        if not (run / name).is_file():
            hint = " (the run did not finish; phase checkpoints are not exported)" if name != "config.json" else ""
            raise ExportError(f"run folder {run} has no {name}{hint}")
    config = read_config(run / "config.json")  # a key the run predates: the value it ran with
    # weights come from model.pt: files the run started from need not exist here
    raw = {**config, "audio-pretrained": "", "video-pretrained": "", "init-checkpoint": "", "resume": ""}
    if data_dir:
        raw["data-dir"] = data_dir
    try:
        cfg, strategy = resolve_config(raw)
    except ConfigError as exc:
        raise ExportError(f"{run}/config.json: {exc}") from None
    try:
        cache = cfg.load_dataset()
    except (FileNotFoundError, ValueError) as exc:
        raise ExportError(
            f"the run's dataset {cfg.dataset!r} is not under {cfg.data_path} ({exc}); "
            "give --data-dir where it was prepared"
        ) from None
    state, _ = load_checkpoint(run / "model.pt")
    return Run(run, config, json.loads((run / "summary.json").read_text()), cfg, strategy, cache, state)


def audio_model(run: Run) -> AudioModel:
    """The audio-only model the run's method evaluates, with the run's final weights."""
    from mirror_app.core.groups import set_groups
    from mirror_app.core.models import build_model

    cfg, cache = run.cfg, run.cache
    model = build_model(
        cache.num_classes,
        cache.audio.shape[1:],
        cache.video.shape[1:],
        cfg.audio_backbone,
        cfg.video_backbone,
        cfg.embed_dim,
        seed=cfg.seed,
        heads=cfg.head_kinds,  # a fixed classifier (an ETF, a frozen random head) is part of the exported graph
    )
    model = run.strategy.model_from_state(model, cfg, cache.classes, run.state)
    missing = [g for g in run.strategy.audio_groups if g not in run.state]
    if missing:
        raise ExportError(f"{run.dir}/model.pt has no groups {missing} of {run.strategy.__name__}'s audio model")
    set_groups(model, {g: run.state[g] for g in run.strategy.audio_groups})
    return AudioModel(model).eval()


def _onnx_export(model: AudioModel, example: torch.Tensor, path: Path, dynamic_time: bool) -> None:
    axes = {"features": {0: "batch", **({1: "frames"} if dynamic_time else {})}, "probabilities": {0: "batch"}}
    with warnings.catch_warnings():
        # the TorchScript-based exporter is the one that keeps tdnn-small's time axis (module docstring)
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["features"],
            output_names=["probabilities"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def parity(onnx_path: Path, model: AudioModel, batches: list[torch.Tensor]) -> float:
    """Largest |ONNX Runtime - PyTorch| over the probabilities of every batch."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for x in batches:
            ref = model(x).numpy()
            got = session.run(["probabilities"], {"features": x.numpy()})[0]
            worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def export(run_dir: str | Path, out: str | Path | None = None, data_dir: str = "", force: bool = False) -> dict:
    """Export a finished run (see the module docstring); returns what model.json holds plus the parity."""
    from data.features import FeatureSpec, front_end

    run = load_run(run_dir, data_dir)
    target = Path(out).expanduser().resolve() if out else run.dir / "export"
    if target.exists() and not force:
        raise ExportError(f"{target} exists; remove it or pass --force (make export ... FORCE=1) to replace it")
    model = audio_model(run)
    test = np.sort(run.cache.indices("test"))[:PARITY_BATCH]
    if test.size == 0:
        raise ExportError(f"the dataset of {run.dir} has no test clips to check the export with")
    example = torch.from_numpy(np.ascontiguousarray(run.cache.audio[test]))
    from mirror_app.core.backbones import FIXED_TIME_BACKBONES

    dynamic_time = run.cfg.audio_backbone not in FIXED_TIME_BACKBONES
    checks = [example]
    if dynamic_time:  # the same clips, a third longer (edge frames repeated)
        longer = example.shape[1] + max(1, example.shape[1] // 3)
        checks.append(
            torch.nn.functional.pad(example.transpose(1, 2), (0, longer - example.shape[1]), mode="replicate")
            .transpose(1, 2)
            .contiguous()
        )
    spec = FeatureSpec(**run.cache.meta["fingerprint"]["features"])
    label = run.strategy.display_name()
    meta = {
        "format": EXPORT_FORMAT,
        "method": label,
        "strategy": run.config["strategy"],
        "run": run.dir.name,
        "audio_backbone": run.cfg.audio_backbone,
        "input": {
            "name": "features",
            "shape": ["batch", "frames" if dynamic_time else spec.num_frames, spec.num_mel_bins],
            "dynamic_time": dynamic_time,
        },
        "output": {"name": "probabilities", "shape": ["batch", run.cache.num_classes]},
        "onnx_opset": OPSET,
        "front_end": front_end(spec, run.cache.meta.get("audio_norm")),
        "classes": run.cache.classes,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _onnx_export(model, example, tmp / "model.onnx", dynamic_time)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            traced = torch.jit.trace(model, example)
        traced.save(str(tmp / "model.ts"))
        worst = parity(tmp / "model.onnx", model, checks)
        ts = torch.jit.load(str(tmp / "model.ts"))
        with torch.no_grad():
            worst_ts = max(float((ts(x) - model(x)).abs().max()) for x in checks)
        meta["parity"] = {
            "clips": int(test.size),
            "lengths": [int(x.shape[1]) for x in checks],
            "onnxruntime_max_abs_diff": worst,
            "torchscript_max_abs_diff": worst_ts,
            "limit": PARITY_LIMIT,
        }
        if worst > PARITY_LIMIT or worst_ts > PARITY_LIMIT:
            raise ExportError(
                f"parity check failed: ONNX Runtime differs from PyTorch by {worst:.2e}, "
                f"TorchScript by {worst_ts:.2e} (limit {PARITY_LIMIT:g})"
            )
        (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        write_card(run, meta, tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    meta["dir"] = str(target)
    return meta


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f} %"


def write_card(run: Run, meta: dict, folder: Path) -> None:
    """MODEL_CARD.md and per_class_f1.png into ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mirror_app.results import MACHINE_KEYS

    s, cfg, cache = run.summary, run.cfg, run.cache
    metrics = pd.read_csv(run.dir / "metrics.csv") if (run.dir / "metrics.csv").is_file() else pd.DataFrame()
    last_round = int(metrics["round"].max()) if len(metrics) else s.get("last", {}).get("round", 0)
    per_class = pd.read_csv(run.dir / "per_class_f1.csv") if (run.dir / "per_class_f1.csv").is_file() else None
    if per_class is not None and len(per_class):
        final = per_class[per_class["round"] == per_class["round"].max()].sort_values("f1")
        fig, ax = plt.subplots(figsize=(7, 0.28 * len(final) + 1.2))
        ax.barh(final["class"], final["f1"], color="tab:blue")
        ax.set(
            xlim=(0, 1),
            xlabel=f"audio F1 on the test split (round {int(final['round'].iloc[0])})",
            title=f"{meta['method']}: per-class F1 of the exported model",
        )
        fig.tight_layout()
        fig.savefig(folder / "per_class_f1.png", dpi=110)
        plt.close(fig)
    parts = s.get("partitions") or {}
    phases = []
    start = 0
    for step in s.get("schedule") or []:  # the phases the run went through, as summary.json records them
        if step["rounds"] > 0:
            phases.append(f"{step['phase']} (rounds {start + 1}-{start + step['rounds']})")
            start += step["rounds"]
    mb = (metrics["bytes_to_clients"].sum() + metrics["bytes_from_clients"].sum()) / 1e6 if len(metrics) else 0.0
    rounds = max(last_round, 1)

    def row(name: str, d: dict | None, at: str) -> str:
        if not d:
            return f"| {name} | n/a | n/a | n/a | |"
        return (
            f"| {name} | {_pct(d.get('audio_top1'))} | {_pct(d.get('audio_top5'))} | "
            f"{_pct(d.get('audio_macro_f1'))} | {at} |"
        )

    best, last, mean5 = s.get("best_dev"), s.get("last"), s.get("last5_mean")
    federation = s.get("federation") or {}
    kind = {"deployment": "deployment (real SuperNodes)", "simulation": "simulated federation"}.get(
        federation.get("kind", ""), "federation (simulated or deployed: not recorded)"
    )
    encoders = federation.get("initial_encoders") or {}
    started = (
        f"the encoders started from {encoders['audio']} (audio) and {encoders['video']} (video)"
        if encoders
        else "what the encoders started from was not recorded (a run made before runs recorded it)"
    )
    synthetic = cfg.dataset == "embedded"
    fe = meta["front_end"]
    lines = [
        f"# Model card: {meta['method']} audio-only model",
        "",
        f"Exported from run `{run.dir.name}` by `python -m mirror_app.model.export` (format {meta['format']}).",
        "",
        "## What it is",
        f"- **Task**: audio classification into {len(meta['classes'])} classes, for devices without a camera.",
        f"- **Method**: {meta['method']} (`strategy = {meta['strategy']!r}`). The exported model is the audio model "
        f"this method evaluates: {run.strategy.audio_model_text}",
        f"- **Backbone**: `{cfg.audio_backbone}`, embedding {cfg.embed_dim}; weights of the last round "
        f"({last_round}); {started}.",
        f"- **Label-skew remedies**: classifier {cfg.classifier} on the "
        + " and ".join(f"{h} head" for h in ("audio", "fusion") if cfg.head_kinds[h] == cfg.classifier).replace(
            "audio head and fusion head", "audio and fusion heads"
        )
        + f", label loss {'restricted softmax' if cfg.restricted_softmax else cfg.loss_calibration}, aggregator "
        f"{cfg.aggregator} (a fixed classifier is part of `model.onnx`).",
        f"- **Files**: `model.onnx` (opset {meta['onnx_opset']}), `model.ts` (TorchScript), `model.json` "
        "(front end, classes).",
        f"- **Input**: `features` (batch, {meta['input']['shape'][1]}, {fe['num_mel_bins']}): Kaldi log-mel fbank "
        f"of mono {fe['sample_rate']} Hz audio, {fe['fbank']['frame_length_ms']:g} ms windows every "
        f"{fe['fbank']['frame_shift_ms']:g} ms, {fe['num_frames']} frames for a {fe['audio_seconds']:g} s clip"
        + (
            f", normalised with mean {fe['normalisation']['mean']:.4f} and std {fe['normalisation']['std']:.4f}"
            if fe["normalisation"]
            else ", not normalised (the backbone normalises)"
        )
        + ".",
        "- **Output**: `probabilities` (batch, classes), softmax over the classes of `model.json`.",
        "",
        "## Data and training",
        f"- **Dataset**: `{cfg.dataset}`"
        + (" (the embedded dataset: synthetic clips generated offline)" if synthetic else "")
        + f", fold {cache.fold}: {cache.indices('train').size} train / {cache.indices('dev').size} dev "
        f"(server-held) / {cache.indices('test').size} test clips.",
        f"- **Clients**: {parts.get('clients', 'n/a')} ({parts.get('audio_only', 'n/a')} audio-only, "
        f"{parts.get('audiovisual', 'n/a')} audiovisual), missing rate {cfg.missing_rate:g}, "
        f"{cfg.partitioner} partitions (Dirichlet alpha {cfg.dirichlet_alpha:g}), {cfg.clients_per_round} "
        "clients per round.",
        f"- **Rounds**: {', '.join(phases) or last_round}; {cfg.local_epochs} local epoch(s), batch "
        f"{cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g}, seed {cfg.seed}.",
        f"- **Bytes exchanged**: {mb:.1f} MB in all ({mb / rounds:.2f} MB per round, to and from the clients).",
        "",
        "## Evaluation (server-side, test split)",
        "",
        "| when | top-1 | top-5 | macro-F1 | |",
        "| --- | --- | --- | --- | --- |",
        row("last round (these weights)", last, f"round {last.get('round') if last else 'n/a'}"),
        row(
            f"mean of the last {mean5.get('rounds', 5) if mean5 else 5} evaluations",
            mean5,
            f"rounds {mean5.get('from_round')}-{mean5.get('to_round')}" if mean5 else "",
        ),
        row(
            "best dev round",
            best,
            f"round {best.get('round')}, chosen on the dev split"
            + (
                f" among the rounds of phase {best['within']}"
                if best.get("within", "all rounds") != "all rounds"
                else ""
            )
            if best
            else "no dev split",
        ),
        "",
        f"The best-dev row is the run's protocol headline; the weights exported are the last round's. Initial audio "
        f"top-1 (round 0): {_pct(s.get('initial_audio_top1'))}. Per-class F1: `per_class_f1.png`.",
        "",
        f"Export check: ONNX Runtime and PyTorch agree to {meta['parity']['onnxruntime_max_abs_diff']:.1e} "
        f"(TorchScript {meta['parity']['torchscript_max_abs_diff']:.1e}) on {meta['parity']['clips']} test "
        f"clips at lengths {meta['parity']['lengths']}.",
        "",
        "## Limits",
    ]
    if synthetic:
        lines.append(
            "- **The training data is synthetic** (the embedded dataset, generated offline: synthetic sounds "
            "mixed into noise). The model has never heard real recordings; do not use it on real audio "
            "except to try the tools."
        )
    lines += [
        f"- It knows only these {len(meta['classes'])} classes and always picks one of them: it has no "
        "'none of these' output.",
        f"- Clips are scored {fe['audio_seconds']:g} s at a time: `predict` crops or pads shorter files and averages "
        "windows over longer ones.",
        "- Collapse: "
        + (
            "the audio model predicted one class for most test clips at its last round."
            if (s.get("collapse") or {}).get("audio", {}).get("last_round_collapsed")
            else "no collapse of the audio model at its last round."
        ),
        f"- Federated: the numbers come from one seed of one {kind}; other seeds and partitions give other "
        "numbers (see docs/results/table1.md for the spread).",
        privacy_line(s.get("privacy")),
        secure_line(s.get("secure_aggregation")),
        attack_line(s.get("attack"), cfg.aggregator),
        "",
        "## Run config",
        "",
        "| key | value |",
        "| --- | --- |",
        *[f"| {k} | `{v}` |" for k, v in run.config.items() if k not in MACHINE_KEYS],
        "",
    ]
    (folder / "MODEL_CARD.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Export a finished run's audio-only model (ONNX, TorchScript, front end, model card)."
    )
    p.add_argument("run", help="the run folder (results/<timestamp>-<strategy>-run<id>)")
    p.add_argument("--out", default="", help="where to write (default: <run>/export)")
    p.add_argument("--data-dir", default="", help="where the run's dataset is prepared, if not the run's data-dir")
    p.add_argument("--force", action="store_true", help="replace an existing export folder")
    args = p.parse_args(argv)
    try:
        meta = export(args.run, args.out or None, args.data_dir, args.force)
    except ExportError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
    par = meta["parity"]
    print(f"exported {meta['method']} ({meta['audio_backbone']}, {len(meta['classes'])} classes) to {meta['dir']}")
    print(
        f"parity on {par['clips']} test clips, lengths {par['lengths']}: ONNX Runtime max abs diff "
        f"{par['onnxruntime_max_abs_diff']:.2e}, TorchScript {par['torchscript_max_abs_diff']:.2e} "
        f"(limit {par['limit']:g})"
    )
    print(
        f"time axis: {'dynamic' if meta['input']['dynamic_time'] else 'fixed'}; opset {meta['onnx_opset']}; "
        f"card: {meta['dir']}/MODEL_CARD.md"
    )
    return 0


def privacy_line(privacy: dict | None) -> str:
    """The model card's statement of the privacy guarantee (or of its absence)."""
    if not privacy:
        return "- Privacy: trained without differential privacy; the model can memorise details of clients' clips."
    if "reproducible" in str(privacy.get("noise", "")):
        return (
            f"- Privacy: none. {privacy['dp']} differential privacy was simulated with noise reproducible from the run "
            "seed (dp-insecure-seeded-noise): no privacy: the noise is reproducible, so anyone holding the run "
            f"config can remove it. The epsilon it would have had: {privacy['epsilon']:.2f}."
        )
    if privacy["dp"] == "local":
        return (
            f"- Privacy: local differential privacy against the server, (epsilon, delta) = "
            f"({privacy['epsilon_worst_client']:.2f}, {privacy['delta']:g}) for the client that released most often "
            f"({privacy['releases_worst_client']} updates), {privacy['epsilon_median_client']:.2f} for the median "
            f"client (noise multiplier {privacy['noise_multiplier']:g}, clipping norm {privacy['clipping_norm']:g}, "
            f"neighbouring relation {privacy['neighbouring']}: sensitivity {privacy['sensitivity']:g}; "
            f"{privacy['accountant']}), client-level, noise from the operating system's entropy."
        )
    how = (
        f"; sampling {privacy['sampling']}, neighbouring relation {privacy['neighbouring']} (sensitivity "
        f"{privacy['sensitivity']:g}), each group divided by {privacy['denominator']}"
        if "sampling" in privacy
        else ""
    )
    return (
        f"- Privacy: {privacy['dp']} differential privacy, (epsilon, delta) = ({privacy['epsilon']:.2f}, "
        f"{privacy['delta']:g}) after {privacy['rounds']} rounds (noise multiplier {privacy['noise_multiplier']:g}, "
        f"clipping norm {privacy['clipping_norm']:g}{how}; {privacy['accountant']}), client-level, noise from the "
        "operating system's entropy."
    )


def secure_line(secure: dict | None) -> str:
    """The model card's statement of what the server saw of the clients' updates."""
    if not secure:
        return "- Updates: the server saw each client's update of the groups it trained."
    parts = [
        f"- Updates: secure aggregation, {secure['protocol']}; each value clipped to +-{secure['clipping_range']:g} "
        f"and quantised to {secure['quantization_levels']} levels"
    ]
    if "clipped_share" in secure:
        parts.append(
            f"{secure['clipped_values']} values clipped in all ({100 * secure['clipped_share']:.4f} % of those sent)"
        )
    if "min_clients" in secure:
        skipped = ", ".join(f"{g} in {n} rounds" for g, n in (secure.get("skipped_rounds") or {}).items())
        parts.append(
            f"a group was updated only from at least {secure['min_clients']} contributors"
            + (f" (left untrained for want of them: {skipped})" if skipped else "")
        )
    return "; ".join(parts) + "."


def attack_line(attack: dict | None, aggregator: str) -> str:
    """The model card's statement of the simulated attackers the run was trained against."""
    if not attack:
        return f"- Attackers: none simulated; aggregator {aggregator}."
    return (
        f"- Attackers: {len(attack['partitions'])} of {attack['of']} partitions ran a simulated {attack['attack']} "
        f"attack ({attack.get('honoured_by', 'simulation')}); aggregator {aggregator}."
    )


if __name__ == "__main__":
    sys.exit(main())
