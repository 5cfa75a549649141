"""The head-drift study's cells, remedies and verdict (the study itself runs in `make ablations`)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from mirror_app.studies import headdrift


def test_a_pair_of_remedies_joins_both_configs_and_an_unknown_one_is_named():
    label, config = headdrift.remedy_config("etf+fedavgm")
    assert config.split() == ["classifier='etf'", "aggregator='fedavgm'", "loss-calibration='none'"]
    assert label == "FedETF: fixed simplex-ETF heads + FedAvgM: server momentum"
    for bad in ("fedlc2", "etf+fedlc+fedrs", "none+etf"):
        with pytest.raises(ValueError, match=re.escape(f"remedy {bad!r} is unknown: one of")):
            headdrift.remedy_config(bad)


def test_the_screening_is_every_remedy_for_each_method_rate_and_seed():
    cells = headdrift.headdrift_cells(list(headdrift.SCREEN_METHODS), list(headdrift.SCREEN_REMEDIES), [0.3], [0, 1])
    assert len(cells) == 3 * 7 * 2 and len({c.key for c in cells}) == len(cells)
    assert {c.tag for c in cells} == {f"hd-{r}" for r in headdrift.REMEDIES} | {"hd-etf+fedlc"}
    (pair,) = {c.config for c in cells if c.tag == "hd-etf+fedlc"}
    assert "classifier='etf'" in pair and "loss-calibration='fedlc'" in pair


def _row(method, remedy, seed, audio, av):
    return {"method": method, "remedy": remedy, "missing_rate": 0.3, "seed": seed, "status": "ok",
            "audio_top1": audio, "handover_av_top1": av}  # fmt: skip


def test_the_verdict_pairs_each_remedy_with_none_by_seed_and_names_the_nearest_per_method():
    rows = [
        _row("multifl", "none", 0, 0.10, 0.40), _row("multifl", "none", 1, 0.20, 0.50),
        _row("multifl", "etf", 0, 0.20, 0.60), _row("multifl", "etf", 1, 0.20, 0.70),
        _row("multifl", "fedlc", 0, 0.12, 0.30), _row("multifl", "fedlc", 1, 0.30, 0.40),
        _row("harmony", "none", 0, 0.10, 0.40), _row("harmony", "etf", 0, 0.05, 0.40),
        _row("harmony", "fedlc", 0, 0.30, 0.50),
    ]  # fmt: skip
    lines = headdrift.remedy_verdict(pd.DataFrame(rows), {"audio_top1": 0.6, "av_top1": 1.0})
    text = "\n".join(lines)
    # etf - none: audio +10, 0, -5 -> mean +1.7; AV +20, +20, 0 -> +13.3; both strictly nearer only in multifl seed 0
    assert "| etf | 3 | +1.7 +- 6.2 | +13.3 +- 9.4 | 1 of 3 |" in text
    assert "| fedlc | 3 |" in text and "none |" not in text.split("| --- |")[-1].split("\n")[1]
    assert "multifl: etf (" in text and "harmony: fedlc (" in text
    assert "No single remedy is nearest for every method." in text
    same = [r for r in rows if r["remedy"] != "fedlc"] + [_row("harmony", "etf", 0, 0.5, 0.9)]
    same = [r for r in same if not (r["method"] == "harmony" and r["remedy"] == "etf" and r["audio_top1"] == 0.05)]
    assert "The same remedy, etf, for every method." in "\n".join(headdrift.remedy_verdict(pd.DataFrame(same), None))


def test_without_a_none_run_there_is_no_verdict():
    assert headdrift.remedy_verdict(pd.DataFrame([_row("multifl", "etf", 0, 0.2, 0.5)]), None) == []


def _run(folder, audio: float, av_at_80: float, majority_at_80: float) -> None:
    """A finished run folder as the sweep leaves it: evaluations every 5 rounds to 100, the hand-over at 80."""
    import json

    import pandas as pd

    folder.mkdir(parents=True)
    rounds = list(range(5, 101, 5))
    pd.DataFrame(
        {
            "round": rounds,
            "av_top1": [av_at_80 if r == 80 else 0.01 for r in rounds],
            "audio_majority_share": [majority_at_80 if r == 80 else 0.9 for r in rounds],
        }
    ).to_csv(folder / "metrics.csv", index=False)
    (folder / "config.json").write_text(json.dumps({"num-server-rounds": 80}))
    (folder / "summary.json").write_text(json.dumps({"best_dev": {"audio_top1": audio}}))


def test_a_sweep_against_another_presets_records_pairs_by_key_and_counts_runs_under_the_target(tmp_path):
    from mirror_app.studies.headdrift import against_table
    from mirror_app.studies.runs import Cell

    cells = [Cell("multifl", 0.3, 0), Cell("multifl", 0.3, 1), Cell("harmony", 0.3, 0)]
    mine, other = tmp_path / "runs", tmp_path / "records"
    _run(mine / "multifl-mr0.3-s0", 0.30, 0.80, 0.10)
    _run(mine / "multifl-mr0.3-s1", 0.26, 0.70, 0.20)
    _run(other / "multifl-mr0.3-s0", 0.20, 0.50, 0.50)
    _run(other / "multifl-mr0.3-s1", 0.20, 0.50, 0.40)
    _run(mine / "harmony-mr0.3-s0", 0.25, 0.60, 0.12)  # no partner in the other records: left out
    table = against_table(mine, other, cells)
    # audio +10 and +6 points, AV at round 80 +30 and +20, majority 0.15 / 0.45 on average, one run below 0.15
    assert "| MultiFL | 2 | +8.0 +- 2.0 | +25.0 +- 5.0 | 0.15 / 0.45 | 1 of 2 |" in table
    assert "| all | 2 |" in table and "Harmony" not in table
    assert against_table(mine, tmp_path / "nothing", cells) == ""


def test_the_sweep_refuses_an_against_folder_that_is_not_there(tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "mirror_app.studies.sweep", "--methods", "multifl", "--rates", "0.3", "--seeds", "0",
         "--fig3-rates", "0.3", "--report-only", "--out", str(tmp_path / "out"), "--against", str(tmp_path / "none")],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == f"sweep: --against {tmp_path / 'none'}: no such folder of run records"
    assert not (tmp_path / "out").exists()
