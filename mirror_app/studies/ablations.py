"""Ablations that explain Table 1, one command each (their reports: docs/results/):

    python -m mirror_app.studies.ablations teacher --out results/ablation-teacher   # student vs teacher strength
    python -m mirror_app.studies.ablations drift --out results/ablation-drift       # local epochs x label skew
    python -m mirror_app.studies.ablations fig2 --sweep results/table1              # per-class F1 by sound source
    python -m mirror_app.studies.ablations skew --out results/ablation-skew         # label-skew collapse, 20 clients
    python -m mirror_app.studies.ablations fidelity --seeds 0,1,2                  # the paper's ambiguous readings
    python -m mirror_app.studies.ablations robust --seeds 0,1,2                    # attacks x robust aggregators
    python -m mirror_app.studies.ablations robust --fractions 0.2                  # one attack fraction only
    python -m mirror_app.studies.ablations privacy --seeds 0,1,2                   # accuracy against epsilon
    python -m mirror_app.studies.ablations missingness --seeds 0,1,2               # per client, per clip, over time
    python -m mirror_app.studies.ablations distill --seeds 0,1,2                   # which distillation earns its phase

Each study is a plan of cells (:mod:`.runs`) and a table, in its own module: the readings that explain Table 1
(``teacher``, ``drift``, ``skew``, ``fidelity``, ``fig2``: :mod:`.readings`), ``robust`` and ``privacy``
(:mod:`.security`), ``missingness`` (:mod:`.missingness`) and ``distill`` (:mod:`.distill`). Every run goes through
``flwr run`` exactly as the Table 1 sweep does (same preset, private SuperLink, resumable; a finished run is never
redone) and each study writes ``runs.csv``, ``ablation.md`` and its figures under ``--out``.

``--records DIR`` keeps a record of each finished run (summary.json and metrics.csv, a few KB, no model)
in DIR and takes every run recorded there as finished: docs/results/robust.md is printed from
the records in docs/records/robust without running anything, and a sweep continued on another machine
adds to them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import pandas as pd

from mirror_app.studies import distill as distill_study
from mirror_app.studies import headdrift, security
from mirror_app.studies import missingness as missing_study
from mirror_app.studies.readings import (
    FIDELITY_RATES,
    SKEW_BASE,
    drift_cells,
    drift_table,
    fidelity_cells,
    fidelity_figure,
    fidelity_table,
    fig2,
    skew_cells,
    skew_table,
    teacher_cells,
    teacher_figure,
    teacher_table,
)
from mirror_app.studies.runs import (
    DATA_DIR_HELP,
    Cell,
    SweepError,
    check_folders,
    collect,
    flwr_runner,
    override_pairs,
    resolved_config,
    restore_records,
    run_recorded,
    study_run_config,
)

DEFAULT_PRESET = "conf/paper-laptop.toml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Ablations that explain Table 1.")
    p.add_argument(
        "which",
        choices=(
            "teacher",
            "drift",
            "skew",
            "fig2",
            "fidelity",
            "robust",
            "privacy",
            "missingness",
            "distill",
            "head-drift",
        ),
    )
    p.add_argument("--out", default="", help="results folder (default results/ablation-<which>)")
    p.add_argument("--preset", default=DEFAULT_PRESET)
    p.add_argument("--run-config", default="", help="extra run config for every run (over the preset)")
    p.add_argument("--data-dir", default="", help=DATA_DIR_HELP)
    p.add_argument("--rate", type=float, default=0.3, help="missing rate")
    p.add_argument(
        "--rates", default=",".join(map(str, FIDELITY_RATES)), help="fidelity: the missing rates, comma-separated"
    )
    p.add_argument("--seeds", default="0")
    p.add_argument(
        "--fractions",
        default=",".join(map(str, security.FRACTIONS)),
        help="robust: the attack fractions, comma-separated",
    )
    p.add_argument(
        "--attacks",
        default=",".join(security.ATTACK_TAGS),
        help="robust: the attacks, comma-separated (a subset of the study)",
    )
    p.add_argument(
        "--best",
        default="agreement",
        choices=distill_study.OBJECTIVES,
        help="distill: the objective also run with the other teachers and with audio-only clients training",
    )
    p.add_argument(
        "--methods",
        default=",".join(headdrift.SCREEN_METHODS),
        help="head-drift: the methods ('all': " + ", ".join(headdrift.FULL_METHODS) + ")",
    )
    p.add_argument(
        "--remedies",
        default=",".join(headdrift.SCREEN_REMEDIES),
        help="head-drift: the remedies, comma-separated (a pair joined by '+', e.g. etf+fedlc; default: each "
        "remedy and the best pair)",
    )
    p.add_argument("--num-supernodes", type=int, default=100)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--sweep", default="results/table1", help="fig2: the finished Table 1 sweep to read")
    p.add_argument(
        "--records",
        default="",
        help="a folder of run records (summary.json, metrics.csv per run; a few KB each): runs recorded there are "
        "taken as finished, and every run finished here is recorded there (e.g. docs/records/robust)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: the tables and figures from the runs finished under --out and the records in --records",
    )
    args = p.parse_args(argv)
    from mirror_app.results import atomic_write

    try:
        if args.which == "fig2":
            markdown, figure = fig2(Path(args.sweep).expanduser().resolve(), args.rate)
            atomic_write(Path(args.sweep) / "fig2_by_source.md", lambda path: path.write_text(markdown))
            print(markdown)
            print("figure:", figure)
            return 0
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if args.which == "skew":  # the defaults' local training, linear heads, on 20 clients, not the preset
            run_config = study_run_config("", override_pairs(SKEW_BASE, args.run_config), args.data_dir)
            args.num_supernodes = 20
        else:
            run_config = study_run_config(args.preset, args.run_config, args.data_dir)
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
        fractions = tuple(float(f) for f in args.fractions.split(",") if f.strip())
        if not seeds or not rates or not all(0 <= r < 1 for r in [args.rate, *rates]):
            raise SweepError("give at least one seed and missing rates in [0, 1)")
        if not fractions or not all(0 < f < 1 for f in fractions):
            raise SweepError(f"--fractions {args.fractions!r}: give attack fractions in (0, 1), comma-separated")
        attacks = security.attack_names(args.attacks)
        methods = list(headdrift.FULL_METHODS) if args.methods == "all" else [m for m in args.methods.split(",") if m]
        remedies = [r for r in args.remedies.split(",") if r]
        for remedy in remedies:
            headdrift.remedy_config(remedy)  # a ValueError names the unknown one
    except (SweepError, ValueError) as exc:
        print(f"ablations: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"results/ablation-{args.which}").expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    plans = {
        "teacher": lambda: teacher_cells(run_config, args.rate, seeds),
        "drift": lambda: drift_cells(args.rate, seeds),
        "skew": lambda: skew_cells(args.rate, seeds),
        "fidelity": lambda: fidelity_cells(rates, seeds),
        "robust": lambda: security.robust_cells(args.rate, seeds, fractions, attacks),
        "privacy": lambda: security.privacy_clean_cells(args.rate, seeds),
        "missingness": lambda: missing_study.missingness_cells(seeds),
        "distill": lambda: distill_study.distill_cells(rates, seeds, args.best),
        "head-drift": lambda: headdrift.headdrift_cells(methods, remedies, rates, seeds),
    }
    cells = plans[args.which]()
    if not args.report_only:
        from mirror_app.deploy.preflight import check_run

        try:  # the dataset is there, the output dir writable, the encoders 'auto' names built
            check_run(run_config, num_clients=args.num_supernodes, require_pretrained=True)
        except ValueError as exc:
            print(f"ablations: {exc}", file=sys.stderr)
            return 2
    settings = {"run-config": run_config, "num-supernodes": args.num_supernodes, "which": args.which}
    records = Path(args.records).expanduser().resolve() if args.records else None
    try:
        check_folders(out, records, settings)
    except SweepError as exc:
        print(f"ablations: {exc}", file=sys.stderr)
        return 2

    def expect(cell: Cell) -> dict:
        return resolved_config(cell, run_config)

    def recorded(cells: list[Cell]) -> pd.DataFrame:
        if args.report_only:  # nothing runs: what finished here, and the records
            if records:
                restore_records(cells, out, records, expect)
            return collect(cells, out)
        # the clean run's clients.csv gives the privacy study its clipping norm
        clients = {cells[0].key} if args.which == "privacy" else set()
        return run_recorded(cells, out, runner, expect, records, clients)

    from mirror_app.deploy.launch import SuperLink, interrupt_on_signals
    from mirror_app.results import write_csv

    try:
        with interrupt_on_signals(), contextlib.nullcontext() if args.report_only else SuperLink(out / ".flwr") as link:
            runner = None if args.report_only else flwr_runner(link, args.num_supernodes, run_config, args.timeout)
            runs = recorded(cells)
            if args.which == "privacy":  # the clipping norm comes from the first seed's clean run
                if runs.loc[0, "status"] != "ok":
                    where = f"{out / 'runs'} or {records}" if records else str(out / "runs")
                    print(
                        f"ablations: --report-only: no finished run of {cells[0].key} in {where}; "
                        "run the study without --report-only to make it"
                        if args.report_only
                        else f"ablations: the clean run {cells[0].key} failed (log: {runs.loc[0, 'log']})",
                        file=sys.stderr,
                    )
                    return 1
                norm = security.clipping_norm(out, cells[0])
                cells = cells + security.privacy_dp_cells(args.rate, seeds, norm)
                runs = recorded(cells)
    except SweepError as exc:  # a finished run or record made under another resolved config
        print(f"ablations: {exc}", file=sys.stderr)
        return 2
    write_csv(out / "runs.csv", runs.to_dict("records"), list(runs.columns))
    if args.which == "teacher":
        markdown, frame = teacher_table(cells, out)
        teacher_figure(frame, out)
    elif args.which == "skew":
        markdown, frame = skew_table(cells, out)
    elif args.which == "missingness":
        markdown, frame = missing_study.missingness_table(cells, out)
        missing_study.missingness_figure(cells, out)
    elif args.which == "robust":
        markdown, frame = security.robust_table(cells, out)
        security.robust_figure(frame, out)
        kept = security.krum_kept_table(cells, out)  # runs made here, not records: whose updates Krum kept
        markdown += f"\n{kept}" if kept else ""
    elif args.which == "privacy":
        audit = records / "audit" / "report.json" if records else None
        recorded = json.loads(audit.read_text()) if audit is not None and audit.is_file() else None
        markdown, frame = security.privacy_table(cells, out, norm, recorded)
        security.privacy_figure(frame, out)
        budget = security.budget_frame(run_config)
        markdown += "\n" + security.budget_table(budget)
        security.budget_figure(budget, out)
    elif args.which == "distill":
        markdown, frame = distill_study.distill_table(cells, out, rates)
        distill_study.distill_figure(frame, out, rates)
        handover = distill_study.handover_csv(frame, out)
        write_csv(out / "handover.csv", handover.to_dict("records"), list(handover.columns))
    elif args.which == "head-drift":
        from mirror_app.core.config import RunConfig
        from mirror_app.deploy.preflight import pairs_to_values, parse_pairs

        cfg = RunConfig.from_dict(pairs_to_values(parse_pairs(run_config)))
        central = _central(records, args.report_only, str(cfg.data_path))
        markdown, frame = headdrift.headdrift_table(cells, out, cfg.num_server_rounds, central)
        headdrift.headdrift_figure(frame, out)
    elif args.which == "fidelity":
        markdown, frame = fidelity_table(cells, out, rates, run_config, args.num_supernodes)
        fidelity_figure(frame, out, rates)
    else:
        markdown, frame = drift_table(cells, out)
    atomic_write(out / "ablation.md", lambda path: path.write_text(markdown))
    print(markdown)
    for _, row in runs[runs["status"] == "failed"].iterrows():
        print(f"failed: {row['key']} (log: {row['log']})")
    return 0


def _central(records: Path | None, report_only: bool, data_dir: str) -> dict | None:
    """head-drift's centralised reference: from the records (``<records>/central/report.json``), else trained now
    (unless ``report_only``) and kept there."""
    path = records / "central" / "report.json" if records else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    if report_only:
        return None
    central = headdrift.central_reference(data_dir)
    if records:
        from mirror_app.studies.runs import record_report

        record_report(central, "central", records)
    return central


if __name__ == "__main__":
    raise SystemExit(main())
