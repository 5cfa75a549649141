"""The head-drift study's cells, remedies and verdict (the study itself runs in `make ablations`)."""

from __future__ import annotations

import re

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
