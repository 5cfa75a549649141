"""``flwr run . --stream`` that says whether the run worked: what `make run` calls.

    python -m mirror_app.run --run-config "missing-rate=0.5 num-server-rounds=20" [--connection NAME]

1. Checks first, in about a second and before Flower starts anything: the run config (pyproject defaults
   plus the overrides, the same RunConfig validation the apps do), the strategy, the output dir, and that
   the dataset is prepared (the embedded one is generated here if missing, as the run would). A problem
   prints one line and exits 2.
2. Runs ``flwr run . <connection> --stream --run-config ...``, showing Flower's output as it comes except
   Python tracebacks; everything, tracebacks included, goes to ``<output-dir>/logs/run-<time>.log``. Without
   ``--connection``, on a SuperLink of its own (a simulation in a temporary FLWR_HOME, ``--num-supernodes`` clients
   of ``--client-cpus`` CPUs each), stopped when the run ends: nothing is written to your ``~/.flwr`` and nothing
   keeps running afterwards.
3. Decides from the run's own status on the SuperLink (``flwr list --run-id N``): a finished run exits 0
   and names its folder; a failed one prints ``run failed: <reason>`` and the log's path, and exits 1
   (``flwr run --stream`` itself exits 0 whatever the run's outcome).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirror_app.deploy.launch import TracebackFilter, run_outcome
from mirror_app.deploy.preflight import check_run

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="flwr run . --stream, with the run config checked first and an exit "
        "status that says whether the run finished"
    )
    p.add_argument("--run-config", default="", help='"key=value ..." over [tool.flwr.app.config] (and --preset)')
    p.add_argument(
        "--output-dir", default="", help="the run config's output-dir where neither --run-config nor --preset sets it"
    )
    p.add_argument(
        "--data-dir", default="", help="the run config's data-dir where neither --run-config nor --preset sets it"
    )
    p.add_argument("--preset", default="", help="a run-config TOML file (conf/*.toml) under --run-config's keys")
    p.add_argument(
        "--connection",
        default="",
        help="a SuperLink connection of $FLWR_HOME/config.toml (default: a simulation on a SuperLink of this run's "
        "own, stopped when it ends)",
    )
    p.add_argument(
        "--num-supernodes",
        type=int,
        default=0,
        help="the simulation's size (with --client-cpus CPUs per client; default: Flower's)",
    )
    p.add_argument("--client-cpus", type=float, default=1.0)
    p.add_argument("--federation-config", default="", help="passed to flwr run as --federation-config")
    p.add_argument("--app", default=str(ROOT), help="the Flower app folder (default: this project)")
    p.add_argument(
        "--pretrain",
        action="store_true",
        help="where audio-/video-pretrained is 'auto' and no encoder fits the dataset's front end, pretrain one on "
        "the proxy set first (cheap backbones; others start from random weights, said in one line)",
    )
    args = p.parse_args(argv)
    from mirror_app.deploy.preflight import with_defaults
    from mirror_app.studies.runs import SweepError, merged_run_config

    try:  # the user's word last: --run-config over the preset, both over the --output-dir / --data-dir paths
        # Flower takes a TOML file or key=value pairs, not both: the preset becomes pairs
        merged = merged_run_config(args.preset, args.run_config, per_run_keys=(), validate=False)
        paths = {"output-dir": args.output_dir, "data-dir": args.data_dir}
        args.run_config = with_defaults(merged, {k: f"'{v}'" for k, v in paths.items() if v})
    except (SweepError, ValueError) as exc:  # a key given twice, a preset that is not TOML
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        cfg = check_run(args.run_config, num_clients=args.num_supernodes)
        if args.pretrain:
            from mirror_app.model.pretrain import ensure_pretrained

            if ensure_pretrained(cfg, cfg.load_dataset().spec):
                cfg = check_run(args.run_config)  # the new files, loaded as the run will
    except ValueError as exc:  # ConfigError, DatasetNotPrepared, PretrainedError, a value that is not TOML
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.num_supernodes and cfg.clients_per_round > args.num_supernodes:
        print(
            f"error: run config 'clients-per-round' = {cfg.clients_per_round} is invalid: the simulation has "
            f"{args.num_supernodes} SuperNodes (lower clients-per-round or raise NUM_CLIENTS)",
            file=sys.stderr,
        )
        return 2
    logs = cfg.resolve(cfg.output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with contextlib.ExitStack() as stack:
        env, connection, federation = {**os.environ, "PYTHONUNBUFFERED": "1"}, args.connection, args.federation_config
        if not connection:  # a simulation on a SuperLink of its own, in a temporary FLWR_HOME, stopped at the end
            from mirror_app.deploy.launch import SuperLink

            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flwr-run-")))
            link = stack.enter_context(SuperLink(home))
            env, connection = {**link.env, "PYTHONUNBUFFERED": "1"}, link.CONNECTION
            if args.num_supernodes and not federation:
                federation = f"num-supernodes={args.num_supernodes} client-resources-num-cpus={args.client_cpus:g}"
        cmd = ["flwr", "run", args.app, connection, "--stream"]
        if federation:
            cmd += ["--federation-config", federation]
        if args.run_config.strip():
            cmd += ["--run-config", args.run_config]
        output = stream(cmd, args.app, env, log_path)
        if output is None:
            return 130
        run_id, status, reason = run_outcome(output, env, connection, Path(args.app))
    if run_id is None:
        reason = reason or "flwr run did not start a run"
        print(f"run failed to start: {reason} (log: {log_path})", file=sys.stderr)
        return 1
    if status == "finished:completed":
        folders = sorted(cfg.resolve(cfg.output_dir).glob(f"*-run{run_id}"))
        print(f"run {run_id} finished: {folders[-1] if folders else cfg.resolve(cfg.output_dir)} (log: {log_path})")
        return 0
    print(f"run failed: {reason} (run {run_id}, status {status}; full log: {log_path})", file=sys.stderr)
    return 1


def stream(cmd: list[str], app: str, env: dict, log_path: Path) -> str | None:
    """Run ``cmd``, showing its output as it comes except Python tracebacks and writing all of it to ``log_path``;
    returns the output (None when interrupted)."""
    shown = TracebackFilter()
    output: list[str] = []
    with (
        open(log_path, "w") as log,
        subprocess.Popen(
            cmd, cwd=app, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc,
    ):
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                output.append(line)
                if shown.keep(line):
                    sys.stdout.write(line)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            proc.terminate()
            print(f"\ninterrupted (log: {log_path})", file=sys.stderr)
            return None
    return "".join(output)


if __name__ == "__main__":
    sys.exit(main())
