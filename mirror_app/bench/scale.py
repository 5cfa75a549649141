"""``make bench SCALE=1``: how a simulation's start, rounds and memory grow with the number of SuperNodes.

    python -m mirror_app.bench.scale --out results/bench            # N = 100, 1,000, 10,000, 30,000

For each N, one ``flwr run`` of MultiFL (IID partitions of the embedded dataset grown to
``--clips-per-class`` so that 30,000 clients each hold clips; 10 clients a round, ``--rounds`` rounds, every one
evaluated) on a private SuperLink: the time from ``flwr run`` to the first evaluation, round 1, the median of the
later rounds, the peak PSS of every process the SuperLink runs, and the census's share (nodes asked / nodes).
Then the refusal of a federation with too little data: N = 10,000 on the default-size embedded dataset (3,600
training clips), through a plain ``flwr run`` (no pre-run check): seconds until the run ends, its one-line
reason, and whether any node was asked. Writes ``scale.md``, ``scale.json`` and ``scale.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from mirror_app.bench.overhead import ROOT, round_seconds, run_timeline, simulate

SIZES = (100, 1000, 10000, 30000)
CLIPS_PER_CLASS = 2100  # 42,000 clips: 30,240 training clips once test (20 %) and dev (10 % of train) are out
TARGETS = {"round1_ratio": 2.0, "later_ratio": 1.2, "memory_ratio": 1.5, "refusal_s": 15.0}


def run_config(clips_per_class: int, rounds: int, data_dir: str = "") -> str:
    where = f" data-dir='{data_dir}'" if data_dir else ""
    return (
        f"strategy='multifl' num-server-rounds={rounds} distill-rounds=0 clients-per-round=10 eval-every=1 "
        f"partitioner='iid' embedded-clips-per-class={clips_per_class}{where}"
    )


def scale_bench(
    out: Path,
    sizes=SIZES,
    clips_per_class: int = CLIPS_PER_CLASS,
    rounds: int = 4,
    timeout: float = 3600,
    log=print,
    data_dir: str = "",
) -> dict:
    from mirror_app.core.config import RunConfig
    from mirror_app.deploy.launch import SuperLink, failure_reason, interrupt_on_signals
    from mirror_app.deploy.preflight import pairs_to_values, parse_pairs
    from mirror_app.results import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=out))
    config = run_config(clips_per_class, rounds, data_dir)
    log(f"bench scale: the embedded dataset at {clips_per_class} clips per class (generated once)")
    cfg = RunConfig.from_dict(pairs_to_values(parse_pairs(config)))
    cache = cfg.load_dataset()
    report: dict = {"clips": len(cache), "train_clips": int(cache.indices("train").size), "rounds": rounds, "runs": {}}
    try:
        with interrupt_on_signals(), SuperLink(work / "flwr-home") as link:
            for n in sizes:
                log(f"bench scale: {n} SuperNodes")
                run = simulate(link, work / f"n{n}", n, config, timeout, "client-resources-num-cpus=1")
                wide = run_timeline(run["run_dir"])
                per_round = round_seconds(run["metrics"])
                summary = json.loads((run["run_dir"] / "summary.json").read_text())
                census = summary.get("census") or {}
                report["runs"][n] = {
                    "first_eval_s": float(wide.loc[0, "recorded"]) - run["flwr_run_at"],
                    "round1_s": float(per_round.loc[1]),
                    "later_s": float(per_round.loc[2:rounds].median()),
                    "peak_pss_mib": run["peak_pss"] / 2**20,
                    "census": census.get("mode"),
                    "asked": census.get("asked"),
                    "census_share": (census.get("asked") or 0) / n,
                }
            log("bench scale: 10000 SuperNodes on the default-size dataset (too little data)")
            t0 = time.perf_counter()
            refusal_out = work / "refusal"
            refusal_out.mkdir()
            small = f"partitioner='iid' output-dir='{refusal_out}'"
            res = link.flwr_run(
                ROOT,
                "--federation-config",
                "num-supernodes=10000 client-resources-num-cpus=1",
                "--run-config",
                small,
                timeout=timeout,
                log_file=work / "refusal.log",
            )
            text = (work / "refusal.log").read_text(errors="replace")
            report["refusal"] = {
                "seconds": time.perf_counter() - t0,
                "reason": failure_reason(text) or res.stdout[-300:],
                "clients_csv": any(refusal_out.glob("*/clients.csv")),
                "asked": "did not report its modality" in text,
            }
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    report["runs"] = {str(k): v for k, v in report["runs"].items()}
    figure(report, out)
    atomic_write(out / "scale.json", lambda p: Path(p).write_text(json.dumps(report, indent=2, default=float)))
    atomic_write(out / "scale.md", lambda p: Path(p).write_text(markdown(report)))
    return report


def figure(report: dict, out: Path) -> Path | None:
    if not report["runs"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mirror_app.studies.runs import _save

    frame = pd.DataFrame(report["runs"]).T
    frame.index = frame.index.astype(int)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(frame.index, frame["round1_s"], marker="o", label="round 1")
    left.plot(frame.index, frame["later_s"], marker="o", label=f"rounds 2-{report['rounds']} (median)")
    left.plot(frame.index, frame["first_eval_s"], marker="o", label="flwr run to the first evaluation")
    left.set(xscale="log", xlabel="SuperNodes", ylabel="seconds", title="time")
    left.legend(fontsize=8)
    right.plot(frame.index, frame["peak_pss_mib"] / 1024, marker="o", color="tab:red")
    right.set(xscale="log", xlabel="SuperNodes", ylabel="peak PSS (GiB)", title="memory of every process")
    right.set_ylim(bottom=0)
    return _save(fig, out / "scale.png")


def markdown(report: dict) -> str:
    runs = {int(k): v for k, v in report["runs"].items()}
    base = runs[min(runs)]
    lines = [
        f"# Scale: {report['clips']} embedded clips ({report['train_clips']} for training), IID partitions, 10 clients "
        f"a round, {report['rounds']} rounds",
        "",
        "| SuperNodes | census (nodes asked) | flwr run to the first evaluation | round 1 | later rounds (median) "
        "| peak PSS |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n, r in sorted(runs.items()):
        lines.append(
            f"| {n:,} | {r['census']} ({r['asked']:,}, {100 * r['census_share']:.1f} %) | {r['first_eval_s']:.1f} s | "
            f"{r['round1_s']:.2f} s | {r['later_s']:.2f} s | {r['peak_pss_mib']:,.0f} MiB |"
        )
    lines += ["", "| target | figure | |", "| --- | --- | --- |"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    if 10000 in runs:
        r1 = runs[10000]["round1_s"] / base["round1_s"]
        later = runs[10000]["later_s"] / base["later_s"]
        lines += [
            f"| round 1 at 10,000 / at {min(runs):,} <= {TARGETS['round1_ratio']}x | {r1:.2f}x | {verdict(r1 <= 2)} |",
            f"| later rounds at 10,000 / at {min(runs):,} <= {TARGETS['later_ratio']}x | {later:.2f}x | "
            f"{verdict(later <= TARGETS['later_ratio'])} |",
        ]
    if 30000 in runs:
        mem = runs[30000]["peak_pss_mib"] / base["peak_pss_mib"]
        lines.append(
            f"| peak PSS at 30,000 / at {min(runs):,} <= {TARGETS['memory_ratio']}x | {mem:.2f}x | "
            f"{verdict(mem <= TARGETS['memory_ratio'])} |"
        )
    refusal = report.get("refusal")
    if refusal:
        lines.append(
            f"| 10,000 nodes, too little data: one line in < {TARGETS['refusal_s']:.0f} s, no node asked | "
            f"{refusal['seconds']:.1f} s; {'a node was asked' if refusal['asked'] else 'no node asked'}; "
            f"`{refusal['reason']}` | {verdict(refusal['seconds'] < TARGETS['refusal_s'] and not refusal['asked'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirror_app.bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/bench")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="numbers of SuperNodes, comma-separated")
    p.add_argument("--clips-per-class", type=int, default=CLIPS_PER_CLASS)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--records", default="", help="also keep the report as a record there (docs/records)")
    p.add_argument("--data-dir", default="", help="where the embedded dataset is generated (default: data-dir's)")
    args = p.parse_args(argv)
    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        print(f"error: --sizes {args.sizes!r} must be comma-separated integers", file=sys.stderr)
        return 2
    if args.rounds < 2 or not sizes:
        print("error: give at least one size and --rounds >= 2 (round 1 includes start-up)", file=sys.stderr)
        return 2
    try:
        report = scale_bench(
            Path(args.out).resolve(), sizes, args.clips_per_class, args.rounds, args.timeout, data_dir=args.data_dir
        )
    except KeyboardInterrupt:
        print("bench scale: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    if args.records:
        from mirror_app.studies.runs import record_report

        record_report(report, "scale", Path(args.records))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
