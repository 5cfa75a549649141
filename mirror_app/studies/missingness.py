"""``python -m mirror_app.studies.ablations missingness``: missing video as it happens, for five methods.

ModalityMirror, Harmony, MultiFL, UniFL and FedCMI on the preset (paper-laptop: 80 + 20 rounds), at the same
overall missing share of about 0.3, three ways:

* ``per client``: 30 % of the clients have no video for the whole run (``missing-rate = 0.3``, the paper's);
* ``per sample``: every client is audiovisual, 30 % of each one's clips have no frame (``sample-missing-video``);
* ``schedule``: 10 % of the clients start without video and another 10 % lose their camera at rounds 20, 40, 60
  and 80, so 50 % have none from the end of phase 1 (``missing-schedule``; about 0.3 over the 100 rounds).

``ablation.md``: best-dev audio top-1, and the AV top-1 at that round with every test clip's video and with half
of them missing (the method's audio model standing in); ``missingness.png``: audio top-1 against round under the
schedule, its changes marked.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mirror_app.studies.runs import Cell, _save, collect
from mirror_app.studies.sweep import LABELS

METHODS = ("modality-mirror", "harmony", "multifl", "unifl", "fedcmi")
SCHEDULE = "20:+0.1,40:+0.1,60:+0.1,80:+0.1"
KINDS = {  # name -> (missing rate of the cell, extra run config)
    "per client": (0.3, ""),
    "per sample": (0.0, "sample-missing-video=0.3"),
    "schedule": (0.1, f"missing-schedule='{SCHEDULE}'"),
}


def _tag(kind: str) -> str:
    """A kind's cell tag: none for per-client missingness, which is Table 1's own cell (same key, same records)."""
    return "" if kind == "per client" else kind.replace(" ", "-")


def _kind(cell: Cell) -> str:
    return cell.tag.replace("-", " ") if cell.tag else "per client"


def missingness_cells(seeds: list[int]) -> list[Cell]:
    return [
        Cell(method, rate, s, config, _tag(kind))
        for s in seeds
        for kind, (rate, config) in KINDS.items()
        for method in METHODS
    ]


def _at_best_dev(out: Path, cell: Cell, column: str) -> float | None:
    """metrics.csv's ``column`` at the run's headline best-dev round (summary.json)."""
    import json

    run = out / "runs" / cell.key
    if not (run / "summary.json").is_file():
        return None
    best = (json.loads((run / "summary.json").read_text()).get("best_dev") or {}).get("round")
    metrics = pd.read_csv(run / "metrics.csv").set_index("round")
    if best is None or column not in metrics.columns or best not in metrics.index:
        return None
    return float(metrics.loc[best, column])


def missingness_table(cells: list[Cell], out: Path) -> tuple[str, pd.DataFrame]:
    runs = collect(cells, out)
    runs["kind"] = [_kind(c) for c in cells]
    runs["av_top1_missing50"] = [_at_best_dev(out, c, "av_top1_missing50") for c in cells]
    ok = runs[runs["status"] == "ok"]

    def fmt(values) -> str:
        values = 100 * pd.to_numeric(pd.Series(values), errors="coerce").dropna()
        if values.empty:
            return "n/a"
        return f"{values.mean():.1f}" + (f" +- {values.std(ddof=0):.1f}" if len(values) > 1 else "")

    header = ["method"] + [f"{kind}: {m}" for kind in KINDS for m in ("audio", "AV", "AV, half missing")]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for method in METHODS:
        row = [LABELS.get(method, method)]
        for kind in KINDS:
            sel = ok[(ok["method"] == method) & (ok["kind"] == kind)]
            row += [fmt(sel["best_dev_audio_top1"]), fmt(sel["best_dev_av_top1"]), fmt(sel["av_top1_missing50"])]
        lines.append("| " + " | ".join(row) + " |")
    seeds = ok.groupby(["method", "kind"])["seed"].nunique()
    lines += [
        "",
        "Test top-1 in % (mean +- std over seeds) at each run's best-dev round (ModalityMirror: within phase 2): the "
        "audio-only model, the audiovisual model, and the audiovisual model with half of the test clips lacking "
        "their video (the method's audio model answers for those). Per client: missing-rate 0.3; per sample: "
        f"sample-missing-video 0.3 on every client; schedule: missing-rate 0.1 and missing-schedule '{SCHEDULE}'. "
        f"Seeds per cell: {seeds.min() if len(seeds) else 0}-{seeds.max() if len(seeds) else 0}.",
    ]
    return "\n".join(lines) + "\n", runs


def missingness_figure(cells: list[Cell], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for method in METHODS:
        frames = [
            pd.read_csv(out / "runs" / c.key / "metrics.csv").set_index("round")["audio_top1"]
            for c in cells
            if c.method == method and c.tag == "schedule" and (out / "runs" / c.key / "summary.json").is_file()
        ]
        if frames:
            curve = pd.concat(frames, axis=1).mean(axis=1)
            ax.plot(curve.index, 100 * curve.values, label=LABELS.get(method, method))
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for at in (int(e.split(":")[0]) for e in SCHEDULE.split(",")):
        ax.axvline(at, color="grey", ls=":", lw=1)
    ax.set(
        xlabel="round",
        ylabel="audio top-1 (%)",
        title="audio model under the schedule (dotted: another 10 % lose their camera)",
    )
    ax.legend(fontsize=8)
    return _save(fig, out / "missingness.png")
