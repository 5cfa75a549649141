"""After training: export (ONNX + TorchScript parity, for every method and both backbone families), predict on
generated wav and mp4 files and on bad inputs, the model card, and TensorBoard curves read back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import fit_round, tiny_federation

from data import load_dataset
from mirror_app.results import RunRecorder
from strategies import STRATEGIES, compared_methods, resolve_config

ROOT = Path(__file__).resolve().parents[1]
METHODS = [
    "modality-mirror",
    "modality-mirror-agreement",
    "harmony",
    "multifl",
    "multifl-av-head",
    "unifl",
    "fedcmi",
    "modality-align",
]


@pytest.fixture(scope="module")
def embedded(data_dir):
    return load_dataset("embedded", data_dir, 1, 0.1, 0)


def run_in_process(
    out: Path, data_dir, cache, strategy: str, tensorboard: bool = False, train: bool = True, **overrides
) -> Path:
    """A short run of ``strategy`` on the embedded dataset, in this process, through the strategy's own Flower
    hooks, with the recorder a real run uses; returns the run folder (config.json ... model.pt). Without
    ``train`` the folder holds the initial model, evaluated (round 0), as a finished run would."""
    from mirror_app.core.evaluation import Evaluator
    from mirror_app.core.models import build_model, initial_model

    raw = {
        "strategy": strategy,
        "dataset": "embedded",
        "data-dir": str(data_dir),
        "output-dir": str(out),
        "num-server-rounds": 1,
        "distill-rounds": 1,
        "clients-per-round": 3,
        "eval-every": 1,
        "local-epochs": 1,
        "tensorboard": tensorboard,
        **overrides,
    }
    cfg, cls = resolve_config(raw)
    shapes = (cache.audio.shape[1:], cache.video.shape[1:])
    pretrained = cfg.pretrained_files(cache.spec)  # as the ServerApp (and every node's make_base) resolve them
    model = cls.server_model(
        initial_model(
            cache.num_classes,
            *shapes,
            cfg.audio_backbone,
            cfg.video_backbone,
            cfg.embed_dim,
            cfg.seed,
            *pretrained,
            heads=cfg.head_kinds,
        ),
        cfg,
        cache.classes,
    )
    eval_model = cls.server_model(
        build_model(
            cache.num_classes, *shapes, cfg.audio_backbone, cfg.video_backbone, cfg.embed_dim, heads=cfg.head_kinds
        ),
        cfg,
        cache.classes,
    )
    run_dir = out / f"run-{strategy}"
    recorder = RunRecorder(run_dir, cfg.to_dict(), cache.classes, tensorboard=tensorboard)
    s = cls(cfg=cfg, model=model, evaluator=Evaluator(eval_model, cache, torch.device("cpu")), recorder=recorder)
    if not train:
        metrics = s.evaluator(s.audio_model_state(), s.av_model_state())
        recorder.round(0, s.total_rounds, 1, s.phases[0][0].name, metrics, {}, 0.0)
        recorder.checkpoint("model.pt", s.state, s.teacher)
        recorder.finish(metrics, [(phase.name, rounds) for phase, rounds in s.phases])
        return run_dir
    # 300 clips per client, reading the run's data-dir (its pretrained encoders) like the server
    remedies = {k.replace("-", "_"): v for k, v in overrides.items() if k in ("classifier", "loss-calibration")}
    manager, _ = tiny_federation(cache, 12, missing_rate=0.5, data_dir=str(data_dir), **remedies)
    params = s.initialize_parameters(manager)
    s.evaluate(0, params)
    for r in range(1, s.total_rounds + 1):
        _, results = fit_round(s, manager, r)
        params, _ = s.aggregate_fit(r, results, [])
        s.evaluate(r, params)
    return run_dir


def onnx_top1(folder: Path, cache) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    test = np.sort(cache.indices("test"))
    probs = np.concatenate(
        [
            session.run(["probabilities"], {"features": np.ascontiguousarray(cache.audio[rows])})[0]
            for rows in np.array_split(test, 8)
        ]
    )
    return float((probs.argmax(1) == cache.labels[test]).mean())


@pytest.mark.parametrize("strategy", METHODS)
def test_export_ships_the_audio_model_the_method_evaluates(strategy, tmp_path, data_dir, embedded):
    """For every compared method: the ONNX model scores the test split exactly as the run's own evaluation of
    its last round did (so the right encoder and head were exported), ONNX Runtime, TorchScript and PyTorch
    agree within 1e-4, and the time axis is dynamic for tdnn-small."""
    from mirror_app.model.export import export

    # every compared method is exported here, or is one of these with other settings only (a control): it keeps its
    # parent's model, state and audio groups, which is all the export reads
    for name in set(compared_methods()) - set(METHODS):
        cls = STRATEGIES[name]
        assert any(issubclass(cls, STRATEGIES[m]) for m in METHODS), name
        assert not {"server_model", "model_from_state", "audio_groups"} & set(vars(cls)), name
    run = run_in_process(tmp_path, data_dir, embedded, strategy)
    meta = export(run)
    folder = run / "export"
    assert {p.name for p in folder.iterdir()} == {
        "model.onnx",
        "model.ts",
        "model.json",
        "MODEL_CARD.md",
        "per_class_f1.png",
    }
    assert meta["parity"]["onnxruntime_max_abs_diff"] <= 1e-4 and meta["parity"]["torchscript_max_abs_diff"] <= 1e-4
    assert meta["input"]["dynamic_time"] and meta["parity"]["lengths"] == [98, 130]
    summary = json.loads((run / "summary.json").read_text())
    assert onnx_top1(folder, embedded) == pytest.approx(summary["last"]["audio_top1"], abs=1.5 / 1000)
    ts = torch.jit.load(str(folder / "model.ts"))
    x = torch.from_numpy(np.ascontiguousarray(embedded.audio[np.sort(embedded.indices("test"))[:4]]))
    assert torch.allclose(ts(x).sum(1), torch.ones(4), atol=1e-5)  # probabilities
    saved = json.loads((folder / "model.json").read_text())
    assert saved["classes"] == embedded.classes and saved["front_end"]["sample_rate"] == 16000
    assert saved["front_end"]["num_frames"] == 98 and saved["front_end"]["normalisation"]["std"] > 0
    card = (folder / "MODEL_CARD.md").read_text()
    assert (
        STRATEGIES[strategy].display_name() in card and "synthetic" in card and "| missing-rate | `0.5` |" not in card
    )
    assert f"| strategy | `{strategy}` |" in card and "Bytes exchanged" in card
    assert str(data_dir) not in card and str(tmp_path) not in card  # no machine paths (data-dir, output-dir)
    assert "one seed of one simulated federation" in card
    if strategy == "modality-mirror":  # the schedule, also for phases without an evaluated round
        assert "modality-aware-fl (rounds 1-1), distillation (rounds 2-2)" in card
        # a deployed run's card says so, and what the encoders started from (the ServerApp records both)
        summary["federation"] = {
            "kind": "deployment",
            "initial_encoders": {"audio": "random weights", "video": "pretrained: video-cnn-small-d64-img32.pt"},
        }
        (run / "summary.json").write_text(json.dumps(summary))
        export(run, force=True)
        card = (folder / "MODEL_CARD.md").read_text()
        assert "one seed of one deployment (real SuperNodes)" in card
        assert "the encoders started from random weights (audio) and pretrained: video-cnn-small-d64-img32.pt" in card


@pytest.mark.parametrize("classifier", ["etf", "fixed-random"])
def test_a_fixed_classifier_is_exported_inside_the_graph(classifier, tmp_path, data_dir, embedded):
    """A run with a fixed classifier (FedETF's frame, FedBABU's random head) exports it inside the ONNX graph: the
    exported model scores the test split as the run's own evaluation did, and the card names the remedy (the run's
    initial model, evaluated: the graph is what is checked here, not training)."""
    from mirror_app.model.export import export

    overrides = {"classifier": classifier, "loss-calibration": "fedlc"}
    run = run_in_process(tmp_path, data_dir, embedded, "multifl", train=False, **overrides)
    meta = export(run)
    summary = json.loads((run / "summary.json").read_text())
    assert onnx_top1(run / "export", embedded) == pytest.approx(summary["last"]["audio_top1"], abs=1.5 / 1000)
    assert meta["parity"]["onnxruntime_max_abs_diff"] <= 1e-4
    card = (run / "export" / "MODEL_CARD.md").read_text()
    assert f"classifier {classifier} on the audio and fusion heads, label loss fedlc" in card


def test_a_run_made_before_the_classifier_key_exports_with_the_linear_heads_it_ran(tmp_path, data_dir, embedded):
    """A run whose config.json predates ``classifier`` and ``loss-calibration`` ran linear heads and plain
    cross-entropy (core.config.BEFORE_KEY), not today's defaults: its export rebuilds those heads."""
    from mirror_app.model.export import export

    run = run_in_process(
        tmp_path, data_dir, embedded, "multifl", train=False, **{"classifier": "linear", "loss-calibration": "none"}
    )
    config = json.loads((run / "config.json").read_text())
    older = {k: v for k, v in config.items() if k not in ("classifier", "classifier-heads", "loss-calibration")}
    (run / "config.json").write_text(json.dumps(older))
    export(run)
    summary = json.loads((run / "summary.json").read_text())
    assert onnx_top1(run / "export", embedded) == pytest.approx(summary["last"]["audio_top1"], abs=1.5 / 1000)


