"""A SuperNode that says why the SuperLink turned it away: ``flower-supernode`` with the arguments given, its output
passed through as it comes, and, when it exits with one of Flower's connection errors, one more line saying what
that error means here and what to do.

    python -m mirror_app.deploy.node --superlink superlink.lan:9092 --root-certificates certs/ca.crt \\
        --auth-supernode-private-key certs/node0 --node-config "partition-id=0 num-partitions=2" --port 9094

Flower 1.42 tells a refused node only "[code: 2004] Failed to activate SuperNode. The SuperNode could not establish a
connection to the SuperLink." (exit 305); the reason, that its public key was never registered, is written to the
SuperLink's log alone. The codes are the node's to read, so the line is added here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

# Flower's error codes as a refused SuperNode prints them ("[code: N]"), and what they mean for this deployment
EXPLAINED = {
    "2004": (
        "the SuperLink does not know this node's public key: register it where the Control API is reachable "
        "(`flwr supernode register <the node's .pub file> <connection>`); the SuperLink's log names the key it "
        "refused"
    ),
    "2001": (
        "the SuperLink accepts only authenticated SuperNodes: start this node with --auth-supernode-private-key "
        "<its private key> and register the public key (`flwr supernode register`)"
    ),
}
UNREACHABLE = (
    "the SuperLink could not be reached or did not accept the connection: check --superlink (the proxy's public "
    "address and port, docs/deployment.md), and that --root-certificates is the CA that signed its certificate"
)
CONNECTION_EXIT = 305  # Flower's exit code for a SuperNode that could not connect


def supernode() -> str:
    """flower-supernode of this interpreter's environment (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "flower-supernode"
    return str(beside) if beside.is_file() else "flower-supernode"


def explain(output: str, returncode: int) -> str:
    """The line this wrapper adds for a node that exited with ``returncode`` after printing ``output`` ('' when it
    has nothing to add)."""
    codes = re.findall(r"\[code: (\d+)\]", output)
    for code in reversed(codes):
        if code in EXPLAINED:
            return f"modality-mirror: this SuperNode was refused: {EXPLAINED[code]}"
    if returncode == CONNECTION_EXIT or "could not establish a connection" in output:
        return f"modality-mirror: {UNREACHABLE}"
    return ""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        print("\nEvery argument goes to flower-supernode:\n")
        return subprocess.run([supernode(), "--help"]).returncode
    # its own process group: what it leaves behind when it exits (the SuperExec it started keeps retrying its
    # connection) is stopped with it
    proc = subprocess.Popen(
        [supernode(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )

    def forward(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    seen: list[str] = []

    def relay() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            seen.append(line)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    code = proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    reader.join(timeout=10)
    if code != 0:
        reason = explain("".join(seen[-200:]), code)
        if reason:
            print(reason, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
