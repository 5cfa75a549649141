"""A real deployment on loopback: SuperLink + SuperNodes as separate processes, secured, and with a node crash."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from mirror_app.deploy.certs import make_certs, make_node_key
from mirror_app.deploy.launch import SuperLink
from mirror_app.deploy.local import node_configs

ROOT = Path(__file__).resolve().parents[1]


def online_nodes(link: SuperLink) -> list[dict]:
    res = subprocess.run(
        ["flwr", "supernode", "list", "test", "--format", "json"],
        env=link.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return [n for n in json.loads(res.stdout)["nodes"] if n.get("status") == "online"]


def wait_online(link: SuperLink, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(online_nodes(link)) >= count:
            return
        time.sleep(2)
    logs = "\n".join(f"--- {n.name}\n{n.output()[-800:]}" for n in link.nodes)
    raise AssertionError(f"fewer than {count} SuperNodes online after {timeout} s\n{logs}")


def run_app(link: SuperLink, data_dir: Path, out: Path, rounds: int = 2) -> tuple[Path, str]:
    cfg = (
        f"num-server-rounds={rounds} distill-rounds=1 clients-per-round=3 local-epochs=1 eval-every=1 "
        f"data-dir='{data_dir}' output-dir='{out}'"
    )
    res = link.flwr_run(ROOT, "--run-config", cfg, timeout=900)
    log = res.stdout + res.stderr
    runs = list(out.iterdir()) if out.exists() else []
    assert res.returncode == 0 and len(runs) == 1 and (runs[0] / "summary.json").is_file(), log[-4000:]
    return runs[0], log


@pytest.mark.timeout(900)
def test_secure_deployment_runs_modality_mirror_counts_a_killed_node_and_refuses_strangers(tmp_path, data_dir):
    """TLS and node authentication on three SuperNodes (one audio-only); an audiovisual node is killed during
    round 2: round 1 has every node, the failure is counted, the run completes on the survivors, and afterwards an
    unregistered key and a plaintext node are refused."""
    certs = make_certs(tmp_path / "certs")
    keys = [make_node_key(tmp_path / "certs", f"node{i}") for i in range(3)]
    stranger, _ = make_node_key(tmp_path / "certs", "stranger")  # never registered
    link = SuperLink(tmp_path / "home", simulation=False, certs=certs, node_auth=True)
    out = tmp_path / "out"
    try:
        for (private, public), cfg in zip(keys, node_configs(3, 1, str(data_dir))):
            link.register(public)
            link.start_node(f"node{len(link.nodes)}", cfg, private_key=private)
        wait_online(link, 3)
        victim = link.nodes[2]  # audiovisual: the teacher side loses a client

        def kill_after_round_one():
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                for f in out.glob("*/metrics.csv"):
                    if len(pd.read_csv(f)) >= 2:  # rounds 0 and 1 are written: kill during round 2
                        victim.kill()
                        return
                time.sleep(0.5)

        killer = threading.Thread(target=kill_after_round_one, daemon=True)
        killer.start()
        run, _ = run_app(link, data_dir, out)
        killer.join(timeout=5)
        assert victim.proc.returncode is not None, "the node was never killed"

        metrics = pd.read_csv(run / "metrics.csv")
        assert list(metrics["phase"]) == ["modality-aware-fl"] * 3 + ["distillation"]
        assert metrics["audio_top1"].between(0, 1).all()
        assert list(metrics.loc[:1, "clients"]) == [0, 3] and metrics.loc[1, "failures"] == 0, metrics
        assert metrics["failures"].sum() >= 1, metrics
        clients = pd.read_csv(run / "clients.csv")
        assert (clients["status"] == "failed").sum() >= 1
        round1 = clients[clients["round"] == 1]
        assert sorted(round1.groupby("modality")["node_id"].nunique().items()) == [("audio", 1), ("audiovisual", 2)]
        # distillation still aggregates the surviving audiovisual node
        assert metrics.loc[3, "clients"] >= 1 and (run / "model.pt").is_file()

        # an unregistered key is refused by the SuperLink; a plaintext connection cannot talk to TLS
        online = len(online_nodes(link))  # the survivors, and the victim until its heartbeat lapses
        bad = link.start_node("stranger", "partition-id=0 num-partitions=3", private_key=stranger, max_retries=0)
        plain = link.start_node("plaintext", "partition-id=0 num-partitions=3", tls=False, max_retries=0)
        for node, reason, why in (
            (bad, "[code: 2004]", "modality-mirror: this SuperNode was refused: the SuperLink does not know this node"),
            (plain, "Exit Code: 305", "modality-mirror: the SuperLink could not be reached"),
        ):
            assert node.proc.wait(timeout=120) != 0
            assert reason in node.output() and why in node.output(), node.output()[-2000:]
        assert 2 <= len(online_nodes(link)) <= online
    finally:
        survivors = link.stop()
    assert not survivors, f"processes left running: {survivors}"


@pytest.mark.timeout(600)
def test_deploy_local_stops_every_process_on_ctrl_c(tmp_path, data_dir):
    import os
    import signal
    import sys

    from mirror_app.deploy.launch import _zombie, descendants

    cmd = [
        sys.executable,
        "-m",
        "mirror_app.deploy.local",
        "--nodes",
        "2",
        "--audio-only",
        "1",
        "--home",
        str(tmp_path / "home"),
        "--out",
        str(tmp_path / "out"),
        "--data-dir",
        str(data_dir),
        "--run-config",
        f"num-server-rounds=50 local-epochs=1 data-dir='{data_dir}'",
    ]
    log = tmp_path / "deploy.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def run_log() -> str:  # the streamed `flwr run` output
            return "".join(f.read_text() for f in (tmp_path / "out").glob("deploy-*.log"))

        deadline = time.monotonic() + 300  # interrupt once the run is submitted and its ServerApp starts
        while time.monotonic() < deadline and "Starting logstream" not in run_log():
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        assert "Starting logstream" in run_log(), log.read_text()[-3000:] + run_log()[-3000:]
        time.sleep(5)
        started = descendants(proc.pid)
        assert len(started) >= 6  # SuperLink, 2 SuperNodes, their SuperExecs, flwr run, ...
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert proc.wait(timeout=120) == 130
        time.sleep(1)
        alive = {p for p in started if Path(f"/proc/{p}").exists() and not _zombie(p)}
        assert not alive, f"left running: {alive}"
        assert "every process of this deployment was stopped" in log.read_text()
    finally:
        if proc.poll() is None:  # the test failed: stop the deployment's processes anyway
            from mirror_app.deploy.launch import stop_tree

            stop_tree(proc)
