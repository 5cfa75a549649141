"""mirror_app.centralized: the audio-only and the audiovisual reference models are trained apart."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_cache

import mirror_app.studies.centralized as centralized_module
from mirror_app.core.evaluation import evaluate
from mirror_app.core.models import initial_model
from mirror_app.core.pretrained import PretrainedError
from mirror_app.core.training import train_audio

KW = dict(epochs=2, lr=1e-3, batch_size=16, seed=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    tiny_cache(root / "manifest")  # a prepared cache under <data-dir>/<dataset>
    return root


def run(data_dir, **kw):
    return centralized_module.centralized("manifest", str(data_dir), **{**KW, **kw})


def test_training_the_av_model_does_not_move_the_audio_model(data_dir, monkeypatch):
    """The audio numbers are those of the audio model alone, however the audiovisual model is trained
    (the old code trained both on one model object, so training the AV model moved the audio encoder
    under the already trained audio head)."""
    plain = run(data_dir)
    real_train_av = centralized_module.train_av

    def train_av_then_wreck_audio(model, *args, **kwargs):
        loss = real_train_av(model, *args, **kwargs)
        with torch.no_grad():
            for p in model.audio_encoder.parameters():
                p.zero_()
        return loss

    monkeypatch.setattr(centralized_module, "train_av", train_av_then_wreck_audio)
    wrecked = run(data_dir)
    assert (wrecked["audio_top1"], wrecked["audio_top5"]) == (plain["audio_top1"], plain["audio_top5"])
    assert plain["audio_top1"] > 0.25  # 4 balanced classes: a useless audio model scores 0.25


def test_audio_result_is_the_audio_model_trained_alone(data_dir):
    """Deterministic on the CPU: the same seed, the same initial weights, the same audio-only training."""
    result = run(data_dir)
    cache = centralized_module.load_dataset("manifest", str(data_dir))
    model = initial_model(
        cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], "tdnn-small", "cnn-small", 64, KW["seed"]
    )
    torch.manual_seed(KW["seed"])
    train_audio(
        model,
        cache,
        cache.indices("train"),
        epochs=KW["epochs"],
        batch_size=KW["batch_size"],
        lr=KW["lr"],
        optimizer="adam",
        device="cpu",
        seed=KW["seed"],
    )
    alone = evaluate(model, cache, cache.indices("test"), parts=("audio",))
    assert (result["audio_top1"], result["audio_top5"]) == (alone["audio_top1"], alone["audio_top5"])
    assert set(result) >= {"dataset", "fold", "epochs", "seconds", "audio_top1", "audio_top5", "av_top1", "av_top5"}


def test_command_line_takes_the_backbones_and_prints_json(data_dir, capsys):
    centralized_module.main(
        [
            "--dataset",
            "manifest",
            "--data-dir",
            str(data_dir),
            "--epochs",
            "1",
            "--audio-backbone",
            "cnn-small",
            "--video-backbone",
            "cnn-small",
            "--embed-dim",
            "16",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "manifest" and 0.0 <= result["av_top5"] <= 1.0


def test_command_line_hands_the_pretrained_files_to_initial_model(data_dir):
    with pytest.raises(PretrainedError, match="audio-pretrained"):
        centralized_module.main(
            [
                "--dataset",
                "manifest",
                "--data-dir",
                str(data_dir),
                "--epochs",
                "1",
                "--audio-backbone",
                "resnet18",
                "--audio-pretrained",
                "/nonexistent/a.pt",
            ]
        )
