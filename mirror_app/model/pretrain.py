"""Pretrained encoders, offline, as in the paper: general features from a proxy set, not the answer.

    python -m mirror_app.model.pretrain                      # what `make pretrain` runs
    python -m mirror_app.model.pretrain --out DIR --epochs 10 --audio-backbone tdnn-small --video-backbone cnn-small

The paper starts every method from encoders pretrained on other data (ImageNet for the video
ResNet-18, AudioSet for the audio SSAST). Here the encoders are trained centrally on the
*proxy* set (``data.synthetic.load_proxy``): 20 classes generated like the embedded dataset
but with other sounds, other colours and another seed, so no task class is in it. Each
encoder learns with a unimodal classifier on the proxy classes; the classifier is thrown
away and only the encoder is written, as a state dict that ``audio-pretrained`` /
``video-pretrained`` (``mirror_app.core.pretrained.load_pretrained``) read, keyed by backbone, embedding size
and the front end they were made for (``--dataset``: the embedded dataset's by default, or a prepared
dataset's mel bins, frames and image size):

    <out>/audio-<backbone>-d<embed-dim>-mel<mel bins>-t<frames>.pt
    <out>/video-<backbone>-d<embed-dim>-img<image size>.pt
    <out>/<file>.json       proxy accuracy of the encoder, settings, seconds

``audio-pretrained = 'auto'`` (the default) finds them under ``<data-dir>/pretrained`` for the run's backbones
and dataset; ``make run`` builds them first where they are missing and cheap (tdnn-small, cnn-small). The
proxy set is generated at the dataset's front end, except that its frames stay at most 64 px (they are drawn
at 64 px; a video encoder's weights do not depend on the image size, and 224 px costs 12x the compute). For
real data, pretrained weights of real data serve better: ``video-pretrained='torchvision:ResNet18_Weights.
IMAGENET1K_V1'`` with ``video-backbone='resnet18'``, an SSAST or AST checkpoint for an ``ast*`` backbone.
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

from data.features import FeatureSpec
from mirror_app.core.backbones import AUDIO_ONLY_BACKBONES, BACKBONES
from mirror_app.core.evaluation import classification_metrics
from mirror_app.core.models import build_model
from mirror_app.core.pretrained import keyed_file
from mirror_app.core.training import run_epochs, train_audio

CHEAP = ("tdnn-small", "cnn-small")  # backbones `make run` pretrains by itself when their files are missing


def weight_files(
    out: str | Path, audio_backbone: str, video_backbone: str, embed_dim: int, spec: FeatureSpec | None = None
) -> tuple[Path, Path]:
    """Where the audio and the video encoder of these settings are written (``spec``: the front end they are made
    for, the embedded dataset's by default)."""
    spec = spec or FeatureSpec()
    return (
        keyed_file(out, "audio", audio_backbone, embed_dim, spec),
        keyed_file(out, "video", video_backbone, embed_dim, spec),
    )


def default_samples(spec: FeatureSpec) -> int:
    """Proxy clips per class: 250 at the embedded dataset's front end, 100 at any other (a 5 s, 128-bin proxy set
    of 250 per class takes 4 GB and tens of minutes to train on on a laptop CPU)."""
    from data import synthetic

    return synthetic.SAMPLES_PER_CLASS if spec == FeatureSpec() else 100


def ensure_pretrained(cfg, spec: FeatureSpec, say=print) -> list[Path]:
    """What ``make run`` does before a run whose ``audio-/video-pretrained`` is ``auto``: build the missing keyed
    encoders of cheap backbones (tdnn-small, cnn-small) for the dataset's front end, and say in one line which
    encoder starts from random weights instead (a backbone too costly to pretrain here). Returns the files built."""
    missing = [
        (kind, backbone)
        for kind, value, backbone in (
            ("audio", cfg.audio_pretrained, cfg.audio_backbone),
            ("video", cfg.video_pretrained, cfg.video_backbone),
        )
        if value == "auto" and not keyed_file(cfg.pretrained_dir, kind, backbone, cfg.embed_dim, spec).is_file()
    ]
    build = tuple(kind for kind, backbone in missing if backbone in CHEAP)
    command = (
        f"python -m mirror_app.model.pretrain --dataset {cfg.dataset} --data-dir {cfg.data_dir} "
        f"--audio-backbone {cfg.audio_backbone} --video-backbone {cfg.video_backbone} --embed-dim {cfg.embed_dim}"
    )
    for kind, backbone in missing:
        if backbone not in CHEAP:
            say(
                f"{kind} encoder: starting without pretraining (no {backbone} encoder for this front end in "
                f"{cfg.pretrained_dir}; `{command}` builds one, CPU permitting, or give {kind}-pretrained)"
            )
    if not build:
        return []
    say(f"pretraining the {' and '.join(build)} encoder(s) for this front end on the proxy set first (`{command}`)")
    report = pretrain(
        cfg.pretrained_dir,
        cfg.data_dir,
        cfg.audio_backbone if "audio" in build else "tdnn-small",
        cfg.video_backbone if "video" in build else "cnn-small",
        cfg.embed_dim,
        spec=spec,
        encoders=build,
    )
    return [Path(report[f"{kind}_pretrained"]) for kind in build]


def front_end(dataset: str, data_dir: str | Path) -> FeatureSpec:
    """The front end of ``dataset`` as prepared under ``data_dir`` (the embedded dataset's needs no cache)."""
    if dataset == "embedded":
        return FeatureSpec()
    from data import load_dataset

    return load_dataset(dataset, Path(data_dir).expanduser()).spec


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
    spec: FeatureSpec | None = None,
    encoders: tuple[str, ...] = ("audio", "video"),
) -> dict:
    """Train the ``encoders`` ('audio', 'video') on the proxy set made at the front end ``spec`` (the embedded
    dataset's by default; frames at most 64 px) and write each with a JSON report beside it; returns the
    report."""
    from data import synthetic
    from mirror_app.results import atomic_write, write_json

    if audio_backbone not in BACKBONES:
        raise ValueError(f"audio backbone {audio_backbone!r} is unknown; one of {sorted(BACKBONES)}")
    video_ok = sorted(set(BACKBONES) - set(AUDIO_ONLY_BACKBONES))
    if video_backbone not in video_ok:
        raise ValueError(f"video backbone {video_backbone!r} is invalid; one of {video_ok}")
    if epochs < 1 or embed_dim < 1:
        raise ValueError(f"epochs and embed-dim must be >= 1, got {epochs} and {embed_dim}")
    spec = spec or FeatureSpec()
    kw = {"samples_per_class": samples_per_class or default_samples(spec)}
    proxy_spec = FeatureSpec(spec.num_mel_bins, spec.audio_seconds, min(spec.image_size, synthetic.FRAME_SIZE))
    cache = synthetic.load_proxy(Path(data_dir).expanduser(), spec=proxy_spec, **kw)
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
    report: dict = {
        "proxy_classes": cache.classes,
        "embed_dim": embed_dim,
        "epochs": epochs,
        "seed": seed,
        "front_end": spec.as_dict(),
        "proxy_front_end": proxy_spec.as_dict(),
        "proxy_clips": len(cache),
    }
    audio_file, video_file = weight_files(out, audio_backbone, video_backbone, embed_dim, spec)
    audio_file.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if "audio" in encoders:
        torch.manual_seed(seed)
        train_audio(model, cache, train, **common)
        model.eval()
        report["audio_backbone"] = audio_backbone
        report["proxy_audio_top1"] = _accuracy(lambda b: model.audio_logits(b.audio), cache, test, False)
        atomic_write(audio_file, lambda p: torch.save(_encoder_state(model.audio_encoder), p))
        report["audio_pretrained"] = str(audio_file)
        written.append(audio_file)
    if "video" in encoders:
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
        video_model.eval()
        report["video_backbone"] = video_backbone
        report["proxy_video_top1"] = _accuracy(lambda b: video_model.video_logits(b.video), cache, test, True)
        atomic_write(video_file, lambda p: torch.save(_encoder_state(video_model.video_encoder), p))
        report["video_pretrained"] = str(video_file)
        written.append(video_file)
    report["seconds"] = round(time.time() - t0, 1)
    for file in written:
        write_json(file.with_name(file.name + ".json"), report)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="", help="folder for the weight files (default <data-dir>/pretrained)")
    p.add_argument("--data-dir", default="~/.cache/modality-mirror", help="where the proxy set is generated")
    p.add_argument(
        "--dataset",
        default="embedded",
        help="make the encoders for this dataset's front end (mel bins, frames, image size), as prepared under "
        "--data-dir (default: the embedded dataset)",
    )
    p.add_argument(
        "--samples-per-class",
        type=int,
        default=None,
        help="proxy clips per class (default 250 at the embedded front end, 100 at others)",
    )
    p.add_argument("--audio-backbone", default="tdnn-small")
    p.add_argument("--video-backbone", default="cnn-small")
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        report = pretrain(
            args.out or Path(args.data_dir).expanduser() / "pretrained",
            args.data_dir,
            args.audio_backbone,
            args.video_backbone,
            args.embed_dim,
            args.epochs,
            args.lr,
            seed=args.seed,
            samples_per_class=args.samples_per_class,
            spec=front_end(args.dataset, args.data_dir),
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"pretrain: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in report.items() if k != "proxy_classes"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
