"""``python -m mirror_app.studies.ablations head-drift``: the remedies for label skew, measured.

Under Dirichlet 0.1 label skew with 10 of 100 clients a round, FedAvg's heads drift toward the few classes of each
round's clients (the audio model's majority share sits at 0.27 to 1 at the end of phase 1 in Table 1's earlier
records). The field's remedies are capabilities of every model and client task here (mirror_app/core/heads.py):

* ``none``: linear heads, the plain cross-entropy, FedAvg (the earlier default);
* ``fixed-random``: FedBABU's fixed random heads; ``etf``: FedETF's fixed simplex-ETF heads with a learnable
  projection and temperature (both on the audio head and the fusion head);
* ``fedlc``: FedLC's calibrated logits; ``fedrs``: FedRS's restricted softmax (the clients' label loss);
* ``fedavgm``: server momentum (FedAvgM, per parameter group);
* a pair, ``<a>+<b>``: both at once (the screening runs the best pair, ``BEST_PAIR``, beside the single ones).

Screening (the default): every remedy at missing rate 0.3, seeds 0 and 1, on MultiFL (the paper's reading),
MultiFL with the audio head trained by every client and ModalityMirror (kl); the full study (``--methods all
--rates 0.1,0.3,0.5 --seeds 0,1,2 --remedies none,<best>``) adds ModalityMirror with the agreement objective, the
phase-2 control and Harmony. Per run: the audio model's test top-1 at its best-dev round, the audiovisual model's
top-1 at the hand-over (round ``num-server-rounds``: ModalityMirror's teacher), the audio model's majority share
there and its mean from round 50 on, and the distance of both models from the centralised reference of the same
pretrained encoders, which the study trains itself with ``make calibrate``'s protocol (kept as a record).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mirror_app.studies.runs import Cell, _save, collect

REMEDIES = {  # name -> (label, run config)
    "none": ("none: linear heads, plain cross-entropy, FedAvg", "classifier='linear' loss-calibration='none'"),
    "fixed-random": ("FedBABU: fixed random heads", "classifier='fixed-random'"),
    "etf": ("FedETF: fixed simplex-ETF heads", "classifier='etf'"),
    "fedlc": ("FedLC: calibrated logits", "loss-calibration='fedlc'"),
    "fedrs": ("FedRS: restricted softmax", "loss-calibration='fedrs'"),
    "fedavgm": ("FedAvgM: server momentum", "aggregator='fedavgm'"),
}
# The best pair: the two single remedies that left the models nearest the centralised reference in the screening of
# the single ones (docs/results/head-drift.md: etf for the audio model, fedlc for the audiovisual one).
BEST_PAIR = "etf+fedlc"
SCREEN_REMEDIES = (*REMEDIES, BEST_PAIR)
SCREEN_METHODS = ("multifl", "multifl-av-head", "modality-mirror")
FULL_METHODS = (
    "multifl",
    "multifl-av-head",
    "modality-mirror",
    "modality-mirror-agreement",
    "modality-mirror-control",
    "harmony",
)
LATE_FROM = 50  # the majority share's mean is over the evaluations from this round on
CENTRAL_EPOCHS = 8  # make calibrate's protocol


def remedy_config(name: str) -> tuple[str, str]:
    """(label, run config) of a remedy or a pair of them (``a+b``); a ValueError names what is allowed."""
    parts = name.split("+")
    unknown = [p for p in parts if p not in REMEDIES]
    if unknown or len(parts) > 2 or ("none" in parts and len(parts) > 1):
        raise ValueError(f"remedy {name!r} is unknown: one of {list(REMEDIES)} or two of them joined by '+'")
    keys: dict[str, str] = {}
    for p in parts:
        for pair in REMEDIES[p][1].split():
            key, value = pair.split("=", 1)
            if key in keys and keys[key] != value:
                raise ValueError(f"remedies {name!r} set {key} twice: combine remedies of different kinds")
            keys[key] = value
    if "classifier" not in keys:  # the preset's classifier may be a remedy itself: each cell names its own
        keys["classifier"] = "'linear'"
    if "loss-calibration" not in keys:
        keys["loss-calibration"] = "'none'"
    if "aggregator" not in keys:
        keys["aggregator"] = "'fedavg'"
    return " + ".join(REMEDIES[p][0] for p in parts), " ".join(f"{k}={v}" for k, v in keys.items())


def headdrift_cells(methods: list[str], remedies: list[str], rates: list[float], seeds: list[int]) -> list[Cell]:
    cells = []
    for s in seeds:
        for r in rates:
            for remedy in remedies:
                _, config = remedy_config(remedy)
                cells += [Cell(m, r, s, config, f"hd-{remedy}") for m in methods]
    return cells


# --------------------------------------------------------------------------------------- centralised reference
def central_reference(data_dir: str, seed: int = 0) -> dict:
    """The audio-only and the audiovisual model of the embedded dataset trained centrally from the same pretrained
    encoders the federated runs start from (``make pretrain``'s, found as 'auto' finds them): make calibrate's
    protocol (:mod:`mirror_app.studies.centralized`, 8 epochs of Adam at 1e-3)."""
    from mirror_app.core.config import RunConfig
    from mirror_app.studies.centralized import centralized

    cfg = RunConfig.from_dict({"data-dir": data_dir})
    spec = cfg.load_dataset().spec
    audio, video = cfg.pretrained_files(spec)
    if not audio or not video:
        raise FileNotFoundError(f"no pretrained encoders under {cfg.pretrained_dir}: run make pretrain first")
    out = centralized("embedded", str(cfg.data_path), CENTRAL_EPOCHS, 1e-3, 32, seed, 1, audio_pretrained=audio,
                      video_pretrained=video)  # fmt: skip
    return out | {"encoders": [Path(audio).name, Path(video).name]}


# -------------------------------------------------------------------------------------------------- measures
def run_row(run: Path, boundary: int) -> dict:
    """The study's measures of one finished run folder."""
    metrics = pd.read_csv(run / "metrics.csv")
    m = metrics[metrics["round"] > 0].sort_values("round")
    at = m[m["round"] <= boundary]
    last = at.iloc[-1] if len(at) else None
    late = pd.to_numeric(m[m["round"] >= LATE_FROM]["audio_majority_share"], errors="coerce")
    summary = json.loads((run / "summary.json").read_text())
    best = summary.get("best_dev") or {}
    return {
        "audio_top1": best.get("audio_top1"),
        "handover_av_top1": None if last is None else float(last["av_top1"]),
        "handover_majority": None if last is None else float(last["audio_majority_share"]),
        "late_majority": float(late.mean()) if late.notna().any() else None,
    }


def headdrift_frame(cells: list[Cell], out: Path, boundary: int) -> pd.DataFrame:
    runs = collect(cells, out)
    runs["remedy"] = [c.tag.removeprefix("hd-") for c in cells]
    rows = []
    for cell in cells:
        folder = out / "runs" / cell.key
        rows.append(run_row(folder, boundary) if (folder / "summary.json").is_file() else {})
    measures = pd.DataFrame(rows, index=runs.index)
    return pd.concat([runs.drop(columns=[c for c in measures.columns if c in runs.columns]), measures], axis=1)


def _mean(values) -> str:
    v = 100 * pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if v.empty:
        return "n/a"
    return f"{v.mean():.1f}" + (f" +- {v.std(ddof=0):.1f}" if len(v) > 1 else "")


def headdrift_table(cells: list[Cell], out: Path, boundary: int, central: dict | None) -> tuple[str, pd.DataFrame]:
    """Per method and remedy (all rates and seeds given): the audio model's best-dev top-1, the audiovisual model at
    the hand-over, the audio majority share there and late, and the distances from the centralised reference."""
    from strategies import STRATEGIES, compared_methods

    labels = compared_methods()
    frame = headdrift_frame(cells, out, boundary)
    ok = frame[frame["status"] == "ok"]
    rates = sorted(set(ok["missing_rate"])) if len(ok) else []
    ref_audio = central["audio_top1"] if central else np.nan
    ref_av = central["av_top1"] if central else np.nan
    lines = []
    if central:
        lines += [
            f"Centralised reference (the same pretrained encoders, make calibrate's protocol: {central['epochs']} "
            f"epochs on every training clip): audio {100 * ref_audio:.1f} %, audiovisual {100 * ref_av:.1f} %.",
            "",
        ]
    lines += [
        "| method | remedy | audio top-1 (best dev) | audio below central | AV top-1 at the hand-over | AV below "
        "central | audio majority share at the hand-over | mean from round 50 | runs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    methods = [m for m in FULL_METHODS if m in set(ok["method"])] + sorted(set(ok["method"]) - set(FULL_METHODS))
    remedies = list(dict.fromkeys(c.tag.removeprefix("hd-") for c in cells))
    for method in methods:
        label = STRATEGIES[method].display_name() if method in STRATEGIES else labels.get(method, method)
        for remedy in remedies:
            g = ok[(ok["method"] == method) & (ok["remedy"] == remedy)]
            if g.empty:
                continue
            audio = pd.to_numeric(g["audio_top1"], errors="coerce")
            av = pd.to_numeric(g["handover_av_top1"], errors="coerce")
            lines.append(
                f"| {label} | {remedy} | {_mean(audio)} | {_mean(ref_audio - audio)} | {_mean(av)} | "
                f"{_mean(ref_av - av)} | {_mean(g['handover_majority'])} | {_mean(g['late_majority'])} | {len(g)} |"
            )
    lines += [
        "",
        f"In %, mean +- std over the runs ({', '.join(f'{r:g}' for r in rates)} missing rate; seeds as the runs "
        "column counts); 'below central': the reference minus the run's (smaller is nearer). The hand-over is round "
        f"{boundary}, the end of ModalityMirror's phase 1 (for the other methods, the same round of their run). The "
        "majority share is the share of test clips given the audio model's most predicted class (5 % is uniform on "
        "the stratified test split). Remedies: "
        + "; ".join(f"{name}, {label}" for name, (label, _) in REMEDIES.items())
        + ".",
    ]
    lines += remedy_verdict(ok, central)
    return "\n".join(lines) + "\n", frame


def remedy_verdict(ok: pd.DataFrame, central: dict | None) -> list[str]:
    """Each remedy against none, paired by method, rate and seed (the same partitions and draws): the change of the
    audio model's best-dev top-1 and of the AV model at the hand-over, and which remedy leaves the two models nearest
    the centralised reference (the smallest sum of the two gaps) for each method."""
    if ok.empty or "none" not in set(ok["remedy"]):
        return []
    frame = ok.assign(
        audio=100 * pd.to_numeric(ok["audio_top1"], errors="coerce"),
        av=100 * pd.to_numeric(ok["handover_av_top1"], errors="coerce"),
    )
    keys = ["method", "missing_rate", "seed"]
    base = frame[frame["remedy"] == "none"].set_index(keys)[["audio", "av"]]
    lines = [
        "",
        "Each remedy minus none, paired by method, rate and seed (points; mean +- std over the pairs):",
        "",
        "| remedy | pairs | audio top-1 change | AV top-1 at the hand-over change | both nearer central in |",
        "| --- | --- | --- | --- | --- |",
    ]
    for remedy in [r for r in dict.fromkeys(frame["remedy"]) if r != "none"]:
        other = frame[frame["remedy"] == remedy].set_index(keys)[["audio", "av"]]
        both = other.index.intersection(base.index)
        if not len(both):
            continue
        diff = other.loc[both] - base.loc[both]
        nearer = int(((diff["audio"] > 0) & (diff["av"] > 0)).sum())
        lines.append(
            f"| {remedy} | {len(both)} | {diff['audio'].mean():+.1f} +- {diff['audio'].std(ddof=0):.1f} | "
            f"{diff['av'].mean():+.1f} +- {diff['av'].std(ddof=0):.1f} | {nearer} of {len(both)} |"
        )
    ref = 100 * (central["audio_top1"] + central["av_top1"]) if central else 200.0
    gap = frame.assign(gap=ref - frame["audio"] - frame["av"]).groupby(["method", "remedy"])["gap"].mean()
    best = {m: g.droplevel(0).idxmin() for m, g in gap.groupby(level=0)}
    winners = set(best.values())
    lines += [
        "",
        "Nearest the centralised reference (smallest mean of audio gap + AV gap) per method: "
        + "; ".join(f"{m}: {r} ({gap[(m, r)]:.1f} points below)" for m, r in best.items())
        + ". "
        + (
            f"The same remedy, {next(iter(winners))}, for every method."
            if len(winners) == 1
            else "No single remedy is nearest for every method."
        ),
    ]
    return lines


def headdrift_figure(frame: pd.DataFrame, out: Path) -> Path | None:
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, g in ok.groupby("method"):
        means = g.groupby("remedy")[["handover_majority", "handover_av_top1"]].mean()
        ax.scatter(100 * means["handover_majority"], 100 * means["handover_av_top1"], label=method)
        for remedy, row in means.iterrows():
            ax.annotate(remedy, (100 * row["handover_majority"], 100 * row["handover_av_top1"]), fontsize=6)
    ax.set(xlabel="audio majority share at the hand-over (%)", ylabel="AV top-1 at the hand-over (%)")
    ax.legend(fontsize=7)
    return _save(fig, out / "head_drift.png")


# ------------------------------------------------------------------------------- a whole sweep against another
MAJORITY_TARGET = 0.15  # the head-drift issue's target for the audio majority share at the end of phase 1


def against_table(runs: Path, other: Path, cells: list[Cell]) -> str:
    """The same sweep under two presets (``runs``: this one's finished runs, ``other``: a records folder of the
    other's, by the same keys), paired by method, rate and seed (the same partitions): per method, this preset's
    change of the audio model's best-dev top-1 and of the audiovisual model at the hand-over (each run's
    ``num-server-rounds``), the audio majority share there under both, and how many of this preset's runs bring it
    below ``MAJORITY_TARGET``. Empty when no cell has a run in both."""
    from strategies import compared_methods

    rows = []
    for cell in cells:
        mine, theirs = runs / cell.key, other / cell.key
        if not ((mine / "summary.json").is_file() and (theirs / "summary.json").is_file()):
            continue
        boundary = int(json.loads((mine / "config.json").read_text())["num-server-rounds"])
        a, b = run_row(mine, boundary), run_row(theirs, boundary)
        rows.append(
            {
                "method": cell.method,
                "audio": 100 * (a["audio_top1"] - b["audio_top1"]),
                "av": 100 * (a["handover_av_top1"] - b["handover_av_top1"]),
                "majority": a["handover_majority"],
                "majority_other": b["handover_majority"],
            }
        )
    if not rows:
        return ""
    frame = pd.DataFrame(rows)
    lines = [
        "| method | pairs | audio top-1 (best dev) change | AV top-1 at the hand-over change | audio majority share at "
        f"the hand-over, this / other | runs below {MAJORITY_TARGET:g} |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    labels = compared_methods()
    groups = [(labels.get(m, m), g) for m, g in frame.groupby("method", sort=False)] + [("all", frame)]
    for label, g in groups:
        below = int((g["majority"] < MAJORITY_TARGET).sum())
        lines.append(
            f"| {label} | {len(g)} | {g['audio'].mean():+.1f} +- {g['audio'].std(ddof=0):.1f} | "
            f"{g['av'].mean():+.1f} +- {g['av'].std(ddof=0):.1f} | {g['majority'].mean():.2f} / "
            f"{g['majority_other'].mean():.2f} | {below} of {len(g)} |"
        )
    return "\n".join(lines) + "\n"
