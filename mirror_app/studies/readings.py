"""The readings that explain Table 1, as ablation studies (:mod:`.ablations` runs them).

``teacher`` runs ModalityMirror with teachers of different strength: phase 1 of a quarter, a
half and all of the preset's ``num-server-rounds``, each with and without the pretrained
encoders; it tabulates the frozen teacher's audiovisual top-1 against the distilled student's
audio top-1 and where phase 1 left the audio model. ``drift`` runs MultiFL, Harmony and
ModalityMirror with 1 and 5 local epochs under Dirichlet alpha 0.1 and 1.0. Both go through
``flwr run`` exactly as the Table 1 sweep does (same preset, private SuperLink, resumable; a
finished run is never redone) and write ``runs.csv``, ``ablation.md`` and a figure under
``--out``. ``fig2`` reads a finished Table 1 sweep and draws the paper's Figure 2: the change
in per-class audio F1 from MultiFL to ModalityMirror and from Harmony to ModalityMirror, with
the classes grouped by sound source. ``skew`` runs MultiFL on 20 clients under alpha 0.1 with the
default local training and plain linear heads for 60 rounds, from scratch or pretrained, with plain or restricted
softmax, with 5 or 10 clients per round: what a user's own label-skewed dataset needs (docs/datasets.md, "Label skew").
``fidelity`` runs ModalityMirror under ``distill-divergence`` forward and reverse and MultiFL, each with
``av-trains-audio-head`` false and true, plus Harmony as the reference, at missing rates 0.1 / 0.3 / 0.5; its
table reports ModalityMirror at the best dev round within phase 2 and over all rounds, and MultiFL both as
ModalityMirror's phase 1 in the same run and as its own run with the whole budget (docs/methods.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mirror_app.deploy.preflight import parse_pairs
from mirror_app.studies.runs import (
    Cell,
    SweepError,
    _save,
    collect,
)
from mirror_app.studies.sweep import LABELS, _cell


def teacher_cells(run_config: str, rate: float, seeds: list[int]) -> list[Cell]:
    """ModalityMirror with phase 1 of 1/4, 1/2 and 1/1 of the preset's rounds, with and without pretraining."""
    pairs = parse_pairs(run_config)
    rounds = int(pairs.get("num-server-rounds", 30))
    lengths = sorted({max(1, rounds // 4), max(1, rounds // 2), rounds})
    cells = []
    for r in lengths:
        for pretrained in (True, False):
            config = f"num-server-rounds={r}"
            if not pretrained:
                config += " audio-pretrained='none' video-pretrained='none'"
            tag = f"p1r{r}-{'pre' if pretrained else 'scratch'}"
            cells += [Cell("modality-mirror", rate, s, config, tag) for s in seeds]
    return cells


def drift_cells(rate: float, seeds: list[int]) -> list[Cell]:
    return [
        Cell(m, rate, s, f"local-epochs={e} dirichlet-alpha={a}", f"e{e}-a{a:g}")
        for m in ("multifl", "harmony", "modality-mirror")
        for e in (1, 5)
        for a in (0.1, 1.0)
        for s in seeds
    ]


PRETRAINED_PAIRS = "audio-pretrained='auto' video-pretrained='auto'"  # make pretrain's, under the run's data-dir


# the default local training with plain linear heads and cross-entropy (the collapse the study looks at; the
# defaults' fixed ETF heads and calibrated loss are the head-drift study's)
SKEW_BASE = "num-server-rounds=60 distill-rounds=0 dirichlet-alpha=0.1 classifier='linear' loss-calibration='none'"


def skew_cells(rate: float, seeds: list[int]) -> list[Cell]:
    """MultiFL (phase 1, where a collapse starts) on 20 clients under alpha 0.1: pretrained encoders x
    restricted softmax x 5 or 10 clients per round."""
    cells = []
    for k in (5, 10):
        for pretrained in (False, True):
            for restricted in (False, True):
                config = f"clients-per-round={k} restricted-softmax={'true' if restricted else 'false'}"
                config += (" " + PRETRAINED_PAIRS) if pretrained else " audio-pretrained='none' video-pretrained='none'"
                tag = f"k{k}-{'pre' if pretrained else 'scratch'}-{'rs' if restricted else 'ce'}"
                cells += [Cell("multifl", rate, s, config, tag) for s in seeds]
    return cells


def skew_table(cells: list[Cell], out: Path) -> tuple[str, pd.DataFrame]:
    rows = []
    for cell, s, p in _finished(cells, out):
        final, best, collapse = s.get("final") or {}, s.get("best_dev") or {}, s.get("collapse") or {}
        rows.append(
            {
                "clients_per_round": int(p["clients-per-round"]),
                "pretrained": "-pre-" in cell.tag,
                "restricted": p["restricted-softmax"] == "true",
                "seed": cell.seed,
                "av_top1": final.get("av_top1"),
                "av_majority_share": final.get("av_majority_share"),
                "audio_best_dev_top1": best.get("audio_top1"),
                "audio_majority_share": final.get("audio_majority_share"),
                "collapsed_rounds": len((collapse.get("av") or {}).get("rounds", []))
                + len((collapse.get("audio") or {}).get("rounds", [])),
            }
        )
    frame = pd.DataFrame(rows)
    header = [
        "clients per round",
        "encoders",
        "client loss",
        "AV top-1 (last)",
        "AV majority share",
        "audio top-1 (best dev)",
        "audio majority share",
        "collapsed evaluations (AV + audio)",
    ]
    rows = (
        []
        if frame.empty
        else [
            [
                f"{k} of 20",
                "pretrained" if pre else "from scratch",
                "restricted softmax" if rs else "cross-entropy",
                _fmt(list(g["av_top1"])),
                _fmt(list(g["av_majority_share"]), 0),
                _fmt(list(g["audio_best_dev_top1"])),
                _fmt(list(g["audio_majority_share"]), 0),
                g["collapsed_rounds"].sum(),
            ]
            for (k, pre, rs), g in frame.groupby(["clients_per_round", "pretrained", "restricted"], sort=True)
        ]
    )
    return _markdown(
        header,
        rows,
        "MultiFL, 20 clients (missing rate as given), Dirichlet alpha 0.1, 60 rounds of the "
        "default local training (1 epoch of Adam at lr 5e-4), evaluated every 5th round. Top-1 and "
        "majority share (the share of test clips given the most predicted class) in %; a collapsed "
        "evaluation is one where that share is >= 90 % (from round 3).",
    ), frame


FIDELITY_RATES = (0.1, 0.3, 0.5)


FIDELITY_DIVERGENCES = ("forward", "reverse")


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def fidelity_cells(rates: list[float], seeds: list[int]) -> list[Cell]:
    """Per seed and missing rate: ModalityMirror x divergence x who trains the audio head, MultiFL x who trains
    the audio head (the divergence does not touch it), Harmony once. A cell whose config is the defaults' or a
    registered method's carries Table 1's key (and the distillation study's), so one records folder serves all."""
    cells = []
    for s in seeds:
        for r in rates:
            cells += [
                Cell("modality-mirror", r, s),  # forward KL, only audio-only clients train the audio head
                Cell("modality-mirror", r, s, "av-trains-audio-head=true", "kl-headon"),
                Cell("modality-mirror", r, s, "distill-divergence='reverse'", "reverse"),
                Cell(
                    "modality-mirror", r, s, "distill-divergence='reverse' av-trains-audio-head=true", "reverse-headon"
                ),
                Cell("multifl", r, s),
                Cell("multifl-av-head", r, s),
                Cell("harmony", r, s),
            ]
    return cells


FIDELITY_ROWS = [  # (label, method, divergence, AV clients train the audio head, rule, runs.csv prefix)
    *[
        row
        for head in (False, True)
        for row in [
            *[
                r
                for d in FIDELITY_DIVERGENCES
                for r in (
                    ("ModalityMirror", "modality-mirror", d, head, "best dev within phase 2", "best_dev_"),
                    ("ModalityMirror", "modality-mirror", d, head, "best dev over all rounds", "all_best_dev_"),
                )
            ],
            (
                "MultiFL (ModalityMirror's phase 1, same run)",
                "modality-mirror",
                "forward",
                head,
                "best dev within phase 1",
                "phase1_best_dev_",
            ),
            ("MultiFL (same total budget)", "multifl", None, head, "best dev", "best_dev_"),
        ]
    ],
    ("Harmony", "harmony", None, None, "best dev", "best_dev_"),
]


def fidelity_frame(cells: list[Cell], out: Path) -> pd.DataFrame:
    """runs.csv's rows of these cells, with each cell's divergence and audio-head setting as columns."""
    runs = collect(cells, out)
    pairs = [parse_pairs(c.config) for c in cells]
    mm = [c.method == "modality-mirror" for c in cells]
    runs["divergence"] = [p.get("distill-divergence", "'forward'").strip("'") if m else None for p, m in zip(pairs, mm)]
    runs["av_head"] = [
        None if c.method == "harmony" else (c.method == "multifl-av-head" or p.get("av-trains-audio-head") == "true")
        for c, p in zip(cells, pairs)
    ]
    runs["method"] = runs["method"].replace({"multifl-av-head": "multifl"})  # one MultiFL row per reading
    return runs


def fidelity_table(
    cells: list[Cell], out: Path, rates: list[float], run_config: str = "", num_supernodes: int = 100
) -> tuple[str, pd.DataFrame]:
    from mirror_app.core.config import RunConfig
    from mirror_app.deploy.preflight import pairs_to_values

    cfg = RunConfig.from_dict(pairs_to_values(parse_pairs(run_config)))
    runs = fidelity_frame(cells, out)
    ok = runs[runs["status"] == "ok"]
    header = ["method", "distill-divergence", "AV clients train the audio head", "rule"] + [f"{r:g}" for r in rates]
    rows = []
    for label, method, divergence, head, rule, prefix in FIDELITY_ROWS:
        sel = ok[ok["method"] == method]
        if divergence is not None:
            sel = sel[sel["divergence"] == divergence]
        if head is not None:
            sel = sel[sel["av_head"] == head]
        cells_ = [
            _cell(g, prefix, len(g)) if len(g := sel[np.isclose(sel["missing_rate"], r)]) else "n/a" for r in rates
        ]
        div = divergence if method == "modality-mirror" and "phase 1" not in label else "-"
        rows.append([label, div, "-" if head is None else ("yes" if head else "no"), rule, *cells_])
    # phase 1 does not depend on the divergence: the forward and reverse runs of a cell must agree on it
    mm = ok[ok["method"] == "modality-mirror"]
    same = total = 0
    for _, g in mm.groupby(["missing_rate", "seed", "av_head"]):
        if set(g["divergence"]) >= set(FIDELITY_DIVERGENCES):
            total += 1
            same += int(g["phase1_best_dev_audio_top1"].nunique(dropna=False) == 1)
    agree = f" (the reverse runs' phase 1 agrees in {same} of {total} runs)" if total else ""
    note = (
        "Audio-only test top-1 in % (mean +- std over seeds) / top-5 / macro-F1 (means, in %); "
        f"{cfg.num_server_rounds} rounds of modality-aware FL + {cfg.distill_rounds} of distillation, "
        f"{cfg.clients_per_round} of {num_supernodes} clients a round, Dirichlet alpha {cfg.dirichlet_alpha:g}, "
        f"{cfg.local_epochs} local epoch(s) at lr {cfg.lr:g}, T = {cfg.temperature:g}. "
        "'Best dev within phase 2': ModalityMirror's headline, its distilled student at the phase-2 "
        "round with the best dev audio top-1; 'over all rounds': the same search over phase 1 too. 'MultiFL "
        "(ModalityMirror's phase 1, same run)': the phase-1 model of the forward runs at the best dev round within "
        f"phase 1{agree}; "
        "'MultiFL (same total budget)': "
        f"its own run of {cfg.num_server_rounds + cfg.distill_rounds} rounds. "
        "Harmony's audio model does not depend on the audio-head setting."
    )
    return _markdown(header, rows, note), runs


def fidelity_figure(runs: pd.DataFrame, out: Path, rates: list[float]) -> Path | None:
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for label, method, divergence, head, rule, prefix in FIDELITY_ROWS:
        if "over all rounds" in rule:
            continue
        sel = ok[ok["method"] == method]
        sel = sel if divergence is None or "phase 1" in label else sel[sel["divergence"] == divergence]
        sel = sel if head is None else sel[sel["av_head"] == head]
        name = label.replace(" (ModalityMirror's phase 1, same run)", " (MM phase 1)").replace(
            " (same total budget)", ""
        )
        name += f", {divergence}" if method == "modality-mirror" and "phase 1" not in label else ""
        name += "" if head is None else f", AV head {_on(head)}"
        values = [
            100 * pd.to_numeric(sel[np.isclose(sel["missing_rate"], r)][f"{prefix}audio_top1"], errors="coerce").mean()
            for r in rates
        ]
        series.append((name, values))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series):
        ax.bar(np.arange(len(rates)) + i * width, values, width, label=name)
    ax.set_xticks(np.arange(len(rates)) + 0.4 - width / 2, [f"{r:g}" for r in rates])
    ax.set(xlabel="missing rate", ylabel="audio top-1 at the best dev round (%)", title="Readings of the paper")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out / "fidelity.png")


def _finished(cells: list[Cell], out: Path):
    """(cell, summary.json, the cell's own run config as pairs) of every finished run among ``cells``."""
    for cell in cells:
        path = out / "runs" / cell.key / "summary.json"
        if path.is_file():
            yield cell, json.loads(path.read_text()), parse_pairs(cell.config)


def _markdown(header: list[str], rows: list[list], note: str) -> str:
    """A markdown table, then a blank line and ``note``."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines + ["", note]) + "\n"


def _fmt(values: list, digits: int = 1) -> str:
    values = [100 * v for v in values if v is not None and not pd.isna(v)]
    if not values:
        return "n/a"
    std = f" +- {np.std(values):.{digits}f}" if len(values) > 1 else ""
    return f"{np.mean(values):.{digits}f}{std}"


def phase_best_dev(out: Path, cell: Cell, phase: str) -> float | None:
    """Test audio top-1 at the round of ``phase`` with the best dev audio top-1 (earliest on ties)."""
    path = out / "runs" / cell.key / "metrics.csv"
    if not path.is_file():
        return None
    from mirror_app.results import protocol_summary

    m = pd.read_csv(path)
    best = protocol_summary(m[m["phase"] == phase].to_dict("records"))["best_dev"]  # the run's own rule
    return None if best is None else float(best["audio_top1"])


def teacher_table(cells: list[Cell], out: Path) -> tuple[str, pd.DataFrame]:
    rows = []
    for cell, s, p in _finished(cells, out):
        phases = s.get("phases") or {}
        first = next(iter(phases.values()), {}) if phases else {}
        rows.append(
            {
                "phase1_rounds": int(p["num-server-rounds"]),
                "pretrained": cell.tag.endswith("-pre"),
                "seed": cell.seed,
                "teacher_av_top1": (s.get("final") or {}).get("av_top1"),
                "audio_after_phase1": first.get("audio_top1"),
                "student_best_dev_top1": phase_best_dev(out, cell, "distillation"),
                "student_last_top1": (s.get("final") or {}).get("audio_top1"),
            }
        )
    frame = pd.DataFrame(rows)
    header = [
        "phase-1 rounds",
        "encoders",
        "AV teacher top-1",
        "audio after phase 1",
        "student (best dev of phase 2)",
        "student (last)",
        "gain over phase 1",
    ]
    rows = []
    for (r, pre), g in [] if frame.empty else frame.groupby(["phase1_rounds", "pretrained"], sort=True):
        gain = [
            a - b
            for a, b in zip(g["student_best_dev_top1"], g["audio_after_phase1"])
            if a is not None and b is not None
        ]
        rows.append(
            [
                r,
                "pretrained" if pre else "from scratch",
                _fmt(list(g["teacher_av_top1"])),
                _fmt(list(g["audio_after_phase1"])),
                _fmt(list(g["student_best_dev_top1"])),
                _fmt(list(g["student_last_top1"])),
                _fmt(gain),
            ]
        )
    return _markdown(
        header,
        rows,
        "Top-1 on the test split in % (mean +- std over seeds). The teacher is the "
        "audiovisual model frozen at the end of phase 1; the student is ModalityMirror's distilled audio "
        "model; 'audio after phase 1' is the audio model before distillation (MultiFL at that length); "
        "the student's best dev is the round of phase 2 with the best dev audio top-1; the gain is that "
        "student minus audio after phase 1.",
    ), frame


def drift_table(cells: list[Cell], out: Path) -> tuple[str, pd.DataFrame]:
    rows = []
    for cell, s, p in _finished(cells, out):
        best = s.get("best_dev") or {}
        rows.append(
            {
                "method": cell.method,
                "local_epochs": int(p["local-epochs"]),
                "alpha": float(p["dirichlet-alpha"]),
                "seed": cell.seed,
                "best_dev_audio_top1": best.get("audio_top1"),
                "av_top1": (s.get("final") or {}).get("av_top1"),
            }
        )
    frame = pd.DataFrame(rows)
    settings = [(e, a) for e in (1, 5) for a in (0.1, 1.0)]
    header = ["method"] + [f"{e} epoch{'s' if e > 1 else ''}, alpha {a:g}" for e, a in settings]
    rows = []
    for method in ("multifl", "harmony", "modality-mirror"):
        row = [LABELS.get(method, method)]
        for e, a in settings:
            sel = (
                frame[(frame["method"] == method) & (frame["local_epochs"] == e) & np.isclose(frame["alpha"], a)]
                if not frame.empty
                else frame
            )
            row.append(_fmt(list(sel["best_dev_audio_top1"])) if len(sel) else "n/a")
        rows.append(row)
    return _markdown(
        header, rows, "Audio-only test top-1 in % at the round with the best dev audio top-1 (mean +- std over seeds)."
    ), frame


def teacher_figure(frame: pd.DataFrame, out: Path) -> Path | None:
    if frame.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.8))
    for pre, marker in ((True, "o"), (False, "s")):
        g = frame[frame["pretrained"] == pre]
        ax.scatter(
            100 * g["teacher_av_top1"],
            100 * g["student_best_dev_top1"],
            marker=marker,
            label="pretrained" if pre else "from scratch",
        )
        ax.scatter(
            100 * g["teacher_av_top1"],
            100 * g["audio_after_phase1"],
            marker=marker,
            facecolors="none",
            edgecolors="grey",
        )
    ax.set(
        xlabel="AV teacher top-1 (%)",
        ylabel="audio top-1 (%)",
        title="student (filled) and audio before distillation (hollow)",
    )
    ax.legend()
    return _save(fig, out / "teacher_strength.png")


def sound_sources(classes: list[str]) -> dict[str, str]:
    """Class -> sound source for the embedded dataset's classes; other datasets: each class is its own group."""
    from data.synthetic import CLASSES

    known = {name: source for name, source, _ in CLASSES}
    return {c: known.get(c, c) for c in classes}


def _per_class(sweep: Path, runs: pd.DataFrame, method: str, rate: float) -> pd.Series | None:
    """Mean per-class audio F1 of a method at a missing rate, each run at its best-dev round (else its last)."""
    frames = []
    for key in runs[(runs["method"] == method) & np.isclose(runs["missing_rate"], rate) & (runs["status"] == "ok")][
        "key"
    ]:
        f = pd.read_csv(sweep / "runs" / key / "per_class_f1.csv")
        summary = json.loads((sweep / "runs" / key / "summary.json").read_text())
        best = (summary.get("best_dev") or {}).get("round")
        at = best if best is not None and best in set(f["round"]) else f["round"].max()
        frames.append(f[f["round"] == at].set_index("class")["f1"])
    return pd.concat(frames, axis=1).mean(axis=1) if frames else None


def fig2(sweep: Path, rate: float) -> tuple[str, Path | None]:
    """Per-class F1 change X -> ModalityMirror for X in MultiFL, Harmony, grouped by sound source."""
    runs_csv = sweep / "runs.csv"
    if not runs_csv.is_file():
        raise SweepError(f"{sweep} has no runs.csv: run the Table 1 sweep first (make table1)")
    runs = pd.read_csv(runs_csv)
    mm = _per_class(sweep, runs, "modality-mirror", rate)
    if mm is None:
        raise SweepError(f"{sweep} has no finished modality-mirror run at missing rate {rate:g}")
    sources = sound_sources(list(mm.index))
    changes = {}
    for base in ("multifl", "harmony"):
        other = _per_class(sweep, runs, base, rate)
        if other is not None:
            changes[base] = (mm - other).reindex(mm.index)
    if not changes:
        raise SweepError(f"{sweep} has no finished multifl or harmony run at missing rate {rate:g}")
    order = sorted(mm.index, key=lambda c: (sources[c], c))
    shared = {s for s in sources.values() if list(sources.values()).count(s) > 1}
    lines = [
        "| sound source | class | " + " | ".join(f"{LABELS[b]} -> ModalityMirror" for b in changes) + " |",
        "|" + " --- |" * (len(changes) + 2),
    ]
    for c in order:
        lines.append(
            f"| {sources[c]}{' (shared)' if sources[c] in shared else ''} | {c} | "
            + " | ".join(f"{100 * changes[b][c]:+.1f}" for b in changes)
            + " |"
        )
    group_rows = []
    for label, members in (
        ("classes sharing a sound source", [c for c in order if sources[c] in shared]),
        ("classes with a sound of their own", [c for c in order if sources[c] not in shared]),
    ):
        if members:
            group_rows.append(
                f"| {label} | mean | " + " | ".join(f"{100 * changes[b][members].mean():+.1f}" for b in changes) + " |"
            )
    lines += group_rows
    lines += [
        "",
        f"Change in audio F1 (points) at missing rate {rate:g}, each run at its best-dev round, mean over "
        "seeds. Positive: ModalityMirror is better on that class.",
    ]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(changes), figsize=(5 * len(changes), 6), sharey=True, squeeze=False)
    for ax, (base, change) in zip(axes[0], changes.items()):
        values = [100 * change[c] for c in order]
        ax.barh(
            [f"{c} [{sources[c]}]" for c in order], values, color=["tab:red" if v < 0 else "tab:green" for v in values]
        )
        ax.axvline(0, color="black", lw=0.8)
        ax.set(xlabel=f"audio F1 change, {LABELS[base]} -> ModalityMirror (points)")
    fig.suptitle(f"Per-class change by sound source, missing rate {rate:g}")
    return "\n".join(lines) + "\n", _save(fig, sweep / "fig2_by_source.png")
