"""`make bench` on a tiny setting: every figure of the report is produced and is plausible."""

from __future__ import annotations

import json

import pytest

from mirror_app.bench.overhead import setup_cost
from mirror_app.bench.report import ROUND_STEPS, STARTUP_STEPS
from mirror_app.bench.run import main, run_bench


@pytest.mark.timeout(900)
def test_tiny_bench_writes_every_figure(tmp_path, data_dir):
    out = tmp_path / "bench"
    report = run_bench(
        out,
        num_supernodes=4,
        rounds=2,
        distill_rounds=1,
        memory_partitions=[],
        videos=16,
        run_config=f"clients-per-round=2 local-epochs=1 data-dir='{data_dir}'",
        timeout=600,
        log=lambda *a: None,
        gpu=True,  # measured on a GPU machine; here: skipped, in one line
    )
    saved = json.loads((out / "bench.json").read_text())
    assert saved["rounds"]["ratio"] == pytest.approx(report["rounds"]["ratio"])
    r = saved["rounds"]
    assert len(r["flwr_rounds_s"]) == 3 and len(r["bare_rounds_s"]) == 2  # 2 + 1 rounds simulated, 2 bare
    assert (
        r["flwr_round_s"] > 0
        and r["bare_round_s"] > 0
        and r["ratio"] == pytest.approx(r["flwr_round_s"] / r["bare_round_s"])
    )
    s = saved["startup"]
    assert 0 < s["superlink_s"] < 120 and 0 < s["app_start_s"] < 600 and s["first_round_s"] > 0
    # the start-up steps follow one another (none negative) and add up to the first evaluation's time
    steps = {k: v for k, v in s["steps"].items() if k in dict((n, 0) for n, _, _ in STARTUP_STEPS)}
    assert len(steps) == len(STARTUP_STEPS) and min(steps.values()) >= 0
    assert sum(steps.values()) == pytest.approx(s["app_start_s"])
    # a round's steps, from the run's timeline: in order, and together the round (of round 2, the one timed)
    f = r["flwr_steps"]
    assert min(f[name] for name, _, _ in ROUND_STEPS) >= 0
    assert sum(f[name] for name, _, _ in ROUND_STEPS) == pytest.approx(f["round"], abs=1e-6)
    # metrics.csv's seconds count from one evaluation to the next (rounded to 0.01 s); the timeline agrees
    assert f["evaluated to evaluated"] == pytest.approx(r["flwr_rounds_s"][1], abs=0.02)
    assert set(r["bare_steps"]) == {"round_s", "train_s", "aggregate_s", "evaluate_s"}
    c = saved["client_setup"]
    assert c["calls"] == 2 * 3 and c["workspace_builds"] == 0  # never rebuilt in a training call
    assert 0 < c["setup_share"] < 1
    assert saved["memory"] == {}  # no extra runs asked for; the timed run's peak is always measured
    assert saved["memory_main_run"]["peak_pss"] > 100 * 2**20  # Python + torch + Ray, at least
    assert saved["memory_main_run"]["peak_rss"] >= saved["memory_main_run"]["peak_pss"]
    p = saved["preprocessing"]
    assert p["videos"] == 16 and p["prepare_videos_per_s"] > 0 and p["ffmpeg_cli_videos_per_s"] > 0
    assert p["prepare_steady_videos_per_s"] > 0
    kinds = {(row["phase"], row["modality"], row["task"]) for row in saved["bytes_per_client"]}
    assert ("distillation", "audiovisual", "distill") in kinds
    audio = next(row for row in saved["bytes_per_client"] if row["task"] == "train-audio")
    av = next(row for row in saved["bytes_per_client"] if row["task"] == "train-av")
    assert audio["bytes_sent"] < av["bytes_sent"]
    md = (out / "bench.md").read_text()
    for needle in (
        "bare loop",
        "SuperLink start",
        "client set-up",
        "peak memory of the timed run (4 partitions",
        "ffmpeg command line",
        "Where a round goes",
        "Before the first evaluation",
        "Bytes on the wire",
    ):
        assert needle in md
    assert not [p for p in out.iterdir() if p.name.startswith("bench-")]  # the work folder is gone
    import torch

    if not torch.cuda.is_available():
        assert saved["gpu_packing"] == {
            "skipped": "no GPU on this machine (torch.cuda.is_available() is False): GPU packing not measured"
        }
        assert "| GPU packing | no GPU on this machine" in md


def test_the_deployment_rows_name_where_a_deployed_round_goes():
    """The report's deployment rows (measured by `make bench`, minutes of real SuperNodes: not run here)."""
    from mirror_app.bench.report import markdown

    report = json.loads(json.dumps(SAMPLE))
    steps = {name: 0.5 for name, _, _ in ROUND_STEPS} | {"to the first client call (Flower: queue, dispatch)": 2.5}
    report["deployment"] = {
        "nodes": 3,
        "rounds": 3,
        "sim_round_s": 2.0,
        "deploy_round_s": 9.0,
        "ratio": 4.5,
        "deploy_train_s": 1.5,
        "sim_train_s": 1.4,
        "deploy_setup_s": 0.4,
        "deploy_workspace_builds": 6,
        "deploy_calls": 6,
        "clientapp_interpreter_s": 0.1,
        "clientapp_import_s": 1.7,
        "cold_call": {"make_client_s": 0.2, "first_fit_s": 1.9, "second_fit_s": 0.4, "dynamo_import_s": 0.8},
        "deploy_steps": steps | {"round": 9.0},
        "sim_steps": {name: 0.25 for name, _, _ in ROUND_STEPS} | {"round": 2.0},
    }
    md = markdown(report)
    assert (
        "| deployed round / simulated round, 3 clients" in md
        and "4.50x (9.00 s vs 2.00 s) | <= 1.2x | **not met**" in md
    )
    assert "interpreter 0.10 s + importing mirror_app.client_app 1.70 s" in md
    assert "| to the first client call (Flower: queue, dispatch) | 2.500 s | 0.250 s |" in md
    assert "| round | 9.000 s | 2.000 s |" in md
    assert "the first training call takes 1.90 s and the next 0.40 s" in md and "torch._dynamo" in md


