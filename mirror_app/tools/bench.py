"""``make bench``: what Flower and Ray add to the training itself, and how the app scales.

One invocation measures, side by side on this machine, so that ratios are comparable:

1. rounds: per-round wall time of a ``flwr run .`` simulation (modality-aware FL rounds,
   default settings) against a bare in-process loop doing the same local training,
   aggregation and evaluation with plain PyTorch and NumPy (no Flower, no Ray);
2. start-up: the SuperLink on its own, and ``flwr run`` until the initial evaluation
   (SuperExec, Ray, ServerApp, dataset, model), and the first round (Ray workers start);
3. client set-up: time each ClientApp call spends making its client (the dataset and models
   are built once per worker and reused), against the client's training time;
4. memory: peak proportional set size (PSS: shared memory-mapped pages counted once) and RSS
   of everything the SuperLink runs, with 10, 100 and 1000 partitions (IID partitions, 2 short
   rounds each: the embedded train split cannot make 1000 non-empty Dirichlet partitions);
5. preprocessing: videos per second of ``data.prepare`` on generated clips, against
   decoding the same audio and middle frame with the ffmpeg command line (imageio-ffmpeg);
6. bytes on the wire per round and per client kind (from ``clients.csv``).

Writes ``bench.json`` and ``bench.md`` to ``--out`` (each written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
TARGETS = {"round_ratio": 1.05, "first_eval_s": 10.0, "setup_share": 0.05, "memory_ratio": 1.5, "deploy_ratio": 1.2}
# where a round's seconds go: (step, from, to), times from the run's timeline.csv and clients.csv
# ("first-start"/"last-finish": the round's first client call starting, its last one finishing)
ROUND_STEPS = [
    ("Flower, between rounds", "recorded@prev", "round-start"),
    ("strategy: choose clients, make instructions", "round-start", "instructions-made"),
    ("to the first client call (Flower: queue, dispatch)", "instructions-made", "first-start"),
    ("client calls, first start to last finish", "first-start", "last-finish"),
    ("last client to the strategy (Flower: reply, grid pull)", "last-finish", "replies-in"),
    ("aggregation", "replies-in", "aggregated"),
    ("evaluation (test and dev splits)", "aggregated", "evaluated"),
    ("records (CSV files, resume state)", "evaluated", "recorded"),
]
# where the seconds before the first evaluation go (round -1 of timeline.csv, then round 0)
STARTUP_STEPS = [
    ("flwr run to the ServerApp's process (FAB, SuperLink, SuperExec launch)", "flwr-run", "process-started"),
    ("imports: interpreter, Flower, torch, the app (Ray starts alongside)", "process-started", "app-imported"),
    ("Flower: run, FAB and context for the ServerApp", "app-imported", "components-start"),
    ("run config check", "components-start", "config-checked"),
    ("dataset (memory-mapped feature caches)", "config-checked", "dataset-loaded"),
    ("models, pretrained weights, strategy", "dataset-loaded", "strategy-built"),
    ("initial evaluation and its records", "strategy-built", "recorded@0"),
]


class BenchError(ValueError):
    """The benchmark was asked for something it cannot run."""


# ------------------------------------------------------------------------ bare loop
def bare_loop(cfg, num_partitions: int, rounds: int) -> list[dict]:
    """Per round of modality-aware FedAvg with no Flower and no Ray: the project's own clients (their ``fit``,
    the same local training, seeds and settings) called one after the other in this process, a NumPy weighted
    mean per parameter group, and the same evaluation. Seconds of the round and of its training, aggregation
    and evaluation."""
    from clients import CLIENT_KINDS, Workspace
    from data.partition import AUDIO, get_partition
    from mirror_app.core.evaluation import Evaluator
    from mirror_app.core.groups import AUDIO_MODEL, AV_MODEL, GROUPS, flatten, get_groups, unflatten
    from mirror_app.core.models import build_model
    from mirror_app.core.training import resolve_device
    from strategies import resolve_config
    from strategies.census import draw_clients

    _, strategy_cls = resolve_config(cfg.to_dict())
    cache = cfg.load_dataset()
    shapes = (cache.audio.shape[1:], cache.video.shape[1:])
    device = resolve_device(cfg.device)

    def make(seed=None):
        return build_model(cache.num_classes, *shapes, cfg.audio_backbone, cfg.video_backbone, cfg.embed_dim, seed=seed)

    state = dict(get_groups(make(cfg.seed), GROUPS))
    ws = Workspace(cache=cache, model=make().to(device), teacher=make().to(device), device=device)
    evaluator = Evaluator(make(), cache, device, cfg.eval_missing_shares)
    parts = [get_partition(*cfg.partition_args(str(cache.path), pid, num_partitions)) for pid in range(num_partitions)]
    clients = [
        CLIENT_KINDS[part.modality](partition=part, workspace=ws, settings=cfg, tasks=strategy_cls.client_tasks)
        for part in parts
    ]
    times = []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        contributions: dict[str, list] = {}
        for client in draw_clients(cfg.seed, r, clients, cfg.clients_per_round):  # the strategy's clients of round r
            audio_only = client.modality == AUDIO
            groups = AUDIO_MODEL if audio_only else AV_MODEL
            task = "train-audio" if audio_only else "train-av"
            config = {"task": task, "groups": ",".join(groups), "server-round": r}
            arrays, examples, _ = client.fit(flatten(state, groups), config)
            for g, values in unflatten(arrays, list(groups), [len(state[g]) for g in groups]).items():
                contributions.setdefault(g, []).append((values, examples))
        t1 = time.perf_counter()
        for g, contribs in contributions.items():
            total = sum(n for _, n in contribs)
            state[g] = [
                sum(arrays[i] * (n / total) for arrays, n in contribs).astype(state[g][i].dtype)
                for i in range(len(state[g]))
            ]
        t2 = time.perf_counter()
        evaluator({g: state[g] for g in AUDIO_MODEL}, {g: state[g] for g in AV_MODEL})
        t3 = time.perf_counter()
        times.append({"round_s": t3 - t0, "train_s": t1 - t0, "aggregate_s": t2 - t1, "evaluate_s": t3 - t2})
    return times


# ----------------------------------------------------------------------- simulation
def simulate(link, out_dir: Path, num_supernodes: int, run_config: str, timeout: float, federation: str = "") -> dict:
    """One ``flwr run .`` on ``link``: its run folder, metrics and clients, peak memory, when it was launched."""
    from mirror_app.tools.launch import Monitor

    out_dir.mkdir(parents=True, exist_ok=True)
    monitor = Monitor(link.proc.pid)
    monitor.start()
    t0, started_at = time.perf_counter(), time.time()
    try:
        res = link.flwr_run(
            ROOT,
            "--federation-config",
            f"num-supernodes={num_supernodes} {federation}".strip(),
            "--run-config",
            f"output-dir='{out_dir}' {run_config}",
            timeout=timeout,
            log_file=out_dir.parent / f"{out_dir.name}.log",
        )
    finally:
        monitor.done.set()
        monitor.join()
    wall = time.perf_counter() - t0
    runs = [p for p in out_dir.iterdir() if (p / "summary.json").is_file()]
    if res.returncode != 0 or len(runs) != 1:
        log = (out_dir.parent / f"{out_dir.name}.log").read_text()[-3000:]
        raise RuntimeError(f"flwr run with {num_supernodes} SuperNodes did not finish:\n{log}")
    metrics = pd.read_csv(runs[0] / "metrics.csv")
    return {
        "wall": wall,
        "run_dir": runs[0],
        "flwr_run_at": started_at,
        "metrics": metrics,
        "clients": pd.read_csv(runs[0] / "clients.csv"),
        "peak_pss": monitor.peak_pss,
        "peak_rss": monitor.peak_rss,
    }


def run_timeline(run_dir: Path) -> pd.DataFrame:
    """One row per round (0, 1, ...) of a finished run: the time of each timeline.csv event, its first client
    call's start and last one's finish (clients.csv), and the previous round's ``recorded`` time."""
    timeline = pd.read_csv(run_dir / "timeline.csv")
    wide = timeline[timeline["round"] >= 0].pivot_table(index="round", columns="event", values="at", aggfunc="last")
    clients = pd.read_csv(run_dir / "clients.csv")
    calls = clients[clients["status"] == "ok"].groupby("round")
    wide["first-start"], wide["last-finish"] = calls["started_at"].min(), calls["finished_at"].max()
    wide["recorded@prev"] = wide["recorded"].shift(1)
    return wide


