"""``python -m mirror_app.studies.ablations distill``: which distillation earns its phase, against its control.

ModalityMirror under each distillation objective (``kl``, the paper's KL alone; ``kd``; ``dkd``; ``agreement``) and
its control (``ce``: the same phase 2 on the same clients' labels alone, no teacher) with the fused teacher, under both
readings of phase 1 (the paper's: audiovisual clients do not train the audio head; the stronger one: they do), then
the ``--best`` objective with the audio-branch teacher, the best-per-sample teacher and audio-only clients training
in phase 2 (the paper's reading); against MultiFL under both readings (its own run of the same 100 rounds, and
ModalityMirror's phase 1 in the same run), Harmony and FedCMI. The preset (paper-laptop: 80 + 20 rounds, 10 of 100
clients a round) at missing rates 0.1 / 0.3 / 0.5.

The cells whose config is a registered method's (ModalityMirror, its agreement variant and its control, MultiFL,
MultiFL with the audio head, Harmony, FedCMI) carry Table 1's keys, so a records folder shared with `make table1`
serves both.

``ablation.md``: the student against its own phase 1 and the baselines; each objective minus the control, paired by
seed and rate (the same phase 1), with the seeds' spread; how much of the teacher's decisions its audio branch
reproduces (``audio_av_agreement`` at the end of phase 1) and the share of samples the ``agreement`` objective
distilled; the two explanatory measures of mirror_app/studies/measures.py (which classes phase 2 moves, chosen on dev
and measured on test; the majority share's rise at the hand-over against the run's own variation), each beside the
same measure on placebo runs without any distillation. ``distill.png``: student and baselines against the missing
rate; ``handover.csv``: the rise per run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mirror_app.studies.runs import Cell, _save, collect, difference_cell, paired_points

OBJECTIVES = ("kl", "kd", "dkd", "agreement", "ce")  # ce: the control, phase 2 on labels alone (no teacher)
CONTROL = "ce"
RATES = (0.1, 0.3, 0.5)
READINGS = {  # name -> (what it is, run config)
    "paper": ("the paper's reading: only audio-only clients train the audio head in phase 1", ""),
    "stronger": ("audiovisual clients also train the audio head in phase 1", "av-trains-audio-head=true"),
}
VARIANTS = {  # tag suffix -> (label, run config beside the objective), run under the paper's reading
    "audio-branch": ("audio-branch teacher", "distill-teacher='audio-branch'"),
    "best-per-sample": ("best-per-sample teacher", "distill-teacher='best-per-sample'"),
    "audio-clients": ("fused teacher, audio-only clients train in phase 2", "distill-audio-only-clients=true"),
}
BASELINES = {"paper": ("multifl", "harmony", "fedcmi"), "stronger": ("multifl-av-head",)}
MM = "modality-mirror"


# the registered methods a cell of the paper's reading is (so Table 1's records serve this study too)
REGISTERED = {"agreement": "modality-mirror-agreement", CONTROL: "modality-mirror-control"}
MM_METHODS = (MM, *REGISTERED.values())


def _mm_cell(rate: float, seed: int, objective: str, reading: str, variant: str = "") -> Cell:
    if reading == "paper" and not variant and objective in REGISTERED:
        return Cell(REGISTERED[objective], rate, seed)
    config = " ".join(
        c
        for c in (
            f"distill-objective='{objective}'" if objective != "kl" else "",
            READINGS[reading][1],
            VARIANTS[variant][1] if variant else "",
        )
        if c
    )
    tag = "-".join(t for t in (objective if config else "", "headon" if reading == "stronger" else "", variant) if t)
    return Cell(MM, rate, seed, config, tag)


def distill_cells(rates: list[float], seeds: list[int], best: str = "agreement") -> list[Cell]:
    """Every objective under both readings with the baselines first (seed-major), then ``best``'s variants."""
    cells = []
    for s in seeds:
        for r in rates:
            for reading in READINGS:
                cells += [_mm_cell(r, s, o, reading) for o in OBJECTIVES]
                cells += [Cell(m, r, s) for m in BASELINES[reading]]
    cells += [_mm_cell(r, s, best, "paper", v) for s in seeds for r in rates for v in VARIANTS]
    return cells


