"""Pretrained weights in their published layouts (SSAST, AST as released, Hugging Face AST, torchvision / timm),
built here with the released key names and shapes and random values, and the library names (torchvision:, hf:)
read from their caches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SMALL, TINY, deit_blocks, ssast_checkpoint

from data.features import FeatureSpec
from mirror_app.core.backbones import BACKBONES, AudioTransformer
from mirror_app.core.pretrained import PretrainedError, fetch, keyed_file, load_pretrained, resolve


def middle(n_in: int, n_out: int) -> slice:
    start = n_in // 2 - n_out // 2
    return slice(start, start + n_out)


def linear_resize(a: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Linear interpolation along ``axis`` with half-pixel centres (PyTorch's align_corners=False), in numpy."""
    n_in = a.shape[axis]
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (x - lo).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
    return np.take(a, lo, axis=axis) * (1 - w) + np.take(a, hi, axis=axis) * w


def expected_grid(pos: torch.Tensor, grid_in: tuple[int, int], grid_out: tuple[int, int]) -> torch.Tensor:
    """The patch positions (1, n, D) moved to ``grid_out``, computed independently: per axis the middle where it
    shrinks, linear interpolation where it grows (time first, then frequency)."""
    g = pos[0].numpy().reshape(grid_in[0], grid_in[1], -1)
    (fi, ti), (fo, to) = grid_in, grid_out
    g = g[:, middle(ti, to)] if to < ti else (linear_resize(g, 1, to) if to > ti else g)
    g = g[middle(fi, fo)] if fo < fi else (linear_resize(g, 0, fo) if fo > fi else g)
    return torch.from_numpy(np.ascontiguousarray(g.reshape(1, fo * to, -1))).float()


