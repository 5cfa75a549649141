"""Start a private SuperLink and stop every process it spawned (by PID and session, never by name).

Used by ``make run``, the studies (:mod:`mirror_app.studies`), the benchmarks, ``make deploy-local`` and the
end-to-end tests: an isolated FLWR_HOME, a free loopback port, SuperNodes and Ray nodes started and stopped by
process, a run's outcome read from Flower's own status, and a clean stop even when interrupted.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
SUPEREXEC_POLL_SECONDS = "0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def started_run_id(output: str) -> int | None:
    """The run id ``flwr run`` printed ("Successfully started run <id>"), if any."""
    found = re.findall(r"Successfully started run (\d+)", output)
    return int(found[-1]) if found else None


def run_status(run_id: int, env: dict, connection: str = "", cwd: Path | None = None) -> tuple[str, str]:
    """(status, details) of a run from the SuperLink's own records (``flwr list --run-id N --format json``),
    e.g. ("finished:completed", "") or ("finished:failed", "<the exception's message>")."""
    import json

    cmd = ["flwr", "list", *([connection] if connection else []), "--run-id", str(run_id), "--format", "json"]
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    try:
        runs = json.loads(res.stdout[res.stdout.index("{") :])["runs"]
        run = next(r for r in runs if str(r["run-id"]) == str(run_id))
    except (ValueError, KeyError, StopIteration):
        said = (res.stdout + res.stderr).strip().splitlines()
        return "unknown", said[-1] if said else "flwr list gave no answer"
    return str(run["status"]), str(run.get("status-details") or "")


def run_outcome(output: str, env: dict, connection: str = "", cwd: Path | None = None) -> tuple[int | None, str, str]:
    """(run id, status, reason) of the run ``flwr run`` started with this ``output``: its status from the
    SuperLink's records and, unless it completed, the one-line reason (the status details Flower records, else
    the log's last exception or ERROR line). Run id None: the run never started."""
    run_id = started_run_id(output)
    if run_id is None:
        return None, "not started", failure_reason(output)
    status, details = run_status(run_id, env, connection, cwd)
    if status == "finished:completed":
        return run_id, status, ""
    reason = details.removeprefix("Simulation failed with exception: ") or failure_reason(output) or status
    return run_id, status, reason


def failure_reason(output: str) -> str:
    """The last exception's message in a log (the line after its traceback, without the exception's
    qualified name), or the last ERROR line; "" when there is neither."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        for line in lines[starts[-1] + 1 :]:
            if line and not line[0].isspace():
                return re.sub(r"^[\w.]+(Error|Exception|NotPrepared|Exit)?: ", "", line).strip()
    errors = [line for line in lines if "ERROR" in line]
    return re.sub(r"\x1b\[[0-9;]*m", "", errors[-1]).strip() if errors else ""


class TracebackFilter:
    """Passes log lines on, except Python tracebacks (kept for the log file only): ``keep(line)``."""

    def __init__(self) -> None:
        self.inside = False

    def keep(self, line: str) -> bool:
        if line.startswith("Traceback (most recent call last)"):
            self.inside = True
            return False
        if self.inside:
            if line[:1].isspace() or not line.strip():
                return False
            self.inside = False
            return False  # the exception line: the reason is shown once, at the end
        return True


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into KeyboardInterrupt while inside, so ``with`` blocks clean up.

    SIGINT is set explicitly because a shell starts background jobs with SIGINT ignored.
    """

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def flwr_env(flwr_home: Path) -> dict:
    env = os.environ.copy()
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    # how often a SuperExec looks for a ClientApp/ServerApp to start (Flower's default: 1 s); a deployed
    # SuperNode starts a ClientApp for every message, so each message waited up to a second for it
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", SUPEREXEC_POLL_SECONDS)
    return env


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id) of every process, read from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return out


def descendants(pid: int, table: dict[int, tuple[int, int]] | None = None) -> set[int]:
    table = _table() if table is None else table
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, (ppid, _) in table.items() if ppid in frontier and p not in found}
        found |= children
        frontier = children
    return found


def tree_members(pid: int) -> set[int]:
    """``pid``, everything it spawned, and every member of the sessions those started."""
    table = _table()
    tree = {pid} | descendants(pid, table)
    sessions = {table[p][1] for p in tree if p in table}
    members = {p for p, (_, sid) in table.items() if sid in sessions} | tree
    members.discard(os.getpid())
    return members