def _describe(cell: Cell) -> tuple[str, str, str]:
    """(reading, objective or method, variant) of a cell."""
    registered = {m: o for o, m in REGISTERED.items()}
    if cell.method in registered:
        return "paper", registered[cell.method], ""
    if cell.method != MM:
        return ("stronger" if cell.method == "multifl-av-head" else "paper"), cell.method, ""
    parts = cell.tag.split("-") if cell.tag else []
    objective = next((o for o in OBJECTIVES if cell.config.startswith(f"distill-objective='{o}'")), "kl")
    reading = "stronger" if "headon" in parts else "paper"
    variant = next((v for v in VARIANTS if cell.tag.endswith(v)), "")
    return reading, objective, variant


def _phase_rows(out: Path, cell: Cell) -> tuple[dict, dict, float | None]:
    """(last phase-1 row, first phase-2 row, mean share distilled over phase 2) of a ModalityMirror run."""
    path = out / "runs" / cell.key / "metrics.csv"
    if not path.is_file():
        return {}, {}, None
    m = pd.read_csv(path)
    m = m[m["round"] > 0]
    first, second = m[m["phase"] == "modality-aware-fl"], m[m["phase"] == "distillation"]
    kept = pd.to_numeric(second.get("distill_kept_share", pd.Series(dtype=float)), errors="coerce").dropna()
    return (
        first.iloc[-1].to_dict() if len(first) else {},
        second.iloc[0].to_dict() if len(second) else {},
        float(kept.mean()) if len(kept) else None,
    )


def distill_frame(cells: list[Cell], out: Path) -> pd.DataFrame:
    """runs.csv's rows of ``cells`` with the study's columns: reading, objective, variant, phase-1 handover."""
    runs = collect(cells, out)
    described = [_describe(c) for c in cells]
    runs["reading"] = [d[0] for d in described]
    runs["objective"] = [d[1] for d in described]
    runs["variant"] = [d[2] for d in described]
    extra = []
    for cell in cells:
        last1, first2, kept = _phase_rows(out, cell) if cell.method in MM_METHODS else ({}, {}, None)
        extra.append(
            {
                "phase1_end_round": last1.get("round"),
                "phase1_end_majority_share": last1.get("audio_majority_share"),
                "phase2_first_round": first2.get("round"),
                "phase2_first_majority_share": first2.get("audio_majority_share"),
                "teacher_audio_agreement": last1.get("audio_av_agreement"),
                "teacher_av_top1": last1.get("av_top1"),
                "distill_kept_share": kept,
            }
        )
    runs = pd.concat([runs, pd.DataFrame(extra)], axis=1)
    runs["gain"] = pd.to_numeric(runs["best_dev_audio_top1"], errors="coerce") - pd.to_numeric(
        runs["phase1_best_dev_audio_top1"], errors="coerce"
    )
    return runs


def _pct(values, signed: bool = False) -> str:
    values = 100 * pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if values.empty:
        return "n/a"
    mean = f"{values.mean():+.1f}" if signed else f"{values.mean():.1f}"
    return mean + (f" +- {values.std(ddof=0):.1f}" if len(values) > 1 else "")


def _label(objective: str, variant: str) -> str:
    if objective not in OBJECTIVES:
        from mirror_app.studies.sweep import LABELS

        return LABELS.get(objective, objective)
    return f"ModalityMirror, {objective}" + (f", {VARIANTS[variant][0]}" if variant else ", fused teacher")


def _rows(ok: pd.DataFrame, reading: str) -> list[tuple[str, str]]:
    """The (objective or method, variant) rows of one reading, in the study's order, among the finished runs."""
    sel = ok[ok["reading"] == reading]
    present = set(zip(sel["objective"], sel["variant"]))
    order = [(o, "") for o in OBJECTIVES] + [(o, v) for o in OBJECTIVES for v in VARIANTS]
    order += [(m, "") for m in BASELINES[reading]]
    return [r for r in order if r in present]


