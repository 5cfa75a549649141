"""Pretrained encoder weights: where they come from, and how each published layout maps onto a backbone.

Sources (run config ``audio-pretrained`` / ``video-pretrained``):

* ``auto`` (the default): the file ``make pretrain`` writes for this backbone, embedding size and the
  dataset's front end, ``<data-dir>/pretrained/<keyed name>`` (:func:`keyed_file`), where it exists; random
  weights where it does not (the run says which in its first log line);
* ``none`` (or ``""``): random weights from the run's seed;
* a path: a local checkpoint file;
* ``torchvision:<Weights>.<member>`` (``torchvision:ResNet18_Weights.IMAGENET1K_V1``): through torchvision's
  weights API, kept in torch.hub's cache;
* ``hf:<repo id>[:<file>]`` (``hf:MIT/ast-finetuned-audioset-10-10-0.4593``): a Hugging Face model repository's
  ``model.safetensors`` (else ``pytorch_model.bin``), kept in huggingface_hub's cache.

Nothing is downloaded unless a name asks for it, and only by the pre-run check (:func:`fetch` with
``download=True``); the apps read the caches only. Offline or not cached: one line naming what to fetch and
where it goes.

Layouts, one function each, mapped onto the audio transformer's names (timm's DeiT):

* SSAST (``YuanGongND/ssast``): ``torch.nn.DataParallel`` around the pretraining model, keys ``module.v.*``,
  the pretraining input size in ``module.p_input_fdim`` / ``module.p_input_tdim``, the pretext heads
  ``module.cpredlayer.*`` / ``module.gpredlayer.*`` / ``module.mask_embed`` (ignored); patch (16 x 16) or frame
  (128 x 2) patches, one or two prefix tokens;
* AST as released (``YuanGongND/ast``, AudioSet): ``module.v.*`` and a ``module.mlp_head.*`` classifier
  (ignored), 16 x 16 patches at stride 10 over 128 mel bins;
* Hugging Face ``ASTForAudioClassification`` / ``ASTModel`` state dicts (separate query/key/value weights);
* a plain state dict of the backbone (timm, torchvision, what ``make pretrain`` writes): every other case.

The positional embedding is cut or interpolated from the checkpoint's patch grid to the run's (mel bins x
frames) grid as SSAST's fine-tuning does, axis by axis: a shorter axis takes the middle of the checkpoint's,
a longer one is interpolated bilinearly. A one-token checkpoint gives its class token (and its position) to
both prefix tokens.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from data.features import FeatureSpec

from .backbones import AST_BACKBONES, AudioTransformer

NONE = ("", "none")
AUTO = "auto"
NAME_PREFIXES = ("torchvision:", "hf:")
HF_FILES = ("model.safetensors", "pytorch_model.bin")
AST_FREQUENCY_PATCHES = (128 - 16) // 10 + 1  # AST's released grid: 16 x 16 patches at stride 10 over 128 mel bins


class PretrainedError(ValueError):
    """Pretrained weights are missing or do not fit the backbone; the message says what to do."""


# ------------------------------------------------------------------------------------------------- sources
def is_name(value: str) -> bool:
    """Whether ``value`` names weights of a library (``torchvision:...``, ``hf:...``) rather than a file."""
    return value.startswith(NAME_PREFIXES)


SOURCES = (
    "'auto', 'none', a path to an existing local checkpoint file, 'torchvision:<Weights>.<member>' or "
    "'hf:<owner>/<repo>'"
)


def source_problem(value: str) -> str:
    """Why ``value`` cannot be a pretrained source ('' when it can), without reading or fetching anything: its form
    only. Whether a named file exists is the pre-run check's question (:func:`resolve`), asked where the run reads it,
    so that what only reads records (``make report``) or runs elsewhere (a SuperNode) needs no encoder file."""
    if value.startswith("torchvision:") and not re.fullmatch(r"torchvision:\w+\.\w+", value):
        return "'torchvision:<Weights>.<member>', e.g. 'torchvision:ResNet18_Weights.IMAGENET1K_V1'"
    if value.startswith("hf:") and not re.fullmatch(r"hf:[\w.-]+/[\w.-]+(:[\w./-]+)?", value):
        return "'hf:<owner>/<repo>[:<file>]', e.g. 'hf:MIT/ast-finetuned-audioset-10-10-0.4593'"
    return ""


def keyed_file(folder: str | Path, kind: str, backbone: str, embed_dim: int, spec: FeatureSpec) -> Path:
    """Where ``make pretrain`` writes (and ``auto`` looks for) the ``kind`` ('audio' or 'video') encoder of
    ``backbone`` at ``embed_dim`` for the front end ``spec``: the audio file is keyed by mel bins and frames,
    the video file by image size."""
    if kind == "audio":
        name = f"audio-{backbone}-d{embed_dim}-mel{spec.num_mel_bins}-t{spec.num_frames}.pt"
    else:
        name = f"video-{backbone}-d{embed_dim}-img{spec.image_size}.pt"
    return Path(folder).expanduser() / name


def _online(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _torchvision_weights(value: str, key: str):
    from torchvision.models import get_weight

    try:
        return get_weight(value.removeprefix("torchvision:"))
    except (ValueError, AttributeError, KeyError) as exc:
        raise PretrainedError(
            f"run config '{key}' = {value!r} is invalid: torchvision has no such weights ({exc})"
        ) from None


def _hf_parts(value: str) -> tuple[str, tuple[str, ...]]:
    repo, _, file = value.removeprefix("hf:").partition(":")
    return repo, (file,) if file else HF_FILES


def fetch(value: str, key: str, download: bool = False) -> Path:
    """The local file of a named source (``torchvision:...`` / ``hf:...``), from its library's cache; with
    ``download``, fetched into that cache first when missing and the machine is online. A PretrainedError in
    one line names what to fetch and where it goes when it is neither cached nor downloadable."""
    if value.startswith("torchvision:"):
        import torch.hub

        weights = _torchvision_weights(value, key)
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if target.is_file():
            return target
        if download and _online(re.sub(r"^https?://([^/]+)/.*$", r"\1", weights.url)):
            try:
                torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
                return target
            except Exception as exc:  # noqa: BLE001 - any failed download is the same error for the user
                reason = f"download failed: {type(exc).__name__}"
        else:
            reason = "offline" if download else "not in torch.hub's cache"
        raise PretrainedError(
            f"run config '{key}' = {value!r}: {reason}; fetch {weights.url} to {target} "
            "(torch.hub's cache; TORCH_HOME moves it)"
        )
    if value.startswith("hf:"):
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

        repo, files = _hf_parts(value)
        for file in files:
            hit = try_to_load_from_cache(repo, file)
            if isinstance(hit, str):
                return Path(hit)
        if download and not constants.HF_HUB_OFFLINE and _online("huggingface.co"):
            for file in files:
                try:
                    return Path(hf_hub_download(repo, file))
                except Exception:  # noqa: BLE001 - try the next file name, then report
                    continue
            reason = "download failed"
        else:
            reason = "offline" if download else "not in the Hugging Face cache"
        raise PretrainedError(
            f"run config '{key}' = {value!r}: {reason}; fetch https://huggingface.co/{repo}/resolve/main/{files[0]} "
            f"into the Hugging Face cache ({constants.HF_HUB_CACHE}), e.g. `hf download {repo} {files[0]}`"
        )
    raise PretrainedError(f"run config '{key}' = {value!r} is not a named source")


def resolve(
    value: str,
    key: str,
    kind: str,
    backbone: str,
    embed_dim: int,
    spec: FeatureSpec,
    folder: str | Path,
    download: bool = False,
) -> Path | None:
    """The file run config ``key`` = ``value`` stands for (None: random weights). ``auto`` is the keyed file of
    :func:`keyed_file` under ``folder`` if it exists; a name is :func:`fetch`'s file."""
    if value in NONE:
        return None
    if value == AUTO:
        path = keyed_file(folder, kind, backbone, embed_dim, spec)
        return path if path.is_file() else None
    if is_name(value):
        return fetch(value, key, download)
    path = Path(value).expanduser()
    if not path.is_file():
        raise PretrainedError(f"run config '{key}' = {value!r} is invalid: no such file (allowed: {SOURCES})")
    return path


