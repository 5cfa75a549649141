"""Real-data path: UCF101 / ActivityNet / manifest readers, preprocessing, folds, and a run on each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data import DatasetNotPrepared, load_dataset
from data.cache import TEST, CacheMismatchError, FeatureCache, SplitError
from data.features import FeatureSpec
from data.media import make_activitynet, make_manifest, make_ucf101, write_png, write_wav
from data.prepare import PrepareError, prepare
from data.prepare import main as prepare_main
from data.sources import SourceError, read_manifest, read_ucf101, readable_name

SPEC = FeatureSpec(num_mel_bins=40, audio_seconds=1.0, image_size=32)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ucf_src(tmp_path_factory):
    return make_ucf101(tmp_path_factory.mktemp("ucf"))


@pytest.fixture(scope="module")
def ucf_cache(ucf_src, tmp_path_factory):
    return prepare("ucf101", ucf_src, tmp_path_factory.mktemp("ucf-data"), SPEC, workers=2, log=lambda m: None)


@pytest.fixture(scope="module")
def anet_cache(tmp_path_factory):
    src = make_activitynet(tmp_path_factory.mktemp("anet"))
    return prepare("activitynet", src, tmp_path_factory.mktemp("anet-data"), SPEC, workers=1, log=lambda m: None)


@pytest.fixture(scope="module")
def manifest_cache(tmp_path_factory):
    src = make_manifest(tmp_path_factory.mktemp("manifest"), with_split=True)
    return prepare("manifest", src, tmp_path_factory.mktemp("manifest-data"), SPEC, workers=1, log=lambda m: None)


# ------------------------------------------------------------------------------ UCF101
def test_ucf101_keeps_videos_with_audio_and_reports_the_rest(ucf_cache):
    meta = ucf_cache.meta
    # Typing has no audio in any video: the class disappears, as 50 of the real 101 do
    assert meta["classes"] == ["ApplyEyeMakeup", "HandstandPushups", "PlayingDaf"]
    assert ucf_cache.num_classes == 3 and len(ucf_cache) == 11  # 16 - 4 silent - 1 corrupt
    # the HandstandPushups folder holds v_HandStandPushups_* files: they are found and labelled
    hs = [k for k in meta["clips"] if k.startswith("HandstandPushups/v_HandStandPushups_")]
    assert len(hs) == 4
    skipped = pd.read_csv(ucf_cache.path.parent / "ucf101.skipped.csv")
    reasons = skipped.set_index("clip")["reason"]
    assert reasons.str.startswith("no-audio").sum() == 4 and reasons.str.startswith("corrupt").sum() == 1
    assert reasons["ApplyEyeMakeup/v_ApplyEyeMakeup_g04_c01.avi"].startswith("corrupt")
    assert ucf_cache.video.dtype == np.uint8 and ucf_cache.video.shape[1:] == (3, 32, 32)
    assert ucf_cache.audio.shape[1:] == (SPEC.num_frames, 40) and np.isfinite(ucf_cache.audio[:]).all()


@pytest.mark.parametrize("fold", [1, 2, 3])
def test_ucf101_official_folds(ucf_cache, fold):
    cache = FeatureCache(ucf_cache.path, fold=fold)
    clips = np.array(cache.meta["clips"])
    test = clips[cache.indices("test")]
    # the fixture's fold k holds out group k, as the official lists hold out groups
    assert len(test) > 0 and all(f"_g{fold:02d}_" in c for c in test)
    assert all(f"_g{fold:02d}_" not in c for c in clips[cache.indices("train")])


def test_fold_out_of_range_is_one_clear_error(ucf_cache, tmp_path):
    with pytest.raises(SplitError, match=r"'fold' = 4 is invalid: one of \[1, 2, 3\]"):
        load_dataset("ucf101", ucf_cache.path.parent, fold=4)
    embedded_like = FeatureCache(ucf_cache.path)
    assert embedded_like.fold == 1


def test_dev_split_is_carved_from_train_stratified_and_seeded(ucf_cache):
    a = FeatureCache(ucf_cache.path, fold=1, dev_fraction=0.5, dev_seed=3)
    b = FeatureCache(ucf_cache.path, fold=1, dev_fraction=0.5, dev_seed=3)
    plain = FeatureCache(ucf_cache.path, fold=1)
    assert np.array_equal(a.split, b.split)
    assert np.array_equal(np.flatnonzero(a.split == TEST), np.flatnonzero(plain.split == TEST))
    dev, train = a.indices("dev"), a.indices("train")
    assert dev.size > 0 and set(dev) | set(train) == set(plain.indices("train")) and not set(dev) & set(train)
    assert set(a.labels[train]) == set(plain.labels[plain.indices("train")])  # every class keeps train rows


def test_ucf101_layout_errors_name_what_is_missing(tmp_path, ucf_src):
    with pytest.raises(SourceError, match="must contain UCF-101"):
        read_ucf101(tmp_path)
    (tmp_path / "UCF-101").mkdir()
    (tmp_path / "ucfTrainTestlist").mkdir()
    (tmp_path / "ucfTrainTestlist" / "classInd.txt").write_text("1 A\n")
    with pytest.raises(SourceError, match=r"lacks \['trainlist01.txt'"):
        read_ucf101(tmp_path)
    assert not (tmp_path / "ucf101").exists()


def test_prepare_resumes_after_interruption_and_refuses_other_settings(ucf_src, tmp_path, monkeypatch):
    import data.prepare as prep

    real_work, calls = prep._work, []

    def interrupted(args):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(args[0].key)
        return real_work(args)

    monkeypatch.setattr(prep, "_work", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare("ucf101", ucf_src, tmp_path, SPEC, workers=1, log=lambda m: None)
    assert not (tmp_path / "ucf101").exists()  # no cache that looks complete
    assert (
        len(list((tmp_path / ".ucf101.work").glob("*.npz"))) + len(list((tmp_path / ".ucf101.work").glob("*.skip")))
        == 5
    )

    monkeypatch.setattr(prep, "_work", real_work)
    lines = []
    cache = prepare("ucf101", ucf_src, tmp_path, SPEC, workers=1, log=lines.append)
    assert "5 already computed, 11 to decode" in lines[0]
    assert len(cache) == 11 and not (tmp_path / ".ucf101.work").exists()
    fresh = prepare("ucf101", ucf_src, tmp_path / "fresh", SPEC, workers=1, log=lambda m: None)
    assert fresh.meta["clips"] == cache.meta["clips"]
    assert np.array_equal(fresh.audio[:], cache.audio[:]) and np.array_equal(fresh.video[:], cache.video[:])

    with pytest.raises(CacheMismatchError, match="other settings"):
        prepare("ucf101", ucf_src, tmp_path, FeatureSpec(40, 1.0, 48), workers=1, log=lambda m: None)
    # a half-done work folder with other settings is refused too
    monkeypatch.setattr(prep, "_work", interrupted)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        prepare("ucf101", ucf_src, tmp_path / "other", SPEC, workers=1, log=lambda m: None)
    monkeypatch.setattr(prep, "_work", real_work)
    with pytest.raises(CacheMismatchError, match="other settings"):
        prepare("ucf101", ucf_src, tmp_path / "other", FeatureSpec(64, 1.0, 32), workers=1, log=lambda m: None)


# ------------------------------------------------------------------------- ActivityNet
def test_activitynet_subsets_labels_and_missing_videos(anet_cache):
    assert anet_cache.meta["classes"] == ["Doing karate", "Playing bagpipes", "Shaving"]
    assert anet_cache.indices("train").size == 9 and anet_cache.indices("test").size == 3
    skipped = pd.read_csv(anet_cache.path.parent / "activitynet.skipped.csv")
    assert list(skipped["clip"]) == ["gone0001"] and list(skipped["reason"]) == ["missing-file"]


def test_activitynet_without_annotation_file_is_refused(tmp_path):
    rc = prepare_main(["activitynet", "--src", str(tmp_path), "--data-dir", str(tmp_path / "d")])
    assert rc == 2 and not (tmp_path / "d" / "activitynet").exists()


# ----------------------------------------------------------------------------- manifest
def test_manifest_split_column_and_silent_file(manifest_cache):
    assert manifest_cache.meta["classes"] == ["bird", "cat", "dog"]
    assert len(manifest_cache) == 14  # one silent bird wav skipped
    test = manifest_cache.indices("test")
    assert test.size == 2  # bird's test clip was the silent one
    skipped = pd.read_csv(manifest_cache.path.parent / "manifest.skipped.csv")
    assert list(skipped["reason"]) == ["silent"] and skipped["clip"].iloc[0].startswith("audio/bird0.wav")


def test_manifest_without_split_column_gets_a_seeded_stratified_split(tmp_path):
    src = make_manifest(tmp_path / "m", per_class=5)
    a, b = read_manifest(src, seed=1), read_manifest(src, seed=1)
    assert [i.splits for i in a.items] == [i.splits for i in b.items]
    per_class = pd.DataFrame({"label": [i.label for i in a.items], "test": [i.splits[0] == TEST for i in a.items]})
    assert (per_class.groupby("label")["test"].sum() == 1).all()


@pytest.mark.parametrize(
    "case, match",
    [
        ("columns", r"needs columns 'label' and either 'video', 'audio' \+ 'image'"),
        ("path", r"1 path\(s\) in manifest.csv do not exist, first line 3 audio = 'nope.wav'"),
        ("unseen", r"labels in the test split of fold 1 never occur in its train split: \['cat'\]"),
        ("split", r"column 'split' has \['validation'\]; allowed"),
        ("empty", r"line 2 has an empty label"),
    ],
)
def test_manifest_bad_input_fails_before_any_work(tmp_path, case, match):
    src = tmp_path / "src"
    wav, png = write_wav(src / "a.wav", 0), write_png(src / "a.png", 0)
    write_wav(src / "b.wav", 1)
    rows = {
        "columns": "label,sound\ndog,a.wav\n",
        "path": "label,audio,image\ndog,a.wav,a.png\ndog,nope.wav,a.png\n",
        "unseen": "label,audio,image,split\ndog,a.wav,a.png,train\ncat,b.wav,a.png,test\n",
        "split": "label,audio,image,split\ndog,a.wav,a.png,validation\n",
        "empty": "label,audio,image\n ,a.wav,a.png\n",
    }[case]
    (src / "manifest.csv").write_text(rows)
    assert wav.is_file() and png.is_file()
    with pytest.raises(SourceError, match=match):
        prepare("manifest", src, tmp_path / "data", SPEC, workers=1, log=lambda m: None)
    assert not (tmp_path / "data" / "manifest").exists() and not (tmp_path / "data" / ".manifest.work").exists()


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("class-emptied", SourceError, r"after skipping unusable clips\): labels in the test split .* \['cat'\]"),
        ("nothing-usable", PrepareError, r"no usable clip \(every file was skipped\); nothing written"),
    ],
)
def test_manifest_classes_emptied_by_unusable_files(tmp_path, case, error, match):
    """Errors found only after decoding (a class whose train clips are all silent, or no usable clip)
    also leave no cache behind, and the skip report says which files and why."""
    src = tmp_path / "src"
    png = write_png(src / "a.png", 0)
    rows = ["label,audio,image,split"]
    for label, k, split in [("dog", 0, "train"), ("dog", 1, "test"), ("cat", 2, "train"), ("cat", 3, "test")]:
        silent = label == "cat" and split == "train" or case == "nothing-usable"
        wav = write_wav(src / f"{label}{k}.wav", k, silent=silent)
        rows.append(f"{label},{wav.name},{png.name},{split}")
    (src / "manifest.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(error, match=match):
        prepare("manifest", src, tmp_path / "data", SPEC, workers=1, log=lambda m: None)
    assert not (tmp_path / "data" / "manifest").exists()
    skipped = pd.read_csv(tmp_path / "data" / "manifest.skipped.csv")
    assert set(skipped["reason"]) == {"silent"} and len(skipped) == (1 if case == "class-emptied" else 4)


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(DatasetNotPrepared, match="make prepare DATASET=ucf101"):
        load_dataset("ucf101", tmp_path)
    with pytest.raises(PrepareError, match="is not a folder"):
        prepare("ucf101", tmp_path / "absent", tmp_path, SPEC)


def test_readable_class_names():
    assert readable_name("PlayingDaf") == "playing daf"
    assert readable_name("HandstandPushups") == "handstand pushups"
    assert readable_name("Playing_congas") == "playing congas"
    assert readable_name("YoYo") == "yo yo"


# --------------------------------------------------------- 2-round ModalityMirror on each
@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    from mirror_app.deploy.launch import SuperLink

    link = SuperLink(tmp_path_factory.mktemp("flwr-home"))
    yield link
    assert not link.stop(), "processes left running"


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "which, extra", [("ucf", "fold=2"), ("anet", "dev-fraction=0.0"), ("manifest", "dev-fraction=0.3")]
)
def test_modality_mirror_runs_on_each_prepared_dataset(superlink, which, extra, request, tmp_path):
    cache = request.getfixturevalue({"ucf": "ucf_cache", "anet": "anet_cache", "manifest": "manifest_cache"}[which])
    out = tmp_path / "results"
    cfg = (
        f"dataset='{cache.meta['dataset']}' data-dir='{cache.path.parent}' output-dir='{out}' "
        f"num-server-rounds=2 distill-rounds=1 clients-per-round=3 missing-rate=0.34 dirichlet-alpha=100.0 "
        f"local-epochs=1 eval-every=1 {extra}"
    )
    res = superlink.flwr_run(ROOT, "--federation-config", "num-supernodes=3", "--run-config", cfg)
    log = res.stdout + res.stderr
    runs = list(out.iterdir()) if out.exists() else []
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file(), log[-4000:]
    metrics = pd.read_csv(runs[0] / "metrics.csv")
    assert list(metrics["phase"]) == ["modality-aware-fl"] * 3 + ["distillation"]
    assert (metrics["failures"] == 0).all() and metrics["audio_top1"].between(0, 1).all()
    per_class = pd.read_csv(runs[0] / "per_class_f1.csv")
    assert set(per_class["class"]) == set(cache.meta["classes"])
    config = json.loads((runs[0] / "config.json").read_text())
    assert config["dataset"] == cache.meta["dataset"]
    if "dev-fraction=0.3" in extra:
        assert metrics["dev_audio_top1"].between(0, 1).all()


# ------------------------------------------------------------- a node on its own data
def _context(node_config: dict, run_config: dict):
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config)


def test_a_node_on_its_own_audio_only_data_refuses_the_audiovisual_role(tmp_path):
    from mirror_app.client_app import make_client

    src = tmp_path / "device"
    rows = ["label,audio"] + [f"{lab},a/{lab}{k}.wav" for lab in ("dog", "cat") for k in range(4)]
    for li, lab in enumerate(("dog", "cat")):
        for k in range(4):
            write_wav(src / "a" / f"{lab}{k}.wav", li + k)
    (src / "manifest.csv").write_text("\n".join(rows) + "\n")
    cache = prepare("manifest", src, tmp_path / "data", SPEC, workers=1, log=lambda m: None)
    assert cache.meta["has_video"] is False and len(cache) == 8

    run = {"dataset": "manifest", "data-dir": str(tmp_path / "elsewhere")}
    own = {"data-dir": str(tmp_path / "data")}  # no partition: all of this node's train data
    client = make_client(_context({**own, "modality": "audio"}, run))
    assert client.partition.modality == "audio"
    assert client.partition.partition_id == -1  # no partition: the server knows this node by its node id
    assert client.get_properties({})["partition-id"] == -1
    assert sorted(client.partition.indices) == sorted(cache.indices("train"))
    with pytest.raises(ValueError, match="'modality' = 'audiovisual' is invalid: this node's data .* has no video"):
        make_client(_context({**own, "modality": "audiovisual"}, run))
    with pytest.raises(ValueError, match="needs both 'partition-id' and 'num-partitions'"):
        make_client(_context({**own, "partition-id": 0}, run))