def distill_table(cells: list[Cell], out: Path, rates: list[float]) -> tuple[str, pd.DataFrame]:
    runs = distill_frame(cells, out)
    ok = runs[runs["status"] == "ok"]
    heads = " | ".join(f"{r:g}" for r in rates)
    lines = []
    for reading, (meaning, _) in READINGS.items():
        lines += [
            f"### Audio top-1, {meaning}",
            "",
            "Best-dev audio top-1 in % (mean +- std over seeds); for ModalityMirror the student within phase 2, with "
            "its gain over its own phase 1 (best dev within phase 1) in brackets.",
            "",
            f"| method | {heads} |",
            "|" + " --- |" * (len(rates) + 1),
        ]
        mm = ok[(ok["reading"] == reading) & ok["method"].isin(MM_METHODS)]
        for objective, variant in _rows(ok, reading):
            sel = ok[(ok["reading"] == reading) & (ok["objective"] == objective) & (ok["variant"] == variant)]
            row = []
            for r in rates:
                g = sel[np.isclose(sel["missing_rate"], r)]
                cell = _pct(g["best_dev_audio_top1"])
                if objective in OBJECTIVES and len(g):
                    cell += f" ({_pct(g['gain'], signed=True)})"
                row.append(cell if len(g) else "n/a")
            lines.append(f"| {_label(objective, variant)} | " + " | ".join(row) + " |")
        if len(mm):  # phase 1 is the same model whatever the objective: one row, from the kl runs
            base = mm[(mm["objective"] == "kl") & (mm["variant"] == "")]
            row = [_pct(base[np.isclose(base["missing_rate"], r)]["phase1_best_dev_audio_top1"]) for r in rates]
            lines.append("| MultiFL (ModalityMirror's phase 1, same run) | " + " | ".join(row) + " |")
        lines.append("")
    lines += _control_lines(ok, rates) + _agreement_lines(ok, rates) + _measure_lines(ok, out)
    lines += _verdict_lines(ok, rates)
    return "\n".join(lines) + "\n", runs


def _agreement_lines(ok: pd.DataFrame, rates: list[float]) -> list[str]:
    mm = ok[ok["method"].isin(MM_METHODS) & (ok["objective"] == "kl") & (ok["variant"] == "")]
    lines = [
        "### How much of the teacher audio can reach",
        "",
        "At the end of phase 1: the teacher's AV top-1, and the share of test clips on which its fused prediction "
        "and its audio branch's (the audio model handed to phase 2) agree, in % (mean +- std over seeds); the "
        "share of training samples the agreement objective distilled (Kendall's tau above agreement-tau), mean "
        "over phase 2's rounds.",
        "",
        "| reading | measure | " + " | ".join(f"{r:g}" for r in rates) + " |",
        "|" + " --- |" * (len(rates) + 2),
    ]
    for reading in READINGS:
        sel = mm[mm["reading"] == reading]
        agree = ok[ok["method"].isin(MM_METHODS) & (ok["objective"] == "agreement") & (ok["reading"] == reading)]
        agree = agree[agree["variant"] == ""]
        for label, frame, column in (
            ("teacher AV top-1", sel, "teacher_av_top1"),
            ("fused and audio branch agree", sel, "teacher_audio_agreement"),
            ("samples distilled by agreement", agree, "distill_kept_share"),
        ):
            row = [_pct(frame[np.isclose(frame["missing_rate"], r)][column]) for r in rates]
            lines.append(f"| {reading} | {label} | " + " | ".join(row) + " |")
    return lines + [""]


def _boundary(out: Path, ok: pd.DataFrame) -> int:
    """The hand-over round of the study's runs (their num-server-rounds)."""
    import json

    for key in ok["key"]:
        path = out / "runs" / key / "config.json"
        if path.is_file():
            return int(json.loads(path.read_text())["num-server-rounds"])
    return 0


