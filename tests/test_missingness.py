"""Missing modalities as they happen: per clip, over time (a schedule the census learns from replies), at test
time, and every registered method running under each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.server import Server
from helpers import fit_round, tiny_cache, tiny_federation, tiny_strategy

from data.cache import VideoMaskedCache
from data.partition import audio_only_at, audio_only_partitions, missing_video_rows, parse_schedule
from mirror_app.core.evaluation import Evaluator, classification_metrics, missing_at_test_time, missing_key
from mirror_app.core.models import build_model
from strategies import STRATEGIES, ModalityAwareFedAvg, ModalityMirror


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("missing") / "tiny")


def test_clip_masks_are_seeded_per_client_and_hold_only_its_training_clips(cache):
    train = cache.indices("train")
    part = train[::3]
    rows = missing_video_rows(part, 0.3, seed=0, partition_id=4)
    assert len(rows) == round(0.3 * len(part)) and set(rows) <= set(part)
    assert not set(rows) & set(cache.indices("test"))  # the test split is never masked by it
    np.testing.assert_array_equal(rows, missing_video_rows(part, 0.3, seed=0, partition_id=4))
    assert not np.array_equal(rows, missing_video_rows(part, 0.3, seed=0, partition_id=5))
    assert missing_video_rows(part, 0.0, 0, 4).size == 0
    view = VideoMaskedCache(cache, rows)
    frames = view.frames(np.sort(part))
    missing = np.isin(np.sort(part), rows)
    assert np.isnan(frames[missing]).all() and not np.isnan(frames[~missing]).any()


def test_a_schedule_takes_and_gives_back_cameras_in_one_seeded_order():
    schedule = parse_schedule("20:+0.2,10:+0.1,30:-0.2")
    assert schedule == [(10, 0.1), (20, 0.2), (30, -0.2)]
    sets = {r: set(audio_only_at(20, 0.3, 0, schedule, r).tolist()) for r in (1, 10, 20, 30)}
    assert sets[1] == set(audio_only_partitions(20, 0.3, 0).tolist()) and len(sets[1]) == 6
    assert sets[1] < sets[10] < sets[20] and (len(sets[10]), len(sets[20])) == (8, 12)
    assert sets[30] == sets[10]  # the last to lose their camera get it back first


def fuse_spy(model, seen: list):
    """Wraps model.fuse: records the video embeddings the fusion head is given."""
    original = model.fuse

    def fuse(za, zv):
        seen.append(zv.detach().clone())
        return original(za, zv)

    model.fuse = fuse


@pytest.mark.parametrize("head", [False, True])
def test_a_clip_without_video_never_reaches_a_fusion_loss(cache, tmp_path, head):
    """train-av skips such clips (the base trains it on the others); train-av-audio-head trains the audio head on
    them and fuses only the clips with a frame. Frames of missing clips read as NaN: one reaching the fusion
    head would show."""
    manager, proxies = tiny_federation(cache, 4, missing_rate=0.0, sample_missing_video=0.5)
    strategy = tiny_strategy(
        ModalityAwareFedAvg, cache, tmp_path, clients_per_round=4, missing_rate=0.0, **{"av-trains-audio-head": head}
    )
    seen: list = []
    ws = proxies[0].client.workspace
    fuse_spy(ws.model, seen)
    _, results = fit_round(strategy, manager)
    assert seen and all(torch.isfinite(z).all() for z in seen)
    fused = sum(len(z) for z in seen)
    clips = sum(len(p.client.partition.indices) for p in proxies.values())
    without = sum(len(p.client.missing_video) for p in proxies.values())
    assert fused == clips - without  # every clip with a frame, none without
    for _, res in results:
        assert res.metrics.get("refused") is None
        assert np.isfinite(res.metrics["train-loss"])


def test_a_client_that_loses_its_camera_refuses_video_tasks_in_its_reply_and_the_census_learns(cache, tmp_path):
    config = {"missing_rate": 0.25, "missing_schedule": "2:+0.25"}
    manager, proxies = tiny_federation(cache, 8, **config)
    strategy = tiny_strategy(
        ModalityMirror,
        cache,
        tmp_path,
        clients_per_round=8,
        num_server_rounds=2,
        distill_rounds=2,
        **{k.replace("_", "-"): v for k, v in config.items()},
    )
    Server(client_manager=manager, strategy=strategy).fit(strategy.total_rounds, None)
    lost = set(audio_only_at(8, 0.25, 0, parse_schedule("2:+0.25"), 2).tolist()) - set(
        audio_only_partitions(8, 0.25, 0).tolist()
    )
    assert len(lost) == 2
    rows = strategy.recorder.clients
    for pid in lost:
        mine = [r for r in rows if r["partition_id"] == pid]
        refused = [r for r in mine if r["status"] == "failed"]
        # round 2: still known as audiovisual, it is sent its video task and says it has no video; never again after
        assert [r["round"] for r in refused] == [2] and "no video at round 2" in refused[0]["problem"]
        assert all(r["task"] == "train-audio" for r in mine if r["round"] > 2 and r["phase"] == "modality-aware-fl")
        assert not [r for r in mine if r["phase"] == "distillation"]
    metrics = strategy.recorder.metrics
    share = {m["round"]: m.get("audio_only_share") for m in metrics if m["round"] > 0}
    assert share[1] == 0.25 and share[2] == 0.5 and share[4] == 0.5
    assert [m["failures"] for m in metrics if m["round"] > 0] == [0, 2, 0, 0]
    assert strategy.missingness_summary()["schedule"] == [{"round": 2, "change": 0.25, "audio_only_share": 0.5}]


def test_test_time_missing_video_uses_the_methods_audio_fallback(cache):
    model = build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], seed=0)
    from mirror_app.core.groups import AUDIO_MODEL, AV_MODEL, get_groups

    evaluator = Evaluator(model, cache, torch.device("cpu"), missing=(0.5,))
    got = evaluator(dict(get_groups(model, AUDIO_MODEL)), dict(get_groups(model, AV_MODEL)))
    test = np.sort(cache.indices("test"))
    audio = torch.from_numpy(np.asarray(cache.audio[test]))
    video = torch.from_numpy(cache.frames(test))
    with torch.no_grad():
        model.eval()
        a, av = model.audio_logits(audio), model.av_logits(audio, video)
    mask = torch.from_numpy(missing_at_test_time(len(test), 0.5))
    assert int(mask.sum()) == round(0.5 * len(test))
    labels = torch.from_numpy(cache.labels[test])
    expected = classification_metrics(torch.where(mask[:, None], a, av), labels, cache.num_classes)["top1"]
    assert got[missing_key(0.5)] == pytest.approx(expected) and missing_key(0.5) == "av_top1_missing50"
    assert got["av_top1"] == pytest.approx(classification_metrics(av, labels, cache.num_classes)["top1"])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_method_runs_under_each_kind_of_missingness(name, cache, tmp_path):
    if name == "distill":
        pytest.skip("phase 2 alone starts from a checkpoint (covered by modality-mirror's phase 2)")
    kinds = {
        "per-sample": {"missing_rate": 0.0, "sample_missing_video": 0.4},
        "schedule": {"missing_rate": 0.25, "missing_schedule": "2:+0.25"},
    }
    for kind, config in kinds.items():
        manager, proxies = tiny_federation(cache, 8, **config)
        strategy = tiny_strategy(
            STRATEGIES[name],
            cache,
            tmp_path / kind,
            clients_per_round=8,
            num_server_rounds=2,
            distill_rounds=1,
            **{k.replace("_", "-"): v for k, v in config.items()},
        )
        Server(client_manager=manager, strategy=strategy).fit(strategy.total_rounds, None)
        rows = strategy.recorder.clients
        assert {r["status"] for r in rows} <= {"ok", "failed"}, kind
        bad = [r for r in rows if r["status"] == "failed"]
        assert all("no video" in r["problem"] for r in bad), (kind, bad[:1])
        assert strategy.recorder.metrics[-1]["round"] == strategy.total_rounds


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    from mirror_app.deploy.launch import SuperLink

    link = SuperLink(tmp_path_factory.mktemp("flwr-home"))
    yield link
    assert not link.stop(), "processes left running"


@pytest.mark.timeout(600)
def test_a_schedule_and_missing_clips_through_flwr_run(superlink, data_dir, tmp_path):
    """Two of eight simulated devices lose their camera at round 2, and a third of every audiovisual client's clips
    have no frame: the run finishes, each lost device refuses one video task (round 2) and is never sent another,
    and metrics.csv, summary.json say what happened."""
    import json
    from pathlib import Path

    import pandas as pd

    out = tmp_path / "results"
    config = (
        f"data-dir='{data_dir}' output-dir='{out}' num-server-rounds=3 distill-rounds=2 clients-per-round=8 "
        "eval-every=1 partitioner='iid' missing-rate=0.25 missing-schedule='2:+0.25' sample-missing-video=0.3"
    )
    root = Path(__file__).resolve().parents[1]
    res = superlink.flwr_run(root, "--federation-config", "num-supernodes=8", "--run-config", config)
    (run,) = [r for r in out.glob("*-run*") if (r / "summary.json").is_file()] or [None]
    assert run is not None, (res.stdout + res.stderr)[-4000:]
    clients = pd.read_csv(run / "clients.csv")
    metrics = pd.read_csv(run / "metrics.csv").set_index("round")
    lost = set(audio_only_at(8, 0.25, 0, parse_schedule("2:+0.25"), 2).tolist()) - set(
        audio_only_partitions(8, 0.25, 0).tolist()
    )
    failed = clients[clients["status"] == "failed"]
    assert set(failed["partition_id"]) == lost and set(failed["round"]) == {2}
    later = clients[clients["partition_id"].isin(lost) & (clients["round"] > 2)]
    assert set(later["task"]) == {"train-audio"}  # phase 1's round 3; never distillation
    assert metrics.loc[1, "audio_only_share"] == 0.25 and metrics.loc[5, "audio_only_share"] == 0.5
    assert metrics.loc[4, "av_clients"] == 4 and metrics.loc[4, "audio_clients"] == 0  # the 4 with a camera
    assert "av_top1_missing50" in metrics.columns
    summary = json.loads((run / "summary.json").read_text())
    assert summary["missingness"]["schedule"] == [{"round": 2, "change": 0.25, "audio_only_share": 0.5}]
    assert summary["missingness"]["sample_missing_video"] == 0.3
