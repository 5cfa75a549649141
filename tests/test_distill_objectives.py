"""Phase 2's plug-ins: the distillation objectives (kl, kd, dkd, agreement) against their published formulas, the
teachers (fused, audio branch, best per sample), audio-only clients training in phase 2, what a run reports of
them, and a registered variant's fixed settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.server import Server
from helpers import tiny_cache, tiny_federation, tiny_strategy
from scipy.stats import kendalltau

from mirror_app.core.config import ConfigError, RunConfig
from mirror_app.core.distillation import (
    OBJECTIVES,
    TEACHERS,
    DistillSettings,
    distillation_loss,
    kendall_tau,
    nckd,
    tckd,
)
from mirror_app.core.training import Batch
from strategies import ModalityMirror, resolve_config


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("cache") / "tiny")


def logits(seed: int, n: int = 12, k: int = 6):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, k, generator=g) * 2,
        torch.randn(n, k, generator=g) * 2,
        torch.randint(0, k, (n,), generator=g),
    )


def mdistiller_dkd(s, t, y, alpha, beta, temperature):
    """DKD as mdistiller writes it (masks, a -1000 shift for the non-target softmax), for comparison."""
    gt = torch.zeros_like(s).scatter_(1, y[:, None], 1).bool()
    ps, pt = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)

    def cat(p):
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * ~gt).sum(1, keepdim=True)], dim=1)

    tc = F.kl_div(torch.log(cat(ps)), cat(pt), reduction="sum") * temperature**2 / len(s)
    nc = F.kl_div(
        F.log_softmax(s / temperature - 1000.0 * gt, dim=1),
        F.softmax(t / temperature - 1000.0 * gt, dim=1),
        reduction="sum",
    )
    return alpha * tc + beta * nc * temperature**2 / len(s)


def test_kl_is_the_divergence_alone_and_kd_mixes_forward_kl_with_the_label_loss():
    s, t, y = logits(0)
    cfg = DistillSettings(temperature=2.0, divergence="reverse")
    loss, kept = OBJECTIVES["kl"](s, t, y, cfg)
    assert float(loss) == pytest.approx(float(distillation_loss(s, t, y, 2.0, divergence="reverse")))
    assert kept.all()
    kd, _ = OBJECTIVES["kd"](s, t, y, DistillSettings(temperature=2.0, alpha=0.3, divergence="reverse"))
    forward = distillation_loss(s, t, y, 2.0, divergence="forward")  # kd is Hinton's: forward whatever the divergence
    assert float(kd) == pytest.approx(0.3 * float(forward) + 0.7 * float(F.cross_entropy(s, y)), rel=1e-6)
    only_labels, _ = OBJECTIVES["kd"](s, t, y, DistillSettings(temperature=2.0, alpha=0.0))
    assert float(only_labels) == pytest.approx(float(F.cross_entropy(s, y)))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_equals_mdistillers_decoupled_terms_plus_the_cross_entropy(temperature):
    s, t, y = logits(1)
    loss, kept = OBJECTIVES["dkd"](s, t, y, DistillSettings(temperature=temperature, dkd_alpha=1.0, dkd_beta=8.0))
    expected = F.cross_entropy(s, y) + mdistiller_dkd(s, t, y, 1.0, 8.0, temperature)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert kept.all()
    # each term is zero where it should be: the same distribution, and a teacher that differs only off the target
    assert float(tckd(s, s, y, temperature).abs().max()) < 1e-6 and float(nckd(s, s, y, temperature).abs().max()) < 1e-6
    same_split = s.clone()
    same_split[torch.arange(len(y)), y] += 0.0
    shuffled = s.clone()
    for i in range(len(y)):  # permute the non-target logits: the binary split changes, NCKD sees a new ranking
        others = [c for c in range(s.shape[1]) if c != y[i]]
        shuffled[i, others] = s[i, list(reversed(others))]
    assert float(tckd(shuffled, s, y, temperature).abs().max()) < 1e-5
    assert float(nckd(shuffled, s, y, temperature).mean()) > 1e-3


def test_kendall_tau_is_scipys_per_row_ties_included():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(8, 9, generator=g)
    b = a + torch.randn(8, 9, generator=g)
    b[0, :4] = 0.0  # ties
    a[1] = 1.0  # a row of ties ranks nothing
    tau = kendall_tau(a, b)
    for i in range(8):
        want = kendalltau(a[i].numpy(), b[i].numpy()).statistic
        assert float(tau[i]) == pytest.approx(0.0 if np.isnan(want) else want, abs=1e-6)


def test_agreement_distils_only_samples_whose_non_target_rankings_agree_and_keeps_the_label_loss():
    s, _, y = logits(4)
    t = s.clone()  # the same ranking everywhere...
    flipped = torch.arange(len(y)) % 2 == 0
    t[flipped] = -s[flipped]  # ...except where the teacher reverses it
    cfg = DistillSettings(temperature=2.0, alpha=0.5, tau=0.0)
    loss, kept = OBJECTIVES["agreement"](s, t, y, cfg)
    assert kept.tolist() == (~flipped).tolist()
    # the kept samples' teacher equals the student, so only the label loss remains
    assert float(loss) == pytest.approx(0.5 * float(F.cross_entropy(s, y)), rel=1e-5)
    # with a threshold below -1 every sample is distilled; the reversed ones then add a non-target KL
    loss_all, kept_all = OBJECTIVES["agreement"](s, t, y, DistillSettings(temperature=2.0, alpha=0.5, tau=-1.5))
    assert kept_all.all() and float(loss_all) > float(loss) + 1e-3
    expected = 0.5 * F.cross_entropy(s, y) + 0.5 * nckd(s, t, y, 2.0).mean()
    assert float(loss_all) == pytest.approx(float(expected), rel=1e-5)


def test_teachers_read_the_fused_model_its_audio_branch_or_the_better_one_per_sample(cache):
    from mirror_app.core.models import build_model

    model = build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], seed=0).eval()
    rows = np.arange(16)
    b = Batch(
        torch.from_numpy(cache.audio[rows]), torch.from_numpy(cache.video[rows]), torch.from_numpy(cache.labels[rows])
    )
    with torch.no_grad():
        fused, audio = model.av_logits(b.audio, b.video), model.audio_logits(b.audio)
        assert torch.equal(TEACHERS["fused"].logits(model, b), fused)
        assert torch.equal(TEACHERS["audio-branch"].logits(model, b), audio)
        best = TEACHERS["best-per-sample"].logits(model, b)
    p_fused = F.softmax(fused, 1)[torch.arange(16), b.labels]
    p_audio = F.softmax(audio, 1)[torch.arange(16), b.labels]
    for i in range(16):
        assert torch.equal(best[i], fused[i] if p_fused[i] >= p_audio[i] else audio[i])
    assert 0 < int((p_fused >= p_audio).sum()) < 16  # both teachers are chosen somewhere in this batch


@pytest.mark.parametrize(
    "settings,av_sent,audio_tasks",
    [
        (
            {"distill_objective": "agreement"},
            ["audio_encoder", "audio_head", "teacher/audio_encoder", "teacher/video_encoder", "teacher/fusion_head"],
            ["train-audio"],
        ),
        (
            {"distill_teacher": "audio-branch"},
            ["audio_encoder", "audio_head", "teacher/audio_encoder", "teacher/audio_head"],
            ["train-audio"],
        ),
        (
            {"distill_teacher": "best-per-sample", "distill_audio_only_clients": True},
            [
                "audio_encoder",
                "audio_head",
                "teacher/audio_encoder",
                "teacher/video_encoder",
                "teacher/fusion_head",
                "teacher/audio_head",
            ],
            ["train-audio", "train-audio", "train-audio"],
        ),
    ],
)
def test_phase_two_sends_the_teacher_groups_its_teacher_reads_and_reports_the_share_distilled(
    cache, tmp_path, settings, av_sent, audio_tasks
):
    kebab = {k.replace("_", "-"): v for k, v in settings.items()}
    manager, proxies = tiny_federation(cache, 6, missing_rate=0.5, **settings)
    strategy = tiny_strategy(
        ModalityMirror, cache, tmp_path, clients_per_round=6, num_server_rounds=1, distill_rounds=2, **kebab
    )
    Server(client_manager=manager, strategy=strategy).fit(strategy.total_rounds, None)
    for proxy in proxies.values():
        tasks = [call["config"]["task"] for call in proxy.fit_calls]
        if proxy.client.modality == "audio":  # phase 2: sitting out, or training on labels when asked to
            assert tasks == audio_tasks
        else:
            assert tasks == ["train-av", "distill", "distill"]
            assert proxy.fit_calls[1]["config"]["groups"].split(",") == av_sent
    # the teacher is phase 1's model (its audio head included), frozen through phase 2
    phase1 = torch.load(strategy.recorder.dir / "phase1.pt", weights_only=True)
    for g, arrays in strategy.teacher.items():
        for a, b in zip(phase1["state"][g], arrays):
            np.testing.assert_array_equal(a.numpy(), b)
    import pandas as pd

    metrics = pd.read_csv(strategy.recorder.dir / "metrics.csv")
    kept = metrics.set_index("round")["distill_kept_share"]
    assert kept.loc[1] != kept.loc[1]  # phase 1: nothing distilled, no value
    share = kept.loc[[2, 3]]
    if settings.get("distill_objective") == "agreement":
        assert ((share >= 0) & (share <= 1)).all()
    else:
        assert (share == 1.0).all()
    summary = json.loads((strategy.recorder.dir / "summary.json").read_text())
    handover = summary["phases"]
    assert handover["modality-aware-fl"]["round"] == 1 and handover["distillation"]["first"]["round"] == 2
    for phase in handover.values():
        assert 0 < phase["audio_majority_share"] <= 1 and 0 <= phase["audio_av_agreement"] <= 1
        assert 0 < phase["first"]["audio_majority_share"] <= 1


def test_a_client_refuses_a_teacher_whose_groups_were_not_sent(cache, tmp_path):
    """A client whose teacher reads groups the server did not send fails the task instead of distilling from the
    stale weights its workspace holds."""
    from clients.base import GROUP_SIZES, TaskError
    from strategies.distillation import DISTILL, TEACHER_GROUPS

    manager, proxies = tiny_federation(cache, 4, missing_rate=0.0, distill_teacher="best-per-sample")
    strategy = tiny_strategy(ModalityMirror, cache, tmp_path, recorder=False, evaluator=False)
    strategy.snapshot_teacher(TEACHER_GROUPS)
    config = {
        "task": "distill",
        "groups": ",".join(DISTILL.send),  # the fused teacher's groups: no teacher/audio_head
        GROUP_SIZES: ",".join(str(len(strategy.arrays_for((g,)))) for g in DISTILL.send),
        "server-round": 2,
    }
    client = next(p.client for p in proxies.values() if p.client.modality == "audiovisual")
    with pytest.raises(TaskError, match=r"reads the teacher's \['audio_head'\], which were not sent"):
        client.fit(strategy.arrays_for(DISTILL.send), config)


def test_bad_distillation_settings_are_one_line_naming_what_is_allowed():
    for key, value, allowed in [
        ("distill-objective", "mse", "one of ['kl', 'kd', 'dkd', 'agreement', 'ce']"),
        ("distill-teacher", "video", "one of ['fused', 'audio-branch', 'best-per-sample']"),
        ("distill-alpha", 1.5, "a fraction in [0, 1]"),
        ("dkd-beta", -1.0, "a number >= 0"),
        ("agreement-tau", 1.0, "a number in [-1, 1)"),
    ]:
        with pytest.raises(ConfigError) as err:
            RunConfig.from_dict({key: value})
        assert str(err.value) == f"run config '{key}' = {value!r} is invalid: {allowed}" or allowed in str(err.value)
        assert "\n" not in str(err.value)


class KDVariant(ModalityMirror):
    """A registered variant's shape: ModalityMirror with the kd objective fixed."""

    settings = {"distill-objective": "kd"}


def test_a_registered_variant_runs_with_its_fixed_settings_and_refuses_another_value():
    cfg, cls = resolve_config({"strategy": "multifl-av-head"})
    assert cfg.av_trains_audio_head is True and cls.beyond_paper
    plain, _ = resolve_config({"strategy": "multifl"})
    assert plain.av_trains_audio_head is False  # the default: the paper's reading
    variant = f"{__name__}.KDVariant"
    assert resolve_config({"strategy": variant})[0].distill_objective == "kd"
    assert resolve_config({"strategy": variant, "distill-objective": "kl"})[0].distill_objective == "kd"  # a default
    with pytest.raises(ConfigError, match=r"'distill-objective' = 'dkd' is invalid with strategy .*KDVariant"):
        resolve_config({"strategy": variant, "distill-objective": "dkd"})
