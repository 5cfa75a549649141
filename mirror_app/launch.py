"""Start a private SuperLink and stop every process it spawned (by PID and session, never by name).

Used by the sweep (``mirror_app.sweep``) and the end-to-end tests: an isolated FLWR_HOME,
a free loopback port, and a clean stop even when interrupted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flwr_env(flwr_home: Path) -> dict:
    env = os.environ.copy()
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
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


def descendants(pid: int) -> set[int]:
    table = _table()
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, (ppid, _) in table.items() if ppid in frontier and p not in found}
        found |= children
        frontier = children
    return found


def stop_tree(proc: subprocess.Popen, timeout: float = 15.0) -> set[int]:
    """Stop ``proc``, everything it spawned and the sessions those started; return what survived."""
    table = _table()
    tree = {proc.pid} | descendants(proc.pid)
    sessions = {table[p][1] for p in tree if p in table}
    members = {p for p, (_, sid) in table.items() if sid in sessions} | tree
    members.discard(os.getpid())
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
    """A simulation SuperLink on a free loopback port, with an isolated FLWR_HOME."""

    def __init__(self, home: Path, simulation: bool = True):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = flwr_env(self.home)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        cmd = ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
               "--database", str(self.home / "state.db")]
        if simulation:
            cmd.append("--simulation")
        self.log = open(self.home / "superlink.log", "w")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flower-superlink exited: {(self.home / 'superlink.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=0.5).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("flower-superlink did not become healthy within 60 s")

    def flwr_run(self, app: Path, *args: str, timeout: float = 600, log_file: Path | None = None
                 ) -> subprocess.CompletedProcess:
        """``flwr run <app> <this superlink> --stream ARGS``; output captured, or written to ``log_file``."""
        cmd = ["flwr", "run", str(app), "test", "--stream", *args]
        if log_file is None:
            return subprocess.run(cmd, env=self.env, cwd=app, capture_output=True, text=True, timeout=timeout)
        with open(log_file, "w") as fh:
            return subprocess.run(cmd, env=self.env, cwd=app, stdout=fh, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout)

    def __enter__(self) -> "SuperLink":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> set[int]:
        survivors = stop_tree(self.proc)
        self.log.close()
        return survivors