def test_export_of_the_paper_scale_audio_transformer_has_a_fixed_time_axis(tmp_path, data_dir):
    from mirror_app.model.export import export

    # the embedded dataset at 12 clips per class: the transformer scores every test clip twice (PyTorch, ONNX)
    small = load_dataset("embedded", data_dir, 1, 0.1, 0, clips_per_class=12)
    overrides = {"audio-backbone": "ast", "embedded-clips-per-class": 12}
    run = run_in_process(tmp_path, data_dir, small, "modality-mirror", train=False, **overrides)
    meta = export(run, tmp_path / "ast-export")
    assert not meta["input"]["dynamic_time"] and meta["input"]["shape"][1] == 98
    assert meta["parity"]["onnxruntime_max_abs_diff"] <= 1e-4 and meta["parity"]["lengths"] == [98]
    assert onnx_top1(tmp_path / "ast-export", small) == pytest.approx(
        json.loads((run / "summary.json").read_text())["initial_audio_top1"], abs=1.5 / 1000
    )


def test_export_refuses_what_it_cannot_export(tmp_path, data_dir, embedded):
    from mirror_app.model.export import ExportError, export, main

    with pytest.raises(ExportError, match="does not exist"):
        export(tmp_path / "nope")
    run = run_in_process(tmp_path, data_dir, embedded, "multifl", **{"num-server-rounds": 1, "distill-rounds": 0})
    export(run)
    with pytest.raises(ExportError, match="exists; remove it or pass --force"):
        export(run)
    assert main([str(run), "--force"]) == 0
    (run / "model.pt").unlink()
    assert main([str(run), "--force"]) == 2


