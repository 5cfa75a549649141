"""The readings of the paper that decide its comparison (README "Fidelity of the comparison"): the direction of
the distillation divergence, and whether audiovisual clients train the audio head in phase 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.common import parameters_to_ndarrays
from flwr.server import Server
from helpers import fit_round, tiny_cache, tiny_federation, tiny_strategy

from mirror_app.core.distillation import distillation_loss
from mirror_app.core.groups import AUDIO_HEAD, AV_MODEL
from mirror_app.core.models import build_model
from mirror_app.core.training import train_av
from strategies import ModalityAwareFedAvg, ModalityMirror

LABELS = torch.zeros(6, dtype=torch.long)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("fidelity") / "tiny")


def closed_form(student: torch.Tensor, teacher: torch.Tensor, t: float, divergence: str) -> torch.Tensor:
    """The divergence written out: p^M = softmax(teacher / T), p^A = softmax(student / T)."""
    pm, pa = F.softmax(teacher.double() / t, dim=1), F.softmax(student.double() / t, dim=1)
    forward = (pm * (pm.log() - pa.log())).sum(1).mean()  # KL(p^M || p^A)
    reverse = (pa * (pa.log() - pm.log())).sum(1).mean()  # KL(p^A || p^M), the paper's formula
    value = {"forward": forward, "reverse": reverse, "symmetric": (forward + reverse) / 2}[divergence]
    return value * t * t


def closed_form_gradient(student: torch.Tensor, teacher: torch.Tensor, t: float, divergence: str) -> torch.Tensor:
    """d loss / d student logits, derived by hand: forward T (p^A - p^M) / B; reverse
    T p^A (d - sum_k p^A_k d_k) / B with d = log p^A - log p^M; symmetric their mean."""
    pm, pa = F.softmax(teacher.double() / t, dim=1), F.softmax(student.double() / t, dim=1)
    b = student.shape[0]
    forward = t * (pa - pm) / b
    d = pa.log() - pm.log()
    reverse = t * pa * (d - (pa * d).sum(1, keepdim=True)) / b
    return {"forward": forward, "reverse": reverse, "symmetric": (forward + reverse) / 2}[divergence]


@pytest.mark.parametrize("divergence", ["forward", "reverse", "symmetric"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_each_divergence_matches_its_closed_form_in_value_and_gradient(divergence, temperature):
    torch.manual_seed(3)
    s = (3 * torch.randn(6, 5)).requires_grad_(True)
    t = 3 * torch.randn(6, 5)
    loss = distillation_loss(s, t, LABELS, temperature, divergence=divergence)
    assert float(loss.detach()) == pytest.approx(float(closed_form(s.detach(), t, temperature, divergence)), rel=1e-5)
    loss.backward()
    expected = closed_form_gradient(s.detach(), t, temperature, divergence)
    np.testing.assert_allclose(s.grad.numpy(), expected.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("divergence", ["forward", "reverse", "symmetric"])
def test_each_divergence_is_zero_and_flat_when_student_equals_teacher(divergence):
    logits = torch.randn(6, 5)
    s = logits.clone().requires_grad_(True)
    loss = distillation_loss(s, logits, LABELS, 2.0, divergence=divergence)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(s.grad.abs().max()) < 1e-6


def test_the_direction_on_an_asymmetric_pair():
    """The teacher is sure of class 0 and gives class 2 some mass; the student spreads evenly over 0 and 1.
    Forward KL(p^M || p^A) and reverse KL(p^A || p^M) differ, and the reverse is the forward with the roles
    swapped: which distribution weights the log-ratio is the one the paper's formula names first."""
    teacher = torch.log(torch.tensor([[0.80, 0.01, 0.19]]))
    student = torch.log(torch.tensor([[0.495, 0.495, 0.01]]))
    y = torch.zeros(1, dtype=torch.long)
    forward = float(distillation_loss(student, teacher, y, 1.0, divergence="forward"))
    reverse = float(distillation_loss(student, teacher, y, 1.0, divergence="reverse"))
    p, q = np.array([0.80, 0.01, 0.19]), np.array([0.495, 0.495, 0.01])
    assert forward == pytest.approx(float((p * np.log(p / q)).sum()), rel=1e-5)
    assert reverse == pytest.approx(float((q * np.log(q / p)).sum()), rel=1e-5)
    assert reverse != pytest.approx(forward, rel=0.05)
    swapped = float(distillation_loss(teacher, student, y, 1.0, divergence="forward"))
    assert reverse == pytest.approx(swapped, rel=1e-6)
    # the forward direction punishes the student most for the teacher's class it leaves out (class 2)
    with_class2 = torch.log(torch.tensor([[0.6, 0.2, 0.2]]))
    assert float(distillation_loss(with_class2, teacher, y, 1.0)) < forward


