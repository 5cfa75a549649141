"""The Table 1 sweep: planning, resume, failures, table and figures (with a fake runner, no Flower)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mirror_app.studies.runs import Cell, SweepError, run_cells
from mirror_app.studies.sweep import figures, main, plan, table1

CLASSES = ["playing congas", "drumming", "typing"]


def fake_runner(calls: list, fail: set = frozenset(), crash: set = frozenset(), old: set = frozenset()):
    """Writes a finished run folder like the ServerApp does; fails or crashes for chosen keys. Runs in ``old``
    write a summary.json from before the evaluation protocol (``final`` only)."""

    def run(cell: Cell, output_dir: Path, log: Path) -> bool:
        calls.append(cell.key)
        log.write_text("log of " + cell.key)
        if cell.key in crash:
            raise RuntimeError("boom")
        run_dir = output_dir / "20260101-000000-run1"
        run_dir.mkdir()
        score = {"modality-mirror": 0.5, "harmony": 0.4}.get(cell.method, 0.3) + 0.1 * cell.rate + 0.01 * cell.seed
        mb = {"harmony": 2.0}.get(cell.method, 1.0)  # MB per round (to + from clients)
        pd.DataFrame(
            {
                "round": [0, 1, 2],
                "audio_top1": [0.05, score / 2, score],
                "bytes_to_clients": [0, 6e5 * mb, 6e5 * mb],
                "bytes_from_clients": [0, 4e5 * mb, 4e5 * mb],
            }
        ).to_csv(run_dir / "metrics.csv")
        pd.DataFrame([{"round": 2, "class": c, "f1": score * (i + 1) / 3} for i, c in enumerate(CLASSES)]).to_csv(
            run_dir / "per_class_f1.csv", index=False
        )
        if cell.key in fail:
            return False  # the run died before writing summary.json
        summary = {"final": {"audio_top1": score, "audio_top5": 0.9, "audio_macro_f1": score - 0.1, "av_top1": 0.8}}
        if cell.key not in old:  # best dev at round 1, where test top-1 was 5 points above the last round's
            summary |= {
                "last": {"round": 2, "audio_top1": score, "audio_top5": 0.9, "audio_macro_f1": score - 0.1},
                "last5_mean": {
                    "rounds": 2,
                    "from_round": 1,
                    "to_round": 2,
                    "audio_top1": score - 0.01,
                    "audio_top5": 0.9,
                    "audio_macro_f1": score - 0.1,
                },
                "best_dev": {
                    "round": 1,
                    "phase": "train",
                    "dev_audio_top1": 0.7,
                    "audio_top1": score + 0.05,
                    "audio_top5": 0.95,
                    "audio_macro_f1": score - 0.05,
                    "av_top1": 0.8,
                },
                "collapse": {
                    "audio": {"last_round_collapsed": cell.method == "unifl", "rounds": []},
                    "av": {"last_round_collapsed": False, "rounds": []},
                },
            }
            if cell.method == "modality-mirror":  # phase 1 is the paper's MultiFL; the headline is phase 2's
                p1 = {"audio_top1": score - 0.2, "audio_top5": 0.6, "audio_macro_f1": score - 0.3}
                summary |= {
                    "schedule": [{"phase": "modality-aware-fl", "rounds": 1}, {"phase": "distillation", "rounds": 1}],
                    "best_dev_all_rounds": {"round": 1, "audio_top1": score + 0.1, "audio_top5": 0.5},
                    "phases": {
                        "modality-aware-fl": {
                            "round": 1,
                            **p1,
                            "best_dev": {"round": 1, **p1, "audio_top1": score - 0.15},
                        },
                        "distillation": {"round": 2, "audio_top1": score, "best_dev": {"round": 2}},
                    },
                }
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return True

    return run


def section(md: str, title: str) -> list[str]:
    """The lines of one protocol's table in table1.md."""
    lines = md.splitlines()
    start = lines.index(f"## {title}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start:end] if line.startswith("|")]


def test_plan_covers_the_grid_and_the_figure3_rates():
    cells = plan(["modality-mirror", "harmony"], [0.1, 0.3], [0, 1], fig3_rates=[0.1, 0.9])
    assert len(cells) == 2 * 2 * 2 + 2  # + ModalityMirror at 0.9 for both seeds
    assert Cell("modality-mirror", 0.9, 1) in cells and Cell("harmony", 0.9, 0) not in cells


@pytest.mark.parametrize(
    "methods,rates,seeds,match",
    [
        (["fedfoo"], [0.1], [0], "method 'fedfoo' is unknown"),
        ([], [0.1], [0], "empty sweep"),
        (["unifl"], [], [0], "empty sweep"),
        (["unifl"], [1.0], [0], "outside"),
    ],
)
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
    assert md.index("## Best dev (headline)") < md.index("## Last round")
    best, last = section(md, "Best dev (headline)"), section(md, "Last round")
    for table in (best, last):
        assert table[0] == "| method | 0.1 | 0.3 | MB / round |"
    mm_last = next(line for line in last if line.startswith("| ModalityMirror"))
    # mean of 0.51/0.52 and 0.53/0.54 +- std / top-5 / macro-F1
    assert "| 51.5 +- 0.5 / 90.0 / 41.5 |" in mm_last and "| 53.5 +- 0.5 / 90.0 / 43.5 |" in mm_last
    mm_best = next(line for line in best if line.startswith("| ModalityMirror"))
    assert "| 56.5 +- 0.5 / 95.0 / 46.5 |" in mm_best and "| 58.5 +- 0.5 / 95.0 / 48.5 |" in mm_best
    assert mm_best.endswith("| 1.00 |") and mm_last.endswith("| 1.00 |")  # round 0 (no traffic) is not counted
    assert next(line for line in last if line.startswith("| Harmony")).endswith("| 2.00 |")
    assert "n = 2 seeds" in md and "round whose dev audio top-1 is highest" in md
    made = figures(runs, tmp_path, [0.1, 0.3])
    names = {p.name for p in made}
    assert names == {"fig3_missing_rate.png", "fig2_per_class_f1.png", "curves.png"}
    assert all(p.stat().st_size > 1000 for p in made)


def test_runs_csv_has_last_best_dev_and_last5_columns(tmp_path):
    cells = plan(["modality-mirror", "unifl"], [0.3], [0])
    run_cells(cells, tmp_path, fake_runner([]))
    runs = pd.read_csv(tmp_path / "runs.csv").set_index("method")
    mm = runs.loc["modality-mirror"]
    assert mm["audio_top1"] == pytest.approx(0.53) and mm["best_dev_audio_top1"] == pytest.approx(0.58)
    assert mm["best_dev_round"] == 1 and mm["best_dev_dev_audio_top1"] == pytest.approx(0.7)
    assert mm["best_dev_audio_macro_f1"] == pytest.approx(0.48) and mm["best_dev_av_top1"] == pytest.approx(0.8)
    assert mm["last5_audio_top1"] == pytest.approx(0.52) and mm["last5_rounds"] == 2
    assert not mm["audio_collapsed"] and runs.loc["unifl", "audio_collapsed"]


def test_table1_reports_modality_mirror_within_phase_2_beside_all_rounds_and_its_phase_1_as_multifl(tmp_path):
    cells = plan(["modality-mirror", "multifl"], [0.3], [0])
    runs = run_cells(cells, tmp_path, fake_runner([]))
    mm = runs.set_index("method").loc["modality-mirror"]
    assert mm["phase1_best_dev_audio_top1"] == pytest.approx(0.38) and mm["phase1_audio_top1"] == pytest.approx(0.33)
    assert mm["all_best_dev_audio_top1"] == pytest.approx(0.63)
    md = table1(runs, [0.3])
    best, last = section(md, "Best dev (headline)"), section(md, "Last round")
    assert "| ModalityMirror | 58.0 / 95.0 / 48.0 | 1.00 |" in best  # the headline: best dev within phase 2
    assert "| ModalityMirror, best dev over all rounds | 63.0 / 50.0 / n/a | 1.00 |" in best
    assert "| MultiFL (ModalityMirror's phase 1, same run) | 38.0 / 60.0 / 23.0 | 1.00 |" in best
    assert "| MultiFL (ModalityMirror's phase 1, same run) | 33.0 / 60.0 / 23.0 | 1.00 |" in last  # end of phase 1
    assert "| MultiFL (same total budget) | 38.0 / 95.0 / 28.0 | 1.00 |" in best
    assert not any("over all rounds" in line for line in last)  # the all-rounds search is a best-dev rule only
    assert "best dev is chosen among the rounds of its distillation phase" in md


def test_runs_without_the_protocol_keys_are_still_reported(tmp_path):
    cells = plan(["modality-mirror", "harmony"], [0.3], [0, 1])
    old = {"modality-mirror-mr0.3-s1", "harmony-mr0.3-s0", "harmony-mr0.3-s1"}  # made before best dev existed
    runs = run_cells(cells, tmp_path, fake_runner([], old=old))
    assert runs["status"].eq("ok").all()
    assert runs.loc[runs["key"] == "harmony-mr0.3-s0", "best_dev_audio_top1"].isna().all()
    md = table1(runs, [0.3])
    best, last = section(md, "Best dev (headline)"), section(md, "Last round")
    assert "| ModalityMirror | 58.0 / 95.0 / 48.0 (n = 1) | 1.00 |" in best  # seed 0 alone has a best dev
    assert "| Harmony | n/a | 2.00 |" in best
    assert "| ModalityMirror | 53.5 +- 0.5 / 90.0 / 43.5 | 1.00 |" in last
    assert "| Harmony | 43.5 +- 0.5 / 90.0 / 33.5 | 2.00 |" in last


def test_a_sweep_folder_refuses_runs_made_with_other_settings(tmp_path):
    """A folder whose runs keep their resolved config must agree on the federation size only (each run is checked
    on its own); one holding a run without config.json (an older run) must agree on the run-config string too."""
    from mirror_app.studies.runs import SweepError, check_settings

    check_settings(tmp_path, {"run-config": "num-server-rounds=6", "num-supernodes": 20})
    check_settings(tmp_path, {"run-config": "num-server-rounds=6", "num-supernodes": 20})  # same: resume
    check_settings(tmp_path, {"run-config": "num-server-rounds=30", "num-supernodes": 20})  # runs checked one by one
    with pytest.raises(SweepError, match="holds runs made with"):
        check_settings(tmp_path, {"run-config": "num-server-rounds=6", "num-supernodes": 100})
    old = tmp_path / "runs" / "multifl-mr0.3-s0"
    old.mkdir(parents=True)
    (old / "summary.json").write_text("{}")  # a finished run from before runs kept config.json
    with pytest.raises(SweepError, match="holds runs made with"):
        check_settings(tmp_path, {"run-config": "num-server-rounds=30", "num-supernodes": 20})


def test_a_finished_run_or_record_under_another_resolved_config_is_refused_naming_the_keys(tmp_path):
    """The resolved config (defaults, preset, overrides, the method's fixed settings) decides whether a finished
    run or a record is the cell's: a changed default is caught although the run-config string is the same."""
    from mirror_app.studies.runs import SweepError, resolved_config, restore_records

    cell = Cell("multifl", 0.3, 0)
    run_config = "num-server-rounds=4 distill-rounds=2"
    expect = {"multifl-mr0.3-s0": resolved_config(cell, run_config)}
    assert expect["multifl-mr0.3-s0"]["strategy"] == "multifl" and "output-dir" not in expect["multifl-mr0.3-s0"]
    assert resolved_config(Cell("multifl-av-head", 0.3, 0), run_config)["av-trains-audio-head"] is True

    def writer(config: dict):
        def run(c: Cell, output_dir: Path, log: Path) -> bool:
            log.write_text("ok")
            (output_dir / "run").mkdir()
            (output_dir / "run" / "config.json").write_text(json.dumps(config | {"output-dir": str(output_dir)}))
            (output_dir / "run" / "summary.json").write_text("{}")
            return True

        return run

    calls: list = []
    run_cells([cell], tmp_path / "a", writer(expect[cell.key]), lambda c: expect[c.key])
    run_cells([cell], tmp_path / "a", fake_runner(calls), lambda c: expect[c.key])  # the same config: resumed
    assert calls == []
    changed = expect[cell.key] | {"distill-divergence": "reverse", "lr": 0.01}
    run_cells([cell], tmp_path / "b", writer(changed), lambda c: expect[c.key])
    with pytest.raises(SweepError, match=r"another resolved config .*distill-divergence: 'reverse' -> 'forward', lr"):
        run_cells([cell], tmp_path / "b", fake_runner(calls), lambda c: expect[c.key])
    assert calls == []  # refused before anything ran
    # a key added to the config after a run was made counts as unchanged when the cell expects its default ...
    older = {k: v for k, v in expect[cell.key].items() if k != "distill-teacher"}
    run_cells([cell], tmp_path / "d", writer(older), lambda c: expect[c.key])
    run_cells([cell], tmp_path / "d", fake_runner(calls), lambda c: expect[c.key])
    assert calls == []
    # ... and as changed when the cell expects another value
    kd = Cell("multifl", 0.3, 0, "distill-objective='kd'", "kd")
    expect[kd.key] = resolved_config(kd, run_config)
    run_cells([kd], tmp_path / "e", writer({k: v for k, v in expect[kd.key].items() if k != "distill-objective"}), None)
    with pytest.raises(SweepError, match="distill-objective: '<absent>' -> 'kd'"):
        run_cells([kd], tmp_path / "e", fake_runner(calls), lambda c: expect[c.key])
    record = tmp_path / "records" / cell.key
    record.mkdir(parents=True)
    (record / "config.json").write_text(json.dumps(changed))
    (record / "summary.json").write_text("{}")
    with pytest.raises(SweepError, match="the record .* another resolved config"):
        restore_records([cell], tmp_path / "c", tmp_path / "records", lambda c: expect[c.key])
    assert not (tmp_path / "c" / "runs" / cell.key).exists()


def test_a_key_whose_default_changed_is_read_at_the_default_it_was_added_with(tmp_path):
    """A run made before ``classifier`` existed ran linear heads: its record still counts as a linear-heads run
    (a preset that pins linear), and as changed for a cell that expects today's default; its recipe says linear."""
    from mirror_app.core.config import BEFORE_KEY, as_recorded, defaults
    from mirror_app.studies.recipes import recipe_table
    from mirror_app.studies.runs import config_changes, resolved_config

    table = defaults()
    assert set(BEFORE_KEY) <= set(table)
    assert {k for k in BEFORE_KEY if table[k] != BEFORE_KEY[k]} == set(BEFORE_KEY)  # only keys whose default changed
    full = resolved_config(Cell("multifl", 0.3, 0), "")  # today's defaults
    for key, first in BEFORE_KEY.items():
        older = {k: v for k, v in full.items() if k != key}  # made before the key existed
        assert config_changes(older, full | {key: first}) == []
        assert config_changes(older, full) == [key]
        assert config_changes(full, full) == []
    older = {k: v for k, v in full.items() if k not in BEFORE_KEY}
    assert as_recorded(older)["classifier"] == "linear" and as_recorded({"classifier": "etf"})["classifier"] == "etf"
    linear, today = recipe_table({"multifl": as_recorded(older)}), recipe_table({"multifl": older})
    assert "| linear | cross-entropy |" in linear and "| etf | cross-entropy, fedlc |" in today
    # the readers of records: the recipes' and the pages' config tables
    from mirror_app.studies.recipes import recorded_configs
    from mirror_app.studies.report import config_lines

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(older))
    assert recorded_configs(tmp_path, {"multifl": ["old"]})["multifl"]["classifier"] == "linear"
    lines = config_lines(tmp_path, ["old"])
    assert 'classifier = "linear"' in lines and 'loss-calibration = "none"' in lines


