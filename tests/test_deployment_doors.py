"""A deployment an engineer can expose: docs/deployment.md's "Across machines" commands, run as written on one
machine (`localhost` for the server's name, free ports for 9092-9095, temporary folders for the paths): the
SuperLink on loopback behind the Fleet-only door, two SuperNodes through it, a run started over the loopback
Control API. Through the door, a client holding only ca.crt can neither register a key, list nodes, list runs, nor
start one; a node with an unregistered key is told why; and a restarted SuperLink still knows its nodes and runs.
Also: keys that stay private, deploy-local's temporary home, and the node's own checks."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mirror_app.deploy.launch import VENV_BIN, free_port, stop_tree

ROOT = Path(__file__).resolve().parents[1]


def across_machines() -> list[str]:
    """The commands of docs/deployment.md's "Across machines" block, continuation lines joined, comments dropped."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text.split("## Across machines", 1)[1], flags=re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def flwr(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["flwr", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def nodes(env: dict, connection: str) -> list[dict]:
    res = flwr(env, "supernode", "list", connection, "--format", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)["nodes"]


def wait(predicate, what: str, timeout: float = 180, logs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    tails = "\n".join(f"--- {p}\n{Path(p).read_text(errors='replace')[-1500:]}" for p in logs if Path(p).is_file())
    raise AssertionError(f"{what} not within {timeout} s\n{tails}")


@pytest.mark.timeout(900)
def test_the_documented_deployment_exposes_only_the_fleet_api_and_keeps_its_state(tmp_path, data_dir):
    commands = across_machines()
    ports = {"9092": free_port(), "9093": free_port(), "9094": free_port(), "9095": free_port()}
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }

    def as_here(command: str) -> list[str]:
        for port, free in ports.items():
            command = re.sub(rf"(?<=[: ]){port}\b", str(free), command)
        command = command.replace("superlink.lan", "localhost").replace("superlink.db", str(tmp_path / "link.db"))
        command = command.replace("certs/", f"{tmp_path}/certs/").replace("--out certs", f"--out {tmp_path}/certs")
        command = command.replace("/data/modality-mirror", str(data_dir)).replace("/srv/modality-mirror", str(data_dir))
        command = command.replace("/srv/results", str(tmp_path / "results"))
        # each node holds 1 of 8 partitions instead of 1 of 2: the same commands, a round of seconds, not a minute
        command = command.replace("num-partitions=2", "num-partitions=8")
        words = shlex.split(command)
        return [sys.executable, *words[1:]] if words[0] == "python" else words

    ca = tmp_path / "certs" / "ca.crt"
    link_address, door = f"127.0.0.1:{ports['9093']}", f"localhost:{ports['9092']}"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "lab"\n\n[superlink.lab]\naddress = "{link_address}"\nroot-certificates = "{ca}"\n\n'
        f'[superlink.exposed]\naddress = "{door}"\nroot-certificates = "{ca}"\n'
    )
    background: list[tuple[subprocess.Popen, Path]] = []

    def start(words: list[str], name: str) -> subprocess.Popen:
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen(
            words, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        background.append((proc, log))
        return proc

    def healthy() -> bool:
        try:
            return httpx.get(f"https://{link_address}/health", verify=str(ca), timeout=1).is_success
        except httpx.HTTPError:
            return False

    superlink_words: list[str] = []
    try:
        seen = set()
        for command in commands:
            words = as_here(command)
            program = " ".join(words[1:3]) if words[0] == sys.executable else words[0]
            seen.add(program)
            if words[0] in ("export", "ssh"):  # the environment is env; on one machine there is no tunnel to dig
                continue
            if program == "-m mirror_app.deploy.certs":
                res = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
                assert res.returncode == 0, res.stderr
            elif words[0] == "flower-superlink":
                superlink_words = words
                start(words, "superlink")
                wait(healthy, "the SuperLink on loopback", logs=[tmp_path / "superlink.log"])
            elif program == "-m mirror_app.deploy.proxy":
                start(words, "proxy")
                wait(lambda: _answers(f"https://{door}/health", ca), "the door", logs=[tmp_path / "proxy.log"])
            elif words[:3] == ["flwr", "supernode", "register"]:
                res = flwr(env, *words[1:])
                assert res.returncode == 0, res.stdout + res.stderr
            elif program == "-m mirror_app.deploy.node":
                start(words, f"node{len([b for b in background if 'node' in b[1].name])}")
            elif words[:2] == ["flwr", "run"]:
                logs = [log for _, log in background]
                wait(lambda: sum(n["status"] == "online" for n in nodes(env, "lab")) == 2, "2 nodes online", logs=logs)
                res = flwr(env, *words[1:], timeout=600)
                assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
            else:
                raise AssertionError(f"the test does not know how to run: {command}")
        assert {"-m mirror_app.deploy.certs", "flower-superlink", "-m mirror_app.deploy.proxy", "flwr"} <= seen
        runs = [d for d in (tmp_path / "results").iterdir() if (d / "summary.json").is_file()]
        assert len(runs) == 1
        summary = json.loads((runs[0] / "summary.json").read_text())
        assert summary["federation"]["kind"] == "deployment"
        assert stat.S_IMODE((tmp_path / "certs" / "ca.key").stat().st_mode) == 0o600

        # through the door, with nothing but ca.crt: no Control API, no Runtime API
        from mirror_app.deploy.certs import make_node_key

        _, intruder_pub = make_node_key(tmp_path / "intruder", "intruder")
        for args in (
            ("supernode", "register", str(intruder_pub), "exposed"),
            ("supernode", "list", "exposed"),
            ("ls", "exposed"),
            ("run", ".", "exposed", "--run-config", "num-server-rounds=1"),
        ):
            res = flwr(env, *args, timeout=300)
            assert res.returncode != 0, (args, res.stdout[-1500:])
        for path in ("/v1/control/list-nodes", "/v1/control/register-node", "/v1/control/start-run"):
            assert httpx.post(f"https://{door}{path}", verify=str(ca), content=b"").status_code == 404
        assert httpx.post(f"https://{door}/v1/runtime/acquire-task", verify=str(ca), content=b"").status_code == 404
        # ... while on loopback the same calls work (the test would see an open door)
        registered = nodes(env, "lab")
        assert len(registered) == 2 and flwr(env, "ls", "lab").returncode == 0

        # a node whose key was never registered: Flower says 305, the project's wrapper says why
        intruder = start(
            [sys.executable, "-m", "mirror_app.deploy.node", "--superlink", door, "--root-certificates", str(ca),
             "--auth-supernode-private-key", str(tmp_path / "intruder" / "intruder"), "--port", str(free_port()),
             "--max-retries", "0", "--node-config", f"partition-id=0 num-partitions=2 data-dir='{data_dir}'"],
            "intruder",
        )  # fmt: skip
        assert intruder.wait(timeout=120) != 0
        said = (tmp_path / "intruder.log").read_text()
        assert "modality-mirror: this SuperNode was refused: the SuperLink does not know this node's public key" in said

        # a restart keeps the registered nodes and the run (the database file)
        link = next(p for p, log in background if log.name == "superlink.log")
        assert not stop_tree(link)
        start(superlink_words, "superlink-restarted")
        wait(healthy, "the restarted SuperLink", logs=[tmp_path / "superlink-restarted.log"])
        assert sorted(n["node-id"] for n in nodes(env, "lab")) == sorted(n["node-id"] for n in registered)
        listed = flwr(env, "ls", "lab", "--format", "json")
        assert listed.returncode == 0 and len(json.loads(listed.stdout)["runs"]) == 1
    finally:
        survivors = set()
        for proc, _ in background:
            survivors |= stop_tree(proc)
    assert not survivors, f"left running: {survivors}"


def _answers(url: str, ca: Path) -> bool:
    try:
        httpx.get(url, verify=str(ca), timeout=1)
        return True
    except httpx.HTTPError:
        return False


# --------------------------------------------------------------------------------------------------- keys
def test_keys_are_private_from_their_first_byte_and_never_replaced_silently(tmp_path, monkeypatch):
    from mirror_app.deploy import certs

    opened: dict[str, int] = {}
    real_open = os.open

    def spying_open(path, flags, mode=0o777, *args, **kwargs):
        opened[Path(path).name] = mode
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(certs.os, "open", spying_open)
    old = os.umask(0)  # a umask that would leave a file made the ordinary way readable by everyone
    try:
        assert certs.main(["--out", str(tmp_path / "certs"), "--nodes", "2"]) == 0
    finally:
        os.umask(old)
    for name in ("ca.key", "server.key", "node0", "node1"):
        assert opened[f".{name}.tmp"] == 0o600  # created with the mode, not chmod-ed afterwards
        assert stat.S_IMODE((tmp_path / "certs" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "certs" / "ca.crt").stat().st_mode) == 0o644
    before = (tmp_path / "certs" / "ca.key").read_bytes()
    res = subprocess.run(
        [sys.executable, "-m", "mirror_app.deploy.certs", "--out", str(tmp_path / "certs"), "--nodes", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'certs' / 'ca.key'} exists: these keys are in use (replacing them locks out every node "
        "holding the old ones); choose another --out, or --force to make new ones"
    ]
    assert (tmp_path / "certs" / "ca.key").read_bytes() == before
    assert certs.main(["--out", str(tmp_path / "certs"), "--nodes", "2", "--force"]) == 0
    assert (tmp_path / "certs" / "ca.key").read_bytes() != before


def test_the_key_folders_are_ignored_by_git():
    for path in ("certs/ca.key", "certs/node0", "certs/node0.pub", "deploy/server.key"):
        res = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert res.returncode == 0, f"{path} is not ignored by git"


# ----------------------------------------------------------------------------------------- deploy-local
def test_deploy_local_pretrains_honours_data_dir_and_removes_its_home(tmp_path, data_dir, monkeypatch):
    """make deploy-local passes DATA_DIR and --pretrain; the deployment's temporary FLWR_HOME (with SECURE=1 the
    CA's and nodes' private keys) is removed at the end, its logs kept beside the run."""
    from mirror_app.deploy import local
    from mirror_app.model import pretrain

    res = subprocess.run(["make", "-n", "deploy-local", f"DATA_DIR={tmp_path}/d"], cwd=ROOT, capture_output=True,
                         text=True, env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")})  # fmt: skip
    assert res.returncode == 0 and "--pretrain" in res.stdout and f'--data-dir "{tmp_path}/d"' in res.stdout
    homes, built = [], []

    def fake_deploy(configs, config, out, secure, home, on_started, log, logs):
        homes.append(home)
        (home / "certs").mkdir()
        (home / "certs" / "node0").write_text("a private key")
        (home / "superlink.log").write_text("the SuperLink's log")
        assert all("make-embedded=true" in c and f"data-dir='{data_dir}'" in c for c in configs)
        return out

    monkeypatch.setattr(local, "_deploy", fake_deploy)
    monkeypatch.setattr(pretrain, "ensure_pretrained", lambda cfg, spec, say=print: built.append(cfg.data_dir) or [])
    lines: list[str] = []
    local.deploy(2, 1, "num-server-rounds=1", tmp_path / "out", data_dir=str(data_dir), log=lines.append, pretrain=True)
    assert built == [str(data_dir)]
    assert any(line.startswith("initial encoders") for line in lines)
    assert homes and not homes[0].exists()  # keys and all
    (kept,) = (tmp_path / "out").glob("logs-*")
    assert (kept / "superlink.log").read_text() == "the SuperLink's log"


# ------------------------------------------------------------------------------------------------ the node
def test_a_node_refuses_a_data_dir_that_does_not_exist_and_generates_only_when_asked(tmp_path):
    from flwr.app import Context, RecordDict

    from mirror_app.client_app import make_client

    def context(node: dict) -> Context:
        return Context(
            run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={"data-dir": str(tmp_path)}
        )

    with pytest.raises(ValueError) as err:
        make_client(context({"data-dir": str(tmp_path / "absent"), "modality": "audio"}))
    assert str(err.value).startswith(f"node config 'data-dir' = '{tmp_path / 'absent'}' does not exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="this node does not generate it: give node config make-embedded=true"):
        make_client(context({"data-dir": str(tmp_path / "empty"), "modality": "audio"}))
    assert not any((tmp_path / "empty").iterdir())  # nothing generated


def test_the_wrapper_explains_flowers_refusals():
    from mirror_app.deploy.node import explain

    refused = (
        "Exit Code: 305\n[code: 2004] Failed to activate SuperNode.\nThe SuperNode could not establish a connection"
    )
    assert "does not know this node's public key" in explain(refused, 305)
    assert "accepts only authenticated SuperNodes" in explain("[code: 2001] SuperNode authentication is enabled", 305)
    assert "could not be reached" in explain("Exit Code: 305\nconnection refused", 305)
    assert explain("finished", 0) == "" and explain("a ValueError in the ClientApp", 1) == ""
