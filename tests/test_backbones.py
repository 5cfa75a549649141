"""Real backbones on CPU: ResNet-18 and the AST-style audio transformer, and local pretrained weights."""

from __future__ import annotations

import pytest
import torch

from mirror_app.core.backbones import AudioTransformer
from mirror_app.core.config import ConfigError, RunConfig
from mirror_app.core.models import build_model
from mirror_app.core.pretrained import PretrainedError, load_pretrained


@pytest.mark.parametrize(
    "audio, video, audio_shape, video_shape",
    [
        ("ast-tiny", "resnet18", (100, 32), (3, 64, 64)),
        ("resnet18", "resnet18", (48, 40), (3, 32, 32)),
    ],
)
def test_forward_and_backward_on_one_batch(audio, video, audio_shape, video_shape):
    model = build_model(5, audio_shape, video_shape, audio, video, embed_dim=16, seed=0)
    a = torch.randn(2, *audio_shape) * 4 - 4  # raw fbank-like values
    v = torch.randn(2, *video_shape)
    y = torch.tensor([1, 3])
    loss = torch.nn.functional.cross_entropy(model.av_logits(a, v), y) + torch.nn.functional.cross_entropy(
        model.audio_logits(a), y
    )
    loss.backward()
    for group in (model.audio_encoder, model.video_encoder):
        grads = [p.grad for p in group.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_audio_transformer_uses_ssast_normalisation_and_ast_layout():
    enc = AudioTransformer((64, 32), 8, "ast-tiny")
    # (mels, frames) image with 16 x 16 patches: 2 x 4 = 8 patches, single input channel
    assert enc.backbone.patch_embed.proj.in_channels == 1
    assert enc.backbone.patch_embed.num_patches == 8
    seen = {}

    def keep_input(module, inputs, output):
        seen["x"] = inputs[0]

    enc.backbone.patch_embed.register_forward_hook(keep_input)
    x = torch.full((1, 64, 32), AudioTransformer.MEAN + 2 * AudioTransformer.STD)
    enc(x)
    assert seen["x"].shape == (1, 1, 32, 64)
    assert torch.allclose(seen["x"], torch.ones_like(seen["x"]))  # (x - mean) / (2 std)
    with pytest.raises(ValueError, match="at least 16 mel bins and 16 frames"):
        AudioTransformer((8, 32), 8, "ast-tiny")


def test_local_pretrained_checkpoint_loads_and_mismatch_is_refused(tmp_path):
    import timm

    source = timm.create_model("resnet18", pretrained=False, num_classes=10)  # with its classifier
    torch.save({"state_dict": source.state_dict()}, tmp_path / "resnet18.pth")
    model = build_model(4, (48, 40), (3, 32, 32), "tdnn-small", "resnet18", embed_dim=8, seed=1)
    load_pretrained(model.video_encoder, str(tmp_path / "resnet18.pth"), "video-pretrained")
    for k, v in model.video_encoder.backbone.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k

    ast_file = tmp_path / "ast.pth"
    torch.save(AudioTransformer((48, 40), 8, "ast-tiny").backbone.state_dict(), ast_file)
    with pytest.raises(PretrainedError, match="does not fit the backbone"):
        load_pretrained(model.video_encoder, str(ast_file), "video-pretrained")
    with pytest.raises(PretrainedError, match="no such file"):
        load_pretrained(model.video_encoder, str(tmp_path / "absent.pth"), "video-pretrained")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedError, match="not a PyTorch checkpoint"):
        load_pretrained(model.video_encoder, str(tmp_path / "junk.pth"), "video-pretrained")
    with pytest.raises(PretrainedError, match="does not fit the backbone"):  # a small encoder loads whole encoders
        load_pretrained(model.audio_encoder, str(tmp_path / "resnet18.pth"), "audio-pretrained")


def test_run_config_checks_backbones_and_pretrained_paths(tmp_path):
    with pytest.raises(ConfigError, match=r"'video-backbone' = 'ast' is invalid"):
        RunConfig.from_dict({"video-backbone": "ast"})
    # a missing file is the pre-run check's business (where the run reads it), not the config's: what only reads
    # records, or runs on a node without the file, needs none
    absent = RunConfig.from_dict({"audio-pretrained": str(tmp_path / "none.pth")})
    from data.features import FeatureSpec
    from mirror_app.core.pretrained import PretrainedError

    with pytest.raises(PretrainedError, match=r"'audio-pretrained' = .* is invalid: no such file \(allowed: 'auto'"):
        absent.pretrained_files(FeatureSpec())
    with pytest.raises(ConfigError, match=r"'fold' = 0 is invalid"):
        RunConfig.from_dict({"fold": 0})
    assert RunConfig.from_dict({"audio-backbone": "ast", "fold": 3}).fold == 3
