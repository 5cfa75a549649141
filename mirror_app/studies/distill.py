"""``python -m mirror_app.studies.ablations distill``: which distillation earns its phase.

ModalityMirror under each distillation objective (``kl``, the paper's KL alone; ``kd``; ``dkd``; ``agreement``)
with the fused teacher, under both readings of phase 1 (the paper's: audiovisual clients do not train the audio
head; the stronger one: they do), then the ``--best`` objective with the audio-branch teacher, the best-per-sample
teacher and audio-only clients training in phase 2 (the paper's reading); against MultiFL under both readings
(its own run of the same 100 rounds, and ModalityMirror's phase 1 in the same run), Harmony and FedCMI. The
preset (paper-laptop: 80 + 20 rounds, 10 of 100 clients a round) at missing rates 0.1 / 0.3 / 0.5.

The cells whose config is a registered method's (ModalityMirror, MultiFL, MultiFL with the audio head, Harmony,
FedCMI) carry Table 1's keys, so a records folder shared with `make table1` serves both.

``ablation.md``: the student against its own phase 1 and the baselines; the audio model's majority share at the
end of phase 1 and at the first evaluation of phase 2 (a collapse at the start of distillation shows there), per
run in ``handover.csv``; how much of the teacher's decisions its audio branch reproduces on the test clips
(``audio_av_agreement`` at the end of phase 1) and the share of samples the ``agreement`` objective distilled;
the per-class F1 change from phase 1 to the student, on the classes audio decided poorly in phase 1 and on the
others (the paper's Fig. 2 claim). ``distill.png``: student and baselines against the missing rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mirror_app.studies.runs import Cell, _save, collect

OBJECTIVES = ("kl", "kd", "dkd", "agreement")
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
HANDOVER_SLACK = 0.1  # the target: the first phase-2 majority share at most the end of phase 1's plus this


def _mm_cell(rate: float, seed: int, objective: str, reading: str, variant: str = "") -> Cell:
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


def _per_class_change(out: Path, cell: Cell, p1_round, p2_round) -> pd.DataFrame | None:
    """Per class: phase-1 F1 at its best-dev round, the student's at its best-dev round, and the change."""
    path = out / "runs" / cell.key / "per_class_f1.csv"
    if not path.is_file() or p1_round is None or p2_round is None or pd.isna(p1_round) or pd.isna(p2_round):
        return None
    f = pd.read_csv(path)
    before = f[f["round"] == int(p1_round)].set_index("class")["f1"]
    after = f[f["round"] == int(p2_round)].set_index("class")["f1"]
    if before.empty or after.empty:
        return None
    frame = pd.DataFrame({"phase1_f1": before, "student_f1": after})
    frame["change"] = frame["student_f1"] - frame["phase1_f1"]
    # the classes audio decided poorly: the lower half of the classes by phase-1 F1 (ties by class order)
    frame["weak"] = frame["phase1_f1"].rank(method="first") <= len(frame) / 2
    return frame