def test_a_cold_client_call_is_timed_in_a_fresh_process(data_dir):
    """What a deployed SuperNode's fresh ClientApp process pays: the first training call carries torch's
    first-use costs (importing torch._dynamo, about a second), the next one only the training."""
    from data import load_dataset
    from mirror_app.bench.overhead import cold_call_seconds

    load_dataset("embedded", data_dir)  # the data a deployed node finds prepared (not left to another test)
    out = cold_call_seconds(f"data-dir='{data_dir}' local-epochs=1", partitions=4, threads=1)
    assert set(out) == {"make_client_s", "first_fit_s", "second_fit_s", "dynamo_import_s"}
    assert out["make_client_s"] > 0 and out["second_fit_s"] > 0 and out["dynamo_import_s"] > 0
    assert out["first_fit_s"] > out["second_fit_s"]


def test_setup_cost_counts_only_calls_that_did_not_build_the_workspace():
    import pandas as pd

    clients = pd.DataFrame(
        {
            "status": ["ok", "ok", "ok", "failed"],
            "workspace_built": [1, 0, 0, 0],
            "setup_seconds": [5.0, 0.1, 0.3, 0.0],
            "train_seconds": [1.0, 0.9, 0.7, 0.0],
        }
    )
    c = setup_cost(clients)
    assert c["calls"] == 3 and c["workspace_builds"] == 1 and c["first_call_setup_s"] == 5.0
    assert c["setup_share"] == pytest.approx((0.1 / 1.0 + 0.3 / 1.0) / 2)


@pytest.mark.parametrize(
    "args,match",
    [
        (["--rounds", "1"], "at least 2"),
        (["--videos", "8"], "at least 16"),
        (["--memory-partitions", "10,x"], "comma-separated integers"),
        (["--num-supernodes", "4"], "clients-per-round 10 > --num-supernodes 4"),
        (["--run-config", "lr=-1"], "'lr'"),
    ],
)
def test_bad_input_is_one_line_before_anything_starts(tmp_path, capsys, args, match):
    assert main(["--out", str(tmp_path / "b"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err
    assert not (tmp_path / "b").exists()


SAMPLE = {
    "machine": "2 CPU cores",
    "settings": "tiny",
    "rounds": {
        "rounds": 3,
        "ratio": 1.1,
        "flwr_round_s": 1.1,
        "bare_round_s": 1.0,
        "flwr_client_train_s": 0.9,
        "bytes_per_round": 1e6,
    },
    "startup": {"superlink_s": 3.0, "app_start_s": 20.0, "first_round_s": 10.0},
    "client_setup": {
        "setup_share": 0.01,
        "setup_s_mean": 0.001,
        "train_s_mean": 0.4,
        "workspace_builds": 0,
        "calls": 6,
    },
    "memory": {},
    "memory_main_run": {"partitions": 4, "peak_pss": 2**30, "peak_rss": 2**30},
    "gpu": "not measured",
    "bytes_per_client": [],
}


def test_the_scale_report_states_each_target_against_its_figure(tmp_path):
    from mirror_app.bench.scale import figure, markdown

    report = {
        "clips": 42000,
        "train_clips": 30240,
        "rounds": 4,
        "runs": {
            str(n): {
                "first_eval_s": 8.0 + n / 10000,
                "round1_s": r1,
                "later_s": later,
                "peak_pss_mib": mem,
                "census": "full" if n <= 1000 else "sampled",
                "asked": n if n <= 1000 else 40,
                "census_share": 1.0 if n <= 1000 else 40 / n,
            }
            for n, r1, later, mem in ((100, 7.5, 0.6, 2600), (10000, 9.0, 0.8, 3000), (30000, 12.0, 0.9, 4200))
        },
        "refusal": {"seconds": 9.5, "reason": "10000 SuperNodes but ...", "clients_csv": False, "asked": False},
    }
    md = markdown(report)
    assert "| round 1 at 10,000 / at 100 <= 2.0x | 1.20x | met |" in md
    assert "| later rounds at 10,000 / at 100 <= 1.2x | 1.33x | **not met** |" in md
    assert "| peak PSS at 30,000 / at 100 <= 1.5x | 1.62x | **not met** |" in md
    assert "| 10,000 | sampled (40, 0.4 %) |" in md and "9.5 s; no node asked" in md
    assert figure(report, tmp_path).stat().st_size > 1000


def test_a_clips_flops_count_each_task_on_the_runs_own_model():
    from mirror_app.bench.paper import clip_flops
    from strategies import resolve_config

    cfg, _ = resolve_config({"strategy": "modality-mirror"})
    flops = clip_flops(cfg, ((100, 64), (3, 32, 32)), 20)
    assert set(flops) == {"train-av", "train-audio", "distill", "evaluation"}
    # the audiovisual step trains both encoders; distillation adds the frozen teacher's forward to the audio step
    assert 0 < flops["train-audio"] < flops["distill"] < flops["train-av"]
    longer = clip_flops(cfg, ((200, 64), (3, 32, 32)), 20)  # twice the audio frames: more work for every task
    assert all(longer[k] > flops[k] for k in flops)
