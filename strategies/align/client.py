"""Client tasks of modality alignment with federated broadcasting (strategies/align/server.py).

``align-audio`` (audio-only clients) trains the audio LoRA adapters and projection;
``align-av`` (audiovisual clients) both modalities' adapters and projections. The class
anchors arrive from the server; the text encoder is never loaded here.

The frozen base is built once per worker process from the run's seed and pretrained files
(like the server's), wrapped with adapters, and reused; the server's fingerprint of its base
is checked before any training, so a node with other base weights fails loudly instead of
training adapters for another model.
"""

from __future__ import annotations

import torch

from clients.base import GroupClient, Task, TaskError, Workspace

from .model import (
    ALIGN_AUDIO_SEND,
    ALIGN_AUDIO_TRAIN,
    ALIGN_AV_SEND,
    ALIGN_AV_TRAIN,
    AlignModel,
    build_align_model,
    model_fingerprint,
    train_align,
)


def align_model(client: GroupClient, ws: Workspace, config: dict) -> AlignModel:
    """This worker's alignment model for the run's settings, checked against the server's base."""
    s = client.settings
    try:
        text_dim, expected = int(config["text-dim"]), str(config["base-fingerprint"])
    except (KeyError, ValueError) as exc:
        raise TaskError(
            f"alignment instructions need 'text-dim' and 'base-fingerprint' in the fit config ({exc})"
        ) from None
    audio_pretrained, video_pretrained = s.pretrained_files(ws.cache.spec)
    key = ("align", s.seed, s.lora_rank, text_dim, audio_pretrained, video_pretrained)
    entry = ws.extras.get("align")
    if entry is None or entry[0] != key:
        if ws.make_base is None:
            raise TaskError("this workspace cannot build the frozen base model (no make_base)")
        with torch.random.fork_rng(devices=[]):
            dual = ws.make_base(s.seed, audio_pretrained, video_pretrained)
        placeholder = torch.zeros(ws.cache.num_classes, text_dim)  # replaced by the server's anchors
        model = build_align_model(dual, placeholder, s.lora_rank).to(ws.device)
        entry = ws.extras["align"] = (key, model, model_fingerprint(model))
    _, model, own = entry
    if own != expected:
        raise TaskError(
            f"this node's frozen base weights (fingerprint {own}) differ from the server's ({expected}): "
            "every node must use the same seed, backbones and audio-/video-pretrained files"
        )
    return model


def _run(client: GroupClient, ws: Workspace, received: dict, seed: int, train, with_video: bool):
    model: AlignModel = ws.extras["align"][1]
    client.load(model, received)
    kw = client.train_kwargs(ws, seed)
    loss = train_align(
        model,
        ws.cache,
        client.partition.indices,
        with_video=with_video,
        av_weight=client.settings.align_av_weight,
        **kw,
    )
    return list(train), loss


def run_align_audio(client: GroupClient, ws: Workspace, received: dict, seed: int):
    return _run(client, ws, received, seed, ALIGN_AUDIO_TRAIN, with_video=False)


def run_align_av(client: GroupClient, ws: Workspace, received: dict, seed: int):
    return _run(client, ws, received, seed, ALIGN_AV_TRAIN, with_video=True)


ALIGN_TASKS = {
    "align-audio": Task(run_align_audio, needs=ALIGN_AUDIO_SEND, layout=align_model),
    "align-av": Task(run_align_av, needs=ALIGN_AV_SEND, video=True, layout=align_model),
}
