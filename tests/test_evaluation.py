"""The server's metrics are torchmetrics' own, digit for digit (evaluation.py computes them with torch)."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from mirror_app.core.evaluation import classification_metrics


def reference(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    top5 = min(5, num_classes)
    return {
        "top1": float(multiclass_accuracy(logits, labels, num_classes, average="micro", top_k=1)),
        "top5": float(multiclass_accuracy(logits, labels, num_classes, average="micro", top_k=top5)),
        "macro_f1": float(multiclass_f1_score(logits, labels, num_classes, average="macro")),
        "per_class_f1": multiclass_f1_score(logits, labels, num_classes, average=None).tolist(),
    }


CASES = {
    "random": lambda g: (torch.randn(257, 11, generator=g), torch.randint(0, 11, (257,), generator=g), 11),
    # integer logits: many ties, for argmax and top-k alike
    "ties": lambda g: (torch.randint(0, 3, (300, 7), generator=g).float(), torch.randint(0, 7, (300,), generator=g), 7),
    # classes 5..9 never occur and are never predicted: macro-F1 leaves them out
    "absent classes": lambda g: (
        torch.cat([torch.randn(120, 5, generator=g), torch.full((120, 5), -9.0)], dim=1),
        torch.randint(0, 5, (120,), generator=g),
        10,
    ),
    # a collapsed model: one class for every clip
    "collapsed": lambda g: (
        torch.zeros(90, 6).index_fill_(1, torch.tensor([2]), 1.0),
        torch.randint(0, 6, (90,), generator=g),
        6,
    ),
    "fewer classes than top-5": lambda g: (torch.randn(40, 3, generator=g), torch.randint(0, 3, (40,), generator=g), 3),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_torchmetrics(case, seed):
    logits, labels, num_classes = CASES[case](torch.Generator().manual_seed(seed))
    ours = classification_metrics(logits, labels, num_classes)
    ref = reference(logits, labels, num_classes)
    for key in ("top1", "top5", "macro_f1", "per_class_f1"):
        assert ours[key] == ref[key], (case, key, ours[key], ref[key])
    counts = torch.bincount(logits.argmax(1), minlength=num_classes)
    assert ours["majority_class"] == int(counts.argmax())
    assert ours["majority_share"] == pytest.approx(float(counts.max()) / len(labels))


def test_metrics_do_not_import_torchmetrics():
    """Importing torchmetrics costs the ServerApp seconds before its first evaluation: evaluation.py must not."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from mirror_app.core.evaluation import classification_metrics as m; "
        "m(torch.randn(8, 4), torch.randint(0, 4, (8,)), 4); print('torchmetrics' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
