"""`make pretrain`: encoders trained on the disjoint proxy set, written as files the run config reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data import synthetic
from mirror_app.core.config import RunConfig
from mirror_app.core.models import initial_model
from mirror_app.model import pretrain as pretrain_module


def test_pretrain_writes_encoders_that_initial_model_loads(tmp_path):
    report = pretrain_module.pretrain(
        tmp_path / "weights", tmp_path / "data", epochs=1, embed_dim=16, samples_per_class=6
    )
    audio_file, video_file = pretrain_module.weight_files(tmp_path / "weights", "tdnn-small", "cnn-small", 16)
    assert report["audio_pretrained"] == str(audio_file) and audio_file.is_file() and video_file.is_file()
    assert audio_file.name == "audio-tdnn-small-d16-mel40-t98.pt" and video_file.name == "video-cnn-small-d16-img32.pt"
    saved = json.loads(audio_file.with_name(audio_file.name + ".json").read_text())
    assert 0.0 <= saved["proxy_audio_top1"] <= 1.0 and saved["proxy_classes"][0] == "proxy 00"
    assert not set(saved["proxy_classes"]) & set(synthetic.class_names())

    task = synthetic.load(tmp_path / "data", samples_per_class=5)
    shapes = (task.audio.shape[1:], task.video.shape[1:])
    plain = initial_model(task.num_classes, *shapes, "tdnn-small", "cnn-small", 16, seed=0)
    loaded = initial_model(
        task.num_classes, *shapes, "tdnn-small", "cnn-small", 16, 0, str(audio_file), str(video_file)
    )
    for part, file in (("audio_encoder", audio_file), ("video_encoder", video_file)):
        weights = torch.load(file, weights_only=True)
        state = getattr(loaded, part).state_dict()
        assert set(weights) == set(state)
        assert all(torch.equal(weights[k], state[k]) for k in state)
        assert not all(torch.equal(state[k], getattr(plain, part).state_dict()[k]) for k in state)
    # the heads are the task's own, from the seed: pretraining brings features, not the task's classifier
    assert torch.equal(loaded.audio_head.weight, plain.audio_head.weight)
    cfg = RunConfig.from_dict({"audio-pretrained": str(audio_file), "video-pretrained": str(video_file)})
    assert cfg.pretrained_files(task.spec) == (str(audio_file), str(video_file))
    # 'auto' finds them under <data-dir>/pretrained for the run's backbones, embedding size and front end
    auto = RunConfig.from_dict({"data-dir": str(tmp_path / "data"), "embed-dim": 16})
    assert auto.pretrained_files(task.spec) == ("", "")
    (tmp_path / "data" / "pretrained").symlink_to(tmp_path / "weights")
    found = auto.pretrained_files(task.spec)
    assert [Path(f).resolve() for f in found] == [audio_file.resolve(), video_file.resolve()]
    assert RunConfig.from_dict({"data-dir": str(tmp_path / "data"), "embed-dim": 32}).pretrained_files(task.spec) == (
        "",
        "",
    )


def test_pretrain_refuses_bad_backbones_in_one_line(tmp_path, capsys):
    assert pretrain_module.main(["--out", str(tmp_path), "--video-backbone", "tdnn-small"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "video backbone 'tdnn-small' is invalid" in err
    with pytest.raises(ValueError, match="epochs"):
        pretrain_module.pretrain(tmp_path, tmp_path, epochs=0)
