"""Simulation on an existing Ray cluster: a Ray head and one more Ray node on loopback, a ModalityMirror run
through `flwr run` whose SuperLink has RAY_ADDRESS, and the run's own records show clients on both nodes.
Only the processes this test started are stopped, by PID (never `ray stop`)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from mirror_app.deploy.launch import RayNode, SuperLink, wait_for_ray_nodes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_a_simulation_spreads_its_clients_over_the_nodes_of_a_running_ray_cluster(tmp_path, data_dir):
    nodes: list[RayNode] = []
    survivors: set[int] = set()
    short = Path(tempfile.mkdtemp(prefix="ray-"))  # Ray's socket paths must fit in 107 bytes
    try:
        head = RayNode(short / "head", num_cpus=1)
        nodes.append(head)
        nodes.append(RayNode(short / "node", num_cpus=1, address=head.address))
        ids = {n["NodeID"] for n in wait_for_ray_nodes(head.address, 2, nodes=tuple(nodes))}
        assert len(ids) == 2
        out = tmp_path / "results"
        config = (
            f"num-server-rounds=2 distill-rounds=1 clients-per-round=4 missing-rate=0.5 eval-every=1 "
            f"data-dir='{data_dir}' output-dir='{out}'"
        )
        with SuperLink(tmp_path / "flwr-home", env={"RAY_ADDRESS": head.address}) as link:
            # one CPU per client and no num-cpus/num-gpus of our own: Ray's two nodes give two actors
            res = link.flwr_run(
                ROOT,
                "--federation-config",
                "num-supernodes=6 client-resources-num-cpus=1",
                "--run-config",
                config,
                timeout=600,
            )
            log = res.stdout + res.stderr
        runs = list(out.iterdir()) if out.exists() else []
        assert len(runs) == 1 and (runs[0] / "summary.json").is_file(), log[-4000:]
        clients = pd.read_csv(runs[0] / "clients.csv")
        assert (clients["status"] == "ok").all()
        used = set(clients["ray_node"])
        assert used == ids, f"clients ran on {used}, the cluster has {ids}"  # both nodes, and only ours
        assert set(clients["phase"]) == {"modality-aware-fl", "distillation"}
    finally:
        for node in reversed(nodes):
            survivors |= node.stop()
        shutil.rmtree(short, ignore_errors=True)
    assert not survivors, f"Ray processes left running: {survivors}"