def by_hand(name: str, shape: tuple[int, int], vit: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The encoder with ``vit`` (timm names, already on the run's grid) loaded directly."""
    enc = BACKBONES[name](shape, 8)
    enc.backbone.load_state_dict(vit)
    return enc


def check_loaded(name: str, shape, file, vit_expected: dict, key="audio-pretrained") -> torch.nn.Module:
    """Load ``file`` into a fresh ``name`` encoder; every backbone weight comes from the file (none is left at its
    initial value) and the encoder computes what ``by_hand`` loading gives."""
    torch.manual_seed(0)
    enc = BACKBONES[name](shape, 8)
    initial = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    load_pretrained(enc, file, key)
    loaded = enc.backbone.state_dict()
    assert set(loaded) == set(vit_expected)
    for k, v in loaded.items():
        assert not torch.equal(v, initial[k]), f"{k} kept its initial value"
        torch.testing.assert_close(v, vit_expected[k], msg=f"{k} differs from the file's")
    manual = by_hand(name, shape, vit_expected)
    manual.proj.load_state_dict(enc.proj.state_dict())
    x = torch.randn(2, *shape) * 3 - 4
    enc.eval(), manual.eval()
    torch.testing.assert_close(enc(x), manual(x))
    return enc


def timm_names(state: dict) -> dict:
    """SSAST's ``module.v.*`` as the backbone names them, the classifier heads left out."""
    return {
        k.removeprefix("module.v."): v
        for k, v in state.items()
        if k.startswith("module.v.") and not k.startswith(("module.v.head.", "module.v.head_dist."))
    }


def test_an_ssast_patch_checkpoint_loads_with_its_grid_cut_and_the_pretext_heads_ignored(tmp_path):
    state = ssast_checkpoint()  # 16 x 16 patches, pretraining grid 8 x 64 (128 mel bins x 1024 frames)
    torch.save(state, tmp_path / "SSAST-Tiny-Patch-400.pth")
    shape = (200, 128)  # 200 frames x 128 mel bins: the run's grid is 8 x 12
    vit = timm_names(state)
    vit["pos_embed"] = torch.cat(
        [state["module.v.pos_embed"][:, :2], expected_grid(state["module.v.pos_embed"][:, 2:], (8, 64), (8, 12))], 1
    )
    enc = check_loaded("ast-tiny", shape, tmp_path / "SSAST-Tiny-Patch-400.pth", vit)
    assert enc.backbone.pos_embed.shape == (1, 2 + 8 * 12, TINY)
    # the middle 12 of the 64 time positions, for every frequency row
    grid = state["module.v.pos_embed"][0, 2:].reshape(8, 64, TINY)
    torch.testing.assert_close(enc.backbone.pos_embed[0, 2:].reshape(8, 12, TINY), grid[:, 26:38])


def test_an_ssast_frame_checkpoint_loads_into_the_frame_backbone(tmp_path):
    state = ssast_checkpoint(patch=(128, 2))  # frame patches, pretraining grid 1 x 512
    torch.save(state, tmp_path / "SSAST-Tiny-Frame-400.pth")
    shape = (100, 128)
    vit = timm_names(state)
    vit["pos_embed"] = torch.cat(
        [state["module.v.pos_embed"][:, :2], expected_grid(state["module.v.pos_embed"][:, 2:], (1, 512), (1, 50))], 1
    )
    check_loaded("ast-tiny-frame", shape, tmp_path / "SSAST-Tiny-Frame-400.pth", vit)


def test_a_grid_larger_than_the_checkpoints_is_interpolated_on_both_axes(tmp_path):
    state = ssast_checkpoint(fdim=64, tdim=160, seed=1)  # pretraining grid 4 x 10; the run's 8 x 25
    torch.save(state, tmp_path / "small-grid.pth")
    shape = (400, 128)
    vit = timm_names(state)
    vit["pos_embed"] = torch.cat(
        [state["module.v.pos_embed"][:, :2], expected_grid(state["module.v.pos_embed"][:, 2:], (4, 10), (8, 25))], 1
    )
    check_loaded("ast-tiny", shape, tmp_path / "small-grid.pth", vit)


def test_a_one_token_checkpoint_gives_its_class_token_to_both(tmp_path):
    state = ssast_checkpoint(tokens=1, seed=2)  # SSAST's base384_nokd layout, at tiny width
    torch.save(state, tmp_path / "one-token.pth")
    shape = (200, 128)
    vit = timm_names(state)
    pos = state["module.v.pos_embed"]
    vit["dist_token"] = state["module.v.cls_token"]
    vit["pos_embed"] = torch.cat([pos[:, :1], pos[:, :1], expected_grid(pos[:, 1:], (8, 64), (8, 12))], 1)
    check_loaded("ast-tiny", shape, tmp_path / "one-token.pth", vit)


def test_ast_as_released_loads_from_its_stride_10_grid(tmp_path):
    """MIT AST's AudioSet checkpoint: module.v.* with a module.mlp_head classifier, 12 x 101 positions."""
    g = torch.Generator().manual_seed(3)
    v = "module.v."
    state = {
        v + "cls_token": torch.randn(1, 1, TINY, generator=g),
        v + "dist_token": torch.randn(1, 1, TINY, generator=g),
        v + "pos_embed": torch.randn(1, 2 + 12 * 101, TINY, generator=g),
        v + "patch_embed.proj.weight": 0.05 * torch.randn(TINY, 1, 16, 16, generator=g),
        v + "patch_embed.proj.bias": 0.05 * torch.randn(TINY, generator=g),
        "module.mlp_head.0.weight": torch.randn(TINY, generator=g),
        "module.mlp_head.0.bias": torch.randn(TINY, generator=g),
        "module.mlp_head.1.weight": torch.randn(527, TINY, generator=g),
        "module.mlp_head.1.bias": torch.randn(527, generator=g),
    } | deit_blocks(v, TINY, g)
    torch.save(state, tmp_path / "audioset_10_10_0.4593.pth")
    vit = timm_names(state)
    vit["pos_embed"] = torch.cat(
        [state[v + "pos_embed"][:, :2], expected_grid(state[v + "pos_embed"][:, 2:], (12, 101), (8, 12))], 1
    )
    check_loaded("ast-tiny", (200, 128), tmp_path / "audioset_10_10_0.4593.pth", vit)


def hf_ast_state(seed: int = 4) -> dict[str, torch.Tensor]:
    """ASTForAudioClassification's state dict (transformers' names), at tiny width."""
    g = torch.Generator().manual_seed(seed)
    p = "audio_spectrogram_transformer."
    state = {
        p + "embeddings.cls_token": torch.randn(1, 1, TINY, generator=g),
        p + "embeddings.distillation_token": torch.randn(1, 1, TINY, generator=g),
        p + "embeddings.position_embeddings": torch.randn(1, 2 + 12 * 101, TINY, generator=g),
        p + "embeddings.patch_embeddings.projection.weight": 0.05 * torch.randn(TINY, 1, 16, 16, generator=g),
        p + "embeddings.patch_embeddings.projection.bias": 0.05 * torch.randn(TINY, generator=g),
        p + "layernorm.weight": 1 + 0.05 * torch.randn(TINY, generator=g),
        p + "layernorm.bias": 0.05 * torch.randn(TINY, generator=g),
        "classifier.layernorm.weight": torch.randn(TINY, generator=g),
        "classifier.layernorm.bias": torch.randn(TINY, generator=g),
        "classifier.dense.weight": torch.randn(527, TINY, generator=g),
        "classifier.dense.bias": torch.randn(527, generator=g),
    }
    for i in range(12):
        layer = f"{p}encoder.layer.{i}."
        for name, shape in {
            "attention.attention.query": (TINY, TINY),
            "attention.attention.key": (TINY, TINY),
            "attention.attention.value": (TINY, TINY),
            "attention.output.dense": (TINY, TINY),
            "intermediate.dense": (4 * TINY, TINY),
            "output.dense": (TINY, 4 * TINY),
        }.items():
            state[layer + name + ".weight"] = 0.05 * torch.randn(shape, generator=g)
            state[layer + name + ".bias"] = 0.05 * torch.randn(shape[0], generator=g)
        for name in ("layernorm_before", "layernorm_after"):
            state[layer + name + ".weight"] = 1 + 0.05 * torch.randn(TINY, generator=g)
            state[layer + name + ".bias"] = 0.05 * torch.randn(TINY, generator=g)
    return state


def hf_by_hand(state: dict) -> dict:
    """transformers' AST names -> timm's DeiT names, written out."""
    p = "audio_spectrogram_transformer."
    vit = {
        "cls_token": state[p + "embeddings.cls_token"],
        "dist_token": state[p + "embeddings.distillation_token"],
        "patch_embed.proj.weight": state[p + "embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state[p + "embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state[p + "layernorm.weight"],
        "norm.bias": state[p + "layernorm.bias"],
    }
    for i in range(12):
        layer = f"{p}encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = (state[f"{layer}attention.attention.{n}.{kind}"] for n in ("query", "key", "value"))
            vit[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([q, k, v])
            vit[f"blocks.{i}.attn.proj.{kind}"] = state[f"{layer}attention.output.dense.{kind}"]
            vit[f"blocks.{i}.mlp.fc1.{kind}"] = state[f"{layer}intermediate.dense.{kind}"]
            vit[f"blocks.{i}.mlp.fc2.{kind}"] = state[f"{layer}output.dense.{kind}"]
            vit[f"blocks.{i}.norm1.{kind}"] = state[f"{layer}layernorm_before.{kind}"]
            vit[f"blocks.{i}.norm2.{kind}"] = state[f"{layer}layernorm_after.{kind}"]
    pos = state[p + "embeddings.position_embeddings"]
    vit["pos_embed"] = torch.cat([pos[:, :2], expected_grid(pos[:, 2:], (12, 101), (8, 12))], 1)
    return vit


def test_a_hugging_face_ast_state_dict_loads_as_safetensors_and_as_a_pytorch_file(tmp_path):
    from safetensors.torch import save_file

    state = hf_ast_state()
    save_file(state, str(tmp_path / "model.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin")
    vit = hf_by_hand(state)
    check_loaded("ast-tiny", (200, 128), tmp_path / "model.safetensors", vit)
    check_loaded("ast-tiny", (200, 128), tmp_path / "pytorch_model.bin", vit)


def one_line_error(enc, file) -> str:
    with pytest.raises(PretrainedError) as err:
        load_pretrained(enc, file, "audio-pretrained")
    message = str(err.value)
    assert "\n" not in message
    return message


def test_another_size_or_patch_shape_is_one_line_naming_the_key_both_shapes_and_the_backbone_to_use(tmp_path):
    torch.save(ssast_checkpoint(width=SMALL), tmp_path / "SSAST-Small-Patch-400.pth")
    torch.save(ssast_checkpoint(patch=(128, 2)), tmp_path / "SSAST-Tiny-Frame-400.pth")
    tiny = AudioTransformer((200, 128), 8, "ast-tiny")
    message = one_line_error(tiny, tmp_path / "SSAST-Small-Patch-400.pth")
    assert "cls_token width 384 != 192" in message and "use audio-backbone='ast-small'" in message
    message = one_line_error(tiny, tmp_path / "SSAST-Tiny-Frame-400.pth")
    assert "patch_embed.proj.weight (192, 1, 128, 2)" in message and "16 x 16" in message
    assert "use audio-backbone='ast-tiny-frame'" in message
    # a small encoder's file made for another front end: the key and both shapes
    torch.save(BACKBONES["tdnn-small"]((98, 40), 64).state_dict(), tmp_path / "tdnn-40.pt")
    message = one_line_error(BACKBONES["tdnn-small"]((498, 128), 64), tmp_path / "tdnn-40.pt")
    assert "features.0.weight (64, 40, 5) != (64, 128, 5)" in message


def test_a_torchvision_resnet18_state_dict_loads_into_the_timm_backbone(tmp_path):
    from torchvision.models import resnet18

    source = resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    enc = BACKBONES["resnet18"]((3, 32, 32), 8)
    assert load_pretrained(enc, tmp_path / "resnet18-f37072fd.pth", "video-pretrained") == "plain"
    for k, v in enc.backbone.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k


def test_torchvision_names_come_from_torch_hubs_cache_and_say_what_to_fetch_when_missing(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    name = "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    with pytest.raises(PretrainedError) as err:
        fetch(name, "video-pretrained")  # not cached, and no download asked for
    message = str(err.value)
    assert "\n" not in message and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(cached) in message
    cached.parent.mkdir(parents=True)
    torch.save(resnet18(weights=None).state_dict(), cached)
    assert fetch(name, "video-pretrained") == cached
    with pytest.raises(PretrainedError, match="torchvision has no such weights"):
        fetch("torchvision:ResNet18_Weights.NOPE", "video-pretrained")


def test_hf_names_come_from_the_hugging_face_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = "MIT/ast-finetuned-audioset-10-10-0.4593"
    with pytest.raises(PretrainedError) as err:
        fetch(f"hf:{repo}", "audio-pretrained")
    assert "\n" not in str(err.value) and f"https://huggingface.co/{repo}/resolve/main/model.safetensors" in str(
        err.value
    )
    snapshot = tmp_path / "hub" / "models--MIT--ast-finetuned-audioset-10-10-0.4593" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    state = hf_ast_state(seed=5)
    save_file(state, str(snapshot / "model.safetensors"))
    file = fetch(f"hf:{repo}", "audio-pretrained")
    assert file == snapshot / "model.safetensors"
    check_loaded("ast-tiny", (200, 128), file, hf_by_hand(state))


def test_auto_finds_make_pretrains_file_for_the_backbone_and_front_end_only(tmp_path):
    spec = FeatureSpec(num_mel_bins=128, audio_seconds=5.0, image_size=224)
    wanted = keyed_file(tmp_path, "audio", "tdnn-small", 64, spec)
    assert wanted.name == "audio-tdnn-small-d64-mel128-t498.pt"
    assert resolve("auto", "audio-pretrained", "audio", "tdnn-small", 64, spec, tmp_path) is None
    torch.save({}, keyed_file(tmp_path, "audio", "tdnn-small", 64, FeatureSpec()))  # another front end's file
    assert resolve("auto", "audio-pretrained", "audio", "tdnn-small", 64, spec, tmp_path) is None
    torch.save({}, wanted)
    assert resolve("auto", "audio-pretrained", "audio", "tdnn-small", 64, spec, tmp_path) == wanted
    assert resolve("none", "audio-pretrained", "audio", "tdnn-small", 64, spec, tmp_path) is None
    assert keyed_file(tmp_path, "video", "cnn-small", 64, spec).name == "video-cnn-small-d64-img224.pt"
