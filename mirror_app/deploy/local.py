"""A real deployment on this machine: one SuperLink and N SuperNodes on loopback.

    python -m mirror_app.deploy.local --nodes 3 --audio-only 1            # what `make deploy-local` runs
    python -m mirror_app.deploy.local --nodes 3 --audio-only 1 --secure   # TLS + SuperNode authentication

Unlike simulation, every client is its own ``flower-supernode`` process that connects to
the SuperLink over the Fleet API, exactly as on separate machines. Node ``i`` gets
``--node-config "partition-id=i num-partitions=N modality=audio|audiovisual"``: the first
``--audio-only`` nodes lost their video. The connection is registered in an isolated
FLWR_HOME, ModalityMirror (or ``--run-config "strategy=..."``) runs with
``flwr run . <connection> --stream``, and the run folder lands under ``--out``. Every process
started here is stopped at the end, also on Ctrl-C or SIGTERM.

With ``--secure``, a CA, a server certificate and one key pair per node are made under
FLWR_HOME (mirror_app/deploy/certs.py), the SuperLink serves TLS and accepts only SuperNodes whose
public key was registered with ``flwr supernode register``.

The FLWR_HOME is a temporary folder removed at the end, keys included; the logs of the SuperLink and of every
SuperNode are copied first to ``<out>/logs-<time>/``. With ``--pretrain`` (what ``make deploy-local`` passes) the
encoders are built first where missing and cheap, as ``make run`` does; the first line says which weights the
encoders start from. The nodes read (and, being a demonstration, generate where missing: node config
``make-embedded=true``) the embedded dataset under ``--data-dir``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mirror_app.deploy.launch import SuperLink, interrupt_on_signals, run_outcome
from mirror_app.deploy.preflight import check_run, with_defaults

ROOT = Path(__file__).resolve().parents[2]


class ConfigProblem(ValueError):
    """The run config or the data is wrong: found before anything starts."""


def threads_per_node(nodes: int) -> int:
    """torch threads of each of ``nodes`` SuperNodes sharing this machine: its share of the cores."""
    return max(1, (os.cpu_count() or 1) // nodes)


def node_configs(nodes: int, audio_only: int, data_dir: str | None = None) -> list[str]:
    """``--node-config`` of each SuperNode: a partition of the shared dataset, a modality, and its share of this
    machine's cores for torch (``num-threads``: without it every SuperNode's training would use all cores at
    once, and N of them oversubscribe the machine N times)."""
    if nodes < 1:
        raise ValueError(f"--nodes {nodes}: at least 1")
    if not 0 <= audio_only <= nodes:
        raise ValueError(f"--audio-only {audio_only}: between 0 and --nodes ({nodes})")
    extra = f" num-threads={threads_per_node(nodes)} make-embedded=true" + (
        f" data-dir='{data_dir}'" if data_dir else ""
    )
    return [
        f"partition-id={i} num-partitions={nodes} modality='{'audio' if i < audio_only else 'audiovisual'}'" + extra
        for i in range(nodes)
    ]


def attack_node_config(cfg, partition: int, nodes: int) -> str:
    """The node config that makes partition ``partition`` a simulated attacker (run config ``attack``,
    ``attack-fraction``: the same seeded set a simulation draws), or ''. A deployed node attacks only when its own
    node config says so."""
    from data.partition import attacked_partitions

    if cfg.attack == "none" or partition not in set(attacked_partitions(nodes, cfg.attack_fraction, cfg.seed).tolist()):
        return ""
    return f" attack='{cfg.attack}' attack-scale={cfg.attack_scale} attack-std={cfg.attack_std}"


def deploy(
    nodes: int = 3,
    audio_only: int = 1,
    run_config: str = "",
    out: Path = ROOT / "results" / "deploy",
    secure: bool = False,
    home: Path | None = None,
    data_dir: str | None = None,
    on_started=None,
    log=print,
    pretrain: bool = False,
) -> Path:
    """Start the deployment, run the app to completion, stop everything; returns the run folder. Without ``home``
    the deployment's FLWR_HOME (keys included) is a temporary folder removed at the end, its logs copied first."""
    configs = node_configs(nodes, audio_only, data_dir)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # the server reads the data where the nodes do, unless the run config says otherwise
    defaults = {"output-dir": f"'{out}'", "clients-per-round": str(nodes)} | (
        {"data-dir": f"'{data_dir}'"} if data_dir else {}
    )
    config = with_defaults(run_config, defaults)
    try:  # a bad config or an unprepared dataset costs a second, not a deployment
        cfg = check_run(config, num_clients=nodes)
    except ValueError as exc:
        raise ConfigProblem(str(exc)) from None
    if cfg.dp != "off" and cfg.dp_insecure_seeded_noise:
        raise ConfigProblem(
            "run config 'dp-insecure-seeded-noise' = True is invalid in a deployment: anyone holding the run config "
            "could recompute the noise (it is for simulation studies only)"
        )
    if pretrain:  # make run's encoders, where the run config says 'auto' and none is built yet
        from mirror_app.model.pretrain import ensure_pretrained

        cache = cfg.load_dataset()
        if ensure_pretrained(cfg, cache.spec, say=log):
            cfg = check_run(config, num_clients=nodes)
        log(cfg.starting_point(cache.spec, cfg.pretrained_files(cache.spec)))
    configs = [c + attack_node_config(cfg, i, nodes) for i, c in enumerate(configs)]
    if home is None:
        with tempfile.TemporaryDirectory(prefix="flwr-deploy-") as tmp:
            logs = out / f"logs-{time.strftime('%Y%m%d-%H%M%S')}"
            try:
                return _deploy(configs, config, out, secure, Path(tmp), on_started, log, logs)
            finally:
                _keep_logs(Path(tmp), logs)
    return _deploy(configs, config, out, secure, Path(home), on_started, log, Path(home))


