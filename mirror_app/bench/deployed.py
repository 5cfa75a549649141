"""A deployed round (``make deploy-local``'s real SuperLink and SuperNodes) against a simulated one, and GPU
packing (simulated clients per GPU)."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from mirror_app.bench.overhead import cold_call_seconds, import_seconds, round_breakdown, round_seconds, simulate


def deployment_rounds(work: Path, nodes: int, rounds: int, run_config: str, timeout: float, log=print) -> dict:
    """The same clients (``nodes`` partitions, one of them audio-only, all of them every round) and rounds as a
    ``flwr run`` simulation and as ``make deploy-local`` (a real SuperLink and SuperNodes on loopback): median
    round time of rounds 2..``rounds`` for each, and where a deployed round goes."""
    from mirror_app.deploy.launch import SuperLink
    from mirror_app.deploy.local import deploy, threads_per_node
    from mirror_app.deploy.preflight import with_defaults

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

    from mirror_app.deploy.launch import SuperLink
    from mirror_app.deploy.preflight import with_defaults

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