# --------------------------------------------------------------------------------------------- reading
def read_state(path: Path, key: str, shown: str) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: a safetensors file, or a PyTorch file holding a state dict (optionally under
    ``state_dict`` / ``model``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001
            raise PretrainedError(
                f"run config '{key}' = {shown!r} is invalid: not a safetensors file ({type(exc).__name__})"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same error for the user
        raise PretrainedError(
            f"run config '{key}' = {shown!r} is invalid: not a PyTorch checkpoint ({type(exc).__name__})"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise PretrainedError(f"run config '{key}' = {shown!r} is invalid: expected a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


# ----------------------------------------------------------------------------------------------- layouts
# A transformer layout: (name, detect(state) -> bool, convert(state) -> (DeiT state, patch grid or None)).
Grid = tuple[int, int]


def _ast_grid(patches: int, layout: str) -> Grid:
    if patches % AST_FREQUENCY_PATCHES:
        raise PretrainedError(
            f"{layout} checkpoint with {patches} patch positions: not a multiple of AST's "
            f"{AST_FREQUENCY_PATCHES} frequency positions (128 mel bins, stride 10)"
        )
    return AST_FREQUENCY_PATCHES, patches // AST_FREQUENCY_PATCHES


def _v_keys(state: dict) -> dict[str, torch.Tensor]:
    """``module.v.<name>`` -> ``<name>``, the classifier heads left out."""
    return {
        k.removeprefix("module.v."): t
        for k, t in state.items()
        if k.startswith("module.v.") and not k.startswith(("module.v.head.", "module.v.head_dist."))
    }


def _prefix_tokens(vit: dict) -> int:
    return 2 if "dist_token" in vit else 1


def ssast(state: dict) -> tuple[dict, Grid]:
    """SSAST: the pretraining grid from ``p_input_fdim`` / ``p_input_tdim`` and the patch shape (pretraining cuts
    non-overlapping patches, so stride = patch)."""
    vit = _v_keys(state)
    fshape, tshape = vit["patch_embed.proj.weight"].shape[2:]
    fdim, tdim = int(state["module.p_input_fdim"]), int(state["module.p_input_tdim"])
    return vit, ((fdim - fshape) // fshape + 1, (tdim - tshape) // tshape + 1)


def mit_ast(state: dict) -> tuple[dict, Grid]:
    """AST as released: AudioSet-trained with 16 x 16 patches at stride 10 over 128 mel bins."""
    vit = _v_keys(state)
    return vit, _ast_grid(vit["pos_embed"].shape[1] - _prefix_tokens(vit), "AST")


HF_RENAMES = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.distillation_token", "dist_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"layernorm\.", "norm."),
]


def hf_ast(state: dict) -> tuple[dict, Grid]:
    """Hugging Face AST (``ASTForAudioClassification`` or ``ASTModel``): renamed to timm's names, the separate
    query/key/value projections concatenated into ``qkv``; the classifier is left out."""
    body = {k.removeprefix("audio_spectrogram_transformer."): t for k, t in state.items()}
    body = {k: t for k, t in body.items() if not k.startswith("classifier.")}
    vit: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, t in body.items():
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)", k)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = t
            continue
        for pattern, name in HF_RENAMES:
            if re.match(pattern, k):
                k = re.sub(pattern, name, k, count=1)
                break
        vit[k] = t
    for (layer, kind), parts in qkv.items():
        vit[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return vit, _ast_grid(vit["pos_embed"].shape[1] - _prefix_tokens(vit), "Hugging Face AST")


TRANSFORMER_LAYOUTS = [
    ("SSAST", lambda s: "module.p_input_fdim" in s and "module.v.pos_embed" in s, ssast),
    ("AST (released)", lambda s: "module.v.pos_embed" in s, mit_ast),
    (
        "Hugging Face AST",
        lambda s: any(k.endswith("embeddings.position_embeddings") for k in s),
        hf_ast,
    ),
]


def resize_grid(pos: torch.Tensor, grid_in: Grid, grid_out: Grid) -> torch.Tensor:
    """Patch positional embeddings (1, F_in * T_in, D) -> (1, F_out * T_out, D), as SSAST's fine-tuning does it:
    time first, then frequency; an axis that shrinks keeps the middle of the checkpoint's positions, one that
    grows is interpolated bilinearly (align_corners=False)."""
    (fi, ti), (fo, to) = grid_in, grid_out
    d = pos.shape[-1]
    g = pos.reshape(1, fi, ti, d).permute(0, 3, 1, 2)  # (1, D, F, T), patch index = f * T + t
    if to < ti:
        g = g[:, :, :, ti // 2 - to // 2 : ti // 2 - to // 2 + to]
    elif to > ti:
        g = F.interpolate(g, size=(fi, to), mode="bilinear")
    if fo < fi:
        g = g[:, :, fi // 2 - fo // 2 : fi // 2 - fo // 2 + fo, :]
    elif fo > fi:
        g = F.interpolate(g, size=(fo, to), mode="bilinear")
    return g.permute(0, 2, 3, 1).reshape(1, fo * to, d)


def _fit_transformer(vit: dict, grid: Grid | None, encoder: AudioTransformer, where: str) -> dict:
    """A DeiT state of any checkpoint grid and token count -> one that fits ``encoder`` (its width and patch shape
    must match; the positional grid is resized, a single prefix token is given to both)."""
    width = encoder.backbone.embed_dim
    sizes = {w: name for name, (w, _, _) in AudioTransformer.SIZES.items()}
    if "cls_token" not in vit or "pos_embed" not in vit or "patch_embed.proj.weight" not in vit:
        raise PretrainedError(f"{where} is not an audio transformer checkpoint (no cls_token, pos_embed, patch_embed)")
    found = vit["cls_token"].shape[-1]
    if found != width:
        hint = f": use audio-backbone={sizes[found]!r}" if found in sizes else ""
        raise PretrainedError(
            f"{where} does not fit the backbone: cls_token width {found} != {width} ({encoder.size}){hint}"
        )
    proj = tuple(vit["patch_embed.proj.weight"].shape)
    if tuple(proj[2:]) != encoder.patch:
        patch = {v: k for k, v in AudioTransformer.PATCHES.items()}.get(tuple(proj[2:]))
        name = encoder.size + ("" if patch in (None, "patch") else f"-{patch}")
        hint = f": use audio-backbone={name!r}" if patch else ""
        raise PretrainedError(
            f"{where} does not fit the backbone: patch_embed.proj.weight {proj} cuts {proj[2]} x {proj[3]} "
            f"patches, the backbone {encoder.patch[0]} x {encoder.patch[1]}{hint}"
        )
    vit = dict(vit)
    pos = vit["pos_embed"]
    if "dist_token" not in vit:  # one prefix token: both of the backbone's start from it
        vit["dist_token"] = vit["cls_token"].clone()
        pos = torch.cat([pos[:, :1], pos[:, :1], pos[:, 1:]], dim=1)
    patches = pos.shape[1] - AudioTransformer.TOKENS
    own = encoder.grid
    if grid is None:  # a plain state dict: its grid must be the backbone's
        if patches != own[0] * own[1]:
            raise PretrainedError(
                f"{where} does not fit the backbone: pos_embed holds {patches} patch positions, the backbone "
                f"{own[0] * own[1]} ({own[0]} x {own[1]}); a plain state dict does not say its grid"
            )
        grid = own
    if grid[0] * grid[1] != patches:
        raise PretrainedError(
            f"{where} does not fit: pos_embed holds {patches} patch positions, not its grid {grid[0]} x {grid[1]}"
        )
    vit["pos_embed"] = torch.cat([pos[:, : AudioTransformer.TOKENS], resize_grid(pos[:, 2:], grid, own)], dim=1)
    return vit


def _check_and_load(backbone: nn.Module, state: dict, where: str) -> None:
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{name}: {v[:3]}{' ...' if len(v) > 3 else ''}"
            for name, v in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if v
        )
        raise PretrainedError(f"{where} does not fit the backbone ({detail})")
    backbone.load_state_dict(state)


def layout_of(state: dict) -> str:
    """The published layout a checkpoint is in (the name of TRANSFORMER_LAYOUTS' entry), or 'plain'."""
    return next((name for name, detect, _ in TRANSFORMER_LAYOUTS if detect(state)), "plain")


def load_pretrained(encoder: nn.Module, path: str | Path, key: str, shown: str | None = None) -> str:
    """Load a checkpoint file into an encoder; returns the layout it was read as. Never downloads.

    A timm-based encoder (resnet18, ast*) loads it into ``encoder.backbone`` (the projection to the embedding
    stays as initialised); the small CPU encoders (tdnn-small, cnn-small) load the whole encoder, as ``make
    pretrain`` writes it. An audio transformer reads every layout of TRANSFORMER_LAYOUTS; anything else is a
    plain state dict (a ``module.`` prefix is stripped; classifier weights ``fc.``, ``head.``, ``head_dist.``
    are ignored). What is missing, unexpected or of another shape is one error naming the first keys and both
    shapes. ``shown``: how the source is named in errors (the run config's value; the path by default).
    """
    path = Path(path).expanduser()
    shown = shown or str(path)
    where = f"run config '{key}' = {shown!r}"
    if not path.is_file():
        raise PretrainedError(f"{where} is invalid: no such file")
    state = read_state(path, key, shown)
    backbone = getattr(encoder, "backbone", encoder)
    layout = layout_of(state) if isinstance(encoder, AudioTransformer) else "plain"
    if layout == "plain":
        state = {
            k.removeprefix("module."): v
            for k, v in state.items()
            if not k.removeprefix("module.").startswith(("fc.", "head.", "head_dist."))
        }
        if isinstance(encoder, AudioTransformer):
            state = _fit_transformer(state, None, encoder, where)
    else:
        assert isinstance(encoder, AudioTransformer)  # only transformers read the published layouts
        convert = next(c for name, _, c in TRANSFORMER_LAYOUTS if name == layout)
        try:
            vit, grid = convert(state)
        except KeyError as exc:
            raise PretrainedError(f"{where} looks like a {layout} checkpoint but has no {exc}") from None
        state = _fit_transformer(vit, grid, encoder, f"{where} ({layout} layout)")
    _check_and_load(backbone, state, where)
    return layout


__all__ = [
    "AST_BACKBONES",
    "AUTO",
    "NONE",
    "PretrainedError",
    "fetch",
    "is_name",
    "keyed_file",
    "layout_of",
    "load_pretrained",
    "resize_grid",
    "resolve",
    "source_problem",
]
