"""What Flower and Ray add to the training itself: a bare in-process loop doing the same local training,
aggregation and evaluation, a ``flwr run`` simulation, where a round's and start-up's seconds go (the runs'
timeline.csv and clients.csv), client set-up, imports and a cold ClientApp call, bytes per client kind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mirror_app.bench.report import ROUND_STEPS, STARTUP_STEPS

ROOT = Path(__file__).resolve().parents[2]


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
        return build_model(
            cache.num_classes,
            *shapes,
            cfg.audio_backbone,
            cfg.video_backbone,
            cfg.embed_dim,
            seed=seed,
            heads=cfg.head_kinds,
        )

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
    from mirror_app.deploy.launch import Monitor

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
    """Median seconds of each of ROUND_STEPS over rounds ``first``..``last``, of the whole round (``recorded``
    to ``recorded``), and from one evaluation to the next (``evaluated`` to ``evaluated``: what metrics.csv's
    ``seconds`` counts, stamped before the round's records are written, which a phase's checkpoint lengthens)."""
    timeline = run_timeline(run_dir)
    evaluated = timeline["evaluated"].diff()
    wide = timeline.loc[first:last]
    out = {name: float((wide[b] - wide[a]).median()) for name, a, b in ROUND_STEPS}
    out["round"] = float((wide["recorded"] - wide["recorded@prev"]).median())
    out["evaluated to evaluated"] = float(evaluated.loc[first:last].median())
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
    """``python -m mirror_app.bench.cold_client`` (a fresh interpreter, as a deployed SuperNode's ClientApp process),
    and what importing torch._dynamo costs after torch. The first training call pays torch's first-use costs
    (its optimiser imports torch._dynamo), which every message pays when Flower starts a process per message."""
    cmd = [sys.executable, "-m", "mirror_app.bench.cold_client", run_config, "1", str(partitions), str(threads)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"the cold client call failed: {res.stderr[-1500:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    torch_only, dynamo = import_seconds("torch"), import_seconds("torch, torch._dynamo")
    out["dynamo_import_s"] = dynamo["import_s"] - torch_only["import_s"]
    return out