def test_report_only_tables_finished_runs_and_marks_the_rest_not_run(tmp_path):
    cells = plan(["modality-mirror", "harmony"], [0.3], [0, 1])
    calls: list = []
    assert [c.seed for c in cells] == [0, 0, 1, 1]  # seed-major: a stopped sweep has whole seeds
    run_cells([c for c in cells if c.method == "modality-mirror"], tmp_path, fake_runner(calls))  # half finished
    rc = main(
        [
            "--out",
            str(tmp_path),
            "--methods",
            "modality-mirror,harmony",
            "--rates",
            "0.3",
            "--seeds",
            "0,1",
            "--fig3-rates",
            "",
            "--report-only",
        ]
    )
    assert rc == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["status"]) == ["not-run", "not-run", "ok", "ok"]
    table = (tmp_path / "table1.md").read_text()
    assert "| ModalityMirror |" in table and "| Harmony | n/a |" in table
    assert table.count("| Harmony | n/a | n/a |") == 2  # in both protocols' tables


def test_mb_per_round_counts_rounds_not_rows(tmp_path):
    """With eval-every 5 a metrics row holds the bytes of 5 rounds: MB / round divides by the rounds."""
    from mirror_app.studies.runs import _mb_per_round

    cell = Cell("multifl", 0.3, 0)
    run = tmp_path / "runs" / cell.key
    run.mkdir(parents=True)
    pd.DataFrame(
        {"round": [0, 5, 10, 12], "bytes_to_clients": [0, 3e6, 3e6, 1.2e6], "bytes_from_clients": [0, 2e6, 2e6, 0.8e6]}
    ).to_csv(run / "metrics.csv", index=False)
    assert _mb_per_round(tmp_path, cell) == pytest.approx(1.0)
