"""The label-skew remedies against their papers' definitions: a simplex ETF's equal norms and equal pairwise angles,
FedLC's calibrated logits and FedRS's scaled ones on worked examples, heads that never train where they must not, the
remedies reaching every method's model and every label loss, and a fixed classifier exported inside the graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_cache

from mirror_app.core.config import ConfigError, RunConfig
from mirror_app.core.heads import Calibration, ETFHead, FixedLinear, calibrated_ce, simplex_etf
from mirror_app.core.models import build_model
from mirror_app.core.training import train_audio, train_av


@pytest.mark.parametrize("classes, dim", [(2, 2), (10, 10), (20, 64), (51, 64)])
def test_a_simplex_etf_has_unit_columns_at_equal_angles_summing_to_zero(classes, dim):
    m = simplex_etf(classes, dim, torch.Generator().manual_seed(3)).double()
    assert m.shape == (dim, classes)
    np.testing.assert_allclose(m.norm(dim=0).numpy(), 1.0, atol=1e-6)
    gram = (m.T @ m).numpy()
    off = gram[~np.eye(classes, dtype=bool)]
    np.testing.assert_allclose(off, -1.0 / (classes - 1), atol=1e-6)  # every pair at the same, widest angle
    np.testing.assert_allclose(m.sum(dim=1).numpy(), 0.0, atol=1e-6)
    assert torch.linalg.matrix_rank(m, atol=1e-5).item() == classes - 1  # float32's rounding
    with pytest.raises(ValueError, match="needs at least 20 dimensions"):
        simplex_etf(20, 10)


def test_fedlc_calibrated_logits_on_a_worked_example():
    """z_c - tau n_c^(-1/4), absent classes out of the softmax: z = (2, 1, 0.5, 0), n = (16, 81, 1, 0), tau = 1 gives
    (2 - 1/2, 1 - 1/3, 0.5 - 1, -inf)."""
    calibrated = Calibration("fedlc", torch.tensor([16.0, 81.0, 1.0, 0.0]), tau=1.0)(
        torch.tensor([[2.0, 1.0, 0.5, 0.0]])
    )
    np.testing.assert_allclose(calibrated[0, :3].numpy(), [1.5, 2 / 3, -0.5], rtol=1e-6)
    assert calibrated[0, 3] == float("-inf")
    loss = calibrated_ce(
        torch.tensor([[2.0, 1.0, 0.5, 0.0]]),
        torch.tensor([1]),
        Calibration("fedlc", torch.tensor([16.0, 81.0, 1.0, 0.0])),
    )
    z = np.array([1.5, 2 / 3, -0.5])
    assert loss.item() == pytest.approx(-(z[1] - np.log(np.exp(z).sum())), rel=1e-6)


def test_fedrs_and_the_balanced_softmax_on_worked_examples():
    counts = torch.tensor([10.0, 5.0, 0.0])
    scaled = Calibration("fedrs", counts, alpha=0.5)(torch.ones(1, 3))
    np.testing.assert_allclose(scaled[0].numpy(), [1.0, 0.75, 0.5])  # alpha + (1 - alpha) n_c / max n (FedRS' code)
    balanced = Calibration("balanced", counts)(torch.zeros(1, 3))
    np.testing.assert_allclose(balanced[0].numpy(), [np.log(10), np.log(5), 0.0], rtol=1e-6)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("heads") / "tiny")


def model_with(cache, classifier: str):
    heads = {"audio": classifier, "fusion": classifier}
    return build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], seed=0, heads=heads)


KW = dict(epochs=2, batch_size=8, lr=1e-2, optimizer="adam", device="cpu", seed=0)


def test_a_fixed_random_head_never_trains_and_its_body_does(cache):
    model = model_with(cache, "fixed-random")
    assert isinstance(model.audio_head, FixedLinear) and isinstance(model.fusion_head, FixedLinear)
    head = [p.detach().clone() for p in model.audio_head.parameters()]
    encoder = [p.detach().clone() for p in model.audio_encoder.parameters()]
    train_audio(model, cache, cache.indices("train"), **KW)
    assert all(torch.equal(a, b) for a, b in zip(head, model.audio_head.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(encoder, model.audio_encoder.parameters()))


def test_an_etf_heads_frame_stays_fixed_while_its_projection_and_temperature_train(cache):
    model = model_with(cache, "etf")
    assert isinstance(model.fusion_head, ETFHead) and isinstance(model.audio_head, ETFHead)
    etf, proj, scale = model.fusion_head.etf.clone(), model.fusion_head.proj.weight.detach().clone(), 10.0
    assert float(model.fusion_head.scale) == scale
    train_av(model, cache, cache.indices("train"), **KW)
    assert torch.equal(model.fusion_head.etf, etf)
    assert not torch.equal(model.fusion_head.proj.weight, proj) and float(model.fusion_head.scale) != scale
    assert "fusion_head.etf" in model.state_dict()  # in the head's group: sent, exported, the same everywhere


def test_the_remedies_reach_every_methods_model_and_the_distillation_objectives():
    from mirror_app.core.distillation import OBJECTIVES, DistillSettings
    from strategies import STRATEGIES, resolve_config

    for name, cls in STRATEGIES.items():
        if name in ("distill",) or cls.audio_classifier != "audio_head":
            continue  # phase 2 alone needs a checkpoint; ModalityAlign classifies against fixed anchors already
        cfg, _ = resolve_config({"strategy": name, "classifier": "etf"})
        dual = build_model(
            5, (20, 8), (3, 8, 8), cfg.audio_backbone, cfg.video_backbone, 16, seed=0, heads=cfg.head_kinds
        )
        server = cls.server_model(dual, cfg, [f"c{i}" for i in range(5)])
        assert any(isinstance(m, ETFHead) for m in server.modules()), name
    counts = torch.tensor([4.0, 0.0, 2.0])
    settings = DistillSettings(temperature=2.0, calibration=Calibration("restricted", counts))
    s, y = torch.randn(6, 3), torch.tensor([0, 2, 0, 2, 0, 2])
    control, _ = OBJECTIVES["ce"](s, None, y, settings)
    assert control.item() == pytest.approx(calibrated_ce(s, y, Calibration("restricted", counts)).item())
    assert control.item() != pytest.approx(torch.nn.functional.cross_entropy(s, y).item())


def test_bad_remedy_values_are_one_line():
    for raw, match in (
        ({"classifier": "cosine"}, "'classifier' = 'cosine' is invalid: one of"),
        ({"classifier-heads": "audio,video"}, "'classifier-heads' = 'audio,video' is invalid"),
        ({"loss-calibration": "fedprox"}, "'loss-calibration' = 'fedprox' is invalid"),
        ({"restricted-softmax": True, "loss-calibration": "fedlc"}, "'none' with restricted-softmax"),
        ({"fedrs-alpha": 1.5}, "'fedrs-alpha' = 1.5 is invalid"),
    ):
        with pytest.raises(ConfigError, match=match):
            RunConfig.from_dict(raw)
    assert RunConfig.from_dict({"classifier": "etf", "classifier-heads": "audio"}).head_kinds == {
        "audio": "etf",
        "fusion": "linear",
    }
