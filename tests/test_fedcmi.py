"""FedCMI: class-wise temperatures, the proximal pull, measured dominance, who updates which groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_CLASSES, fit_round, tiny_cache, tiny_federation, tiny_strategy

from mirror_app.core.groups import (
    AUDIO_ENCODER,
    AUDIO_HEAD,
    FUSION_HEAD,
    GROUPS,
    VIDEO_ENCODER,
    VIDEO_HEAD,
    get_groups,
)
from mirror_app.core.models import build_model
from strategies import FedCMI
from strategies.fedcmi.losses import (
    class_temperatures,
    classwise_distillation_loss,
    fedcmi_audio,
    true_class_confidence,
)
from strategies.fedcmi.model import AUDIO_INF, AUDIO_SELF, FEDCMI_GROUPS, VIDEO_INF, VIDEO_SELF, FedCMIModel


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("cache") / "tiny")


def test_class_temperature_rises_for_easy_classes_and_drops_where_the_weak_modality_lags():
    p_weak = np.array([0.10, 0.50, 0.90, 0.0])
    p_dom = np.array([0.80, 0.50, 0.40, 0.0])
    t = class_temperatures(p_weak, p_dom, temperature=2.0)
    assert t[0] == pytest.approx(1.0)  # lagging far behind: ratio 0.125 clipped to 0.5 -> T/2
    assert t[1] == pytest.approx(2.0)  # equal confidence: T
    assert t[2] == pytest.approx(4.0)  # weak already more confident: ratio > 2, clipped to 2T
    assert t[3] == pytest.approx(2.0)  # no evidence either way
    mid = class_temperatures(np.array([0.3]), np.array([0.4]), 2.0)[0]
    assert 1.0 < mid < 2.0 and mid == pytest.approx(2.0 * (0.301 / 0.401))


def test_classwise_loss_uses_each_samples_class_temperature():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5), torch.randn(2, 5)
    both = classwise_distillation_loss(s, t, torch.tensor([1.0, 4.0]))
    one = [
        classwise_distillation_loss(s[i : i + 1], t[i : i + 1], torch.tensor([temp]))
        for i, temp in ((0, 1.0), (1, 4.0))
    ]
    assert both == pytest.approx(float(sum(one) / 2), rel=1e-5)
    assert classwise_distillation_loss(t, t, torch.tensor([1.0, 4.0])) == pytest.approx(0.0, abs=1e-6)


def test_proximal_term_pulls_towards_the_global_weights(cache):
    idx = cache.indices("train")
    far = {}
    for mu in (0.0, 10.0):
        model = FedCMIModel(build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], seed=0))
        start = [p.detach().clone() for p in model.audio_encoder.parameters()]
        fedcmi_audio(model, cache, idx, epochs=3, batch_size=8, lr=0.05, optimizer="sgd", device="cpu", seed=0, mu=mu)
        far[mu] = float(sum(((p.detach() - s) ** 2).sum() for p, s in zip(model.audio_encoder.parameters(), start)))
    assert far[10.0] < 0.5 * far[0.0]


def test_dominance_is_measured_from_confidence_on_the_true_class(cache):
    model = FedCMIModel(build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], seed=0))
    with torch.no_grad():  # make video perfect and audio uninformative
        model.audio_head.weight.zero_()
        model.audio_head.bias.zero_()
    p_audio, p_video, count = true_class_confidence(model, cache, cache.indices("train"))
    assert count.sum() == cache.indices("train").size
    assert np.allclose(p_audio[count > 0], 1 / TINY_CLASSES)  # uniform audio predictions
    with torch.no_grad():
        model.video_head.weight.zero_()
        model.video_head.bias.copy_(torch.tensor([9.0, 0, 0, 0]))  # video always says class 0
    _, p_video, _ = true_class_confidence(model, cache, cache.indices("train"))
    assert p_video[0] > 0.99 and p_video[1] < 0.01


def test_who_updates_which_groups(cache, tmp_path):
    manager, _ = tiny_federation(cache, 6, missing_rate=0.5)
    strategy = tiny_strategy(FedCMI, cache, tmp_path, clients_per_round=6, recorder=False, evaluator=False, mu=0.01)
    before = {k: [a.copy() for a in v] for k, v in strategy.state.items()}
    instructions, results = fit_round(strategy, manager)
    kinds = {}
    for proxy, res in results:
        kinds.setdefault(proxy.client.modality, set()).add(res.metrics["groups"])
        if proxy.client.modality == "audiovisual":
            assert res.metrics["weak-modality"] in ("audio", "video")
            assert 0 <= res.metrics["confidence-audio"] <= 1 and 0 <= res.metrics["confidence-video"] <= 1
    assert kinds["audio"] == {",".join((AUDIO_ENCODER, AUDIO_HEAD, AUDIO_SELF))}
    assert kinds["audiovisual"] == {
        ",".join(
            (
                AUDIO_ENCODER,
                AUDIO_HEAD,
                AUDIO_SELF,
                AUDIO_INF,
                VIDEO_ENCODER,
                VIDEO_HEAD,
                VIDEO_SELF,
                VIDEO_INF,
                FUSION_HEAD,
            )
        )
    }
    # audio-only clients never receive video groups
    for proxy, ins in instructions:
        if proxy.client.modality == "audio":
            assert set(ins.config["groups"].split(",")) == {AUDIO_ENCODER, AUDIO_HEAD, AUDIO_SELF, AUDIO_INF}
    strategy.aggregate_fit(1, results, [])
    changed = {g for g in FEDCMI_GROUPS if not all(np.array_equal(a, b) for a, b in zip(before[g], strategy.state[g]))}
    assert changed == {
        AUDIO_ENCODER,
        AUDIO_HEAD,
        AUDIO_SELF,
        AUDIO_INF,
        VIDEO_ENCODER,
        VIDEO_HEAD,
        VIDEO_SELF,
        VIDEO_INF,
        FUSION_HEAD,
    }
    # the evaluated audio model includes both audio projectors
    assert set(strategy.audio_model_state()) == {AUDIO_ENCODER, AUDIO_HEAD, AUDIO_SELF, AUDIO_INF}


def test_projectors_start_as_the_dual_encoder_they_wrap():
    """FedCMI's model predicts exactly as the dual encoder it is made from, shares its groups, and making it
    draws no random numbers (the other methods' initial weights do not depend on FedCMI existing)."""
    model = build_model(4, (20, 8), (3, 8, 8), seed=3)
    x, v = torch.randn(5, 20, 8), torch.randn(5, 3, 8, 8)
    state = torch.random.get_rng_state()
    wrapped = FedCMIModel(model)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(wrapped.audio_logits(x), model.audio_logits(x))
    assert torch.equal(wrapped.video_logits(v), model.video_logits(v))
    assert torch.equal(model.audio_logits(x), model.audio_head(model.audio_encoder(x)))
    a, b = get_groups(model, GROUPS), get_groups(wrapped, GROUPS)
    assert all(np.array_equal(u, w) for g in GROUPS for u, w in zip(a[g], b[g]))
    assert set(get_groups(wrapped, FEDCMI_GROUPS)) == set(FEDCMI_GROUPS)
