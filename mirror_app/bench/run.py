"""``make bench`` (``python -m mirror_app.bench``): what Flower and Ray add to the training itself, and how the
app scales.

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
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mirror_app.bench.deployed import deployment_rounds, gpu_packing
from mirror_app.bench.overhead import (
    BenchError,
    bare_loop,
    bytes_per_kind,
    round_breakdown,
    round_seconds,
    setup_cost,
    simulate,
    startup_breakdown,
)
from mirror_app.bench.preprocessing import preprocessing
from mirror_app.bench.report import markdown


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
    from mirror_app.deploy.launch import SuperLink, interrupt_on_signals
    from mirror_app.deploy.preflight import pairs_to_values, parse_pairs, with_defaults
    from mirror_app.results import atomic_write, megabytes_per_round

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
            megabytes = megabytes_per_round(main["metrics"])
            if megabytes is None:  # every run of this app records its bytes: none is a fault
                raise BenchError("the timed run's metrics.csv has no byte counts")
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
                "bytes_per_round": 1e6 * megabytes,
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
    p = argparse.ArgumentParser(prog="python -m mirror_app.bench", description=__doc__.split("\n\n")[0])
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
    p.add_argument("--records", default="", help="also keep the report as a record there (docs/records)")
    p.add_argument("--data-dir", default="", help="the runs' data-dir where --run-config names none")
    args = p.parse_args(argv)
    from mirror_app.deploy.preflight import with_defaults

    try:
        run_config = with_defaults(args.run_config, {"data-dir": f"'{args.data_dir}'"} if args.data_dir else {})
    except ValueError as exc:  # a key given twice
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from mirror_app.studies.runs import record_report

    if args.paper:
        from mirror_app.bench.paper import markdown as paper_markdown
        from mirror_app.bench.paper import paper_bench

        try:
            paper = paper_bench(Path(args.out).resolve(), timeout=args.timeout)
        except KeyboardInterrupt:
            print("bench: interrupted; everything it started is stopped", file=sys.stderr)
            return 130
        if args.records:
            record_report(paper, "paper", Path(args.records))
        print(paper_markdown(paper))
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
            run_config,
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
    if args.records:
        record_report(report, "bench", Path(args.records))
    print(markdown(report))
    return 0