def stop_tree(proc: subprocess.Popen, timeout: float = 15.0) -> set[int]:
    """Stop ``proc``, everything it spawned and the sessions those started; return what survived."""
    members = tree_members(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in members:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc.poll()
            alive = {p for p in members if Path(f"/proc/{p}").exists() and not _zombie(p)}
            if not alive:
                return set()
            time.sleep(0.2)
    return {p for p in members if Path(f"/proc/{p}").exists() and not _zombie(p)}


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


class SuperLink:
    """A SuperLink on a free loopback port, with an isolated FLWR_HOME.

    ``simulation=True`` runs ClientApps in Ray (``flwr run`` simulations); ``False`` waits for
    real SuperNodes. ``certs`` (a :class:`mirror_app.certs.Certs`) turns on TLS, and
    ``node_auth`` accepts only SuperNodes whose public key was registered (``register``).
    The connection is stored in FLWR_HOME/config.toml under the name ``CONNECTION``.
    """

    CONNECTION = "test"  # the connection's name in FLWR_HOME/config.toml

    def __init__(
        self, home: Path, simulation: bool = True, certs=None, node_auth: bool = False, env: dict | None = None
    ):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = flwr_env(self.home) | (env or {})  # e.g. RAY_ADDRESS: simulate on a running Ray cluster
        self.certs = certs
        security = f'root-certificates = "{certs.ca_cert}"\n' if certs else "insecure = true\n"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{self.CONNECTION}"\n\n[superlink.{self.CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\n{security}'
        )
        cmd = [
            "flower-superlink",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            str(self.home / "state.db"),
        ]
        if certs:
            cmd += [
                "--ssl-ca-certfile",
                str(certs.ca_cert),
                "--ssl-certfile",
                str(certs.server_cert),
                "--ssl-keyfile",
                str(certs.server_key),
            ]
        else:
            cmd.append("--insecure")
        if node_auth:
            cmd.append("--enable-supernode-auth")
        if simulation:
            cmd.append("--simulation")
        self.log = open(self.home / "superlink.log", "w")
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.nodes: list[SuperNode] = []
        import ssl

        scheme, verify = ("https", ssl.create_default_context(cafile=str(certs.ca_cert))) if certs else ("http", True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flower-superlink exited: {(self.home / 'superlink.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{scheme}://127.0.0.1:{self.port}/health", timeout=0.5, verify=verify).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("flower-superlink did not become healthy within 60 s")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def register(self, public_key: Path) -> None:
        """Register a SuperNode's public key (``flwr supernode register``), for ``node_auth``."""
        res = subprocess.run(
            ["flwr", "supernode", "register", str(public_key), self.CONNECTION],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if res.returncode != 0:
            raise RuntimeError(f"flwr supernode register failed: {(res.stdout + res.stderr)[-1500:]}")

    def start_node(
        self,
        name: str,
        node_config: str,
        tls: bool | None = None,
        private_key: Path | None = None,
        max_retries: int | None = None,
    ) -> SuperNode:
        """Start a SuperNode against this SuperLink (TLS when it has certificates, unless ``tls=False``)."""
        node = SuperNode(
            self, name, node_config, self.certs is not None if tls is None else tls, private_key, max_retries
        )
        self.nodes.append(node)
        return node

    def flwr_run(
        self, app: Path, *args: str, timeout: float = 600, log_file: Path | None = None
    ) -> subprocess.CompletedProcess:
        """``flwr run <app> <this superlink> --stream ARGS``; output captured, or written to ``log_file``."""
        cmd = ["flwr", "run", str(app), self.CONNECTION, "--stream", *args]
        if log_file is None:
            return subprocess.run(cmd, env=self.env, cwd=app, capture_output=True, text=True, timeout=timeout)
        with open(log_file, "w") as fh:
            return subprocess.run(
                cmd, env=self.env, cwd=app, stdout=fh, stderr=subprocess.STDOUT, text=True, timeout=timeout
            )

    def __enter__(self) -> SuperLink:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> set[int]:
        survivors: set[int] = set()
        for node in self.nodes:
            survivors |= node.stop()
        survivors |= stop_tree(self.proc)
        self.log.close()
        return survivors


class SuperNode:
    """One ``flower-supernode`` process in its own session, logging to FLWR_HOME/<name>.log."""

    def __init__(
        self,
        link: SuperLink,
        name: str,
        node_config: str,
        tls: bool,
        private_key: Path | None = None,
        max_retries: int | None = None,
    ):
        self.name = name
        self.log_path = link.home / f"{name}.log"
        cmd = [  # flower-supernode, through the wrapper that says why a SuperLink refused it (deploy/node.py)
            sys.executable,
            "-m",
            "mirror_app.deploy.node",
            "--superlink",
            link.address,
            "--port",
            str(free_port()),
            "--node-config",
            node_config,
        ]
        cmd += ["--root-certificates", str(link.certs.ca_cert)] if tls else ["--insecure"]
        if private_key is not None:
            cmd += ["--auth-supernode-private-key", str(private_key)]
        if max_retries is not None:
            cmd += ["--max-retries", str(max_retries)]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, env=link.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self) -> None:
        """kill -9 of the node's whole process tree (a crashed machine)."""
        for p in tree_members(self.proc.pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def stop(self) -> set[int]:
        survivors = stop_tree(self.proc)
        self._log.close()
        return survivors

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()


class RayNode:
    """One Ray node on loopback, started with ``ray start --block`` in its own session so that ``stop()`` ends
    exactly the processes it started (never ``ray stop``, which ends every Ray process on the machine).

    Without ``address`` it is the head of a new cluster (GCS on a free port, ``self.address``); with one it
    joins that cluster. Each node has its own ``temp_dir`` and free ports for everything Ray binds, so that
    two nodes (and any other Ray on the machine) do not collide.
    """

    def __init__(self, temp_dir: Path, num_cpus: int, address: str | None = None, resources: str = ""):
        self.temp_dir = Path(temp_dir)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.head = address is None
        self.address = address or f"127.0.0.1:{free_port()}"
        cmd = [
            str(VENV_BIN / "ray"),
            "start",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(num_cpus),
            "--temp-dir",
            str(self.temp_dir),
            "--disable-usage-stats",
            "--node-manager-port",
            str(free_port()),
            "--object-manager-port",
            str(free_port()),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--dashboard-agent-grpc-port",
            str(free_port()),
            "--runtime-env-agent-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
            "--object-store-memory",
            str(200 * 2**20),
        ]
        if self.head:
            cmd += [
                "--head",
                "--port",
                self.address.rsplit(":", 1)[1],
                "--include-dashboard",
                "false",
                "--ray-client-server-port",
                str(free_port()),
            ]
        else:
            cmd += ["--address", self.address]
        if resources:
            cmd += ["--resources", resources]
        env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        env.pop("RAY_ADDRESS", None)
        self.log = open(self.temp_dir / "ray-start.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> set[int]:
        survivors = stop_tree(self.proc, timeout=30.0)
        self.log.close()
        return survivors

    def check(self) -> None:
        """Raise with the end of its log if ``ray start`` has exited (a port in use, a temp dir too long for
        Ray's sockets, ...)."""
        if self.proc.poll() is not None:
            tail = (self.temp_dir / "ray-start.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"ray start ({self.temp_dir}) exited with {self.proc.returncode}: {tail}")


def wait_for_ray_nodes(address: str, count: int, timeout: float = 120.0, nodes: tuple = ()) -> list[dict]:
    """Block until the cluster at ``address`` has ``count`` alive nodes; their ``ray.nodes()`` records.
    ``nodes``: the RayNodes whose ``ray start`` must keep running meanwhile."""
    import json

    probe = (
        f"import json, ray; ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False); "
        "print(json.dumps([n for n in ray.nodes() if n['Alive']], default=str))"
    )
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for node in nodes:
            node.check()
        try:
            res = subprocess.run(
                [sys.executable, "-c", probe],
                capture_output=True,
                text=True,
                timeout=60,
                env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            )
        except subprocess.TimeoutExpired:
            last = "ray.init did not connect within 60 s"
            continue
        if res.returncode == 0:
            alive = json.loads(res.stdout.strip().splitlines()[-1])
            if len(alive) >= count:
                return alive
            last = f"{len(alive)} of {count} nodes alive"
        else:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        time.sleep(2)
    raise RuntimeError(f"Ray cluster at {address} did not reach {count} nodes in {timeout:g} s: {last}")


class Monitor(threading.Thread):
    """Samples the memory of a SuperLink's process tree."""

    def __init__(self, root_pid: int, every: float = 0.25):
        super().__init__(daemon=True)
        self.root_pid, self.every = root_pid, every
        self.peak_pss = self.peak_rss = 0
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.done.is_set():
            pss = rss = 0
            for pid in tree_members(self.root_pid):
                try:
                    info = psutil.Process(pid).memory_full_info()
                except (psutil.Error, OSError):
                    continue
                pss += getattr(info, "pss", info.rss)
                rss += info.rss
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.done.wait(self.every)