def _keep_logs(home: Path, logs: Path) -> None:
    """The SuperLink's and the SuperNodes' logs of a deployment whose FLWR_HOME is about to be removed."""
    found = sorted(home.glob("*.log"))
    if found:
        logs.mkdir(parents=True, exist_ok=True)
        for path in found:
            shutil.copy(path, logs / path.name)


def _deploy(configs: list[str], config: str, out: Path, secure: bool, home: Path, on_started, log, logs: Path) -> Path:
    certs = keys = None
    if secure:
        from mirror_app.deploy.certs import make_certs, make_node_key

        certs = make_certs(home / "certs")
        keys = [make_node_key(home / "certs", f"node{i}") for i in range(len(configs))]
    t0 = time.perf_counter()
    with SuperLink(home, simulation=False, certs=certs, node_auth=secure) as link:
        log(
            f"SuperLink at {link.address} ({'TLS, SuperNode authentication' if secure else 'insecure'}); "
            f"FLWR_HOME {home}"
        )
        for i, cfg in enumerate(configs):
            if keys:
                link.register(keys[i][1])
            link.start_node(f"node{i}", cfg, private_key=keys[i][0] if keys else None)
            log(f"  SuperNode node{i}: {cfg}")
        if on_started:
            on_started(link)
        before = set(out.iterdir())
        log_file = out / f"deploy-{time.strftime('%Y%m%d-%H%M%S')}.log"
        log(f'flwr run . {link.CONNECTION} --stream --run-config "{config}"  (log: {log_file})')
        res = link.flwr_run(ROOT, "--run-config", config, log_file=log_file, timeout=None)
        runs = [d for d in set(out.iterdir()) - before if d.is_dir()]
        if res.returncode != 0 or len(runs) != 1 or not (runs[0] / "summary.json").is_file():
            text = log_file.read_text(errors="replace") if log_file.is_file() else ""
            _, _, reason = run_outcome(text, link.env, link.CONNECTION, ROOT)
            raise RuntimeError(
                f"the deployed run failed: {reason or 'no reason recorded'} (log: {log_file}; node logs in {logs})"
            )
    log(f"finished in {time.perf_counter() - t0:.1f} s: {runs[0]}")
    return runs[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirror_app.deploy.local", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=3, help="SuperNodes to start")
    p.add_argument("--audio-only", type=int, default=1, help="how many of them lost their video")
    p.add_argument("--secure", action="store_true", help="TLS and SuperNode authentication")
    p.add_argument("--run-config", default="", help='e.g. "num-server-rounds=5 distill-rounds=2"')
    p.add_argument("--out", default=str(ROOT / "results" / "deploy"), help="where the run folder goes")
    p.add_argument("--data-dir", default=None, help="data-dir of every node (default: the run config's)")
    p.add_argument(
        "--home", default=None, help="FLWR_HOME for this deployment, kept (default: a temporary folder, removed)"
    )
    p.add_argument(
        "--pretrain", action="store_true", help="build the encoders 'auto' names first where missing (as make run)"
    )
    a = p.parse_args(argv)
    try:
        node_configs(a.nodes, a.audio_only)
    except ValueError as exc:
        p.error(str(exc))
    try:
        with interrupt_on_signals():
            deploy(
                a.nodes,
                a.audio_only,
                a.run_config,
                Path(a.out),
                a.secure,
                Path(a.home) if a.home else None,
                a.data_dir,
                pretrain=a.pretrain,
            )
    except KeyboardInterrupt:
        print("interrupted: every process of this deployment was stopped", file=sys.stderr)
        return 130
    except ConfigProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
