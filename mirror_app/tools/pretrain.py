"""Pretrained encoders, offline, as in the paper: general features from a proxy set, not the answer.

    python -m mirror_app.tools.pretrain                      # what `make pretrain` runs
    python -m mirror_app.tools.pretrain --out DIR --epochs 10 --audio-backbone tdnn-small --video-backbone cnn-small

The paper starts every method from encoders pretrained on other data (ImageNet for the video
ResNet-18, AudioSet for the audio SSAST). Here the encoders are trained centrally on the
*proxy* set (``data.synthetic.load_proxy``): 20 classes generated like the embedded dataset
but with other sounds, other colours and another seed, so no task class is in it. Each
encoder learns with a unimodal classifier on the proxy classes; the classifier is thrown
away and only the encoder is written, as a state dict that ``audio-pretrained`` /
``video-pretrained`` (and ``mirror_app.core.backbones.load_pretrained``) read:

    <out>/audio-<backbone>-d<embed-dim>.pt
    <out>/video-<backbone>-d<embed-dim>.pt
    <out>/pretrain.json     proxy accuracy of each encoder, settings, seconds

Every method of a comparison that names these files starts from the same weights. For real
data, give your own files (e.g. a timm/torchvision ResNet-18 or an SSAST checkpoint).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mirror_app.core.backbones import AUDIO_ONLY_BACKBONES, BACKBONES
from mirror_app.core.evaluation import classification_metrics
from mirror_app.core.models import build_model
from mirror_app.core.training import run_epochs, train_audio

DEFAULT_OUT = "~/.cache/modality-mirror/pretrained"


def weight_files(out: str | Path, audio_backbone: str, video_backbone: str, embed_dim: int) -> tuple[Path, Path]:
    """Where the audio and the video encoder of these settings are written."""
    out = Path(out).expanduser()
    return (out / f"audio-{audio_backbone}-d{embed_dim}.pt", out / f"video-{video_backbone}-d{embed_dim}.pt")


@torch.no_grad()
def _accuracy(logits_fn, cache, rows: np.ndarray, with_video: bool) -> float:
    from mirror_app.core.training import batches

    out, labels = [], []
    for b in batches(cache, np.sort(rows), 256, with_video, torch.device("cpu")):
        out.append(logits_fn(b))
        labels.append(b.labels)
    return classification_metrics(torch.cat(out), torch.cat(labels), cache.num_classes)["top1"]


def _encoder_state(encoder: torch.nn.Module) -> dict:
    """What load_pretrained loads: a timm encoder's backbone, or the whole small encoder."""
    target = getattr(encoder, "backbone", encoder)
    return {k: v.detach().cpu().clone() for k, v in target.state_dict().items()}


def pretrain(
    out: str | Path,
    data_dir: str | Path,
    audio_backbone: str = "tdnn-small",
    video_backbone: str = "cnn-small",
    embed_dim: int = 64,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    samples_per_class: int | None = None,
) -> dict:
    """Train both encoders on the proxy set and write them; returns the report written as pretrain.json."""
    from data import synthetic
    from mirror_app.results import atomic_write, write_json

    if audio_backbone not in BACKBONES:
        raise ValueError(f"audio backbone {audio_backbone!r} is unknown; one of {sorted(BACKBONES)}")
    video_ok = sorted(set(BACKBONES) - set(AUDIO_ONLY_BACKBONES))
    if video_backbone not in video_ok:
        raise ValueError(f"video backbone {video_backbone!r} is invalid; one of {video_ok}")
    if epochs < 1 or embed_dim < 1:
        raise ValueError(f"epochs and embed-dim must be >= 1, got {epochs} and {embed_dim}")
    kw = {} if samples_per_class is None else {"samples_per_class": samples_per_class}
    cache = synthetic.load_proxy(Path(data_dir).expanduser(), **kw)
    train, test = cache.indices("train"), cache.indices("test")
    model = build_model(
        cache.num_classes,
        cache.audio.shape[1:],
        cache.video.shape[1:],
        audio_backbone,
        video_backbone,
        embed_dim,
        seed=seed,
    )
    video_model = copy.deepcopy(model)
    common = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam", device=torch.device("cpu"), seed=seed)
    t0 = time.time()
    torch.manual_seed(seed)
    train_audio(model, cache, train, **common)
    torch.manual_seed(seed)
    run_epochs(
        video_model,
        lambda b: F.cross_entropy(video_model.video_logits(b.video), b.labels),
        [video_model.video_encoder, video_model.video_head],
        cache,
        train,
        with_video=True,
        **common,
    )
    model.eval()
    video_model.eval()
    report = {
        "proxy_classes": cache.classes,
        "audio_backbone": audio_backbone,
        "video_backbone": video_backbone,
        "embed_dim": embed_dim,
        "epochs": epochs,
        "seed": seed,
        "proxy_audio_top1": _accuracy(lambda b: model.audio_logits(b.audio), cache, test, False),
        "proxy_video_top1": _accuracy(lambda b: video_model.video_logits(b.video), cache, test, True),
        "seconds": round(time.time() - t0, 1),
    }
    audio_file, video_file = weight_files(out, audio_backbone, video_backbone, embed_dim)
    audio_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(audio_file, lambda p: torch.save(_encoder_state(model.audio_encoder), p))
    atomic_write(video_file, lambda p: torch.save(_encoder_state(video_model.video_encoder), p))
    report["audio_pretrained"], report["video_pretrained"] = str(audio_file), str(video_file)
    write_json(audio_file.parent / "pretrain.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the weight files (default {DEFAULT_OUT})")
    p.add_argument("--data-dir", default="~/.cache/modality-mirror", help="where the proxy set is generated")
    p.add_argument("--audio-backbone", default="tdnn-small")
    p.add_argument("--video-backbone", default="cnn-small")
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        report = pretrain(
            args.out,
            args.data_dir,
            args.audio_backbone,
            args.video_backbone,
            args.embed_dim,
            args.epochs,
            args.lr,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"pretrain: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in report.items() if k != "proxy_classes"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
