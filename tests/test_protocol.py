"""The evaluation protocol (dev split, last / last-5 / best-dev), collapse detection and the partition summary."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_cache, tiny_federation, tiny_strategy

from mirror_app.core.evaluation import classification_metrics
from mirror_app.results import RunRecorder, protocol_summary
from strategies import ModalityAwareFedAvg

CLASSES = ["drumming", "typing", "playing congas"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("protocol") / "tiny")


def record(rec: RunRecorder, rows: list[dict], total: int = 10) -> None:
    """Feed ``rows`` (round + metrics) to the recorder as the strategy does after evaluation."""
    for r in rows:
        metrics = {"audio_top1": 0.0, "av_top1": 0.0} | {k: v for k, v in r.items() if k != "round"}
        rec.round(r["round"], total, 1, "train", metrics, {"clients": 2}, 1.0)


def summary(rec: RunRecorder) -> dict:
    return json.loads((rec.dir / "summary.json").read_text())


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "collapsed" in r.getMessage()]


def test_best_dev_is_the_earliest_best_dev_round_not_the_last_nor_round_0(tmp_path):
    rec = RunRecorder(tmp_path / "run", {}, CLASSES)
    rows = [  # round 0 (the initial model) has the highest dev score and must not be chosen
        {"round": 0, "dev_audio_top1": 0.9, "audio_top1": 0.05},
        {"round": 1, "dev_audio_top1": 0.3, "audio_top1": 0.20, "audio_top5": 0.5, "audio_macro_f1": 0.1},
        {
            "round": 2,
            "dev_audio_top1": 0.6,
            "audio_top1": 0.40,
            "audio_top5": 0.7,
            "audio_macro_f1": 0.3,
            "av_top1": 0.45,
        },
        {"round": 3, "dev_audio_top1": 0.5, "audio_top1": 0.45, "audio_top5": 0.8, "audio_macro_f1": 0.35},
        {"round": 4, "dev_audio_top1": 0.6, "audio_top1": 0.48, "audio_top5": 0.8, "audio_macro_f1": 0.4},  # a tie
        {"round": 5, "dev_audio_top1": 0.55, "audio_top1": 0.50, "audio_top5": 0.9, "audio_macro_f1": 0.45},
        {"round": 6, "dev_audio_top1": 0.58, "audio_top1": 0.52, "audio_top5": 0.9, "audio_macro_f1": 0.5},
    ]
    record(rec, rows)
    rec.finish({"audio_top1": 0.52, "av_top1": 0.0})
    s = summary(rec)
    assert s["best_dev"] == {
        "round": 2,
        "phase": "train",
        "dev_audio_top1": 0.6,
        "audio_top1": 0.40,
        "audio_top5": 0.7,
        "audio_macro_f1": 0.3,
        "av_top1": 0.45,
        "within": "all rounds",
    }
    assert s["best_dev_all_rounds"] == {k: v for k, v in s["best_dev"].items() if k != "within"}
    assert s["last"] == {"round": 6, "audio_top1": 0.52, "audio_top5": 0.9, "audio_macro_f1": 0.5}
    assert s["final"]["audio_top1"] == 0.52  # unchanged key that other code reads
    last5 = s["last5_mean"]
    assert (last5["rounds"], last5["from_round"], last5["to_round"]) == (5, 2, 6)  # rounds 2..6, not round 1
    assert last5["audio_top1"] == pytest.approx(np.mean([0.40, 0.45, 0.48, 0.50, 0.52]))
    assert last5["audio_macro_f1"] == pytest.approx(np.mean([0.3, 0.35, 0.4, 0.45, 0.5]))
    metrics = pd.read_csv(rec.dir / "metrics.csv")
    assert metrics["dev_audio_top1"].tolist() == [r["dev_audio_top1"] for r in rows]


def test_the_headline_is_chosen_within_the_product_phases_and_each_phase_has_its_own_best_dev(tmp_path):
    """ModalityMirror's product is the distilled student: its headline best-dev round is searched in phase 2
    only, even where a phase-1 round has a better dev score; the all-rounds figure and each phase's own best
    dev stay in summary.json."""
    rec = RunRecorder(tmp_path / "run", {}, CLASSES)
    rows = [
        ("fl", 0, 0.9, 0.05),
        ("fl", 1, 0.3, 0.20),
        ("fl", 2, 0.7, 0.40),  # the best dev of all rounds, in phase 1
        ("fl", 3, 0.5, 0.45),
        ("kd", 4, 0.4, 0.30),
        ("kd", 5, 0.6, 0.35),  # the best dev of phase 2
        ("kd", 6, 0.55, 0.38),
    ]
    for phase, r, dev, top1 in rows:
        rec.round(
            r, 6, 1 if phase == "fl" else 2, phase, {"audio_top1": top1, "av_top1": 0.7, "dev_audio_top1": dev}, {}, 1.0
        )
    rec.finish({"audio_top1": 0.38, "av_top1": 0.7}, [("fl", 3), ("kd", 3)], ("kd",))
    s = summary(rec)
    assert (s["best_dev"]["round"], s["best_dev"]["audio_top1"], s["best_dev"]["within"]) == (5, 0.35, "kd")
    assert (s["best_dev_all_rounds"]["round"], s["best_dev_all_rounds"]["audio_top1"]) == (2, 0.40)
    assert s["phases"]["fl"]["round"] == 3 and s["phases"]["fl"]["audio_top1"] == 0.45  # where phase 1 ended
    assert s["phases"]["fl"]["best_dev"]["round"] == 2 and s["phases"]["kd"]["best_dev"]["round"] == 5
    assert list(s["phases"]) == ["fl", "kd"]
    # a product phase that never ran (distill-rounds = 0): the headline falls back to all rounds
    fallback = protocol_summary(
        [{"round": r, "phase": "fl", "dev_audio_top1": d, "audio_top1": t} for _, r, d, t in rows[:4]], ("kd",)
    )
    assert fallback["best_dev"]["round"] == 2 and fallback["best_dev"]["within"] == "all rounds"


def test_last5_mean_over_fewer_rounds_and_no_best_dev_without_dev_split():
    rows = [
        {"round": 0, "audio_top1": 0.1},
        {"round": 1, "audio_top1": 0.2, "audio_top5": 0.4},
        {"round": 2, "audio_top1": 0.5, "audio_top5": 0.6},
    ]
    s = protocol_summary(rows)
    assert s["last5_mean"]["rounds"] == 2 and s["last5_mean"]["from_round"] == 1
    assert s["last5_mean"]["audio_top1"] == pytest.approx(0.35) and s["last5_mean"]["audio_top5"] == pytest.approx(0.5)
    assert s["last5_mean"]["audio_macro_f1"] is None  # no row has it
    assert s["best_dev"] is None and "dev-fraction = 0" in s["best_dev_reason"]
    assert s["last"]["round"] == 2 and s["last"]["audio_top1"] == 0.5


def test_a_resumed_run_derives_the_protocol_and_the_warnings_from_the_recorded_rows(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    rec = RunRecorder(tmp_path / "run", {}, CLASSES)
    record(
        rec,
        [
            {"round": 0, "dev_audio_top1": 0.1, "av_majority_share": 1.0},
            {"round": 1, "dev_audio_top1": 0.2},
            {"round": 2, "dev_audio_top1": 0.8, "audio_top1": 0.6, "av_majority_share": 0.95},  # too early
            {
                "round": 4,
                "dev_audio_top1": 0.3,
                "av_majority_share": 0.95,
                "av_majority_class": 1,
                "audio_majority_share": 0.5,
            },
        ],
    )
    assert warnings_of(caplog) == [
        "round 4: the audiovisual model predicts one class ('typing') for 95 % of the test clips: collapsed; "
        "see docs/datasets.md 'Label skew'"
    ]
    rec.partitions = {"clients": 2}
    rec.save_resume_state(4, {}, 10.0)
    saved = torch.load(rec.dir / "resume.pt", weights_only=False)
    again = RunRecorder.reopen(rec.dir, saved, CLASSES)
    assert again.partitions == {"clients": 2}
    caplog.clear()
    record(
        again,
        [
            {"round": 5, "dev_audio_top1": 0.4, "av_majority_share": 0.99},
            {
                "round": 6,
                "dev_audio_top1": 0.5,
                "av_majority_share": 0.2,
                "audio_majority_share": 0.9,
                "audio_majority_class": 0,
            },
        ],
    )
    assert warnings_of(caplog) == [  # the audiovisual collapse was reported before the resume; not again
        "round 6: the audio model predicts one class ('drumming') for 90 % of the test clips: collapsed; "
        "see docs/datasets.md 'Label skew'"
    ]
    again.finish({"audio_top1": 0.0, "av_top1": 0.0})
    s = summary(again)
    assert s["best_dev"]["round"] == 2 and s["best_dev"]["audio_top1"] == 0.6
    assert s["collapse"]["av"]["rounds"] == [4, 5] and s["collapse"]["av"]["last_round_collapsed"] is False
    assert s["collapse"]["audio"]["rounds"] == [6] and s["collapse"]["audio"]["last_round_collapsed"] is True
    assert s["partitions"] == {"clients": 2}


def test_majority_share_of_the_predictions():
    logits = torch.tensor([[5.0, 0, 0], [4, 1, 0], [3, 0, 1], [0, 2, 0]])
    m = classification_metrics(logits, torch.tensor([0, 1, 2, 1]), 3)
    assert m["majority_share"] == 0.75 and m["majority_class"] == 0
    assert m["top1"] == 0.5


def test_a_model_that_predicts_one_class_is_flagged_once(cache, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    manager, _ = tiny_federation(cache, 4, missing_rate=0.5)
    strategy = tiny_strategy(  # linear heads: the audio head's bias is what makes it collapse here
        ModalityAwareFedAvg,
        cache,
        tmp_path,
        clients_per_round=2,
        num_server_rounds=5,
        distill_rounds=0,
        classifier="linear",
    )
    strategy.state["audio_head"][1][:] = 0
    strategy.state["audio_head"][1][2] = 1e4  # the audio head's bias: class 2 wins everywhere
    params = strategy.initialize_parameters(manager)
    for r in range(strategy.total_rounds + 1):
        strategy.evaluate(r, params)
    metrics = pd.read_csv(strategy.recorder.dir / "metrics.csv")
    assert metrics["audio_majority_share"].eq(1.0).all()
    assert metrics["av_majority_share"].lt(0.9).all()  # the audiovisual model is not touched
    assert warnings_of(caplog) == [
        "round 3: the audio model predicts one class ('class 2') for 100 % of the test clips: collapsed; "
        "see docs/datasets.md 'Label skew'"
    ]
    collapse = json.loads((strategy.recorder.dir / "summary.json").read_text())["collapse"]
    assert collapse["audio"]["rounds"] == [3, 4, 5] and collapse["audio"]["last_round_collapsed"] is True
    assert collapse["av"]["rounds"] == [] and collapse["av"]["last_round_collapsed"] is False


def test_partition_summary_is_logged_once_and_written(cache, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    manager, proxies = tiny_federation(cache, 6, missing_rate=0.5, alpha=0.3)
    strategy = tiny_strategy(
        ModalityAwareFedAvg,
        cache,
        tmp_path,
        clients_per_round=3,
        num_server_rounds=1,
        distill_rounds=0,
        dirichlet_alpha=0.3,
    )
    params = strategy.initialize_parameters(manager)
    strategy.configure_fit(1, params, manager)
    strategy.configure_fit(2, params, manager)
    parts = [p.client.partition for p in proxies.values()]
    clips = [len(p.indices) for p in parts]
    classes = [np.unique(cache.labels[p.indices]).size for p in parts]
    audio_only = sum(p.modality == "audio" for p in parts)
    assert len(set(clips)) > 1 and len(set(classes)) > 1  # a skewed split, so min / median / max can be wrong
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("partitions:")]
    assert lines == [
        f"partitions: 6 clients ({audio_only} audio-only, {6 - audio_only} audiovisual); clips per client "
        f"min {min(clips)} / median {np.median(clips):g} / max {max(clips)}; classes per client "
        f"min {min(classes)} / median {np.median(classes):g} / max {max(classes)}"
    ]
    strategy.evaluate(strategy.total_rounds, params)
    written = json.loads((strategy.recorder.dir / "summary.json").read_text())["partitions"]
    assert written == {
        "clients": 6,  # the nodes the census asked (all of them: a full census)
        "nodes": 6,  # the nodes connected
        "audio_only": audio_only,
        "audiovisual": 6 - audio_only,
        "clips": {"min": min(clips), "median": float(np.median(clips)), "max": max(clips)},
        "classes": {"min": min(classes), "median": float(np.median(classes)), "max": max(classes)},
    }


def test_the_server_evaluates_its_dev_split_every_round(cache, tmp_path):
    from data.cache import FeatureCache
    from data.partition import get_partition

    dev_cache = FeatureCache(cache.path, dev_fraction=0.25, dev_seed=0)
    dev = dev_cache.indices("dev")
    assert dev.size and not set(dev) & set(dev_cache.indices("test"))
    for pid in range(4):  # never given to a client
        assert not set(dev) & set(get_partition(str(cache.path), pid, 4, 1.0, 0.5, 0, dev_fraction=0.25).indices)
    strategy = tiny_strategy(
        ModalityAwareFedAvg, dev_cache, tmp_path, num_server_rounds=2, distill_rounds=0, dev_fraction=0.25
    )
    for r in range(3):
        strategy.evaluate(r, None)
    metrics = pd.read_csv(strategy.recorder.dir / "metrics.csv")
    for col in ("dev_audio_top1", "dev_audio_top5", "dev_audio_macro_f1", "dev_av_top1"):
        assert metrics[col].notna().all() and metrics[col].between(0, 1).all(), col
    assert (metrics["dev_audio_top5"] >= metrics["dev_audio_top1"]).all()
    s = json.loads((strategy.recorder.dir / "summary.json").read_text())
    assert s["best_dev"]["round"] == 1  # the weights never changed: a tie, the earliest trained round wins
    assert s["best_dev"]["audio_top1"] == pytest.approx(metrics["audio_top1"].iloc[1])

    plain = tiny_strategy(ModalityAwareFedAvg, cache, tmp_path / "plain", num_server_rounds=1, distill_rounds=0)
    plain.evaluate(0, None)
    plain.evaluate(1, None)
    assert pd.read_csv(plain.recorder.dir / "metrics.csv")["dev_audio_top1"].isna().all()
    assert json.loads((plain.recorder.dir / "summary.json").read_text())["best_dev"] is None
