"""Centralised reference accuracy of a dataset: how strong each modality is without FL.

    python -m mirror_app.centralized --dataset embedded --epochs 10

Trains the audio-only model (audio encoder + audio head) and the audiovisual model
(both encoders + fusion head) on the whole train split and reports top-1 on the held-out
test split. This is how the embedded dataset is calibrated (audio weak, video strong).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from data import DATASETS, load_dataset
from mirror_app.models import build_model
from mirror_app.training import evaluate, train_audio, train_av


def centralized(dataset: str, data_dir: str, epochs: int, lr: float, batch_size: int, seed: int,
                fold: int = 1) -> dict:
    cache = load_dataset(dataset, data_dir, fold=fold)
    train = cache.indices("train")
    test = cache.indices("test")
    model = build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], seed=seed)
    kw = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam", device="cpu", seed=seed)
    t0 = time.time()
    train_audio(model, cache, train, **kw)
    train_av(model, cache, train, **kw)
    metrics = evaluate(model, cache, test)
    return {
        "dataset": dataset,
        "fold": fold,
        "epochs": epochs,
        "audio_top1": metrics["audio_top1"],
        "audio_top5": metrics["audio_top5"],
        "av_top1": metrics["av_top1"],
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
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from pathlib import Path

    result = centralized(args.dataset, str(Path(args.data_dir).expanduser()), args.epochs, args.lr,
                         args.batch_size, args.seed, args.fold)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