def test_an_unknown_divergence_is_refused_and_the_run_config_checks_it():
    from mirror_app.core.config import ConfigError, RunConfig

    with pytest.raises(ValueError, match="one of"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 2.0, divergence="js")
    with pytest.raises(ConfigError, match="'distill-divergence' = 'js' is invalid: one of"):
        RunConfig.from_dict({"distill-divergence": "js"})
    with pytest.raises(ConfigError, match="'av-audio-head-weight' = 0.0 is invalid: a number > 0"):
        RunConfig.from_dict({"av-audio-head-weight": 0.0})


def recomputed_distill_loss(proxy, call: dict, divergence: str) -> float:
    """The phase-2 loss a client would report for the instruction ``call`` under ``divergence``: the core's
    distillation loop on the received student and teacher, with the client's seed and local training."""
    import copy

    from clients.base import received_groups
    from mirror_app.core.distillation import DistillSettings
    from mirror_app.core.groups import TEACHER_PREFIX, set_groups
    from mirror_app.core.training import distill

    client = proxy.client
    received = received_groups(call["arrays"], call["config"])
    student, teacher = copy.deepcopy(client.workspace.model), copy.deepcopy(client.workspace.teacher)
    set_groups(student, {g: a for g, a in received.items() if not g.startswith(TEACHER_PREFIX)})
    set_groups(
        teacher, {g.removeprefix(TEACHER_PREFIX): a for g, a in received.items() if g.startswith(TEACHER_PREFIX)}
    )
    seed = client.settings.seed * 1_000_003 + int(call["config"]["server-round"]) * 1009 + client.partition.partition_id
    seed %= 2**32
    torch.manual_seed(seed)
    settings = DistillSettings(temperature=client.settings.temperature, divergence=divergence)
    return distill(
        student,
        teacher,
        client.workspace.cache,
        client.partition.indices,
        settings=settings,
        **client.train_kwargs(client.workspace, seed),
    )


def test_the_run_configs_divergence_reaches_the_clients_distillation(cache, tmp_path):
    """The same run with forward and with reverse: phase 1 identical, phase 2's student different; the loss each
    client reports in phase 2 is its run's divergence's (recomputed from what it received), not the other's."""
    import pandas as pd

    students, phase1 = {}, {}
    for divergence in ("forward", "reverse"):
        manager, proxies = tiny_federation(cache, 4, missing_rate=0.25, distill_divergence=divergence)
        strategy = tiny_strategy(
            ModalityMirror,
            cache,
            tmp_path / divergence,
            clients_per_round=4,
            num_server_rounds=1,
            distill_rounds=1,
            **{"distill-divergence": divergence},
        )
        Server(client_manager=manager, strategy=strategy).fit(strategy.total_rounds, None)
        students[divergence] = strategy.state["audio_head"][0].copy()
        phase1[divergence] = strategy.teacher["fusion_head"][0].copy()
        reported = pd.read_csv(strategy.recorder.dir / "clients.csv").set_index(["round", "partition_id"])
        checked = 0
        for proxy in proxies.values():
            for call in proxy.fit_calls:
                if call["config"]["task"] != "distill":
                    continue
                loss = reported.loc[(2, proxy.client.partition.partition_id), "train_loss"]
                other = "reverse" if divergence == "forward" else "forward"
                assert loss == pytest.approx(recomputed_distill_loss(proxy, call, divergence), rel=1e-5)
                assert loss != pytest.approx(recomputed_distill_loss(proxy, call, other), rel=1e-3)
                checked += 1
        assert checked == 3  # the three audiovisual clients
    np.testing.assert_array_equal(phase1["forward"], phase1["reverse"])
    assert not np.allclose(students["forward"], students["reverse"])


