"""``make bench PAPER=1``: what the paper's setting (conf/paper.toml) costs, measured here and projected.

1. A small dataset at the paper's front end (128 mel bins, 5 s, 224 px; clips generated with data.media and
   prepared with data.prepare) runs the preset's encoders through ``flwr run`` for 2 rounds, one of each phase
   (modality-aware FL, distillation), on this machine: seconds per round, the clients' training seconds per
   clip, and the peak memory (PSS) of every process the SuperLink runs.
2. FLOPs of one clip, counted by ``torch.utils.flop_counter`` on the preset's model: a training step of each
   client task (train-av, train-audio, distill: forward and backward) and a server evaluation.
3. The full schedule (200 + 50 rounds, 10 of 100 clients, evaluation every ``eval-every`` rounds) on UCF101's
   size, projected from those FLOPs at an assumed GPU throughput (stated in the report), and from the seconds
   per clip measured here for this machine. Where a GPU is present, the run uses it and its figure stands
   beside the projection.

Pretrained weights do not change the cost: where the preset's named weights are not in their caches (an
offline machine), the run starts from random weights and the report says so.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "conf" / "paper.toml"
# UCF101's size (videos with an audio stream; the paper's Table 1 dataset), for the projection: 6,837 clips in
# 51 classes; fold 1 keeps about 70 % for training, of which run config dev-fraction goes to the server
UCF101_CLIPS, UCF101_TRAIN_SHARE = 6837, 0.7
# the assumed sustained throughput of one data-centre GPU on this training (fp32 weights, TF32 matmuls): about a
# quarter of an A100's 156 TFLOP/s TF32 peak, what small-batch ViT/ResNet training typically sustains
GPU_TFLOPS = 40.0


def clip_flops(cfg, shapes: tuple, num_classes: int) -> dict[str, float]:
    """FLOPs of one clip for each client task's training step (forward + backward) and for the server's
    evaluation of both models, on the run's model (random weights: the count does not depend on them)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from mirror_app.core.distillation import distillation_loss
    from mirror_app.core.models import build_model

    audio_shape, video_shape = shapes

    def make(seed: int):
        return build_model(
            num_classes, audio_shape, video_shape, cfg.audio_backbone, cfg.video_backbone, cfg.embed_dim,
            seed=seed, heads=cfg.head_kinds,
        )  # fmt: skip

    model, teacher = make(0), make(1)
    batch = 2
    audio, video = torch.randn(batch, *audio_shape), torch.randn(batch, *video_shape)
    labels = torch.zeros(batch, dtype=torch.long)

    def count(step) -> float:
        with FlopCounterMode(display=False) as counter:
            step()
        return counter.get_total_flops() / batch

    def train_av():
        F.cross_entropy(model.av_logits(audio, video), labels).backward()

    def train_audio():
        F.cross_entropy(model.audio_logits(audio), labels).backward()

    def distill():
        with torch.no_grad():
            target = teacher.av_logits(audio, video)
        distillation_loss(model.audio_logits(audio), target, labels, cfg.temperature).backward()

    def evaluate():
        with torch.no_grad():
            model.audio_logits(audio)
            model.av_logits(audio, video)

    model.train()
    out = {"train-av": count(train_av), "train-audio": count(train_audio), "distill": count(distill)}
    model.eval()
    out["evaluation"] = count(evaluate)
    return out


def projection(cfg, flops: dict[str, float], train_clips: int, eval_clips: int, tflops: float) -> dict:
    """FLOPs and GPU hours of the whole schedule: per round ``clients-per-round`` clients of
    ``train_clips / 100`` clips each (a (1 - missing rate) share audiovisual in phase 1; all audiovisual in
    phase 2), ``local-epochs`` passes, and the evaluation of ``eval_clips`` every ``eval-every`` rounds."""
    clients = 100
    per_client = train_clips / clients * cfg.local_epochs
    phase1 = (
        cfg.clients_per_round
        * per_client
        * ((1 - cfg.missing_rate) * flops["train-av"] + cfg.missing_rate * flops["train-audio"])
    )
    phase2 = cfg.clients_per_round * per_client * flops["distill"]
    rounds = cfg.num_server_rounds + cfg.distill_rounds
    evaluations = rounds // cfg.eval_every + 1
    total = (
        cfg.num_server_rounds * phase1 + cfg.distill_rounds * phase2 + evaluations * eval_clips * flops["evaluation"]
    )
    return {
        "clips_per_client": per_client / cfg.local_epochs,
        "phase1_round_tflop": phase1 / 1e12,
        "phase2_round_tflop": phase2 / 1e12,
        "evaluation_tflop": eval_clips * flops["evaluation"] / 1e12,
        "evaluations": evaluations,
        "total_pflop": total / 1e15,
        "gpu_tflops_assumed": tflops,
        "gpu_hours": total / (tflops * 1e12) / 3600,
    }


