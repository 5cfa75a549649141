"""The paper's comparison as one command: methods x missing rates x seeds, then Table 1 and figures.

    python -m mirror_app.studies.sweep --out results/table1                 # what `make table1` runs
    python -m mirror_app.studies.sweep --out results/table1-quick --seeds 0 \\
        --run-config "num-server-rounds=10 distill-rounds=5"        # what `make table1-quick` runs

Every run goes through `flwr run .` on a private SuperLink (isolated FLWR_HOME, loopback,
stopped at the end, also on Ctrl-C). A finished run leaves ``runs/<key>/summary.json`` and is
never redone, so an interrupted sweep resumes where it stopped. A run that crashes is
recorded as failed with its log path and the sweep goes on. Outputs under ``--out``:

    runs.csv           every run: method, missing rate, seed, status, log path, the audio model's test
                       metrics at the last round, the best-dev round and the mean of the last 5 rounds
    table1.md          mean +- std over seeds of audio top-1 / top-5 / macro-F1 per method and missing
                       rate: at the best-dev round (the headline) and at the last round
    fig3_missing_rate.png   ModalityMirror audio top-1 for missing rates 0.1 ... 0.9
    fig2_per_class_f1.png   the ten classes whose audio F1 changes most, Harmony -> ModalityMirror
    curves.png         audio top-1 versus round for each method
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mirror_app.studies.runs import (
    DATA_DIR_HELP,
    Cell,
    SweepError,
    _save,
    check_folders,
    collect,
    difference_cell,
    flwr_runner,
    paired_points,
    resolved_config,
    restore_records,
    run_recorded,
    study_run_config,
)
from strategies import compared_methods

LABELS = compared_methods()  # the paper's comparison, from the strategy registry: name -> label
FAMILIES = {  # Table 1's groups of rows, in order (PhasedStrategy.family)
    "paper": "The paper's method",
    "baseline": "The paper's baselines",
    "related": "Related methods",
    "project": "This project's additions and controls",
}


def _family_order() -> tuple[str, ...]:
    from strategies import STRATEGIES

    return tuple(sorted(LABELS, key=lambda m: list(FAMILIES).index(STRATEGIES[m].family)))


METHODS = _family_order()
RATES = (0.1, 0.2, 0.3, 0.4, 0.5)
FIG3_RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def plan(methods, rates, seeds, fig3_rates=()) -> list[Cell]:
    """The cells to run: the Table 1 grid plus ModalityMirror at the extra Figure 3 rates."""
    from strategies import STRATEGIES

    methods, rates, seeds = list(methods), list(rates), list(seeds)
    if not methods or not rates or not seeds:
        raise SweepError("empty sweep: give at least one method, one missing rate and one seed")
    for m in methods:
        if m not in STRATEGIES:
            raise SweepError(f"method {m!r} is unknown; available: {sorted(STRATEGIES)}")
    for r in list(rates) + list(fig3_rates):
        if not 0 <= r < 1:
            raise SweepError(f"missing rate {r} is outside [0, 1)")
    # seed-major: a sweep stopped part-way has whole seeds of every method, not all seeds of a few methods
    cells = [Cell(m, float(r), int(s)) for s in seeds for m in methods for r in rates]
    if "modality-mirror" in methods:
        cells += [Cell("modality-mirror", float(r), int(s)) for s in seeds for r in fig3_rates if r not in rates]
    return cells


PROTOCOLS = {  # table1.md: runs.csv column prefix of each protocol, best-dev first (the headline)
    "best_dev_": (
        "Best dev (headline)",
        "Test metrics of the audio-only model at the round with the best dev audio "
        "top-1 (the dev split is held by the server, carved from train, never given to a client)",
    ),
    "": ("Last round", "Test metrics of the audio-only model after the last round"),
}


def _cell(sel: pd.DataFrame, prefix: str, runs: int) -> str:
    """'top1 +- std / top5 / F1' in % over the runs of ``sel`` that have the protocol's metrics."""
    t1 = 100 * pd.to_numeric(sel[f"{prefix}audio_top1"], errors="coerce").dropna()
    if t1.empty:
        return "n/a"
    std = f" +- {t1.std(ddof=0):.1f}" if len(t1) > 1 else ""
    parts = [f"{t1.mean():.1f}{std}"]
    for key in ("audio_top5", "audio_macro_f1"):
        values = 100 * pd.to_numeric(sel[f"{prefix}{key}"], errors="coerce").dropna()
        parts.append(f"{values.mean():.1f}" if len(values) else "n/a")
    fewer = f" (n = {len(t1)})" if len(t1) < runs else ""  # some runs of the cell lack this protocol's keys
    return " / ".join(parts) + fewer