def test_train_av_with_the_audio_head_adds_its_weighted_label_loss_and_trains_it(cache):
    idx = np.flatnonzero(np.asarray(cache.split) == 0)[:16]
    kw = dict(epochs=1, batch_size=16, lr=1e-3, optimizer="sgd", device=torch.device("cpu"), seed=0)

    def model():
        return build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], seed=1)

    plain, with_head, heavy = model(), model(), model()
    head0 = plain.audio_head.weight.detach().clone()
    loss_plain = train_av(plain, cache, idx, **kw)
    loss_head = train_av(with_head, cache, idx, audio_head_weight=1.0, **kw)
    loss_heavy = train_av(heavy, cache, idx, audio_head_weight=3.0, **kw)
    assert torch.equal(plain.audio_head.weight, head0)  # the paper's default: the audio head is not trained here
    assert not torch.equal(with_head.audio_head.weight, head0)
    # one batch, so the loss is the one before the step: fusion CE + w x audio-head CE
    fresh = model()
    batch_audio = torch.from_numpy(np.asarray(cache.audio[np.sort(idx)]))
    labels = torch.from_numpy(np.asarray(cache.labels[np.sort(idx)]))
    with torch.no_grad():
        audio_ce = float(F.cross_entropy(fresh.audio_logits(batch_audio), labels))
    assert loss_head - loss_plain == pytest.approx(audio_ce, rel=1e-4)
    assert loss_heavy - loss_plain == pytest.approx(3 * audio_ce, rel=1e-4)


@pytest.mark.parametrize("cls", [ModalityAwareFedAvg, ModalityMirror])
def test_av_clients_train_the_audio_head_only_when_asked_and_it_is_averaged_over_both_kinds(cls, cache, tmp_path):
    for flag in (False, True):
        manager, proxies = tiny_federation(cache, 4, missing_rate=0.5)
        strategy = tiny_strategy(
            cls, cache, tmp_path / str(flag), clients_per_round=4, **{"av-trains-audio-head": flag}
        )
        instructions, results = fit_round(strategy, manager)
        av = [(p, r) for p, r in results if p.client.modality == "audiovisual"]
        audio = [(p, r) for p, r in results if p.client.modality == "audio"]
        assert av and audio
        for _, res in av:
            groups = res.metrics["groups"].split(",")
            if flag:
                assert res.metrics["task"] == "train-av-audio-head" and groups == [*AV_MODEL, AUDIO_HEAD]
            else:
                assert res.metrics["task"] == "train-av" and AUDIO_HEAD not in groups
        strategy.aggregate_fit(1, results, [])
        # the audio head's weight matrix: example-weighted mean over exactly the clients that returned it
        trained = audio + (av if flag else [])
        heads = []
        for _, res in trained:
            arrays = parameters_to_ndarrays(res.parameters)
            names = res.metrics["groups"].split(",")
            sizes = [len(strategy.state[g]) for g in names]
            start = sum(sizes[: names.index(AUDIO_HEAD)])
            heads.append((arrays[start], res.num_examples))
        total = sum(n for _, n in heads)
        expected = sum(a.astype(np.float64) * n for a, n in heads) / total
        np.testing.assert_allclose(strategy.state[AUDIO_HEAD][0], expected, rtol=1e-5, atol=1e-6)