def paper_bench(out: Path, clips_per_class: int = 8, timeout: float = 3600, log=print) -> dict:
    import torch

    from data.features import FeatureSpec
    from data.media import make_manifest
    from data.prepare import prepare
    from mirror_app.core.config import RunConfig
    from mirror_app.core.pretrained import PretrainedError, fetch, is_name
    from mirror_app.deploy.launch import Monitor, SuperLink, interrupt_on_signals
    from mirror_app.deploy.preflight import pairs_to_values, parse_pairs
    from mirror_app.results import atomic_write
    from mirror_app.studies.runs import merged_run_config

    pairs = parse_pairs(merged_run_config(str(PRESET), ""))
    paper = RunConfig.from_dict(pairs_to_values(pairs))
    notes = []
    for key in ("audio-pretrained", "video-pretrained"):
        value = getattr(paper, key.replace("-", "_"))
        if is_name(value):
            try:
                fetch(value, key)
            except PretrainedError:
                pairs[key] = "'none'"
                notes.append(f"{key} {value!r} is not in its cache here: this run starts from random weights")
    spec = FeatureSpec(num_mel_bins=128, audio_seconds=5.0, image_size=224)  # make prepare's defaults
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-paper-", dir=out))
    report: dict = {
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
        + (f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"),
        "preset": str(PRESET.relative_to(ROOT)),
        "notes": notes,
    }
    try:
        with interrupt_on_signals():
            log(f"bench paper: preparing {3 * clips_per_class} generated clips at 128 mel bins, 5 s, 224 px")
            src = make_manifest(work / "clips", per_class=clips_per_class)
            cache = prepare(
                "manifest", src, work / "data", spec, workers=min(2, os.cpu_count() or 1), log=lambda m: None
            )
            nodes = 3
            run_pairs = pairs | {
                "dataset": "'manifest'",
                "data-dir": f"'{work / 'data'}'",
                "output-dir": f"'{work / 'runs'}'",
                "num-server-rounds": "1",
                "distill-rounds": "1",
                "clients-per-round": str(nodes),
                "missing-rate": "0.34",
                "dirichlet-alpha": "100.0",
                "eval-every": "1",
                "dev-fraction": "0.0",
            }
            config = " ".join(f"{k}={v}" for k, v in run_pairs.items())
            cfg = RunConfig.from_dict(pairs_to_values(run_pairs))
            log("bench paper: flwr run, 3 SuperNodes, 1 + 1 rounds of the paper's encoders")
            with SuperLink(work / "flwr-home") as link:
                monitor = Monitor(link.proc.pid)
                monitor.start()
                try:
                    res = link.flwr_run(
                        ROOT,
                        "--federation-config",
                        f"num-supernodes={nodes} client-resources-num-cpus=1",
                        "--run-config",
                        config,
                        timeout=timeout,
                        log_file=work / "run.log",
                    )
                finally:
                    monitor.done.set()
                    monitor.join()
            runs = [p for p in (work / "runs").glob("*-run*") if (p / "summary.json").is_file()]
            if res.returncode != 0 or len(runs) != 1:
                raise RuntimeError("the paper-setting run did not finish:\n" + (work / "run.log").read_text()[-3000:])
            metrics = pd.read_csv(runs[0] / "metrics.csv").set_index("round")
            clients = pd.read_csv(runs[0] / "clients.csv")
            ok = clients[clients["status"] == "ok"]
            seconds = metrics["seconds"].diff().dropna()
            per_clip = ok["train_seconds"] / ok["num_examples"]
            report["measured"] = {
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "clips": len(cache),
                "round_s": {int(r): float(s) for r, s in seconds.items()},
                "train_s_per_clip": {t: float(per_clip[ok["task"] == t].median()) for t in sorted(set(ok["task"]))},
                "peak_pss_mib": monitor.peak_pss / 2**20,
                "peak_rss_mib": monitor.peak_rss / 2**20,
            }
            log("bench paper: counting FLOPs per clip")
            flops = clip_flops(cfg, (cache.audio.shape[1:], cache.video.shape[1:]), 51)
            report["flops_per_clip_gflop"] = {k: v / 1e9 for k, v in flops.items()}
            train = int(UCF101_CLIPS * UCF101_TRAIN_SHARE * (1 - paper.dev_fraction))
            evaluated = UCF101_CLIPS - train
            report["projection"] = projection(paper, flops, train, evaluated, GPU_TFLOPS)
            report["projection"]["dataset"] = (
                f"UCF101 with audio ({UCF101_CLIPS} clips; about {train} train clips, {evaluated} test + dev clips)"
            )
            measured = report["measured"]["train_s_per_clip"]
            if "train-av" in measured:  # this machine's rate on the largest training step, applied to the schedule
                rate = flops["train-av"] / measured["train-av"]
                report["measured"]["gflops_per_client"] = rate / 1e9
                report["projection"]["this_machine_hours"] = report["projection"]["total_pflop"] * 1e15 / rate / 3600
    finally:
        shutil.rmtree(work, ignore_errors=True)
    atomic_write(out / "paper.json", lambda p: Path(p).write_text(json.dumps(report, indent=2, default=float)))
    atomic_write(out / "paper.md", lambda p: Path(p).write_text(markdown(report)))
    return report


def markdown(report: dict) -> str:
    m, f, p = report["measured"], report["flops_per_clip_gflop"], report["projection"]
    lines = [
        f"# The paper's setting ({report['preset']}): what it costs",
        "",
        f"Machine: {report['machine']}. " + " ".join(report.get("notes", [])),
        "",
        f"Measured: `flwr run` of the preset's encoders on {m['clips']} generated clips at 128 mel bins x 5 s and "
        f"224 px, 3 clients a round, one round of each phase, on the {m['device']}.",
        "",
        "| measure | figure |",
        "| --- | --- |",
    ]
    for r, s in sorted((int(r), s) for r, s in m["round_s"].items()):  # keys are strings once read from JSON
        lines.append(f"| round {r} ({'modality-aware FL' if r == 1 else 'distillation'}), seconds | {s:.1f} |")
    for task, s in m["train_s_per_clip"].items():
        lines.append(f"| client training, seconds per clip, `{task}` | {s:.2f} |")
    lines += [
        f"| peak memory of every process (PSS / RSS) | {m['peak_pss_mib']:.0f} / {m['peak_rss_mib']:.0f} MiB |",
        "",
        "FLOPs of one clip (`torch.utils.flop_counter`, forward + backward for training):",
        "",
        "| step | GFLOP per clip |",
        "| --- | --- |",
        *[f"| {k} | {v:.1f} |" for k, v in f.items()],
        "",
        f"Projection of the full schedule on {p['dataset']}: {p['clips_per_client']:.0f} clips per client, "
        f"{p['evaluations']} evaluations.",
        "",
        "| measure | figure |",
        "| --- | --- |",
        f"| a phase-1 round (10 clients) | {p['phase1_round_tflop']:.1f} TFLOP |",
        f"| a phase-2 round (10 clients) | {p['phase2_round_tflop']:.1f} TFLOP |",
        f"| one evaluation | {p['evaluation_tflop']:.1f} TFLOP |",
        f"| the whole schedule | {p['total_pflop']:.2f} PFLOP |",
        f"| one GPU at an assumed {p['gpu_tflops_assumed']:g} TFLOP/s sustained | {p['gpu_hours']:.1f} hours |",
    ]
    if "this_machine_hours" in p:
        lines.append(
            f"| this machine, one step after another at the {m['gflops_per_client']:.0f} GFLOP/s a client reached "
            f"above (`train-av`) | {p['this_machine_hours']:.0f} hours |"
        )
    lines += [
        "",
        f"The GPU figure assumes {p['gpu_tflops_assumed']:g} TFLOP/s sustained (about a quarter of an A100's TF32 "
        "peak) and counts compute only (no data loading, no Flower round trips): a lower bound, projected, not "
        "measured, unless the run above says it ran on cuda. Evaluation of the test and dev clips every "
        "`eval-every` rounds is "
        f"{100 * p['evaluations'] * p['evaluation_tflop'] / (1000 * p['total_pflop']):.0f} % of the FLOPs.",
    ]
    return "\n".join(lines) + "\n"