def _measure_rows(ok: pd.DataFrame, out: Path) -> list[tuple[str, str, str, dict]]:
    """(reading, row label, 'distillation' or 'placebo', its measures) for every row of the study: the objectives'
    runs, and the placebo runs that have no distillation (the control, Harmony, MultiFL with the audio head)."""
    from mirror_app.studies.measures import run_measures

    boundary = _boundary(out, ok)
    rows = []
    for reading in READINGS:
        for objective, variant in _rows(ok, reading):
            if objective not in OBJECTIVES and objective not in PLACEBO_METHODS:
                continue
            sel = ok[(ok["reading"] == reading) & (ok["objective"] == objective) & (ok["variant"] == variant)]
            changes, jumps = [], []
            for key in sel["key"]:
                change, jump = run_measures(out / "runs" / key, boundary)
                changes += [change] if change is not None else []
                jumps += [jump] if jump is not None else []
            kind = "placebo" if objective == CONTROL or objective in PLACEBO_METHODS else "distillation"
            rows.append((reading, _label(objective, variant), kind, {"changes": changes, "jumps": jumps}))
    return rows


PLACEBO_METHODS = ("harmony", "multifl-av-head")  # runs with no distillation at all, measured at the same boundary


def _measure_lines(ok: pd.DataFrame, out: Path) -> list[str]:
    """The two explanatory measures, on the distillation rows and beside them on placebo rows (mirror_app/studies/
    measures.py): kept as evidence only where the distillation rows stand apart from the placebo ones."""
    rows = _measure_rows(ok, out)
    lines = [
        "### Which classes phase 2 moves, against placebo runs",
        "",
        "Test F1 change in points of the audio model between its best-dev round before the hand-over and its best-dev "
        "round after it, mean over classes and runs (all rates and seeds): on the classes that were weak **by dev** "
        "F1 before it (the lower half) and on the others; 'same split' chooses the weak classes on test itself, as "
        "the earlier page did. Placebo rows have no teacher: the phase-2 control, and Harmony and MultiFL with the "
        "audio head split at the same round. A gap (weak minus strong) that the placebo rows show too is regression "
        "to the mean, not distillation.",
        "",
        "| reading | row | kind | weak classes | strong classes | weak minus strong | same split: weak / strong | "
        "runs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for reading, label, kind, m in rows:
        c = m["changes"]
        if not c:
            continue
        weak, strong = np.array([x.weak for x in c]), np.array([x.strong for x in c])
        naive_w, naive_s = np.mean([x.same_split_weak for x in c]), np.mean([x.same_split_strong for x in c])
        gap = weak - strong
        lines.append(
            f"| {reading} | {label} | {kind} | {100 * weak.mean():+.1f} | {100 * strong.mean():+.1f} | "
            f"{100 * gap.mean():+.1f} +- {100 * gap.std():.1f} | {100 * naive_w:+.1f} / {100 * naive_s:+.1f} | "
            f"{len(c)} |"
        )
    lines += [
        "",
        "### Collapse at the hand-over, against placebo runs",
        "",
        "The rise of the audio model's majority share from the last evaluation before the hand-over to the first "
        "after it, in points (mean over runs), and the runs in which it exceeds the run's own round-to-round "
        "variation before the hand-over (its mean plus two standard deviations): a collapse the hand-over caused "
        "shows in distillation rows more often than in placebo rows, which cross the same round without one.",
        "",
        "| reading | row | kind | rise at the hand-over | beyond the run's own variation |",
        "| --- | --- | --- | --- | --- |",
    ]
    for reading, label, kind, m in rows:
        j = m["jumps"]
        if not j:
            continue
        rise = np.array([x.jump for x in j])
        lines.append(
            f"| {reading} | {label} | {kind} | {100 * rise.mean():+.1f} +- {100 * rise.std():.1f} | "
            f"{sum(x.collapse for x in j)} of {len(j)} |"
        )
    return lines + [""]


def _control_lines(ok: pd.DataFrame, rates: list[float]) -> list[str]:
    """Each objective's best-dev audio top-1 minus the control's, paired by seed and rate (the same phase 1)."""
    lines = [
        "### Each objective against the phase-2 control",
        "",
        "Best-dev audio top-1 of the student minus the control's (ModalityMirror's phase 2 on the same clients' "
        "labels alone, no teacher) with the same reading, seed and missing rate, so the same phase 1: mean +- std "
        "over seeds, in points; 'no measurable effect' where the mean is within one standard deviation of 0.",
        "",
        "| reading | objective | " + " | ".join(f"{r:g}" for r in rates) + " |",
        "|" + " --- |" * (len(rates) + 2),
    ]
    for reading in READINGS:
        control = ok[(ok["reading"] == reading) & (ok["objective"] == CONTROL) & (ok["variant"] == "")]
        if control.empty:
            continue
        for objective, variant in _rows(ok, reading):
            if objective not in OBJECTIVES or objective == CONTROL:
                continue
            sel = ok[(ok["reading"] == reading) & (ok["objective"] == objective) & (ok["variant"] == variant)]
            cells = [difference_cell(paired_points(sel, control, r)) for r in rates]
            lines.append(f"| {reading} | {_label(objective, variant)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _verdict_lines(ok: pd.DataFrame, rates: list[float]) -> list[str]:
    """The study's questions, answered from the table's paired differences: which objective beats the phase-2
    control, at which rate and by how much (beyond the seeds' spread), and whether the best student beats MultiFL
    with the audio head trained by every client."""

    lines = ["### What the differences say", ""]
    multifl_on = ok[ok["method"] == "multifl-av-head"]
    for reading in READINGS:
        control = ok[(ok["reading"] == reading) & (ok["objective"] == CONTROL) & (ok["variant"] == "")]
        for objective in OBJECTIVES:
            if objective == CONTROL:
                continue
            sel = ok[(ok["reading"] == reading) & (ok["objective"] == objective) & (ok["variant"] == "")]
            if sel.empty or control.empty:
                continue
            beats, said = [], []
            for r in rates:
                d = paired_points(sel, control, r)
                if len(d) < 2:
                    continue
                said.append(f"{d.mean():+.1f} at {r:g}")
                if d.mean() > d.std(ddof=0):
                    beats.append(f"{r:g}")
            over = [paired_points(sel, multifl_on, r) for r in rates]
            above = [f"{r:g}" for r, d in zip(rates, over) if len(d) > 1 and d.mean() > d.std(ddof=0)]
            lines.append(
                f"- {reading} reading, {objective}: against the control {', '.join(said) or 'n/a'} points; above the "
                f"control by more than the seeds' spread at {', '.join(beats) or 'no rate'}; above MultiFL with the "
                f"audio head by more than the spread at {', '.join(above) or 'no rate'}."
            )
    return lines + [""]


def handover_csv(runs: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Per ModalityMirror run: the majority share's rise across the hand-over and the run's own threshold
    (mirror_app/studies/measures.py)."""
    from mirror_app.studies.measures import handover_jump

    mm = runs[runs["method"].isin(MM_METHODS) & (runs["status"] == "ok")]
    boundary = _boundary(out, mm)
    rows = []
    for _, row in mm.iterrows():
        jump = handover_jump(pd.read_csv(out / "runs" / row["key"] / "metrics.csv"), boundary)
        rows.append(
            {
                **{k: row[k] for k in ("key", "reading", "objective", "variant", "missing_rate", "seed")},
                "rise": None if jump is None else jump.jump,
                "threshold": None if jump is None else jump.threshold,
                "beyond_own_variation": None if jump is None else jump.collapse,
            }
        )
    return pd.DataFrame(rows)


def distill_figure(runs: pd.DataFrame, out: Path, rates: list[float]) -> Path | None:
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(READINGS), figsize=(11, 4), sharey=True, squeeze=False)
    for ax, (reading, (meaning, _)) in zip(axes[0], READINGS.items()):
        for objective, variant in _rows(ok, reading):
            sel = ok[(ok["reading"] == reading) & (ok["objective"] == objective) & (ok["variant"] == variant)]
            values = [
                100 * pd.to_numeric(sel[np.isclose(sel["missing_rate"], r)]["best_dev_audio_top1"]).mean()
                for r in rates
            ]
            style = "-o" if objective in OBJECTIVES else "--s"
            ax.plot(rates, values, style, label=_label(objective, variant).replace("ModalityMirror, ", "MM "))
        ax.set(xlabel="missing rate", title=meaning, xticks=list(rates))
        ax.title.set_fontsize(8)
        if ax.lines:  # a reading with no finished run yet has nothing to name
            ax.legend(fontsize=6)
    axes[0][0].set_ylabel("best-dev audio top-1 (%)")
    return _save(fig, out / "distill.png")
