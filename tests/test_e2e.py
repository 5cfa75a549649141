"""End to end through `flwr run .`: a real SuperLink, Ray-backed simulation, both client kinds."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mirror_app.deploy.launch import SuperLink

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    link = SuperLink(tmp_path_factory.mktemp("flwr-home"))
    yield link
    survivors = link.stop()
    assert not survivors, f"processes left running: {survivors}"


def run_config(**overrides) -> str:
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in overrides.items())


def mm_settings(data_dir) -> dict:
    return {
        "num-server-rounds": 2,
        "distill-rounds": 1,
        "clients-per-round": 4,
        "missing-rate": 0.5,
        "local-epochs": 1,
        "eval-every": 1,
        "data-dir": str(data_dir),
    }


FEDERATION = ("--federation-config", "num-supernodes=6")


@pytest.fixture(scope="module")
def mm_run(superlink, data_dir, tmp_path_factory):
    """One ModalityMirror run through `flwr run .`: (output dir, flwr's output)."""
    out = tmp_path_factory.mktemp("mm") / "results"
    cfg = run_config(**mm_settings(data_dir), **{"output-dir": str(out)})
    res = superlink.flwr_run(ROOT, *FEDERATION, "--run-config", cfg)
    return out, res.stdout + res.stderr


@pytest.mark.timeout(900)
def test_modality_mirror_runs_both_phases_with_both_client_kinds(mm_run):
    out, log = mm_run
    runs = list(out.iterdir()) if out.exists() else []
    assert len(runs) == 1, log[-4000:]
    run = runs[0]
    assert (run / "summary.json").is_file(), log[-4000:]

    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["round"]) == [0, 1, 2, 3]
    assert list(metrics["phase"]) == ["modality-aware-fl"] * 3 + ["distillation"]
    for col in ("audio_top1", "audio_top5", "audio_macro_f1", "av_top1"):
        assert metrics[col].between(0, 1).all()
    assert (metrics.loc[1:, "bytes_to_clients"] > 0).all() and (metrics.loc[1:, "bytes_from_clients"] > 0).all()
    assert (metrics["failures"] == 0).all()

    clients = pd.read_csv(run / "clients.csv")
    assert (clients["status"] == "ok").all()
    phase1 = clients[clients["phase"] == "modality-aware-fl"]
    phase2 = clients[clients["phase"] == "distillation"]
    assert set(phase1["modality"]) == {"audio", "audiovisual"}, clients
    audio = phase1[phase1["modality"] == "audio"]
    av = phase1[phase1["modality"] == "audiovisual"]
    assert set(audio["task"]) == {"train-audio"} and set(av["task"]) == {"train-av"}
    # audio-only clients download exactly the audio model, smaller than what audiovisual clients get
    assert audio["bytes_received"].nunique() == 1
    assert audio["bytes_received"].iloc[0] < av["bytes_received"].min()
    assert set(phase2["modality"]) == {"audiovisual"} and set(phase2["task"]) == {"distill"}

    per_class = pd.read_csv(run / "per_class_f1.csv")
    assert per_class["class"].nunique() == 20 and "playing congas" in set(per_class["class"])
    config = json.loads((run / "config.json").read_text())
    assert config["distill-rounds"] == 1 and config["missing-rate"] == 0.5
    assert (run / "phase1.pt").is_file() and (run / "model.pt").is_file()


@pytest.mark.timeout(900)
def test_modality_alignment_runs_on_the_embedded_dataset(superlink, data_dir, tmp_path):
    """Text anchors on the server, adapters and projections on the wire, both client kinds."""
    out = tmp_path / "results"
    cfg = run_config(
        **{
            "strategy": "modality-align",
            "num-server-rounds": 2,
            "distill-rounds": 0,
            "eval-every": 1,
            "clients-per-round": 4,
            "missing-rate": 0.5,
            "local-epochs": 1,
            "data-dir": str(data_dir),
            "output-dir": str(out),
        }
    )
    res = superlink.flwr_run(ROOT, "--federation-config", "num-supernodes=6", "--run-config", cfg)
    log = res.stdout + res.stderr
    runs = list(out.iterdir()) if out.exists() else []
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file(), log[-4000:]
    assert "text anchors: 20 classes x 384 dims" in log
    metrics = pd.read_csv(runs[0] / "metrics.csv")
    assert list(metrics["phase"]) == ["align"] * 3 and (metrics["failures"] == 0).all()
    assert metrics["audio_top1"].between(0, 1).all()
    clients = pd.read_csv(runs[0] / "clients.csv")
    assert (clients["status"] == "ok").all()
    assert set(zip(clients["modality"], clients["task"])) == {("audio", "align-audio"), ("audiovisual", "align-av")}
    audio, av = clients[clients["modality"] == "audio"], clients[clients["modality"] == "audiovisual"]
    assert audio["bytes_sent"].max() < av["bytes_sent"].min()


