"""Evaluation: metrics of the audio-only and the audiovisual model on a split, and the server's evaluator.

Plain PyTorch; no Flower here.
"""

from __future__ import annotations

import numpy as np
import torch

from .groups import set_groups
from .models import DualEncoder
from .training import batches


@torch.no_grad()
def predict(model: DualEncoder, cache, indices, batch_size: int, device, with_video: bool) -> torch.Tensor:
    model.eval()
    out = []
    for b in batches(cache, indices, batch_size, with_video, device):
        logits = model.audio_logits(b.audio) if b.video is None else model.av_logits(b.audio, b.video)
        out.append(logits.cpu())
    return torch.cat(out)


def _ratio(num: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """num / denom in float32, 0 where denom is 0 (torchmetrics' safe division, so scores match it exactly)."""
    num, denom = num.float(), denom.float()
    return torch.where(denom != 0, num / denom, torch.zeros((), dtype=torch.float32))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """top-1, top-5, macro-F1 and per-class F1 of logits against integer labels, and the share of the
    predictions taken by the most frequent predicted class (``majority_share``, of class ``majority_class``):
    near 1, the model predicts one class for everything (collapsed).

    The same definitions and float32 arithmetic as torchmetrics' ``multiclass_accuracy`` (micro, top-k) and
    ``multiclass_f1_score`` (macro: classes neither predicted nor present left out), which
    tests/test_evaluation.py checks digit for digit; written with torch because importing torchmetrics costs
    the ServerApp seconds before its first evaluation (docs/results/bench.md)."""
    top5 = min(5, num_classes)
    labels = labels.long()
    n = torch.tensor(len(labels))
    pred = logits.argmax(dim=1) if len(logits) else torch.zeros(0, dtype=torch.long)
    in_top5 = (logits.topk(top5, dim=1).indices == labels[:, None]).any(dim=1) if len(logits) else pred.bool()
    predicted = torch.bincount(pred, minlength=num_classes)
    tp = torch.bincount(labels[pred == labels], minlength=num_classes)
    fp = predicted - tp
    fn = torch.bincount(labels, minlength=num_classes) - tp
    f1 = _ratio(2 * tp, 2 * tp + fn + fp)
    weights = ((tp + fp + fn) != 0).float()
    counts = predicted if len(logits) else torch.zeros(1)
    return {
        "top1": float(_ratio((pred == labels).sum(), n)),
        "top5": float(_ratio(in_top5.sum(), n)),
        "macro_f1": float(_ratio(weights * f1, weights.sum()).sum()),  # each share, then the sum (as torchmetrics)
        "per_class_f1": f1.tolist(),
        "majority_share": float(counts.max()) / max(len(logits), 1),
        "majority_class": int(counts.argmax()),
    }


def evaluate(
    model: DualEncoder, cache, indices, batch_size: int = 256, device="cpu", parts: tuple[str, ...] = ("audio", "av")
) -> dict:
    """The audio-only model (the product) and/or the audiovisual model on the given rows: for each part
    ``<part>_top1``, ``<part>_top5``, ``<part>_majority_share`` and ``<part>_majority_class``; for the
    audio model also the macro-F1 and the per-class F1."""
    indices = np.sort(indices)
    labels = torch.from_numpy(cache.labels[indices])
    out: dict = {}
    for part in parts:
        m = classification_metrics(
            predict(model, cache, indices, batch_size, device, part == "av"), labels, cache.num_classes
        )
        out.update(
            {
                f"{part}_top1": m["top1"],
                f"{part}_top5": m["top5"],
                f"{part}_majority_share": m["majority_share"],
                f"{part}_majority_class": m["majority_class"],
            }
        )
        if part == "audio":
            out.update(audio_macro_f1=m["macro_f1"], audio_per_class_f1=m["per_class_f1"])
        else:
            out["av_macro_f1"] = m["macro_f1"]
    return out


def missing_key(share: float) -> str:
    """metrics.csv's column of the AV top-1 with ``share`` of the test clips without video."""
    return f"av_top1_missing{round(100 * share):d}"


def missing_at_test_time(num_clips: int, share: float) -> np.ndarray:
    """Which of ``num_clips`` test clips lack their video at test-time share ``share`` (the same clips in every
    run and method, so that the numbers compare)."""
    rng = np.random.default_rng([65537, round(1000 * share)])
    mask = np.zeros(num_clips, dtype=bool)
    mask[rng.choice(num_clips, int(round(share * num_clips)), replace=False)] = True
    return mask


class Evaluator:
    """Server-side evaluation of the audio and audiovisual models on the held-out test split and, when
    ``dev-fraction`` > 0, on the server-held dev split (carved from train, never given to a client), which
    picks the best-dev round of ``summary.json`` without looking at test.

    ``missing``: test-time shares of clips without video (run config ``eval-missing-video``): the AV model is also
    scored with that share of the test clips lacking their frame, through the method's fallback, its audio-only
    model, for those clips (``av_top1_missing<percent>``)."""

    def __init__(self, model, cache, device: torch.device, missing: tuple[float, ...] = ()):
        self.model = model.to(device)
        self.cache = cache
        self.indices = np.sort(cache.indices("test"))
        self.dev = cache.indices("dev")
        self.device = device
        self.missing = {share: missing_at_test_time(len(self.indices), share) for share in missing}

    def __call__(self, audio_state: dict, av_state: dict) -> dict:
        labels = torch.from_numpy(self.cache.labels[self.indices])
        set_groups(self.model, audio_state)
        audio = predict(self.model, self.cache, self.indices, 256, self.device, with_video=False)
        m = classification_metrics(audio, labels, self.cache.num_classes)
        out: dict = {
            "audio_top1": m["top1"],
            "audio_top5": m["top5"],
            "audio_majority_share": m["majority_share"],
            "audio_majority_class": m["majority_class"],
            "audio_macro_f1": m["macro_f1"],
            "audio_per_class_f1": m["per_class_f1"],
        }
        if self.dev.size:
            dev = evaluate(self.model, self.cache, self.dev, device=self.device, parts=("audio",))
            out |= {f"dev_{k}": dev[k] for k in ("audio_top1", "audio_top5", "audio_macro_f1", "audio_per_class_f1")}
        set_groups(self.model, av_state)
        av = predict(self.model, self.cache, self.indices, 256, self.device, with_video=True)
        m = classification_metrics(av, labels, self.cache.num_classes)
        out |= {
            "av_top1": m["top1"],
            "av_top5": m["top5"],
            "av_majority_share": m["majority_share"],
            "av_majority_class": m["majority_class"],
            "av_macro_f1": m["macro_f1"],
        }
        # how much of the audiovisual model's decisions the audio model reproduces (at the end of ModalityMirror's
        # phase 1: how much of the teacher's knowledge its own audio branch already reaches)
        out["audio_av_agreement"] = float((audio.argmax(dim=1) == av.argmax(dim=1)).float().mean()) if len(av) else 0.0
        for share, mask in self.missing.items():
            mixed = torch.where(torch.from_numpy(mask)[:, None], audio, av)
            out[missing_key(share)] = classification_metrics(mixed, labels, self.cache.num_classes)["top1"]
        if self.dev.size:
            dev = evaluate(self.model, self.cache, self.dev, device=self.device, parts=("av",))
            out["dev_av_top1"] = dev["av_top1"]
        return out