def round_breakdown(run_dir: Path, first: int, last: int) -> dict[str, float]:
    """Median seconds of each of ROUND_STEPS over rounds ``first``..``last``, and of the whole round
    (``recorded`` to ``recorded``)."""
    wide = run_timeline(run_dir).loc[first:last]
    out = {name: float((wide[b] - wide[a]).median()) for name, a, b in ROUND_STEPS}
    out["round"] = float((wide["recorded"] - wide["recorded@prev"]).median())
    return out


def startup_breakdown(run_dir: Path, flwr_run_at: float) -> dict[str, float]:
    """Seconds of each of STARTUP_STEPS (``flwr run`` launched at ``flwr_run_at``, wall clock), the first
    evaluation's time after ``flwr run``, and round 1 until its instructions (Ray workers start; the
    strategy's census asks every node for its modality)."""
    timeline = pd.read_csv(run_dir / "timeline.csv")
    at = {e: float(t) for e, t in timeline[timeline["round"] == -1][["event", "at"]].itertuples(index=False)}
    wide = run_timeline(run_dir)
    at["flwr-run"], at["recorded@0"] = flwr_run_at, float(wide.loc[0, "recorded"])
    out = {name: at[b] - at[a] for name, a, b in STARTUP_STEPS}
    out["first evaluation after flwr run"] = at["recorded@0"] - flwr_run_at
    out["round 1 to its instructions (Ray workers start, modality census)"] = float(
        wide.loc[1, "instructions-made"] - wide.loc[1, "round-start"]
    )
    return out