def make_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "export", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_make_export_runs_as_the_readme_prints_it(tmp_path, data_dir, embedded):
    """`make export RUN=...` as a user types it (python -m runs the module top to bottom, which an import does not),
    a second time refused in one line naming FORCE=1, and replaced with FORCE=1."""
    run = run_in_process(tmp_path, data_dir, embedded, "modality-mirror", train=False)
    first = make_export(f"RUN={run}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"to {run / 'export'}" in first.stdout and "parity on 16 test clips" in first.stdout
    assert (run / "export" / "model.onnx").is_file() and (run / "export" / "MODEL_CARD.md").is_file()
    again = make_export(f"RUN={run}")
    assert again.returncode != 0
    assert [line for line in again.stderr.splitlines() if line.startswith("export: ")] == [
        f"export: {run / 'export'} exists; remove it or pass --force (make export ... FORCE=1) to replace it"
    ]
    (run / "export" / "model.onnx").unlink()
    forced = make_export(f"RUN={run}", "FORCE=1")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert (run / "export" / "model.onnx").is_file()
    other = make_export(f"RUN={run}", f"OUT={tmp_path / 'elsewhere'}")
    assert other.returncode == 0 and (tmp_path / "elsewhere" / "model.onnx").is_file()


# ----------------------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir, embedded):
    from mirror_app.model.export import export

    out = tmp_path_factory.mktemp("mm")
    run = run_in_process(out, data_dir, embedded, "modality-mirror")
    export(run)
    return run / "export"


def write_wav16(path: Path, wave: np.ndarray) -> Path:
    import wave as wavmod

    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2")
    with wavmod.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return path


def test_predict_scores_wav_and_mp4_with_the_training_features(exported, tmp_path, capsys):
    """The probabilities predict gives a wav file are the exported model's on log_mel + normalise of the decoded
    waveform (the training code), a long file is averaged over windows, and a video's audio track is scored."""
    from data import decode, synthetic
    from data.features import FeatureSpec, log_mel, normalise
    from data.media import write_video
    from mirror_app.model.predict import Predictor, main

    rng = np.random.default_rng(0)
    sound = synthetic.class_sound("membrane")
    clip = write_wav16(tmp_path / "clip.wav", 0.5 * synthetic.make_waveform(sound, rng, 1.0))
    long = write_wav16(tmp_path / "long.wav", 0.5 * synthetic.make_waveform(sound, rng, 3.3))
    video = write_video(tmp_path / "clip.mp4", 2, container="mp4")
    predictor = Predictor(exported)
    meta = json.loads((exported / "model.json").read_text())
    wave = decode.audio(clip, 60.0)
    feats = normalise(
        log_mel(wave, FeatureSpec(num_mel_bins=40, audio_seconds=1.0)), meta["front_end"]["normalisation"]
    )
    ts = torch.jit.load(str(exported / "model.ts"))
    expected = ts(torch.from_numpy(feats[None].astype(np.float32)))[0].detach().numpy()
    got = predictor.score(clip, top_k=20)
    assert got.windows == 1 and not got.error
    by_class = dict(got.top or [])
    assert max(abs(by_class[c] - expected[i]) for i, c in enumerate(meta["classes"])) < 1e-4
    assert predictor.score(long).windows == 6  # 3.3 s: windows at 0, 0.5, ..., 2.0 s and one ending at 3.3 s
    scored = predictor.score(video)  # the audio track of an mp4 (AAC adds a few ms: 1 or 2 windows)
    assert scored.windows in (1, 2) and not scored.error
    csv_path = tmp_path / "out.csv"
    assert main(["--model", str(exported), "--csv", str(csv_path), "--top-k", "3", str(tmp_path)]) == 0
    rows = pd.read_csv(csv_path)
    assert sorted(Path(p).name for p in rows["path"]) == ["clip.mp4", "clip.wav", "long.wav"]
    assert (rows["status"] == "ok").all() and rows["p1"].between(0, 1).all() and "class3" in rows.columns
    out = capsys.readouterr().out
    assert "1 s windows" in out and "(6 windows)" in out


def test_predict_reports_each_bad_input_in_one_line_and_scores_the_rest(exported, tmp_path, capsys):
    from data.media import write_corrupt, write_video, write_wav
    from mirror_app.model.predict import main

    good = write_wav(tmp_path / "good.wav", 1)
    mute = write_video(tmp_path / "mute.avi", 0, audio=False)
    broken = write_corrupt(tmp_path / "broken.wav")
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.flac"
    rc = main(["--model", str(exported), str(good), str(mute), str(broken), str(empty), str(missing)])
    captured = capsys.readouterr()
    lines = {line.split(":", 1)[0]: line for line in captured.out.splitlines() if ": " in line}
    assert rc == 1 and "4 of 5 files could not be scored" in captured.err
    assert "cannot score" not in lines[str(good)]
    assert lines[str(mute)].endswith("cannot score: no audio stream")
    assert "cannot score: corrupt" in lines[str(broken)]
    assert lines[str(empty)].endswith("cannot score: empty file")
    assert lines[str(missing)].endswith("cannot score: no such file")


def test_predict_refuses_a_model_folder_of_another_version(exported, tmp_path, capsys):
    import shutil

    from data.media import write_wav
    from mirror_app.model.predict import main

    other = tmp_path / "other"
    shutil.copytree(exported, other)
    meta = json.loads((other / "model.json").read_text())
    meta["format"] = 0
    (other / "model.json").write_text(json.dumps(meta))
    wav = write_wav(tmp_path / "a.wav", 0)
    assert main(["--model", str(other), str(wav)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exported in format 0, this version reads format 1" in err[0]
    assert main(["--model", str(tmp_path), str(wav)]) == 2
    assert "is not an export folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- tensorboard
def test_tensorboard_curves_are_written_every_round_and_read_back(tmp_path, data_dir, embedded):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = run_in_process(tmp_path, data_dir, embedded, "modality-mirror", tensorboard=True)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "audio/top1",
        "audio/top5",
        "audio/macro_f1",
        "av/top1",
        "av/top5",
        "av/macro_f1",
        "dev/audio_top1",
        "phase/index",
        "round/bytes_to_clients",
        "round/bytes_from_clients",
        "round/failures",
        "client_loss/audiovisual",
    } <= tags
    metrics = pd.read_csv(run / "metrics.csv")
    top1 = {e.step: e.value for e in events.Scalars("audio/top1")}
    assert sorted(top1) == [0, 1, 2]
    assert all(top1[r] == pytest.approx(v, abs=1e-6) for r, v in zip(metrics["round"], metrics["audio_top1"]))
    assert [e.value for e in events.Scalars("phase/index")] == [1, 1, 2]
    sent = {e.step: e.value for e in events.Scalars("round/bytes_to_clients")}
    assert sent == {r: float(v) for r, v in zip(metrics["round"], metrics["bytes_to_clients"]) if r > 0}
    texts = [t.tensor_proto.string_val[0].decode() for t in events.Tensors("phase/boundaries/text_summary")]
    assert any("`distillation` starts" in t for t in texts) and any("round 0" in t for t in texts)
    assert "client_loss/all" in events.Tags()["histograms"]
