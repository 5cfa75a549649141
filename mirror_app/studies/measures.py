"""The explanatory measures the docs use, each computed the same way on every run: on the runs whose result it is
meant to explain, and on placebo runs that have no distillation at all (Harmony, MultiFL with the audio head, the
phase-2 control), at the same round boundary. A measure is kept as evidence only where it separates the two.

* :func:`class_change` (the paper's Fig. 2 claim, "distillation lifts the classes audio decided poorly"): the
  weak classes are the lower half by **dev** F1 at the first window's best-dev round, the change is measured on
  the **test** split between the two windows' best-dev rounds. Choosing and measuring on the same split would
  show weak classes gaining and strong ones losing in any run (regression to the mean).
* :func:`handover_jump` ("collapse at the hand-over"): the rise of the audio model's majority share from the last
  evaluation before the boundary to the first after it, flagged as a collapse only beyond the run's own
  round-to-round variation before the boundary (its mean plus two standard deviations).

The boundary is the preset's ``num-server-rounds`` (ModalityMirror's hand-over); for a run without a phase 2 the
same round splits its evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

JUMP_STDS = 2.0  # a jump counts as a collapse beyond mean + this many std of the run's earlier jumps


def _best_dev_round(metrics: pd.DataFrame, first: bool, boundary: int) -> int | None:
    m = metrics[metrics["round"] > 0]
    window = m[m["round"] <= boundary] if first else m[m["round"] > boundary]
    dev = pd.to_numeric(window.get("dev_audio_top1", pd.Series(dtype=float)), errors="coerce")
    if window.empty or dev.isna().all():
        return None
    return int(window.loc[dev.idxmax(), "round"])  # the earliest on ties


@dataclass(frozen=True)
class ClassChange:
    weak: float  # mean test F1 change of the weak classes (chosen on dev)
    strong: float  # the same on the other classes
    same_split_weak: float  # what choosing the weak classes on test itself would show (the regression to the mean)
    same_split_strong: float


def class_change(
    metrics: pd.DataFrame, test_f1: pd.DataFrame, dev_f1: pd.DataFrame | None, boundary: int
) -> ClassChange | None:
    """The per-class F1 change of one run between its two windows' best-dev rounds: on the classes that were weak
    by dev F1 before the boundary, and on the others; None where the run lacks a window, or dev per-class F1."""
    a, b = _best_dev_round(metrics, True, boundary), _best_dev_round(metrics, False, boundary)
    if a is None or b is None or dev_f1 is None or dev_f1.empty:
        return None
    before = test_f1[test_f1["round"] == a].set_index("class")["f1"]
    after = test_f1[test_f1["round"] == b].set_index("class")["f1"]
    chooser = dev_f1[dev_f1["round"] == a].set_index("class")["f1"]
    if before.empty or after.empty or chooser.empty:
        return None
    change = after - before
    weak = chooser.rank(method="first") <= len(chooser) / 2
    naive = before.rank(method="first") <= len(before) / 2
    return ClassChange(
        float(change[weak.reindex(change.index, fill_value=False)].mean()),
        float(change[~weak.reindex(change.index, fill_value=False)].mean()),
        float(change[naive].mean()),
        float(change[~naive].mean()),
    )


@dataclass(frozen=True)
class HandoverJump:
    jump: float  # majority share: first evaluation after the boundary minus the last before it
    threshold: float  # mean + JUMP_STDS x std of the run's jumps between consecutive evaluations before it
    collapse: bool


def handover_jump(metrics: pd.DataFrame, boundary: int) -> HandoverJump | None:
    """The majority share's rise across the boundary, against the run's own earlier round-to-round rises."""
    m = metrics[metrics["round"] > 0].sort_values("round")
    share = pd.to_numeric(m["audio_majority_share"], errors="coerce")
    before, after = share[m["round"] <= boundary].dropna(), share[m["round"] > boundary].dropna()
    if len(before) < 3 or after.empty:
        return None
    steps = np.diff(before.to_numpy())
    threshold = float(steps.mean() + JUMP_STDS * steps.std())
    jump = float(after.iloc[0] - before.iloc[-1])
    return HandoverJump(jump, threshold, jump > threshold)


def run_measures(run: Path, boundary: int) -> tuple[ClassChange | None, HandoverJump | None]:
    """Both measures of a finished run's folder (metrics.csv, per_class_f1.csv, per_class_f1_dev.csv)."""
    metrics = pd.read_csv(run / "metrics.csv")
    test = run / "per_class_f1.csv"
    dev = run / "per_class_f1_dev.csv"
    change = None
    if test.is_file():
        change = class_change(metrics, pd.read_csv(test), pd.read_csv(dev) if dev.is_file() else None, boundary)
    return change, handover_jump(metrics, boundary)