def distill_frame(cells: list[Cell], out: Path) -> pd.DataFrame:
    """runs.csv's rows of ``cells`` with the study's columns: reading, objective, variant, phase-1 handover."""
    runs = collect(cells, out)
    described = [_describe(c) for c in cells]
    runs["reading"] = [d[0] for d in described]
    runs["objective"] = [d[1] for d in described]
    runs["variant"] = [d[2] for d in described]
    extra = []
    for cell in cells:
        last1, first2, kept = _phase_rows(out, cell) if cell.method == MM else ({}, {}, None)
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
    runs["handover_rise"] = pd.to_numeric(runs["phase2_first_majority_share"], errors="coerce") - pd.to_numeric(
        runs["phase1_end_majority_share"], errors="coerce"
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
        mm = ok[(ok["reading"] == reading) & (ok["method"] == MM)]
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
    lines += _handover_lines(ok, rates) + _agreement_lines(ok, rates) + _per_class_lines(ok, out, cells)
    lines += _verdict_lines(ok, rates)
    return "\n".join(lines) + "\n", runs


def _handover_lines(ok: pd.DataFrame, rates: list[float]) -> list[str]:
    mm = ok[ok["method"] == MM]
    lines = [
        "### Collapse at the start of phase 2",
        "",
        "The audio model's majority share (the share of test clips given its most predicted class) at the end of "
        "phase 1 -> at the first evaluation of phase 2, in % (mean over seeds); then the runs whose share rose by "
        f"more than {100 * HANDOVER_SLACK:.0f} points, of all. Per run: handover.csv.",
        "",
        "| reading | method | " + " | ".join(f"{r:g}" for r in rates) + " | rose > 10 points |",
        "|" + " --- |" * (len(rates) + 3),
    ]
    for reading in READINGS:
        for objective, variant in _rows(mm, reading):
            sel = mm[(mm["reading"] == reading) & (mm["objective"] == objective) & (mm["variant"] == variant)]
            row = []
            for r in rates:
                g = sel[np.isclose(sel["missing_rate"], r)]
                row.append(f"{_pct(g['phase1_end_majority_share'])} -> {_pct(g['phase2_first_majority_share'])}")
            rose = int((sel["handover_rise"] > HANDOVER_SLACK).sum())
            lines.append(
                f"| {reading} | {_label(objective, variant)} | " + " | ".join(row) + f" | {rose} of {len(sel)} |"
            )
    return lines + [""]


def _agreement_lines(ok: pd.DataFrame, rates: list[float]) -> list[str]:
    mm = ok[(ok["method"] == MM) & (ok["objective"] == "kl") & (ok["variant"] == "")]
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
        agree = ok[(ok["method"] == MM) & (ok["objective"] == "agreement") & (ok["reading"] == reading)]
        agree = agree[agree["variant"] == ""]
        for label, frame, column in (
            ("teacher AV top-1", sel, "teacher_av_top1"),
            ("fused and audio branch agree", sel, "teacher_audio_agreement"),
            ("samples distilled by agreement", agree, "distill_kept_share"),
        ):
            row = [_pct(frame[np.isclose(frame["missing_rate"], r)][column]) for r in rates]
            lines.append(f"| {reading} | {label} | " + " | ".join(row) + " |")
    return lines + [""]


def _per_class_lines(ok: pd.DataFrame, out: Path, cells: list[Cell]) -> list[str]:
    by_key = {c.key: c for c in cells}
    mm = ok[ok["method"] == MM]
    lines = [
        "### Which classes distillation moves (the paper's Fig. 2 claim)",
        "",
        "Audio F1 change in points from phase 1 (its best-dev round) to the student (its best-dev round in phase "
        "2), mean over classes and runs (all rates and seeds): on the classes audio decided poorly in phase 1 "
        "(the lower half of the classes by phase-1 F1 in that run) and on the others.",
        "",
        "| reading | method | weak classes | strong classes |",
        "| --- | --- | --- | --- |",
    ]
    for reading in READINGS:
        for objective, variant in _rows(mm, reading):
            sel = mm[(mm["reading"] == reading) & (mm["objective"] == objective) & (mm["variant"] == variant)]
            frames = [
                _per_class_change(out, by_key[k], p1, p2)
                for k, p1, p2 in zip(sel["key"], sel["phase1_best_dev_round"], sel["best_dev_round"])
            ]
            frames = [f for f in frames if f is not None]
            if not frames:
                continue
            both = pd.concat(frames)
            weak, strong = both[both["weak"]]["change"], both[~both["weak"]]["change"]
            lines.append(
                f"| {reading} | {_label(objective, variant)} | {100 * weak.mean():+.1f} | {100 * strong.mean():+.1f} |"
            )
    return lines + [""]


def _verdict_lines(ok: pd.DataFrame, rates: list[float]) -> list[str]:
    """The study's targets, each as met or not from the table's means."""

    def mean(sel: pd.DataFrame, column: str, r: float) -> float:
        return float(pd.to_numeric(sel[np.isclose(sel["missing_rate"], r)][column], errors="coerce").mean())

    lines = ["### Against the targets", ""]
    multifl_on = ok[ok["method"] == "multifl-av-head"]
    harmony = ok[ok["method"] == "harmony"]
    for objective in OBJECTIVES:
        strong = ok[(ok["reading"] == "stronger") & (ok["objective"] == objective) & (ok["variant"] == "")]
        paper = ok[(ok["reading"] == "paper") & (ok["objective"] == objective) & (ok["variant"] == "")]
        if strong.empty and paper.empty:
            continue
        gains = [mean(strong, "gain", r) for r in rates]
        over = [mean(strong, "best_dev_audio_top1", r) - mean(multifl_on, "best_dev_audio_top1", r) for r in rates]
        above_harmony = [
            r for r in rates if mean(paper, "best_dev_audio_top1", r) > mean(harmony, "best_dev_audio_top1", r)
        ]
        rose = int((pd.concat([strong, paper])["handover_rise"] > HANDOVER_SLACK).sum())
        lines.append(
            f"- {objective}: stronger reading, gain over its phase 1 "
            + ", ".join(f"{100 * g:+.1f}" for g in gains)
            + " and over MultiFL with the audio head "
            + ", ".join(f"{100 * o:+.1f}" for o in over)
            + f" points at rates {', '.join(f'{r:g}' for r in rates)} "
            + ("(target met)" if all(g >= 0.03 for g in gains) and all(o > 0 for o in over) else "(target not met)")
            + f"; paper's reading above Harmony at {', '.join(f'{r:g}' for r in above_harmony) or 'no rate'}; "
            + f"majority share rose > 10 points at the start of phase 2 in {rose} of "
            f"{len(strong) + len(paper)} runs."
        )
    return lines + [""]


def handover_csv(runs: pd.DataFrame) -> pd.DataFrame:
    """Per ModalityMirror run: the majority shares either side of the phase boundary, and whether it rose."""
    mm = runs[(runs["method"] == MM) & (runs["status"] == "ok")]
    columns = [
        "key",
        "reading",
        "objective",
        "variant",
        "missing_rate",
        "seed",
        "phase1_end_round",
        "phase1_end_majority_share",
        "phase2_first_round",
        "phase2_first_majority_share",
        "handover_rise",
    ]
    frame = mm[columns].copy()
    frame["collapsed_at_handover"] = frame["handover_rise"] > HANDOVER_SLACK
    return frame


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
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("best-dev audio top-1 (%)")
    return _save(fig, out / "distill.png")
