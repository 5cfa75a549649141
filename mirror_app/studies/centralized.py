"""Centralised reference accuracy of a dataset: how strong each modality is without FL.

    python -m mirror_app.studies.centralized --dataset embedded --epochs 10

Trains the audio-only model (audio encoder + audio head) and the audiovisual model
(both encoders + fusion head) on the whole train split, each on its own copy of the same
initial weights (the two models share no parameters, so training one never moves the
other), and reports top-1/top-5 of each on the held-out test split. This is how the
embedded dataset is calibrated (audio weak, video strong).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from data import DATASETS, load_dataset
from mirror_app.core.backbones import BACKBONES
from mirror_app.core.evaluation import evaluate
from mirror_app.core.models import initial_model
from mirror_app.core.training import train_audio, train_av


def centralized(
    dataset: str,
    data_dir: str,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    fold: int = 1,
    audio_backbone: str = "tdnn-small",
    video_backbone: str = "cnn-small",
    embed_dim: int = 64,
    audio_pretrained: str = "",
    video_pretrained: str = "",
) -> dict:
    cache = load_dataset(dataset, data_dir, fold=fold)
    train = cache.indices("train")
    test = cache.indices("test")
    initial = initial_model(
        cache.num_classes,
        cache.audio.shape[1:],
        cache.video.shape[1:],
        audio_backbone,
        video_backbone,
        embed_dim,
        seed,
        audio_pretrained,
        video_pretrained,
    )
    audio_model, av_model = copy.deepcopy(initial), initial  # same initial weights, no shared parameters
    kw = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam", device="cpu", seed=seed)
    t0 = time.time()
    torch.manual_seed(seed)
    train_audio(audio_model, cache, train, **kw)
    torch.manual_seed(seed)
    train_av(av_model, cache, train, **kw)
    audio = evaluate(audio_model, cache, test, parts=("audio",))
    av = evaluate(av_model, cache, test, parts=("av",))
    return {
        "dataset": dataset,
        "fold": fold,
        "epochs": epochs,
        "audio_top1": audio["audio_top1"],
        "audio_top5": audio["audio_top5"],
        "av_top1": av["av_top1"],
        "av_top5": av["av_top5"],
        "seconds": round(time.time() - t0, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="embedded", choices=sorted(DATASETS))
    parser.add_argument("--data-dir", default="~/.cache/modality-mirror")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fold", type=int, default=1, help="official fold (UCF101: 1, 2, 3)")
    parser.add_argument("--audio-backbone", default="tdnn-small", choices=sorted(BACKBONES))
    parser.add_argument("--video-backbone", default="cnn-small", choices=sorted(BACKBONES))
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--audio-pretrained", default="", help="local checkpoint of a resnet18/ast* audio backbone")
    parser.add_argument("--video-pretrained", default="", help="local checkpoint of a resnet18 video backbone")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from pathlib import Path

    result = centralized(
        args.dataset,
        str(Path(args.data_dir).expanduser()),
        args.epochs,
        args.lr,
        args.batch_size,
        args.seed,
        args.fold,
        args.audio_backbone,
        args.video_backbone,
        args.embed_dim,
        args.audio_pretrained,
        args.video_pretrained,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
