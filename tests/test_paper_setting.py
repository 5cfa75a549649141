"""The paper's setting, startable: pretrained files checked against the dataset's front end before Flower starts,
`make run` finding or building encoders that fit a prepared dataset, and resnet18 + ast-tiny from SSAST-layout
weights through `make run`'s tool on a manifest dataset at 128 mel bins."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import run_tool, ssast_checkpoint

from data.features import FeatureSpec
from data.media import make_manifest
from data.prepare import prepare
from mirror_app.core.backbones import BACKBONES
from mirror_app.deploy.launch import SuperLink

ROOT = Path(__file__).resolve().parents[1]
SPEC = FeatureSpec(num_mel_bins=128, audio_seconds=2.0, image_size=64)  # 128-bin fbanks, as AST/SSAST expect


@pytest.fixture(scope="module")
def manifest_128(tmp_path_factory):
    src = make_manifest(tmp_path_factory.mktemp("clips"), per_class=6)
    return prepare("manifest", src, tmp_path_factory.mktemp("data-128"), SPEC, workers=1, log=lambda m: None)


def test_a_pretrained_file_for_another_front_end_stops_make_run_in_one_line_before_flower(manifest_128, tmp_path):
    """What a new user met: the embedded data's 40-bin encoder given to a 128-bin dataset."""
    wrong = tmp_path / "audio-tdnn-small-d64-mel40-t98.pt"
    torch.save(BACKBONES["tdnn-small"]((98, 40), 64).state_dict(), wrong)
    home = tmp_path / "flwr-home"
    env = {"PATH": str(Path(sys.executable).parent), "FLWR_HOME": str(home), "HOME": str(tmp_path)}
    config = (
        f"dataset='manifest' data-dir='{manifest_128.path.parent}' audio-pretrained='{wrong}' "
        f"output-dir='{tmp_path / 'out'}'"
    )
    res = run_tool(["--pretrain", "--num-supernodes", "3", "--run-config", config], env)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1, res.stderr
    line = err[0]
    assert line.startswith(f"error: run config 'audio-pretrained' = '{wrong}' does not fit the backbone")
    assert "features.0.weight (64, 40, 5) != (64, 128, 5)" in line
    assert (
        "Fix: give an audio encoder made for 'tdnn-small' at this dataset's front end (128 mel bins x 198 frames)"
        in (line)
    )
    assert "python -m mirror_app.model.pretrain --dataset manifest" in line and "audio-pretrained='none'" in line
    assert not home.exists()  # Flower was never called
    assert not any((tmp_path / "out").glob("*-run*"))  # no run folder


def test_make_run_builds_the_cheap_encoders_for_the_front_end_and_says_which_start_from_random(
    manifest_128, tmp_path, monkeypatch
):
    from mirror_app.core.config import RunConfig
    from mirror_app.core.pretrained import keyed_file
    from mirror_app.model import pretrain as pretrain_module

    monkeypatch.setattr(pretrain_module, "default_samples", lambda spec: 4)  # a small proxy set for the test
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "manifest").symlink_to(manifest_128.path)
    cfg = RunConfig.from_dict({"dataset": "manifest", "data-dir": str(data_dir), "video-backbone": "resnet18"})
    said: list[str] = []
    built = pretrain_module.ensure_pretrained(cfg, manifest_128.spec, said.append)
    audio = keyed_file(data_dir / "pretrained", "audio", "tdnn-small", 64, manifest_128.spec)
    assert built == [audio] and audio.name == "audio-tdnn-small-d64-mel128-t198.pt" and audio.is_file()
    assert any(line.startswith("video encoder: starting without pretraining (no resnet18 encoder") for line in said)
    assert cfg.pretrained_files(manifest_128.spec) == (str(audio), "")  # 'auto' now finds it
    said.clear()
    assert pretrain_module.ensure_pretrained(cfg, manifest_128.spec, said.append) == []  # nothing to build again
    # the proxy set was made at the dataset's mel bins and frames, its frames at most 64 px
    import json

    report = json.loads(audio.with_name(audio.name + ".json").read_text())
    assert report["proxy_front_end"] == {"num_mel_bins": 128, "audio_seconds": 2.0, "image_size": 64}


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    link = SuperLink(tmp_path_factory.mktemp("flwr-home"))
    yield link
    assert not link.stop(), "processes left running"


@pytest.mark.timeout(900)
def test_resnet18_and_ast_tiny_from_ssast_weights_run_through_make_runs_tool(manifest_128, superlink, tmp_path):
    """The paper's encoders (at tiny width): a ResNet-18 state dict as torchvision saves it and an SSAST tiny patch
    checkpoint in the released layout, 2 + 1 rounds on 128-bin fbanks."""
    from torchvision.models import resnet18

    ssast = tmp_path / "SSAST-Tiny-Patch-400.pth"
    torch.save(ssast_checkpoint(), ssast)
    imagenet = tmp_path / "resnet18-f37072fd.pth"
    torch.save(resnet18(weights=None).state_dict(), imagenet)
    out = tmp_path / "results"
    config = (
        f"dataset='manifest' data-dir='{manifest_128.path.parent}' output-dir='{out}' audio-backbone='ast-tiny' "
        f"video-backbone='resnet18' audio-pretrained='{ssast}' video-pretrained='{imagenet}' "
        "num-server-rounds=2 distill-rounds=1 clients-per-round=3 missing-rate=0.34 dirichlet-alpha=100.0 "
        "eval-every=1 dev-fraction=0.0"
    )
    res = run_tool(
        ["--pretrain", "--connection", "test", "--federation-config", "num-supernodes=3", "--run-config", config],
        superlink.env,
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    (run,) = list(out.glob("*-run*"))
    # the tool names the finished run's folder
    line = [x for x in res.stdout.splitlines() if x.startswith("run ") and " finished: " in x]
    folder = Path(line[-1].split(" finished: ", 1)[1].split(" (log: ")[0]) if line else None
    assert folder is not None and folder.resolve() == run.resolve(), res.stdout[-2000:]
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["phase"]) == ["modality-aware-fl"] * 3 + ["distillation"]
    assert (metrics["failures"] == 0).all()
    started = [line for line in log.splitlines() if "initial encoders (128 mel bins x 198 frames, 64 px)" in line]
    assert started and f"audio ast-tiny from {ssast}" in started[0] and f"video resnet18 from {imagenet}" in started[0]