def table_rows(methods) -> list[tuple[str, str, dict[str, str]]]:
    """Table 1's rows: (label, method, protocol prefix -> the runs.csv prefix that row reports; a protocol
    missing from the map leaves the row out of that table). Besides one row per method: for a method whose
    headline is chosen within its product phases (ModalityMirror: phase 2), its best dev over all rounds;
    for a method with a ``phase1_label``, the model its first phase left in the same run."""
    from strategies import STRATEGIES

    rows = []
    for method in methods:
        cls = STRATEGIES.get(method)
        label = (cls.table_label or cls.display_name()) if cls else LABELS.get(method, method)
        rows.append((label, method, {p: p for p in PROTOCOLS}))
        if cls is not None and cls.product_phases:
            rows.append((f"{label}, best dev over all rounds", method, {"best_dev_": "all_best_dev_"}))
        if cls is not None and cls.phase1_label:
            rows.append((cls.phase1_label, method, {"best_dev_": "phase1_best_dev_", "": "phase1_"}))
    return rows


PAPER_FILE = Path(__file__).with_name("paper_table1.toml")  # the paper's Table 1 as transcribed, with its reference


def paper_table1(dataset: str = "ucf101") -> dict[str, dict[float, float]]:
    """The paper's Table 1 for ``dataset`` as kept in paper_table1.toml: method -> {missing rate: accuracy in %}."""
    import tomllib

    table = tomllib.loads(PAPER_FILE.read_text()).get(dataset, {})
    rates = table.get("rates", [])
    return {m: dict(zip(rates, v)) for m, v in table.items() if isinstance(v, list) and m != "rates"}