def round_seconds(metrics: pd.DataFrame) -> pd.Series:
    """Seconds each round took, from metrics.csv's cumulative ``seconds`` (index: round)."""
    m = metrics.set_index("round")["seconds"].sort_index()
    return m.diff().dropna()


# --------------------------------------------------------------------- preprocessing
def make_clips(root: Path, count: int, seconds: float, size: tuple[int, int], fps: int) -> list[Path]:
    """``count`` clips (MPEG-4 + MP3 in AVI, like UCF101) under ``root``."""
    from data.media import write_video

    return [write_video(root / f"clip{i:04d}.avi", i % 4, seconds=seconds, size=size, fps=fps) for i in range(count)]


def write_manifest(src: Path, clips: list[Path]) -> Path:
    """A manifest over ``clips`` (>= 8): 4 labels, 1 clip in 4 for test, every label in train."""
    rows = ["label,video,split"] + [
        f"class{i % 4},{clip},{'test' if i % 8 >= 6 else 'train'}" for i, clip in enumerate(clips)
    ]
    src.mkdir(parents=True, exist_ok=True)
    (src / "manifest.csv").write_text("\n".join(rows) + "\n")
    return src


def ffmpeg_decode(clips: list[Path], seconds: float, audio_seconds: float, image_size: int, workers: int) -> float:
    """Seconds for the ffmpeg CLI to decode what preprocessing needs from each clip: the first
    ``audio_seconds`` of audio as 16 kHz mono float PCM, and the middle frame scaled to
    ``image_size`` squared RGB (one ffmpeg process per clip, ``workers`` at a time)."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()

    def one(clip: Path) -> None:
        cmd = [
            exe,
            "-v",
            "error",
            "-nostdin",
            "-i",
            str(clip),
            "-map",
            "0:a:0",
            "-t",
            str(audio_seconds),
            "-ac",
            "1",
            "-ar",
            "16000",
            "-f",
            "f32le",
            "-y",
            "/dev/null",
            "-map",
            "0:v:0",
            "-ss",
            str(seconds / 2),
            "-frames:v",
            "1",
            "-s",
            f"{image_size}x{image_size}",
            "-pix_fmt",
            "rgb24",
            "-f",
            "rawvideo",
            "-y",
            "/dev/null",
        ]
        subprocess.run(cmd, check=True, capture_output=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, clips))
    return time.perf_counter() - t0


def preprocessing(work: Path, count: int, workers: int, seconds: float = 4.0) -> dict:
    """``data.prepare`` on ``count`` generated clips (worker start-up included), and the same per-clip
    work (decode, fbank, resize) in this process once warm, which is the rate a long job settles at."""
    import torch

    from data.features import FeatureSpec
    from data.prepare import features, prepare
    from data.sources import Item

    clips = make_clips(work / "clips", count, seconds, (320, 240), 25)
    spec = FeatureSpec(num_mel_bins=128, audio_seconds=5.0, image_size=224)
    src = write_manifest(work / "src", clips)
    t0 = time.perf_counter()
    prepare("manifest", src, work / "data", spec=spec, workers=workers, log=lambda *a, **k: None)
    total = time.perf_counter() - t0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a preprocessing worker
    try:
        items = [Item(key=str(c), label="x", splits=(0,), video=str(c)) for c in clips]
        features(items[0], spec)  # warm-up
        t0 = time.perf_counter()
        for item in items[1:]:
            features(item, spec)
        per_worker = (len(items) - 1) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    ref = ffmpeg_decode(clips, seconds, spec.audio_seconds, spec.image_size, workers)
    return {
        "videos": count,
        "workers": workers,
        "clip": f"{seconds:g} s, 320x240, 25 fps, MPEG-4 + MP3",
        "prepare_videos_per_s": count / total,
        "prepare_steady_videos_per_s": per_worker * workers,
        "ffmpeg_cli_videos_per_s": count / ref,
        "ratio_prepare_over_ffmpeg": (count / total) / (count / ref),
        "ratio_steady_over_ffmpeg": per_worker * workers / (count / ref),
    }


# ------------------------------------------------------------------------- the report
def bytes_per_kind(clients: pd.DataFrame) -> list[dict]:
    ok = clients[clients["status"] == "ok"]
    table = ok.groupby(["phase", "modality", "task"])[["bytes_received", "bytes_sent"]].mean().reset_index()
    return table.to_dict("records")


def setup_cost(clients: pd.DataFrame) -> dict:
    ok = clients[clients["status"] == "ok"]
    warm, cold = ok[ok["workspace_built"] == 0], ok[ok["workspace_built"] == 1]
    return {
        "calls": int(len(ok)),
        "workspace_builds": int(len(cold)),
        "setup_s_mean": float(warm["setup_seconds"].mean()),
        "train_s_mean": float(warm["train_seconds"].mean()),
        "setup_share": float((warm["setup_seconds"] / (warm["setup_seconds"] + warm["train_seconds"])).mean()),
        "first_call_setup_s": float(cold["setup_seconds"].mean()) if len(cold) else float("nan"),
    }


def import_seconds(module: str, repeats: int = 3) -> dict:
    """Median seconds a fresh interpreter takes to start, and to import ``module`` (what a deployed SuperNode
    pays per message: since Flower 1.21 it starts a ClientApp process for every message)."""

    def run(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
        return time.perf_counter() - t0

    bare = float(np.median([run("pass") for _ in range(repeats)]))
    full = float(np.median([run(f"import {module}") for _ in range(repeats)]))
    return {"interpreter_s": bare, "import_s": full - bare}


def cold_call_seconds(run_config: str, partitions: int, threads: int) -> dict:
    """``python -m mirror_app.cold_client`` (a fresh interpreter, as a deployed SuperNode's ClientApp process),
    and what importing torch._dynamo costs after torch. The first training call pays torch's first-use costs
    (its optimiser imports torch._dynamo), which every message pays when Flower starts a process per message."""
    cmd = [sys.executable, "-m", "mirror_app.cold_client", run_config, "1", str(partitions), str(threads)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"the cold client call failed: {res.stderr[-1500:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    torch_only, dynamo = import_seconds("torch"), import_seconds("torch, torch._dynamo")
    out["dynamo_import_s"] = dynamo["import_s"] - torch_only["import_s"]
    return out


def deployment_rounds(work: Path, nodes: int, rounds: int, run_config: str, timeout: float, log=print) -> dict:
    """The same clients (``nodes`` partitions, one of them audio-only, all of them every round) and rounds as a
    ``flwr run`` simulation and as ``make deploy-local`` (a real SuperLink and SuperNodes on loopback): median
    round time of rounds 2..``rounds`` for each, and where a deployed round goes."""
    from mirror_app.tools.deploy import deploy, threads_per_node
    from mirror_app.tools.launch import SuperLink, with_defaults

    config = with_defaults(
        run_config,
        {
            "num-server-rounds": str(rounds),
            "distill-rounds": "0",
            "eval-every": "1",
            "clients-per-round": str(nodes),
            "missing-rate": f"{1 / nodes:.4f}",
        },
    )
    log(f"bench: {nodes} clients, {rounds} rounds simulated")
    with SuperLink(work / "sim-home") as link:
        sim = simulate(link, work / "dep-sim", nodes, config, timeout, "client-resources-num-cpus=1")
    log(f"bench: the same deployed (make deploy-local, {nodes} SuperNodes)")
    run = deploy(nodes, 1, config, work / "dep", home=work / "dep-home", log=lambda *a: None)
    dep_metrics, dep_clients = pd.read_csv(run / "metrics.csv"), pd.read_csv(run / "clients.csv")
    sim_r = round_seconds(sim["metrics"]).loc[2:rounds]
    dep_r = round_seconds(dep_metrics).loc[2:rounds]
    ok = dep_clients[(dep_clients["status"] == "ok") & (dep_clients["round"] >= 2)]
    per_round = ok.groupby("round")
    imports = import_seconds("mirror_app.client_app")
    cold = cold_call_seconds(config, nodes, threads_per_node(nodes))
    train = float(per_round["train_seconds"].max().median())  # clients train in parallel, one per SuperNode
    setup = float(per_round["setup_seconds"].max().median())
    sim_ok = sim["clients"][(sim["clients"]["status"] == "ok") & (sim["clients"]["round"] >= 2)]
    dep_s, sim_s = float(dep_r.median()), float(sim_r.median())
    return {
        "nodes": nodes,
        "rounds": rounds,
        "sim_round_s": sim_s,
        "deploy_round_s": dep_s,
        "ratio": dep_s / sim_s,
        "sim_rounds_s": sim_r.tolist(),
        "deploy_rounds_s": dep_r.tolist(),
        "deploy_train_s": train,
        "sim_train_s": float(sim_ok.groupby("round")["train_seconds"].max().median()),
        "deploy_setup_s": setup,
        "deploy_workspace_builds": int(ok["workspace_built"].sum()),
        "deploy_calls": int(len(ok)),
        "clientapp_interpreter_s": imports["interpreter_s"],
        "clientapp_import_s": imports["import_s"],
        "cold_call": cold,
        "sim_steps": round_breakdown(sim["run_dir"], 2, rounds),
        "deploy_steps": round_breakdown(run, 2, rounds),
    }


def gpu_packing(work: Path, num_supernodes: int, rounds: int, run_config: str, timeout: float, log=print) -> dict:
    """Clients per GPU (client-resources-num-gpus 1, 0.5, 0.25): median round time and GPU utilisation (sampled
    with nvidia-smi) of a short simulation with device=cuda. On a machine without a GPU: one line, skipped."""
    import torch

    from mirror_app.tools.launch import SuperLink, with_defaults

    if not torch.cuda.is_available():
        return {"skipped": "no GPU on this machine (torch.cuda.is_available() is False): GPU packing not measured"}
    config = with_defaults(
        run_config, {"num-server-rounds": str(rounds), "distill-rounds": "0", "eval-every": "1", "device": "'cuda'"}
    )
    rows = []
    for share in (1.0, 0.5, 0.25):
        log(f"bench: GPU packing, client-resources-num-gpus={share}")
        samples: list[tuple[float, float]] = []
        done = threading.Event()

        def sample(samples=samples, done=done) -> None:
            while not done.is_set():
                res = subprocess.run(
                    [
                        "nvidia-smi",
                        "--query-gpu=utilization.gpu,memory.used",
                        "--format=csv,noheader,nounits",
                        "--id=0",
                    ],
                    capture_output=True,
                    text=True,
                )
                if res.returncode == 0 and res.stdout.strip():
                    util, mem = (float(x) for x in res.stdout.strip().split(","))
                    samples.append((util, mem))
                done.wait(0.5)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            with SuperLink(work / f"gpu-home-{share}") as link:
                run = simulate(
                    link,
                    work / f"gpu{share}",
                    num_supernodes,
                    config,
                    timeout,
                    f"client-resources-num-cpus=1 client-resources-num-gpus={share}",
                )
        finally:
            done.set()
            thread.join()
        per_round = round_seconds(run["metrics"]).loc[2:rounds]
        rows.append(
            {
                "num_gpus_per_client": share,
                "clients_per_gpu": int(round(1 / share)),
                "round_s": float(per_round.median()),
                "gpu_util_mean_pct": float(np.mean([u for u, _ in samples])) if samples else float("nan"),
                "gpu_mem_peak_mib": float(max((m for _, m in samples), default=float("nan"))),
            }
        )
    return {"device": torch.cuda.get_device_name(0), "rows": rows}


def _steps_table(title: str, columns: list[str], rows: list[tuple[str, list]]) -> list[str]:
    def cell(x) -> str:
        return "" if x is None or x != x else f"{x:.3f} s"  # x != x: NaN

    out = ["", title, "", "| step | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    return out + [f"| {name} | " + " | ".join(cell(x) for x in values) + " |" for name, values in rows]


def steps_tables(report: dict) -> list[str]:
    """Where a simulated round, the start-up and a deployed round go (from the runs' timeline.csv)."""
    lines: list[str] = []
    r = report["rounds"]
    if "flwr_steps" in r:
        f, b = r["flwr_steps"], r["bare_steps"]
        bare = {"client calls, first start to last finish": b["train_s"], "aggregation": b["aggregate_s"]}
        bare["evaluation (test and dev splits)"] = b["evaluate_s"]
        rows = [(name, [f[name], bare.get(name, 0.0)]) for name, _, _ in ROUND_STEPS]
        rows.append(("**round** (median of the rounds, not the sum of the medians)", [f["round"], b["round_s"]]))
        lines += _steps_table(
            f"Where a round goes (median of rounds 2..{r['rounds']}, seconds; the bare loop trains the same clients "
            "one after the other in one process):",
            ["`flwr run`", "bare loop"],
            rows,
        )
    st = report["startup"].get("steps")
    if st:
        lines += _steps_table(
            "Before the first evaluation (the timed run; wall clock from `flwr run`):",
            ["seconds"],
            [(name, [value]) for name, value in st.items()],
        )
    d = report.get("deployment")
    if d and "deploy_steps" in d:
        dep, sim = d["deploy_steps"], d["sim_steps"]
        names = [name for name, _, _ in ROUND_STEPS] + ["round"]
        lines += _steps_table(
            f"Where a deployed round goes ({d['nodes']} SuperNodes on this machine against the same clients "
            f"simulated; median of rounds 2..{d['rounds']}). Of the client calls: training "
            f"{d['deploy_train_s']:.2f} s (simulated {d['sim_train_s']:.2f} s); each message starts a fresh "
            f"ClientApp process (interpreter {d['clientapp_interpreter_s']:.2f} s + importing mirror_app.client_app "
            f"{d['clientapp_import_s']:.2f} s) whose set-up takes {d['deploy_setup_s']:.2f} s"
            + (
                f"; in a fresh process the first training call takes {d['cold_call']['first_fit_s']:.2f} s and the "
                f"next {d['cold_call']['second_fit_s']:.2f} s (torch imports torch._dynamo at the first optimiser: "
                f"{d['cold_call']['dynamo_import_s']:.2f} s)"
                if "cold_call" in d
                else ""
            )
            + "; a SuperNode with nothing to do asks for messages every 3 s (Flower's fixed poll):",
            ["deployed", "simulated"],
            [(name, [dep[name], sim[name]]) for name in names],
        )
    return lines


def markdown(report: dict) -> str:
    r, s, m, p = report["rounds"], report["client_setup"], report["memory"], report.get("preprocessing")

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = [
        "# Benchmark",
        "",
        f"{report['machine']}; {report['settings']}.",
        "",
        "| measure | figure | target | |",
        "| --- | --- | --- | --- |",
        f"| `flwr run` round / bare loop round (median, rounds 2..{r['rounds']}) | {r['ratio']:.2f}x "
        f"({r['flwr_round_s']:.2f} s vs {r['bare_round_s']:.2f} s) | <= {TARGETS['round_ratio']}x | "
        f"{verdict(r['ratio'] <= TARGETS['round_ratio'])} |",
        f"| of a `flwr run` round: clients' own fit time, summed (median) | {r['flwr_client_train_s']:.2f} s | | |",
        f"| SuperLink start | {report['startup']['superlink_s']:.1f} s | | |",
        f"| `flwr run` until the initial evaluation is written (steps below) | "
        f"{report['startup']['app_start_s']:.1f} s | <= {TARGETS['first_eval_s']:.0f} s | "
        f"{verdict(report['startup']['app_start_s'] <= TARGETS['first_eval_s'])} |",
        f"| first round (Ray workers start, ClientApp import, modality queries) | "
        f"{report['startup']['first_round_s']:.1f} s | | |",
        f"| client set-up / (set-up + training), per ClientApp call | {100 * s['setup_share']:.2f} % "
        f"({1000 * s['setup_s_mean']:.1f} ms vs {s['train_s_mean']:.2f} s) | <= {100 * TARGETS['setup_share']:.0f} % | "
        f"{verdict(s['setup_share'] <= TARGETS['setup_share'])} |",
        f"| training calls that had to build the dataset and models | {s['workspace_builds']} of {s['calls']} "
        "(each worker builds them once, at its first call: round 1's modality query) | 0 | "
        f"{verdict(s['workspace_builds'] == 0)} |",
    ]
    mm = report["memory_main_run"]
    lines.append(
        f"| peak memory of the timed run ({mm['partitions']} partitions, Dirichlet) | PSS "
        f"{mm['peak_pss'] / 2**20:.0f} MiB, RSS {mm['peak_rss'] / 2**20:.0f} MiB | | |"
    )
    sizes = sorted(m, key=int)
    for n in sizes:
        lines.append(
            f"| peak memory, {n} partitions (IID, 2 rounds) | PSS {m[n]['peak_pss'] / 2**20:.0f} MiB, "
            f"RSS {m[n]['peak_rss'] / 2**20:.0f} MiB | | |"
        )
    if len(sizes) > 1:
        ratio = m[sizes[-1]]["peak_pss"] / m[sizes[0]]["peak_pss"]
        lines.append(
            f"| peak PSS, {sizes[-1]} / {sizes[0]} partitions | {ratio:.2f}x | "
            f"<= {TARGETS['memory_ratio']}x | {verdict(ratio <= TARGETS['memory_ratio'])} |"
        )
    if p:
        lines.append(
            f"| preprocessing ({p['videos']} clips of {p['clip']}, {p['workers']} workers): decode + "
            f"fbank + resize + cache | {p['prepare_videos_per_s']:.1f} videos/s in all, "
            f"{p['prepare_steady_videos_per_s']:.1f} videos/s once the workers run "
            "(warm, per-clip work x workers) | | |"
        )
        lines.append(
            f"| ffmpeg command line, decode alone (the reference), {p['workers']} processes at a time | "
            f"{p['ffmpeg_cli_videos_per_s']:.1f} videos/s; prepare / ffmpeg: "
            f"{p['ratio_prepare_over_ffmpeg']:.2f}x in all, {p['ratio_steady_over_ffmpeg']:.2f}x steady | | |"
        )
    d = report.get("deployment")
    if d:
        lines.append(
            f"| deployed round / simulated round, {d['nodes']} clients (make deploy-local vs flwr run, median of "
            f"rounds 2..{d['rounds']}) | {d['ratio']:.2f}x ({d['deploy_round_s']:.2f} s vs {d['sim_round_s']:.2f} s) "
            f"| <= {TARGETS['deploy_ratio']}x | {verdict(d['ratio'] <= TARGETS['deploy_ratio'])} |"
        )
    g = report.get("gpu_packing")
    if g and "rows" in g:
        for row in g["rows"]:
            lines.append(
                f"| GPU packing on {g['device']}: {row['clients_per_gpu']} client(s) per GPU "
                f"(client-resources-num-gpus={row['num_gpus_per_client']:g}) | round {row['round_s']:.2f} s, "
                f"GPU utilisation {row['gpu_util_mean_pct']:.0f} %, peak memory {row['gpu_mem_peak_mib']:.0f} MiB | | |"
            )
    elif g:
        lines.append(f"| GPU packing | {g['skipped']} | | |")
    lines.append(f"| GPU sharing | {report['gpu']} | | |")
    lines += steps_tables(report)
    lines += [
        "",
        "Bytes on the wire per client and round:",
        "",
        "| phase | client | task | received | sent |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in report["bytes_per_client"]:
        lines.append(
            f"| {row['phase']} | {row['modality']} | {row['task']} | {row['bytes_received'] / 1e3:.1f} kB | "
            f"{row['bytes_sent'] / 1e3:.1f} kB |"
        )
    lines += [
        "",
        f"Per round: {report['rounds']['bytes_per_round'] / 1e6:.2f} MB to plus from the clients "
        "(mean over the training rounds).",
        "",
    ]
    return "\n".join(lines)


def run_bench(
    out: Path,
    num_supernodes: int,
    rounds: int,
    distill_rounds: int,
    memory_partitions: list[int],
    videos: int,
    run_config: str,
    timeout: float,
    log=print,
    federation: str = "",
    deploy_nodes: int = 0,
    gpu: bool = False,
) -> dict:
    import torch

    from mirror_app.core.config import RunConfig
    from mirror_app.results import atomic_write, megabytes_per_round
    from mirror_app.tools.launch import SuperLink, interrupt_on_signals, pairs_to_values, parse_pairs, with_defaults

    if rounds < 2:
        raise BenchError(f"--rounds {rounds} is too few: at least 2 (round 1 includes start-up)")
    if 0 < videos < 16:
        raise BenchError(
            f"--videos {videos} is too few: 0 (skip) or at least 16 (half of them make a "
            "manifest with every label in train and test)"
        )
    if min(memory_partitions, default=1) < 1:
        raise BenchError(f"--memory-partitions {memory_partitions} must be positive")
    base = with_defaults(
        run_config,
        {
            "strategy": "'modality-mirror'",
            "num-server-rounds": str(rounds),
            "distill-rounds": str(distill_rounds),
            "eval-every": "1",
        },
    )  # round times
    cfg = RunConfig.from_dict(pairs_to_values(parse_pairs(base)))  # a bad value stops here, before anything starts
    if cfg.eval_every != 1:
        raise BenchError(f"eval-every {cfg.eval_every}: the bench times every round, so it runs with eval-every=1")
    if cfg.clients_per_round > num_supernodes:
        raise BenchError(f"clients-per-round {cfg.clients_per_round} > --num-supernodes {num_supernodes}")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=out))
    report: dict = {
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
        "settings": f"{num_supernodes} SuperNodes, {cfg.clients_per_round} clients per round, "
        f"{cfg.local_epochs} local epochs, {cfg.audio_backbone} + {cfg.video_backbone}, "
        f"dataset {cfg.dataset}, missing rate {cfg.missing_rate}, federation config "
        f"'{('num-supernodes=N ' + federation).strip()}'",
    }
    try:
        with interrupt_on_signals():
            log("bench: starting a SuperLink")
            t0 = time.perf_counter()
            with SuperLink(work / "flwr-home") as link:
                report["startup"] = {"superlink_s": time.perf_counter() - t0}
                log(f"bench: flwr run, {num_supernodes} SuperNodes, {rounds} + {distill_rounds} rounds")
                main = simulate(link, work / "main", num_supernodes, base, timeout, federation)
                memory = {}
                for n in memory_partitions:
                    log(f"bench: memory with {n} partitions")
                    # IID partitions: 4000 samples cannot make 1000 non-empty Dirichlet partitions
                    small = with_defaults(
                        run_config,
                        {
                            "num-server-rounds": "2",
                            "distill-rounds": "0",
                            "local-epochs": "1",
                            "partitioner": "'iid'",
                            "clients-per-round": str(min(cfg.clients_per_round, n)),
                        },
                    )
                    run = simulate(link, work / f"mem{n}", n, small, timeout, federation)
                    memory[n] = {"peak_pss": run["peak_pss"], "peak_rss": run["peak_rss"]}
            report["memory"] = memory
            report["memory_main_run"] = {
                "partitions": num_supernodes,
                "peak_pss": main["peak_pss"],
                "peak_rss": main["peak_rss"],
            }
            per_round = round_seconds(main["metrics"])
            train_rounds = per_round.loc[2:rounds]
            log("bench: bare loop")
            bare = bare_loop(cfg, num_supernodes, rounds)
            bare_rounds = [b["round_s"] for b in bare]
            flwr_s, bare_s = float(train_rounds.median()), float(np.median(bare_rounds[1:]))
            ok = main["clients"][main["clients"]["status"] == "ok"]
            train_sum = ok.groupby("round")["train_seconds"].sum().loc[2:rounds]
            report["rounds"] = {
                "rounds": rounds,
                "flwr_round_s": flwr_s,
                "bare_round_s": bare_s,
                "flwr_client_train_s": float(train_sum.median()),
                "ratio": flwr_s / bare_s,
                "flwr_rounds_s": per_round.tolist(),
                "bare_rounds_s": bare_rounds,
                "flwr_steps": round_breakdown(main["run_dir"], 2, rounds),
                "bare_steps": {k: float(np.median([b[k] for b in bare[1:]])) for k in bare[0]},
                "bytes_per_round": 1e6 * megabytes_per_round(main["metrics"]),
            }
            steps = startup_breakdown(main["run_dir"], main["flwr_run_at"])
            report["startup"] |= {
                "app_start_s": steps["first evaluation after flwr run"],
                "first_round_s": float(per_round.loc[1]),
                "steps": steps,
            }
            report["client_setup"] = setup_cost(main["clients"])
            report["bytes_per_client"] = bytes_per_kind(main["clients"])
            report["gpu"] = (
                "not measured: this machine has no GPU"
                if not torch.cuda.is_available()
                else "run with --federation-config client-resources-num-gpus=0.25 to share the GPU"
            )
            if deploy_nodes:
                report["deployment"] = deployment_rounds(
                    work, deploy_nodes, max(rounds // 2, 3), run_config, timeout, log
                )
            if gpu:
                report["gpu_packing"] = gpu_packing(
                    work, min(num_supernodes, 20), max(rounds // 2, 3), run_config, timeout, log
                )
                if "skipped" in report["gpu_packing"]:
                    log(f"bench: GPU packing skipped: {report['gpu_packing']['skipped']}")
            if videos > 0:
                log(f"bench: preprocessing {videos} generated clips")
                report["preprocessing"] = preprocessing(work / "prep", videos, workers=min(2, os.cpu_count() or 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["memory"] = {str(k): v for k, v in report.get("memory", {}).items()}
    atomic_write(out / "bench.json", lambda p: Path(p).write_text(json.dumps(report, indent=2, default=float)))
    atomic_write(out / "bench.md", lambda p: Path(p).write_text(markdown(report)))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirror_app.tools.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/bench")
    p.add_argument("--num-supernodes", type=int, default=100)
    p.add_argument("--rounds", type=int, default=6, help="modality-aware FL rounds timed (round 1 is start-up)")
    p.add_argument("--distill-rounds", type=int, default=2, help="distillation rounds (for their bytes)")
    p.add_argument("--memory-partitions", default="10,100,1000")
    p.add_argument("--videos", type=int, default=64, help="generated clips to preprocess (0: skip)")
    p.add_argument("--run-config", default="", help='extra run config, e.g. "local-epochs=1"')
    p.add_argument(
        "--federation-config",
        default="client-resources-num-cpus=1",
        help='simulation settings besides num-supernodes (the default is `make run`\'s; "" gives '
        "Flower's own: 2 CPUs per client)",
    )
    p.add_argument(
        "--deploy-nodes", type=int, default=3, help="SuperNodes of the deployment-vs-simulation comparison (0: skip it)"
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="measure GPU packing (clients per GPU 1, 2, 4); one line and skipped without a GPU",
    )
    p.add_argument(
        "--paper",
        action="store_true",
        help="instead: what the paper's setting (conf/paper.toml) costs, 2 rounds measured on a small prepared "
        "dataset and the full schedule projected (results/bench/paper.md)",
    )
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args(argv)
    if args.paper:
        from mirror_app.tools.bench_paper import markdown as paper_markdown
        from mirror_app.tools.bench_paper import paper_bench

        try:
            print(paper_markdown(paper_bench(Path(args.out).resolve(), timeout=args.timeout)))
        except KeyboardInterrupt:
            print("bench: interrupted; everything it started is stopped", file=sys.stderr)
            return 130
        return 0
    try:
        sizes = [int(x) for x in args.memory_partitions.split(",") if x.strip()]
    except ValueError:
        print(
            f"error: --memory-partitions {args.memory_partitions!r} must be comma-separated integers", file=sys.stderr
        )
        return 2
    try:
        report = run_bench(
            Path(args.out).resolve(),
            args.num_supernodes,
            args.rounds,
            args.distill_rounds,
            sizes,
            args.videos,
            args.run_config,
            args.timeout,
            federation=args.federation_config,
            deploy_nodes=args.deploy_nodes,
            gpu=args.gpu,
        )
    except (BenchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
