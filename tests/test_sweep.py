"""The Table 1 sweep: planning, resume, failures, table and figures (with a fake runner, no Flower)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mirror_app.sweep import Cell, SweepError, figures, main, plan, run_cells, table1

CLASSES = ["playing congas", "drumming", "typing"]


def fake_runner(calls: list, fail: set = frozenset(), crash: set = frozenset()):
    """Writes a finished run folder like the ServerApp does; fails or crashes for chosen keys."""

    def run(cell: Cell, output_dir: Path, log: Path) -> bool:
        calls.append(cell.key)
        log.write_text("log of " + cell.key)
        if cell.key in crash:
            raise RuntimeError("boom")
        run_dir = output_dir / "20260101-000000-run1"
        run_dir.mkdir()
        score = {"modality-mirror": 0.5, "harmony": 0.4}.get(cell.method, 0.3) + 0.1 * cell.rate + 0.01 * cell.seed
        mb = {"harmony": 2.0}.get(cell.method, 1.0)  # MB per round (to + from clients)
        pd.DataFrame({"round": [0, 1, 2], "audio_top1": [0.05, score / 2, score], "bytes_to_clients": [0, 6e5 * mb, 6e5 * mb],
                      "bytes_from_clients": [0, 4e5 * mb, 4e5 * mb]}).to_csv(run_dir / "metrics.csv")
        pd.DataFrame([{"round": 2, "class": c, "f1": score * (i + 1) / 3} for i, c in enumerate(CLASSES)]).to_csv(
            run_dir / "per_class_f1.csv", index=False)
        if cell.key in fail:
            return False  # the run died before writing summary.json
        (run_dir / "summary.json").write_text(json.dumps({"final": {"audio_top1": score, "audio_top5": 0.9,
                                                                    "audio_macro_f1": score, "av_top1": 0.8}}))
        return True

    return run


def test_plan_covers_the_grid_and_the_figure3_rates():
    cells = plan(["modality-mirror", "harmony"], [0.1, 0.3], [0, 1], fig3_rates=[0.1, 0.9])
    assert len(cells) == 2 * 2 * 2 + 2  # + ModalityMirror at 0.9 for both seeds
    assert Cell("modality-mirror", 0.9, 1) in cells and Cell("harmony", 0.9, 0) not in cells


@pytest.mark.parametrize("methods,rates,seeds,match", [
    (["fedfoo"], [0.1], [0], "method 'fedfoo' is unknown"),
    ([], [0.1], [0], "empty sweep"),
    (["unifl"], [], [0], "empty sweep"),
    (["unifl"], [1.0], [0], "outside"),
])
def test_bad_sweeps_fail_at_once(methods, rates, seeds, match):
    with pytest.raises(SweepError, match=match):
        plan(methods, rates, seeds)


def test_main_rejects_bad_input_before_starting_anything(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "o"), "--methods", "nope"]) == 2
    assert "method 'nope' is unknown" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_resume_skips_finished_runs_and_records_failures(tmp_path):
    cells = plan(["modality-mirror", "harmony", "unifl"], [0.1, 0.3], [0, 1])
    calls: list = []
    broken = {"unifl-mr0.1-s0"}
    crashed = {"harmony-mr0.3-s1"}
    runs = run_cells(cells, tmp_path, fake_runner(calls, fail=broken, crash=crashed))
    assert len(calls) == len(cells)
    failed = set(runs.loc[runs["status"] == "failed", "key"])
    assert failed == broken | crashed
    assert all(Path(p).is_file() for p in runs.loc[runs["status"] == "failed", "log"])
    assert not (tmp_path / "runs" / "unifl-mr0.1-s0").exists()  # nothing half-done is kept as finished

    calls.clear()  # an interrupted or partly failed sweep resumes: only the unfinished cells run again
    runs = run_cells(cells, tmp_path, fake_runner(calls))
    assert sorted(calls) == sorted(broken | crashed)
    assert (runs["status"] == "ok").all()
    assert pd.read_csv(tmp_path / "runs.csv")["status"].eq("ok").all()


def test_table_and_figures(tmp_path):
    cells = plan(["modality-mirror", "harmony", "multifl"], [0.1, 0.3], [0, 1], fig3_rates=[0.5])
    runs = run_cells(cells, tmp_path, fake_runner([]))
    md = table1(runs, [0.1, 0.3])
    lines = md.splitlines()
    assert lines[0] == "| method | 0.1 | 0.3 | MB / round |"
    mm = next(line for line in lines if line.startswith("| ModalityMirror"))
    assert "51.5 +- 0.5 (90.0)" in mm and "53.5 +- 0.5 (90.0)" in mm  # mean of 0.51/0.52 and 0.53/0.54
    assert mm.endswith("| 1.00 |")  # round 0 (no traffic) is not a round of training
    assert next(line for line in lines if line.startswith("| Harmony")).endswith("| 2.00 |")
    assert "n = 2 seeds" in md
    made = figures(runs, tmp_path, [0.1, 0.3])
    names = {p.name for p in made}
    assert names == {"fig3_missing_rate.png", "fig2_per_class_f1.png", "curves.png"}
    assert all(p.stat().st_size > 1000 for p in made)


def test_a_sweep_folder_refuses_runs_made_with_other_settings(tmp_path):
    from mirror_app.sweep import SweepError, check_settings

    check_settings(tmp_path, {"run-config": "num-server-rounds=6", "num-supernodes": 20})
    check_settings(tmp_path, {"run-config": "num-server-rounds=6", "num-supernodes": 20})  # same: resume
    with pytest.raises(SweepError, match="holds runs made with"):
        check_settings(tmp_path, {"run-config": "num-server-rounds=30", "num-supernodes": 20})


def test_report_only_tables_finished_runs_and_marks_the_rest_not_run(tmp_path):
    cells = plan(["modality-mirror", "harmony"], [0.3], [0, 1])
    calls: list = []
    run_cells(cells[:2], tmp_path, fake_runner(calls))  # half the sweep finished
    rc = main(["--out", str(tmp_path), "--methods", "modality-mirror,harmony", "--rates", "0.3", "--seeds", "0,1",
               "--fig3-rates", "", "--report-only"])
    assert rc == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["status"]) == ["not-run", "not-run", "ok", "ok"]
    table = (tmp_path / "table1.md").read_text()
    assert "| ModalityMirror |" in table and "| Harmony | n/a |" in table