def paper_comparison(runs: pd.DataFrame, rates) -> str:
    """The paper's Table 1 (UCF101, paper_table1.toml) beside this project's (the embedded data, best dev, mean +-
    std over seeds), audio top-1 in %, one row per compared method, grouped as the paper's method, its baselines,
    related methods and this project's additions and controls."""
    from strategies import STRATEGIES

    paper = paper_table1()
    ok = runs[(runs["status"] == "ok") & runs["missing_rate"].isin(list(rates))]
    methods = [m for m in METHODS if m in set(ok["method"]) or m in paper]
    head = " | ".join(f"paper {r:g}" for r in rates) + " | " + " | ".join(f"here {r:g}" for r in rates)
    lines = [f"| method | {head} |", "|" + " --- |" * (2 * len(rates) + 1)]
    family = ""
    for method in methods:
        cls = STRATEGIES[method]
        if cls.family != family:
            family = cls.family
            lines.append(f"| **{FAMILIES[family]}** |" + " |" * (2 * len(rates)))
        label = cls.display_name() + (" (this project's)" if cls.beyond_paper else "")
        cells = [f"{paper[method][r]:.2f}" if r in paper.get(method, {}) else "-" for r in rates]
        for r in rates:
            sel = ok[(ok["method"] == method) & np.isclose(ok["missing_rate"], r)]
            cells.append(_cell(sel, "best_dev_", len(sel)).split(" / ")[0] if len(sel) else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    mm = paper.get("modality-mirror", {})
    lo, hi = (min(mm), max(mm)) if mm else (None, None)
    leads = [
        f"over {STRATEGIES[m].display_name()} from {mm[lo] - paper[m][lo]:.1f} to {mm[hi] - paper[m][hi]:.1f} points"
        for m in ("harmony", "multifl", "unifl")
        if lo is not None and lo in paper.get(m, {}) and hi in paper.get(m, {})
    ]
    if leads:
        lines += [
            "",
            f"In the paper's table, ModalityMirror's lead from missing rate {lo:g} to {hi:g}: "
            + "; ".join(leads)
            + ".",
        ]
    return "\n".join(lines) + "\n"


STUDENTS = ("modality-mirror", "modality-mirror-agreement")  # the rows whose audio model is a distilled student
REFERENCES = {  # what each student is paired against, and why (Table 1's closing sections)
    "modality-mirror-control": (
        "Against the phase-2 control",
        "the control (its phase 2 on the same clients' labels alone, no teacher) with the same seed and missing rate, "
        "so the same phase 1",
    ),
    "multifl-av-head": (
        "Against MultiFL with the audio head",
        "MultiFL with the audio head trained by every client (no distillation, as many rounds in all) with the same "
        "seed and missing rate, so the same partitions and client draws",
    ),
}


def control_differences(runs: pd.DataFrame, rates, reference: str = "modality-mirror-control") -> str:
    """Each ModalityMirror row's best-dev audio top-1 minus ``reference``'s (the phase-2 control by default), paired by
    seed and rate, mean +- std in points; '(no measurable effect)' where the mean is within one standard deviation of
    0. Empty when the reference has no finished run."""
    ok = runs[runs["status"] == "ok"]
    other = ok[ok["method"] == reference]
    if other.empty:
        return ""
    lines = [
        "| method | " + " | ".join(f"{r:g}" for r in rates) + " |",
        "|" + " --- |" * (len(rates) + 1),
    ]
    name = "the control" if reference == "modality-mirror-control" else LABELS.get(reference, reference)
    for method in STUDENTS:
        mine = ok[ok["method"] == method]
        cells = [difference_cell(paired_points(mine, other, r), count=True) for r in rates]
        lines.append(f"| {LABELS.get(method, method)} minus {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table1(runs: pd.DataFrame, rates) -> str:
    """Markdown shaped like the paper's Table 1, once per protocol (best dev, then last round): rows are
    methods (:func:`table_rows`), columns missing rates, cells 'top-1 +- std / top-5 / macro-F1' of the audio
    model in %."""
    from strategies import STRATEGIES

    ok = runs[(runs["status"] == "ok") & runs["missing_rate"].isin(list(rates))]
    methods = [m for m in METHODS if m in set(runs["method"])] + sorted(set(runs["method"]) - set(METHODS))
    rows = table_rows(methods)
    lines = []
    for prefix, (title, meaning) in PROTOCOLS.items():
        lines += [
            f"## {title}",
            "",
            f"{meaning}.",
            "",
            "| method | " + " | ".join(f"{r:g}" for r in rates) + " | MB / round |",
            "|" + " --- |" * (len(rates) + 2),
        ]
        for label, method, prefixes in rows:
            if prefix not in prefixes:
                continue
            cells = []
            for r in rates:
                sel = ok[(ok["method"] == method) & np.isclose(ok["missing_rate"], r)]
                cells.append(_cell(sel, prefixes[prefix], len(sel)) if len(sel) else "n/a")
            mb = pd.to_numeric(ok.loc[ok["method"] == method, "mb_per_round"], errors="coerce")
            cells.append(f"{mb.mean():.2f}" if mb.notna().any() else "n/a")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    per_cell = ok.groupby(["method", "missing_rate"])["seed"].nunique() if not ok.empty else pd.Series(dtype=int)
    if per_cell.nunique() <= 1:
        n = f"n = {int(per_cell.iloc[0]) if len(per_cell) else 0} seeds"
    else:
        spans = per_cell.groupby(level=0).agg(["min", "max"])
        n = "seeds per cell: " + ", ".join(
            f"{LABELS.get(m, m)} {lo}" + (f"-{hi}" if hi != lo else "") for m, (lo, hi) in spans.iterrows()
        )
    within = [
        f"{STRATEGIES[m].display_name()}'s best dev is chosen among the rounds of its "
        f"{', '.join(STRATEGIES[m].product_phases)} phase, which holds its product (its best dev over all rounds "
        "is the row below it)"
        for m in methods
        if m in STRATEGIES and STRATEGIES[m].product_phases
    ]
    phase1 = [
        f"'{STRATEGIES[m].phase1_label}' is the model {STRATEGIES[m].display_name()}'s first phase left in the same "
        "runs: at the best dev round within that phase, and at its last round"
        for m in methods
        if m in STRATEGIES and STRATEGIES[m].phase1_label
    ]
    lines.append(
        f"Cells: audio-only test top-1 in % (mean +- std over seeds) / top-5 / macro-F1 (means, in %); {n}. "
        "Best dev is the headline: the test metrics of each run at the round whose dev audio top-1 is "
        "highest (the earliest on ties), so no round is picked by looking at test; last round is the "
        "model the run ended with. "
        + "".join(f"{s}. " for s in within + phase1)
        + "n/a: no finished run, or runs made without a dev split (dev-fraction "
        "= 0) or before dev evaluation existed; (n = k): only k runs of that cell have the metrics. "
        "MB / round: parameters sent to plus received from the clients, mean over rounds and runs."
    )
    return "\n".join(lines) + "\n"


def figures(runs: pd.DataFrame, out: Path, rates) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    ok = runs[runs["status"] == "ok"]
    mm = ok[ok["method"] == "modality-mirror"]
    if not mm.empty:  # Figure 3, at each run's best-dev round where the run has one (the headline protocol)
        score = pd.to_numeric(mm["best_dev_audio_top1"], errors="coerce").fillna(mm["audio_top1"])
        g = score.groupby(mm["missing_rate"]).agg(["mean", "std"]).fillna(0)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.errorbar(g.index, 100 * g["mean"], yerr=100 * g["std"], marker="o", capsize=3)
        ax.set(
            xlabel="video-missing rate",
            ylabel="audio top-1 at the best dev round (%)",
            title="ModalityMirror vs missing rate",
        )
        made.append(_save(fig, out / "fig3_missing_rate.png"))
    rate = 0.3 if any(np.isclose(ok["missing_rate"], 0.3)) else (rates[0] if len(rates) else None)
    per_class = {}
    for method in ("harmony", "modality-mirror"):
        frames = []
        for key in ok[(ok["method"] == method) & np.isclose(ok["missing_rate"], rate)]["key"]:
            f = pd.read_csv(out / "runs" / key / "per_class_f1.csv")
            frames.append(f[f["round"] == f["round"].max()].set_index("class")["f1"])
        if frames:
            per_class[method] = pd.concat(frames, axis=1).mean(axis=1)
    if len(per_class) == 2:  # Figure 2
        change = (per_class["modality-mirror"] - per_class["harmony"]).dropna()
        top = change.reindex(change.abs().sort_values(ascending=False).index[:10]).sort_values()
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.barh(top.index, 100 * top.values, color=["tab:red" if v < 0 else "tab:green" for v in top.values])
        ax.set(
            xlabel="audio F1 change, Harmony -> ModalityMirror (points)",
            title=f"largest per-class changes, missing rate {rate:g}",
        )
        made.append(_save(fig, out / "fig2_per_class_f1.png"))
    curves = {}
    for method in sorted(set(ok["method"])):
        keys = ok[(ok["method"] == method) & np.isclose(ok["missing_rate"], rate)]["key"]
        frames = [pd.read_csv(out / "runs" / k / "metrics.csv").set_index("round")["audio_top1"] for k in keys]
        if frames:
            curves[method] = pd.concat(frames, axis=1).mean(axis=1)
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, curve in curves.items():
            ax.plot(curve.index, 100 * curve.values, label=LABELS.get(method, method))
        ax.set(xlabel="round", ylabel="audio top-1 (%)", title=f"audio model per round, missing rate {rate:g}")
        ax.legend()
        made.append(_save(fig, out / "curves.png"))
    return made


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the Table 1 sweep and make its table and figures.")
    p.add_argument("--out", default="results/table1")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--rates", default=",".join(map(str, RATES)))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--fig3-rates", default=",".join(map(str, FIG3_RATES)))
    p.add_argument("--num-supernodes", type=int, default=100)
    p.add_argument(
        "--preset", default="", help="a run-config TOML file (conf/*.toml) for every run; --run-config keys override it"
    )
    p.add_argument("--run-config", default="", help='extra run config for every run, e.g. "num-server-rounds=10"')
    p.add_argument("--data-dir", default="", help=DATA_DIR_HELP)
    p.add_argument("--timeout", type=float, default=3600, help="seconds before one run counts as failed")
    p.add_argument(
        "--records",
        default="",
        help="a folder of run records (docs/records/paper-laptop): runs recorded there are taken as finished, and "
        "every run finished here is recorded there",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write the table and figures from the runs finished so far",
    )
    p.add_argument(
        "--against",
        default="",
        help="the records of the same sweep under another preset (docs/records/paper-laptop): the page adds each "
        "method's change from it, paired by rate and seed",
    )
    args = p.parse_args(argv)

    def floats(text):
        return [float(x) for x in text.split(",") if x.strip()]

    try:
        rates = floats(args.rates)
        cells = plan(
            [m for m in args.methods.split(",") if m],
            rates,
            [int(s) for s in args.seeds.split(",") if s.strip()],
            floats(args.fig3_rates),
        )
    except (SweepError, ValueError) as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return 2
    try:
        run_config = study_run_config(args.preset, args.run_config, args.data_dir)
    except SweepError as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return 2
    if not args.report_only:
        from mirror_app.deploy.preflight import check_run

        try:
            # the dataset is there, the output dir writable, the encoders 'auto' names built
            check_run(run_config, num_clients=args.num_supernodes, require_pretrained=True)
        except ValueError as exc:
            print(f"sweep: {exc}", file=sys.stderr)
            return 2
    out = Path(args.out).expanduser().resolve()
    records = Path(args.records).expanduser().resolve() if args.records else None
    against = Path(args.against).expanduser().resolve() if args.against else None
    if against is not None and not against.is_dir():
        print(f"sweep: --against {args.against}: no such folder of run records", file=sys.stderr)
        return 2
    try:
        check_folders(out, records, {"run-config": run_config, "num-supernodes": args.num_supernodes})
    except SweepError as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return 2

    def expect(cell: Cell) -> dict:
        return resolved_config(cell, run_config)

    from mirror_app.deploy.launch import SuperLink, interrupt_on_signals
    from mirror_app.results import atomic_write, write_csv

    if args.report_only:
        try:
            if records:
                restore_records(cells, out, records, expect)
        except SweepError as exc:  # a record made under another resolved config
            print(f"sweep: {exc}", file=sys.stderr)
            return 2
        runs = collect(cells, out)
        write_csv(out / "runs.csv", runs.to_dict("records"), list(runs.columns))
    else:
        try:
            with interrupt_on_signals(), SuperLink(out / ".flwr") as link:
                runner = flwr_runner(link, args.num_supernodes, run_config, args.timeout)
                runs = run_recorded(cells, out, runner, expect, records)
        except SweepError as exc:  # a finished run made under another resolved config: refused before any run
            print(f"sweep: {exc}", file=sys.stderr)
            return 2

    markdown = table1(runs, rates) + (
        "\n## Beside the paper\n\nAudio top-1 in %: the paper's Table 1 on UCF101 (mirror_app/studies/"
        "paper_table1.toml: its UCF101 rows at the rates transcribed there; its 20 % and 40 % columns and its "
        "ActivityNet rows are not) and this project's on the embedded data, best dev (mean +- std over seeds).\n\n"
        + paper_comparison(runs, rates)
    )
    for reference, (title, what) in REFERENCES.items():
        differences = control_differences(runs, rates, reference)
        if differences:
            markdown += (
                f"\n## {title}\n\nBest-dev audio top-1 of each ModalityMirror row minus that of {what}: mean +- std "
                "over seeds, in points.\n\n" + differences
            )
    if against is not None:
        from mirror_app.studies.headdrift import MAJORITY_TARGET, against_table

        changes = against_table(out / "runs", against, cells)
        markdown += (
            f"\n## Against {against.name}\n\nThis sweep's runs minus those of the same method, rate and seed in "
            f"{args.against} (the same partitions and client draws), in points: mean +- std over the pairs. The "
            "hand-over is the end of phase 1 (round num-server-rounds; for a one-phase method, the same round); the "
            "majority share is the share of test clips given the audio model's most predicted class there (0.05 is "
            f"uniform), and the last column counts this sweep's runs that bring it below {MAJORITY_TARGET:g}.\n\n"
            + (changes or "(no cell has a run in both yet)\n")
        )
    from mirror_app.studies.recipes import recipe_table, recorded_configs

    keys = {m: [c.key for c in cells if c.method == m] for m in dict.fromkeys(c.method for c in cells)}
    markdown += (
        "\n## Recipes\n\nWhat each row is made of, from the resolved config of its runs "
        "(mirror_app/studies/recipes.py).\n\n" + recipe_table(recorded_configs(out / "runs", keys))
    )
    atomic_write(out / "table1.md", lambda path: path.write_text(markdown))
    made = figures(runs, out, rates)
    failed = runs[runs["status"] == "failed"]
    print((out / "table1.md").read_text())
    print("figures:", ", ".join(str(m) for m in made) or "none")
    from mirror_app.deploy.launch import failure_reason

    for _, row in failed.iterrows():
        text = Path(row["log"]).read_text(errors="replace") if Path(str(row["log"])).is_file() else ""
        print(f"failed: {row['key']}: {failure_reason(text) or 'no reason in the log'} (log: {row['log']})")
    if len(failed):
        print(f"sweep: {len(failed)} of {len(runs)} runs failed", file=sys.stderr)
    return 1 if len(failed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