@pytest.mark.timeout(900)
def test_a_method_from_outside_the_package_brings_its_own_client_task(superlink, data_dir, tmp_path):
    """README "Adding a method": tests/plugin_method.py, given by dotted path, runs through `flwr run` with a
    client task no registered method has; both client kinds find it in the strategy class."""
    out = tmp_path / "results"
    cfg = run_config(
        **{
            "strategy": "tests.plugin_method.SmoothedAudioFL",
            "num-server-rounds": 2,
            "eval-every": 1,
            "clients-per-round": 4,
            "missing-rate": 0.5,
            "data-dir": str(data_dir),
            "output-dir": str(out),
        }
    )
    res = superlink.flwr_run(ROOT, *FEDERATION, "--run-config", cfg)
    log = res.stdout + res.stderr
    runs = list(out.iterdir()) if out.exists() else []
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file(), log[-4000:]
    metrics = pd.read_csv(runs[0] / "metrics.csv")
    assert list(metrics["phase"]) == ["smoothed-audio-fl"] * 3 and (metrics["failures"] == 0).all()
    assert metrics["audio_top1"].between(0, 1).all()
    clients = pd.read_csv(runs[0] / "clients.csv")
    assert (clients["status"] == "ok").all()
    assert set(zip(clients["modality"], clients["task"])) == {
        ("audio", "smooth-audio"),
        ("audiovisual", "smooth-audio"),
    }
    assert clients["bytes_received"].nunique() == 1  # audiovisual clients too get the audio model only


@pytest.mark.timeout(300)
def test_bad_config_stops_before_training_with_one_clear_line(superlink, data_dir, tmp_path):
    out = tmp_path / "results"
    cfg = run_config(**{"temperature": 0.0, "data-dir": str(data_dir), "output-dir": str(out)})
    res = superlink.flwr_run(ROOT, "--federation-config", "num-supernodes=3", "--run-config", cfg)
    log = res.stdout + res.stderr
    assert "run config 'temperature' = 0.0 is invalid: a number > 0" in log, log[-4000:]
    assert "[ROUND 1]" not in log
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.timeout(900)
def test_killed_run_resumes_to_the_same_metrics(mm_run, data_dir, tmp_path):
    """kill -9 of the whole Flower process tree after round 1, then `resume`: every metrics row
    equals the uninterrupted run's with the same seed (which also shows that two runs agree)."""
    import os
    import signal
    import subprocess
    import time

    from mirror_app.deploy.launch import tree_members

    straight, _ = mm_run
    cut = tmp_path / "cut"
    link = SuperLink(tmp_path / "home-killed")
    cmd = [
        "flwr",
        "run",
        str(ROOT),
        "test",
        "--stream",
        *FEDERATION,
        "--run-config",
        run_config(**mm_settings(data_dir), **{"output-dir": str(cut)}),
    ]
    cli = subprocess.Popen(
        cmd, env=link.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    done = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not done:
            done = [p.parent for p in cut.glob("*/resume.pt")]  # round 1 is complete
            time.sleep(0.1)
    finally:
        for pid in tree_members(link.proc.pid) | tree_members(cli.pid):  # kill -9, no clean-up at all
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        cli.wait(timeout=30)
        link.stop()
    assert done, "the run to kill never completed round 1"
    run_dir = done[0]
    assert not (run_dir / "summary.json").exists()

    with SuperLink(tmp_path / "home-resume") as again:
        res = again.flwr_run(
            ROOT,
            *FEDERATION,
            "--run-config",
            run_config(**mm_settings(data_dir), **{"output-dir": str(cut), "resume": str(run_dir)}),
        )
    assert (run_dir / "summary.json").is_file(), (res.stdout + res.stderr)[-4000:]
    assert "resuming" in res.stdout + res.stderr
    resumed = pd.read_csv(run_dir / "metrics.csv")
    reference = pd.read_csv(next(straight.glob("*/metrics.csv")))
    assert list(resumed["round"]) == [0, 1, 2, 3]
    cols = [
        "round",
        "phase",
        "audio_top1",
        "audio_top5",
        "audio_macro_f1",
        "av_top1",
        "clients",
        "failures",
        "bytes_to_clients",
        "bytes_from_clients",
    ]
    pd.testing.assert_frame_equal(resumed[cols], reference[cols])
