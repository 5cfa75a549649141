"""Restricted softmax (run config ``restricted-softmax``): a client's label loss covers only its own classes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from helpers import tiny_cache

from clients import CLIENT_KINDS, Workspace
from clients.tasks import TRAIN_AUDIO
from data.partition import AUDIO, Partition
from mirror_app.core.config import RunConfig
from mirror_app.core.groups import AUDIO_MODEL, get_groups
from mirror_app.core.heads import Calibration
from mirror_app.core.models import build_model
from mirror_app.core.training import Batch, label_ce


def test_label_ce_is_the_cross_entropy_over_the_present_classes():
    logits = torch.randn(6, 5)
    labels = torch.tensor([0, 2, 2, 0, 2, 0])
    counts = torch.tensor([3.0, 0.0, 3.0, 0.0, 0.0])  # the classes the client holds
    full = label_ce(logits, Batch(logits, None, labels))
    assert torch.isclose(full, F.cross_entropy(logits, labels))
    restricted = label_ce(logits, Batch(logits, None, labels, Calibration("restricted", counts)))
    subset = F.cross_entropy(logits[:, [0, 2]], torch.tensor([0, 1, 1, 0, 1, 0]))
    assert torch.isclose(restricted, subset) and not torch.isclose(restricted, full)


def test_a_client_with_restricted_softmax_leaves_the_rows_of_absent_classes_alone(tmp_path):
    cache = tiny_cache(tmp_path / "c")
    train = cache.indices("train")
    own = np.sort(train[np.isin(cache.labels[train], [0, 1])])  # a label-skewed partition: 2 of 4 classes

    def trained_head(restricted: bool):
        model = build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], seed=0)
        before = get_groups(model, AUDIO_MODEL)
        ws = Workspace(
            cache,
            model,
            build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:]),
            torch.device("cpu"),
        )
        client = CLIENT_KINDS[AUDIO](
            partition=Partition(0, own, AUDIO),
            workspace=ws,
            settings=RunConfig.from_dict(
                {"local-epochs": 2, "batch-size": 8, "lr": 1e-2, "seed": 0, "restricted-softmax": restricted}
                | {"classifier": "linear", "loss-calibration": "none"}  # a linear head's rows, one calibration
            ),
            tasks={"train-audio": TRAIN_AUDIO},
        )
        arrays, n, metrics = client.fit(
            [a for g in AUDIO_MODEL for a in before[g]],
            {"task": "train-audio", "groups": ",".join(AUDIO_MODEL), "server-round": 1},
        )
        weight, bias = arrays[-2], arrays[-1]  # audio_head.weight, audio_head.bias
        return before["audio_head"], weight, bias

    (w0, b0), w, b = trained_head(True)
    assert np.array_equal(w[2:], w0[2:]) and np.array_equal(b[2:], b0[2:])  # classes 2, 3 untouched
    assert not np.array_equal(w[:2], w0[:2])  # its own classes learned
    (w0, b0), w, b = trained_head(False)
    assert not np.array_equal(b[2:], b0[2:])  # plain cross-entropy pushes absent classes down
