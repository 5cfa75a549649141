"""Phase 2: the distillation loss and who takes part."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.server import Server
from helpers import tiny_cache, tiny_federation, tiny_strategy

from mirror_app.core.distillation import distillation_loss
from mirror_app.core.groups import AV_MODEL
from strategies import ModalityMirror


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("cache") / "tiny")


def test_loss_is_zero_when_student_matches_teacher():
    logits = torch.randn(8, 5)
    assert float(distillation_loss(logits, logits.clone(), torch.zeros(8, dtype=torch.long), 3.0)) == pytest.approx(
        0, abs=1e-6
    )


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_loss_is_t_squared_kl_of_softened_distributions(temperature):
    torch.manual_seed(0)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    p = F.softmax(t / temperature, dim=1)
    q = F.softmax(s / temperature, dim=1)
    expected = (p * (p.log() - q.log())).sum(dim=1).mean() * temperature**2
    got = distillation_loss(s, t, torch.zeros(6, dtype=torch.long), temperature)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_label_term_is_off_by_default_and_added_with_weight():
    torch.manual_seed(1)
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    base = distillation_loss(s, t, y, 2.0)
    with_ce = distillation_loss(s, t, y, 2.0, ce_weight=0.5)
    assert float(with_ce - base) == pytest.approx(0.5 * float(F.cross_entropy(s, y)), rel=1e-5)


def test_gradient_steps_move_student_towards_teacher():
    torch.manual_seed(2)
    teacher = torch.randn(16, 5)
    student = torch.zeros(16, 5, requires_grad=True)
    opt = torch.optim.Adam([student], lr=0.3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = distillation_loss(student, teacher, torch.zeros(16, dtype=torch.long), 2.0)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.2 * losses[0]


def test_phase_two_uses_only_audiovisual_clients_and_a_frozen_teacher(cache, tmp_path):
    manager, proxies = tiny_federation(cache, 6, missing_rate=0.5)
    strategy = tiny_strategy(
        ModalityMirror, cache, tmp_path, clients_per_round=6, num_server_rounds=1, distill_rounds=2
    )
    Server(client_manager=manager, strategy=strategy).fit(strategy.total_rounds, None)

    for proxy in proxies.values():
        tasks = [call["config"]["task"] for call in proxy.fit_calls]
        rounds = [call["config"]["server-round"] for call in proxy.fit_calls]
        if proxy.client.modality == "audio":
            assert tasks == ["train-audio"] and rounds == [1]  # never in phase 2
        else:  # audiovisual clients train the fused model only in phase 1 (the default: the paper's reading)
            assert tasks == ["train-av", "distill", "distill"]
            sent = proxy.fit_calls[1]["config"]["groups"].split(",")
            assert sent == [
                "audio_encoder",
                "audio_head",
                "teacher/audio_encoder",
                "teacher/video_encoder",
                "teacher/fusion_head",
            ]
    # the teacher is phase 1's audiovisual model, unchanged by phase 2
    import torch as _t

    phase1 = _t.load(strategy.recorder.dir / "phase1.pt", weights_only=True)
    for g in AV_MODEL:
        for a, b in zip(phase1["state"][g], strategy.teacher[g]):
            np.testing.assert_array_equal(a.numpy(), b)
    # while the student's audio encoder moved away from it
    assert any(
        not np.allclose(a.numpy(), b) for a, b in zip(phase1["state"]["audio_encoder"], strategy.state["audio_encoder"])
    )
    # the teacher the clients received in both distillation rounds is the same
    av = next(p for p in proxies.values() if p.client.modality == "audiovisual")
    n_student = len(strategy.state["audio_encoder"]) + len(strategy.state["audio_head"])
    for a, b in zip(av.fit_calls[1]["arrays"][n_student:], av.fit_calls[2]["arrays"][n_student:]):
        np.testing.assert_array_equal(a, b)
