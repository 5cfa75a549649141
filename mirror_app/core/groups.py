"""Parameter groups: the unit that clients train, send and that strategies average.

A group is the set of ``state_dict`` entries whose key starts with ``"<group>."`` (or, for a model that
defines ``in_group(group, key)``, those it selects); nothing else in the project hard-codes parameter
indices. The dual encoder's groups are named here; a method that adds groups names them in its own
model module (strategies/fedcmi/model.py, strategies/align/model.py).

* ``audio_encoder``: log-mel (frames x mels) -> embedding
* ``video_encoder``: frame (3 x H x W) -> embedding
* ``fusion_head``: concatenated embeddings -> class logits (the audiovisual model)
* ``audio_head``: audio embedding -> class logits (the audio-only model, the product)
* ``video_head``: video embedding -> class logits (unimodal video model, used by Harmony)
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

AUDIO_ENCODER, VIDEO_ENCODER, FUSION_HEAD, AUDIO_HEAD, VIDEO_HEAD = (
    "audio_encoder",
    "video_encoder",
    "fusion_head",
    "audio_head",
    "video_head",
)
GROUPS = (AUDIO_ENCODER, VIDEO_ENCODER, FUSION_HEAD, AUDIO_HEAD, VIDEO_HEAD)
TEACHER_PREFIX = "teacher/"  # marks the frozen teacher's copy of a group on the wire
AUDIO_MODEL = (AUDIO_ENCODER, AUDIO_HEAD)  # what audio-only clients have
AV_MODEL = (AUDIO_ENCODER, VIDEO_ENCODER, FUSION_HEAD)  # the audiovisual model
VIDEO_MODEL = (VIDEO_ENCODER, VIDEO_HEAD)  # a unimodal video model (Harmony's stage 1)

Arrays = list[np.ndarray]


def group_keys(model: nn.Module, group: str) -> list[str]:
    """State-dict keys of ``group``: those starting with ``"<group>."``, or, for a model that
    defines ``in_group(group, key)`` (adapters living inside an encoder), those it selects."""
    selector = getattr(model, "in_group", None)
    if selector is not None:
        keys = [k for k in model.state_dict() if selector(group, k)]
    else:
        keys = [k for k in model.state_dict() if k.startswith(group + ".")]
    if not keys:
        raise KeyError(f"model has no parameter group {group!r}")
    return keys


def get_groups(model: nn.Module, groups: tuple[str, ...] | list[str]) -> OrderedDict[str, Arrays]:
    """The named groups as numpy arrays, in state_dict order (copies, safe to keep)."""
    state = model.state_dict()
    return OrderedDict((g, [state[k].detach().cpu().numpy().copy() for k in group_keys(model, g)]) for g in groups)


def set_groups(model: nn.Module, values: dict[str, Arrays]) -> None:
    """Load the given groups into ``model``; shapes must match exactly."""
    state = model.state_dict()
    update = {}
    for g, arrays in values.items():
        keys = group_keys(model, g)
        if len(keys) != len(arrays):
            raise ValueError(f"group {g!r} has {len(keys)} tensors, got {len(arrays)}")
        for k, a in zip(keys, arrays):
            if tuple(state[k].shape) != tuple(a.shape):
                raise ValueError(f"{k}: expected shape {tuple(state[k].shape)}, got {tuple(a.shape)}")
            update[k] = torch.as_tensor(a, dtype=state[k].dtype)
    model.load_state_dict(update, strict=False)


def group_sizes(model: nn.Module, groups: tuple[str, ...] | list[str]) -> list[int]:
    """Number of arrays in each group (to split a flat list of arrays back into groups)."""
    return [len(group_keys(model, g)) for g in groups]


def flatten(values: dict[str, Arrays], groups: tuple[str, ...] | list[str]) -> Arrays:
    return [a for g in groups for a in values[g]]


def unflatten(arrays: Arrays, groups: list[str], sizes: list[int]) -> OrderedDict[str, Arrays]:
    if len(arrays) != sum(sizes):
        raise ValueError(f"expected {sum(sizes)} arrays for groups {groups}, got {len(arrays)}")
    out, pos = OrderedDict(), 0
    for g, n in zip(groups, sizes):
        out[g] = list(arrays[pos : pos + n])
        pos += n
    return out


def nbytes(arrays: Arrays) -> int:
    return int(sum(a.nbytes for a in arrays))
