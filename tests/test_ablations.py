"""Ablations (teacher strength, drift, Fig. 2 by sound source) and the sweep's presets, with fake runs (no Flower)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mirror_app.deploy.preflight import parse_pairs
from mirror_app.studies import ablations, readings
from mirror_app.studies.runs import Cell, SweepError, merged_run_config, override_pairs, run_cells

ROOT = Path(__file__).resolve().parents[1]


def test_preset_becomes_checked_pairs_that_the_command_line_overrides(tmp_path):
    pairs = merged_run_config(str(ROOT / "conf" / "paper.toml"), "num-server-rounds=7")
    assert "num-server-rounds=7" in pairs and "lr=0.0005" in pairs and "strategy" not in pairs  # per-cell key dropped
    with pytest.raises(SweepError, match="'lr' = 0.0 is invalid"):
        merged_run_config(str(ROOT / "conf" / "paper.toml"), "lr=0")
    assert "absent.pt" in merged_run_config("", f"audio-pretrained='{tmp_path / 'absent.pt'}'")  # checked when run
    with pytest.raises(SweepError, match="run config key 'seed' is given twice"):
        merged_run_config("", "seed=1 seed=2")
    with pytest.raises(SweepError, match="sets strategy, missing-rate, seed, output-dir"):
        merged_run_config("", "seed=3")
    with pytest.raises(SweepError, match="no such file"):
        merged_run_config(str(tmp_path / "none.toml"), "")
    assert override_pairs("a=1 b='x y'", "b='z' c=3") == "a=1 b='z' c=3"


def test_the_laptop_preset_is_the_papers_local_training():
    import tomllib

    laptop = tomllib.loads((ROOT / "conf" / "paper-laptop.toml").read_text())
    paper = tomllib.loads((ROOT / "conf" / "paper.toml").read_text())
    for key in ("local-epochs", "lr", "dirichlet-alpha", "clients-per-round"):
        assert laptop[key] == paper[key], key
    assert laptop["num-server-rounds"] < paper["num-server-rounds"]
    # make pretrain's encoders wherever DATA_DIR puts them, not a path under one home directory
    assert laptop["audio-pretrained"] == laptop["video-pretrained"] == "auto"


def test_the_heads_preset_is_the_laptop_preset_with_the_screened_remedies_and_resolves():
    import tomllib

    from mirror_app.core.config import RunConfig
    from mirror_app.studies.headdrift import BEST_PAIR, remedy_config

    laptop = tomllib.loads((ROOT / "conf" / "paper-laptop.toml").read_text())
    heads = tomllib.loads((ROOT / "conf" / "paper-laptop-heads.toml").read_text())
    from mirror_app.core.config import defaults

    changed = {k: v for k, v in heads.items() if laptop.get(k) != v}
    assert set(laptop) == set(heads)
    _, config = remedy_config(BEST_PAIR)  # the pair the screening found, as its cells ran it
    screened = dict(pair.split("=", 1) for pair in config.split())
    assert changed == {k: v.strip("'") for k, v in screened.items() if v.strip("'") not in ("linear", "none", "fedavg")}
    assert {k: laptop[k] for k in changed} == {"classifier": "linear", "loss-calibration": "none"}  # the paper's
    cfg = RunConfig.from_dict({k: v for k, v in heads.items() if not k.endswith("-pretrained")})
    assert (cfg.classifier, cfg.loss_calibration) == ("etf", "fedlc")
    assert {k: defaults()[k] for k in changed} == changed  # the app's defaults are the pair (make run runs it)


def test_a_study_refuses_to_run_when_auto_finds_no_encoder(data_dir, tmp_path):
    """'auto' would start a cell from random weights where make pretrain has not run: a study, whose cells must all
    start from the same encoders, stops before running any with one line naming the folder and the fix."""
    from mirror_app.core.config import RunConfig

    RunConfig.from_dict({"data-dir": str(data_dir)}).load_dataset()  # the embedded dataset, generated once
    bare = tmp_path / "data"  # the dataset without any pretrained encoder beside it
    bare.mkdir()
    for entry in Path(data_dir).iterdir():
        if entry.name.startswith("embedded"):
            (bare / entry.name).symlink_to(entry)
    res = subprocess.run(
        [sys.executable, "-m", "mirror_app.studies.sweep", "--preset", "conf/paper-laptop.toml", "--methods",
         "multifl", "--rates", "0.3", "--seeds", "0", "--fig3-rates", "0.3", "--data-dir", str(bare),
         "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "'audio-pretrained' = 'auto' finds no encoder in" in err[0]
    assert "mirror_app.model.pretrain" in err[0] and str(bare / "pretrained") in err[0]
    assert not (tmp_path / "out" / "runs").exists()


def test_teacher_and_drift_plans():
    cells = readings.teacher_cells("num-server-rounds=40 lr=0.0005", 0.3, [0, 1])
    rounds = sorted({int(parse_pairs(c.config)["num-server-rounds"]) for c in cells})
    assert rounds == [10, 20, 40] and len(cells) == 3 * 2 * 2
    scratch = [c for c in cells if c.tag.endswith("scratch")]
    assert scratch and all("audio-pretrained='none'" in c.config for c in scratch)
    assert len({c.key for c in cells}) == len(cells)  # every variant has its own run folder
    drift = readings.drift_cells(0.3, [0])
    assert {(c.method, c.config) for c in drift} >= {
        ("harmony", "local-epochs=1 dirichlet-alpha=0.1"),
        ("multifl", "local-epochs=5 dirichlet-alpha=1.0"),
    }
    assert len(drift) == 3 * 2 * 2


def fake(teacher_of: dict):
    """A finished run: teacher AV top-1 and student audio top-1 grow with the phase-1 length."""

    def run(cell: Cell, output_dir: Path, log: Path) -> bool:
        log.write_text("ok")
        r = int(parse_pairs(cell.config).get("num-server-rounds", 0))
        teacher = teacher_of.get(r, 0.5) + (0.1 if cell.tag.endswith("-pre") else 0.0)
        run_dir = output_dir / "run"
        run_dir.mkdir()
        pd.DataFrame(
            {
                "round": [r, r + 1, r + 2],
                "phase": ["modality-aware-fl", "distillation", "distillation"],
                "audio_top1": [0.1, teacher / 2 + 0.01, teacher / 2],
                "dev_audio_top1": [0.95, 0.9, 0.5],
            }
        ).to_csv(run_dir / "metrics.csv", index=False)  # phase 1's dev is higher: not a student
        (run_dir / "summary.json").write_text(
            json.dumps(
                {
                    "final": {"av_top1": teacher, "audio_top1": teacher / 2},
                    "phases": {
                        "modality-aware-fl": {"round": r, "audio_top1": 0.1},
                        "distillation": {"audio_top1": 0.2},
                    },
                    "best_dev": {"round": r + 1, "audio_top1": teacher / 2 + 0.01},
                }
            )
        )
        return True

    return run


def test_teacher_table_pairs_student_and_teacher(tmp_path):
    cells = readings.teacher_cells("num-server-rounds=8", 0.3, [0])
    run_cells(cells, tmp_path, fake({2: 0.3, 4: 0.5, 8: 0.7}))
    markdown, frame = readings.teacher_table(cells, tmp_path)
    rows = [line for line in markdown.splitlines() if line.startswith("| 8 | pretrained")]
    assert rows == ["| 8 | pretrained | 80.0 | 10.0 | 41.0 | 40.0 | 31.0 |"]
    assert len(frame) == 6 and readings.teacher_figure(frame, tmp_path).is_file()


def test_fig2_groups_classes_by_sound_source(tmp_path):
    classes = ["playing congas", "drumming", "playing tabla", "typing"]
    rows = []
    for method, f1 in (
        ("modality-mirror", [0.6, 0.5, 0.4, 0.9]),
        ("multifl", [0.3, 0.3, 0.3, 0.95]),
        ("harmony", [0.5, 0.5, 0.5, 0.9]),
    ):
        key = f"{method}-mr0.3-s0"
        run = tmp_path / "runs" / key
        run.mkdir(parents=True)
        pd.DataFrame(
            [{"round": r, "class": c, "f1": v if r == 3 else 0.0} for r in (3, 5) for c, v in zip(classes, f1)]
        ).to_csv(run / "per_class_f1.csv", index=False)
        (run / "summary.json").write_text(json.dumps({"best_dev": {"round": 3}}))
        rows.append({"method": method, "missing_rate": 0.3, "seed": 0, "key": key, "status": "ok"})
    pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)
    markdown, figure = readings.fig2(tmp_path, 0.3)
    assert "| membrane (shared) | drumming | +20.0 | +0.0 |" in markdown  # at the best-dev round, not the last
    assert "| clicks | typing | -5.0 | +0.0 |" in markdown
    assert "| classes sharing a sound source | mean | +20.0 | +0.0 |" in markdown
    assert figure.is_file()
    with pytest.raises(SweepError, match="no finished modality-mirror run at missing rate 0.5"):
        readings.fig2(tmp_path, 0.5)


def test_ablation_command_rejects_bad_input_before_starting(tmp_path, capsys):
    assert ablations.main(["teacher", "--out", str(tmp_path / "o"), "--preset", str(tmp_path / "none.toml")]) == 2
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_skew_plan_and_table(tmp_path):
    cells = readings.skew_cells(0.3, [0])
    assert len(cells) == 8 and len({c.key for c in cells}) == 8 and {c.method for c in cells} == {"multifl"}
    pre = [c for c in cells if "-pre-" in c.tag]
    assert len(pre) == 4 and all("audio-pretrained='auto'" in c.config for c in pre)

    def run(cell: Cell, output_dir: Path, log: Path) -> bool:
        log.write_text("ok")
        good = "-pre-rs" in cell.tag
        (output_dir / "run").mkdir()
        (output_dir / "run" / "summary.json").write_text(
            json.dumps(
                {
                    "final": {
                        "av_top1": 0.7 if good else 0.1,
                        "av_majority_share": 0.2 if good else 1.0,
                        "audio_majority_share": 0.5,
                    },
                    "best_dev": {"audio_top1": 0.2},
                    "collapse": {"av": {"rounds": [] if good else [3, 4]}},
                }
            )
        )
        return True

    run_cells(cells, tmp_path, run)
    markdown, _ = readings.skew_table(cells, tmp_path)
    assert "| 5 of 20 | pretrained | restricted softmax | 70.0 | 20 | 20.0 | 50 | 0 |" in markdown
    assert "| 10 of 20 | from scratch | cross-entropy | 10.0 | 100 | 20.0 | 50 | 2 |" in markdown


def fidelity_fake(cell: Cell, output_dir: Path, log: Path) -> bool:
    """A finished run whose scores encode its settings: reverse +2 points, the AV audio head +10, rate x 10."""
    log.write_text("ok")
    p = parse_pairs(cell.config)
    head = p.get("av-trains-audio-head") == "true" or cell.method == "multifl-av-head"
    base = 0.2 + cell.rate / 10 + 0.01 * cell.seed + (0.1 if head else 0)
    student = base + (0.02 if "reverse" in p.get("distill-divergence", "") else 0)
    phase1 = {"round": 8, "audio_top1": base - 0.05, "best_dev": {"round": 6, "audio_top1": base - 0.04}}
    run_dir = output_dir / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "final": {"audio_top1": student},
                "best_dev": {"round": 10, "audio_top1": student, "audio_top5": 0.6, "audio_macro_f1": 0.1},
                "best_dev_all_rounds": {"round": 10, "audio_top1": student + 0.001},
                "schedule": [{"phase": "modality-aware-fl", "rounds": 8}, {"phase": "distillation", "rounds": 2}],
                "phases": {"modality-aware-fl": phase1},
            }
        )
    )
    return True


def test_fidelity_plan_and_table_report_every_reading_with_both_rules(tmp_path):
    cells = readings.fidelity_cells([0.1, 0.5], [0, 1])
    assert len(cells) == 2 * 2 * 7 and len({c.key for c in cells}) == len(cells)
    # the default and registered-method cells carry Table 1's keys (and the distillation study's)
    assert {"modality-mirror-mr0.1-s0", "multifl-av-head-mr0.1-s0", "modality-mirror-mr0.1-s0-kl-headon"} <= {
        c.key for c in cells
    }
    assert sum(c.method == "harmony" for c in cells) == 4  # once per rate and seed
    mm = [parse_pairs(c.config) for c in cells if c.method == "modality-mirror"]
    settings = {(p.get("distill-divergence", "'forward'"), p.get("av-trains-audio-head", "false")) for p in mm}
    assert settings == {
        ("'forward'", "false"),
        ("'forward'", "true"),
        ("'reverse'", "false"),
        ("'reverse'", "true"),
    }
    run_cells(cells, tmp_path, fidelity_fake)
    md, runs = readings.fidelity_table(cells, tmp_path, [0.1, 0.5])
    lines = md.splitlines()

    def row(*start: str) -> str:
        prefix = "| " + " | ".join(start) + " |"
        (line,) = [line for line in lines if line.startswith(prefix)]
        return line

    # mean over seeds 0 and 1 (+0.5 points), std 0.5
    assert row("ModalityMirror", "forward", "no", "best dev within phase 2").endswith(
        "| 21.5 +- 0.5 / 60.0 / 10.0 | 25.5 +- 0.5 / 60.0 / 10.0 |"
    )
    assert row("ModalityMirror", "reverse", "yes", "best dev within phase 2").startswith(
        "| ModalityMirror | reverse | yes | best dev within phase 2 | 33.5 +- 0.5"
    )
    assert "| 21.6 +- 0.5 / n/a / n/a |" in row("ModalityMirror", "forward", "no", "best dev over all rounds")
    assert row("MultiFL (ModalityMirror's phase 1, same run)", "-", "yes", "best dev within phase 1").endswith(
        "| 27.5 +- 0.5 / n/a / n/a | 31.5 +- 0.5 / n/a / n/a |"
    )
    assert "| 31.5 +- 0.5 / 60.0 / 10.0 |" in row("MultiFL (same total budget)", "-", "yes", "best dev")
    assert row("Harmony", "-", "-", "best dev")
    assert "agrees in 8 of 8 runs" in md  # forward and reverse runs share phase 1
    assert (runs["status"] == "ok").all()


def test_robust_plan_covers_every_attack_fraction_and_aggregator_and_tables_them(tmp_path):
    from mirror_app.studies import security

    cells = security.robust_cells(0.3, [0, 1])
    per_seed = len(security.AGGREGATORS) * (1 + len(security.ATTACKS) * len(security.FRACTIONS))
    assert len(cells) == 2 * per_seed and len({c.key for c in cells}) == len(cells)
    assert [c.seed for c in cells] == sorted(c.seed for c in cells)  # seed-major
    assert security.cell_setting("clean-fedavg-countscapped") == ("none", 0.0, "fedavg, counts capped")
    assert security.cell_setting("sign-flip-f0.2-fedavg") == ("sign-flip", 0.2, "fedavg")
    assert security.cell_setting("scalex10-f0.3-krum") == ("scale x10", 0.3, "krum")
    krum = next(c for c in cells if c.tag == "inflate-count-f0.1-krum")
    assert parse_pairs(krum.config) == {
        "aggregator": "'krum'",
        "num-malicious": "3",
        "attack": "'inflate-count'",
        "attack-fraction": "0.1",
    }

    def fake(cell: Cell, output_dir: Path, log: Path) -> bool:
        """Fedavg falls under sign-flip in proportion to the fraction; every other cell scores 0.4 / 0.8."""
        log.write_text("ok")
        attack, fraction, agg = security.cell_setting(cell.tag)
        audio = 0.4 - (fraction if attack == "sign-flip" and agg == "fedavg" else 0) + 0.01 * cell.seed
        run = output_dir / "run"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"best_dev": {"audio_top1": audio, "av_top1": 0.8}}))
        return True

    run_cells(cells, tmp_path, fake)
    md, runs = security.robust_table(cells, tmp_path)
    audio_md, av_md = md.split("Best-dev AV top-1")
    rows = {" | ".join(line.split(" | ")[:2]): line for line in audio_md.splitlines() if line.startswith("| ")}
    assert rows["| none | 0"].startswith("| none | 0 | 40.5 +- 0.5 | 40.5 +- 0.5 |")
    assert rows["| sign-flip | 0.3"].startswith("| sign-flip | 0.3 | 10.5 +- 0.5 | 40.5 +- 0.5 |")
    assert "| sign-flip | 0.3 | 80.0 +- 0.0 | 80.0 +- 0.0 |" in av_md
    assert security.robust_figure(runs, tmp_path).stat().st_size > 1000
    # --fractions 0.2: the same clean cells, only that fraction's attacks, and a table of just those rows
    subset = security.robust_cells(0.3, [0, 1], (0.2,))
    assert {c.key for c in subset} <= {c.key for c in cells}
    assert len(subset) == 2 * len(security.AGGREGATORS) * (1 + len(security.ATTACKS))
    md, _ = security.robust_table(subset, tmp_path)
    fractions = {line.split(" | ")[1] for line in md.splitlines() if line.startswith("| ") and " --- " not in line}
    assert fractions == {"fraction", "0", "0.2"}
    # --attacks sign-flip,scalex10: the same clean cells and those attacks' cells, in the study's order
    assert security.attack_names("scalex10, sign-flip") == ("sign-flip", "scale x10")
    few = security.robust_cells(0.3, [0, 1], (0.2,), security.attack_names("sign-flip,scalex10"))
    assert [c.key for c in few] == [
        c.key for c in subset if security.cell_setting(c.tag)[0] in ("none", "sign-flip", "scale x10")
    ]
    md, _ = security.robust_table(few, tmp_path)  # a table of the plan's attacks only
    attacks = {line.split(" | ")[0][2:] for line in md.splitlines() if line.startswith("| ") and " --- " not in line}
    assert attacks == {"attack", "none", "sign-flip", "scale x10"}
    for bad in ("scale", "sign-flip,,nope", ""):
        with pytest.raises(ValueError, match="give attacks from sign-flip, scalex10, gaussian"):
            security.attack_names(bad)
    from mirror_app.studies.ablations import main

    assert main(["robust", "--attacks", "scale", "--out", str(tmp_path / "never")]) == 2
    assert not (tmp_path / "never").exists()


def test_privacy_takes_its_clipping_norm_from_the_clean_run_and_tables_epsilon(tmp_path):
    from mirror_app.studies import security

    clean = security.privacy_clean_cells(0.3, [0])
    run = tmp_path / "runs" / clean[0].key
    run.mkdir(parents=True)
    pd.DataFrame({"status": ["ok", "ok", "ok", "failed"], "update_norm": [0.1, 0.2345, 0.5, float("nan")]}).to_csv(
        run / "clients.csv", index=False
    )
    assert security.clipping_norm(tmp_path, clean[0]) == 0.23
    cells = security.privacy_dp_cells(0.3, [0], 0.23)
    assert len(cells) == len(security.CENTRAL_SIGMAS) + len(security.LOCAL_SIGMAS) + 2  # + secure aggregation rows
    assert all("dp-clipping-norm=0.23" in c.config for c in cells if "dp=" in c.config)
    assert [c.tag for c in cells[-2:]] == ["secagg", "secagg-dp-local-s2-c0.23"]
    # another clean run's norm names other runs: a sweep never resumes from runs made with a different C
    other = security.privacy_dp_cells(0.3, [0], 0.21)
    assert {c.key for c in cells} & {c.key for c in other} == {"modality-mirror-mr0.3-s0-secagg"}  # needs no C

    def fake(cell: Cell, output_dir: Path, log: Path) -> bool:
        log.write_text("ok")
        pairs = parse_pairs(cell.config)
        sigma = float(pairs.get("dp-noise-multiplier", 0))
        out = output_dir / "run"
        out.mkdir()
        privacy = {"epsilon": 10 / sigma, "epsilon_median_client": 4 / sigma} if sigma else None
        summary = {"best_dev": {"audio_top1": 0.1 * (sigma or 5), "av_top1": 0.5}, "privacy": privacy}
        (out / "summary.json").write_text(json.dumps(summary))
        return True

    run_cells(cells, tmp_path, fake)
    audit = {  # the audit's recorded rows: the one with known noise is not a row of the table
        "rows": [
            {"mode": "central", "sigma": 2.0, "known_noise": False, "lower_bound": 0.12, "accountant_epsilon": 0.4},
            {"mode": "central", "sigma": 2.0, "known_noise": True, "lower_bound": 4.0, "accountant_epsilon": 0.4},
        ]
    }
    md, runs = security.privacy_table(cells, tmp_path, 0.23, audit)
    assert (
        "| central | 2 | 1 | 5.0 | 0.12 <= 0.40 | 20.0 | 50.0 |" in md
        and "C = 0.23, the median update norm of the clean seed-0" in md
    )
    assert "| local | 2 | 1 | 5.0 worst client, 2.0 median | - | 20.0 | 50.0 |" in md  # the audit has no local row
    assert "| secure aggregation | - | 1 | inf (no DP) | - | 50.0 | 50.0 |" in md
    assert "| secure aggregation + local DP | 2 | 1 | 5.0 worst client, 2.0 median | - | 20.0 | 50.0 |" in md
    assert security.privacy_figure(runs, tmp_path).stat().st_size > 1000


def test_the_privacy_report_compares_secure_aggregation_with_the_clean_run_evaluation_by_evaluation(tmp_path):
    from mirror_app.studies import security

    clean = security.privacy_clean_cells(0.3, [0, 1])
    secure = [c for c in security.privacy_dp_cells(0.3, [0, 1], 0.2) if c.tag == "secagg"]
    gaps = {0: (0.004, 0.001), 1: (0.002, 0.007)}  # seed -> (audio, AV) gap at round 10

    def fake(cell: Cell, output_dir: Path, log: Path) -> bool:
        log.write_text("ok")
        out = output_dir / "run"
        out.mkdir()
        audio, av = gaps[cell.seed] if cell.tag == "secagg" else (0.0, 0.0)
        pd.DataFrame(
            {"round": [0, 5, 10], "audio_top1": [0.05, 0.1, 0.2 + audio], "av_top1": [0.1, 0.3, 0.5 - av]}
        ).to_csv(out / "metrics.csv", index=False)
        (out / "summary.json").write_text(json.dumps({"best_dev": {"audio_top1": 0.2, "av_top1": 0.5}}))
        return True

    runs = run_cells(clean + secure, tmp_path, fake)
    lines = " ".join(security.secure_against_clean(clean + secure, tmp_path, runs))
    assert "(seeds 0, 1), evaluation by evaluation (3 evaluations or more)" in lines
    assert "audio top-1 within 0.4 points and the AV top-1 within 0.7 at every one" in lines
    # without a clean run of its seed there is nothing to compare
    assert security.secure_against_clean(secure, tmp_path, runs) == []


def test_the_privacy_budget_grid_is_the_accountants_answer_for_each_federation_size(tmp_path):
    from mirror_app.core.privacy import spent
    from mirror_app.studies import security
    from strategies import resolve_config

    run_config = "num-server-rounds=8 distill-rounds=2"
    frame = security.budget_frame(run_config)
    row = frame[(frame["clients_per_round"] == 10) & (frame["sigma"] == 2.0) & (frame["clients"] == 1000)].iloc[0]
    cfg, cls = resolve_config(
        {
            "num-server-rounds": 8,
            "distill-rounds": 2,
            "dp": "central",
            "dp-clipping-norm": 1.0,
            "dp-noise-multiplier": 2.0,
        }
    )
    assert row["epsilon"] == pytest.approx(spent(cls.privacy_plan(cfg, 1000), 1e-5)) and row["rounds"] == 10
    assert (frame.groupby(["clients_per_round", "sigma"])["epsilon"].apply(lambda e: e.is_monotonic_decreasing)).all()
    table = security.budget_table(frame)
    assert "| 10 | 1 |" in table and "smallest federation with epsilon <= 8" in table
    assert security.budget_figure(frame, tmp_path).stat().st_size > 1000


def test_run_records_restore_finished_runs_elsewhere_and_are_never_overwritten(tmp_path):
    """--records: what one machine ran, another takes as finished (no run redone) and tables alike."""
    from mirror_app.studies import security
    from mirror_app.studies.runs import check_settings, restore_records, save_records

    cells = security.robust_cells(0.3, [0], (0.2,), security.attack_names("sign-flip"))
    ran: list[str] = []

    def fake(cell: Cell, output_dir: Path, log: Path) -> bool:
        ran.append(cell.key)
        log.write_text("ok")
        run = output_dir / "run"
        run.mkdir()
        (run / "model.pt").write_bytes(b"weights")
        (run / "metrics.csv").write_text("round,bytes_to_clients,bytes_from_clients\n1,1000000,1000000\n")
        pd.DataFrame({"status": ["ok", "ok", "ok"], "update_norm": [0.1, 0.3, 0.5]}).to_csv(
            run / "clients.csv", index=False
        )
        # attacked cells score 0.2; clean ones 0.41, 0.42, ... in the order this machine ran them
        audio = 0.2 if cell.tag.startswith("sign-flip") else 0.4 + 0.01 * len(ran)
        (run / "summary.json").write_text(json.dumps({"best_dev": {"audio_top1": audio, "av_top1": 0.8}}))
        return True

    first, records = tmp_path / "first", tmp_path / "records"
    run_cells(cells[:3], first, fake)  # an interrupted sweep: 3 of its cells finished
    assert save_records(cells, first, records, with_clients={cells[0].key}) == 3
    kept = {p.relative_to(records / cells[0].key).as_posix() for p in (records / cells[0].key).iterdir()}
    assert kept == {"summary.json", "metrics.csv", "clients.csv.gz", "provenance.json"}  # no model, no log
    assert not (records / cells[1].key / "clients.csv.gz").exists()

    second = tmp_path / "second"  # another machine: the records' runs are finished, only the rest run
    ran.clear()
    assert restore_records(cells, second, records) == 3
    run_cells(cells, second, fake)
    assert ran == [c.key for c in cells[3:]]
    assert security.clipping_norm(second, cells[0]) == 0.3  # from the gzipped clients.csv
    assert save_records(cells, second, records) == len(cells) - 3
    before = (records / cells[0].key / "summary.json").read_bytes()
    (second / "runs" / cells[0].key / "summary.json").write_text("{}")
    assert save_records(cells, second, records) == 0  # a record is never overwritten
    assert (records / cells[0].key / "summary.json").read_bytes() == before
    third = tmp_path / "third"
    assert restore_records(cells, third, records) == len(cells)
    md_records, _ = security.robust_table(cells, third)
    first_md, _ = security.robust_table(cells[:3], first)
    assert "| none | 0 | 41.0 | 42.0 | 43.0 | n/a | n/a |" in first_md
    assert "| none | 0 | 41.0 | 42.0 | 43.0 | 41.0 | 42.0 |" in md_records
    assert "| sign-flip | 0.2 | 20.0 | 20.0 | 20.0 | 20.0 | 20.0 |" in md_records
    # records made under other settings are refused, naming the flag (these keep no config.json, so the folder's
    # run-config string decides)
    check_settings(records, {"run-config": "num-server-rounds=6"}, "--records", runs=records)
    with pytest.raises(SweepError, match="use another --records"):
        check_settings(records, {"run-config": "num-server-rounds=30"}, "--records", runs=records)


def test_ablations_command_records_what_finished_before_an_interrupt_and_resumes_from_records(tmp_path, monkeypatch):
    """`ablations robust --records R`: a sweep stopped after 3 runs leaves their records; a sweep with another
    --out (another machine) runs only the rest and prints the whole table."""
    import contextlib

    from mirror_app.deploy import launch
    from mirror_app.studies import security

    ran: list[str] = []

    def fake(cell: Cell, output_dir: Path, log: Path) -> bool:
        # each finished run is recorded as it finishes, not only when the sweep ends (a sweep killed outright)
        assert {p.name for p in (tmp_path / "r").glob("*-mr*")} >= set(ran)
        if len(ran) == 3 and stop:
            raise KeyboardInterrupt  # Ctrl-C during the 4th run
        ran.append(cell.key)
        log.write_text("ok")
        (output_dir / "run").mkdir()
        (output_dir / "run" / "summary.json").write_text(json.dumps({"best_dev": {"audio_top1": 0.3, "av_top1": 0.6}}))
        return True

    from mirror_app.deploy import preflight

    monkeypatch.setattr(launch, "SuperLink", lambda home: contextlib.nullcontext())
    monkeypatch.setattr(preflight, "check_run", lambda *args, **kwargs: None)  # no dataset or encoders needed here
    monkeypatch.setattr(ablations, "flwr_runner", lambda *args: fake)
    args = ["robust", "--seeds", "0", "--fractions", "0.2", "--attacks", "sign-flip", "--records", str(tmp_path / "r")]
    stop = True
    with pytest.raises(KeyboardInterrupt):
        ablations.main([*args, "--out", str(tmp_path / "a")])
    cells = security.robust_cells(0.3, [0], (0.2,), ("sign-flip",))
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted([c.key for c in cells[:3]] + ["sweep.json"])
    ran.clear()
    stop = False
    assert ablations.main([*args, "--out", str(tmp_path / "b")]) == 0
    assert ran == [c.key for c in cells[3:]]
    table = (tmp_path / "b" / "ablation.md").read_text()
    assert "| sign-flip | 0.2 | 30.0 | 30.0 | 30.0 | 30.0 | 30.0 |" in table
    assert "| none | 0 | 30.0 | 30.0 | 30.0 | 30.0 | 30.0 |" in table
    # records made under another run config are refused before anything runs
    assert ablations.main([*args, "--out", str(tmp_path / "c"), "--run-config", "lr=0.1"]) == 2
    assert not (tmp_path / "c" / "runs").exists()


def test_missingness_plan_and_table(tmp_path):
    from mirror_app.studies import missingness as missing_study

    cells = missing_study.missingness_cells([0, 1])
    assert len(cells) == 2 * 3 * 5 and len({c.key for c in cells}) == len(cells)
    per_sample = [c for c in cells if c.tag == "per-sample"]
    assert all(c.rate == 0.0 and "sample-missing-video=0.3" in c.config for c in per_sample)
    assert all(c.rate == 0.1 and "missing-schedule=" in c.config for c in cells if c.tag == "schedule")
    assert "unifl-mr0.3-s1" in {c.key for c in cells}  # per-client missingness is Table 1's own cell

    def fake(cell: Cell, output_dir: Path, log: Path) -> bool:
        log.write_text("ok")
        run = output_dir / "run"
        run.mkdir()
        audio = {"": 0.2, "per-sample": 0.3, "schedule": 0.25}[cell.tag] + 0.01 * cell.seed
        (run / "summary.json").write_text(json.dumps({"best_dev": {"round": 10, "audio_top1": audio, "av_top1": 0.9}}))
        pd.DataFrame({"round": [0, 10], "audio_top1": [0.05, audio], "av_top1_missing50": [0.1, 0.6]}).to_csv(
            run / "metrics.csv", index=False
        )
        return True

    run_cells(cells, tmp_path, fake)
    md, runs = missing_study.missingness_table(cells, tmp_path)
    mm = next(line for line in md.splitlines() if line.startswith("| ModalityMirror"))
    assert mm == (
        "| ModalityMirror | 20.5 +- 0.5 | 90.0 +- 0.0 | 60.0 +- 0.0 | 30.5 +- 0.5 | 90.0 +- 0.0 | 60.0 +- 0.0 "
        "| 25.5 +- 0.5 | 90.0 +- 0.0 | 60.0 +- 0.0 |"
    )
    assert missing_study.missingness_figure(cells, tmp_path).stat().st_size > 1000


def test_krum_kept_table_counts_the_attackers_among_the_updates_krum_kept(tmp_path):
    from mirror_app.studies import security

    cells = security.robust_cells(0.3, [0], (0.2,), ("label-flip",))
    krum = next(c for c in cells if c.tag == "label-flip-f0.2-krum")
    assert security.krum_kept_table(cells, tmp_path) == ""  # no run here (records hold no clients.csv)
    rows = [  # round, attacker, kept_groups
        (1, True, "audio_encoder;audio_head"),
        (1, False, ""),
        (1, False, ""),
        (1, False, ""),
        (2, True, ""),
        (2, True, ""),
        (2, False, "audio_encoder"),
        (2, False, ""),
    ]
    clients = pd.DataFrame(
        [
            {"round": r, "phase": "modality-aware-fl", "status": "ok", "attacker": a, "kept_groups": k}
            for r, a, k in rows
        ]
    )
    for cell in (krum, next(c for c in cells if c.tag == "label-flip-f0.2-fedavg")):  # fedavg keeps nobody's
        (tmp_path / "runs" / cell.key).mkdir(parents=True)
        clients.to_csv(tmp_path / "runs" / cell.key / "clients.csv", index=False)
    lines = [line for line in security.krum_kept_table(cells, tmp_path).splitlines() if line.startswith("| label")]
    # 3 updates kept, 2 of them the round-1 attacker's; attackers' share of those rounds' clients: (0.25 x 2 + 0.5) / 3
    assert lines == ["| label-flip | 0.2 | modality-aware-fl | 1 | 3 | 66.7 | 33.3 |"]


def test_make_table1_measures_the_preset_and_records_that_table1_md_is_printed_from():
    """README's `make table1` and docs/results/table1.md name the same preset and records folder (and the page on
    plain linear heads, the command that prints it): a change of Table 1's preset cannot leave one behind."""
    from mirror_app.studies.report import REPORTS

    pages = {r.name: r for r in REPORTS}
    for name, variables in (("table1", []), ("table1-linear", ["TABLE1_PRESET=conf/paper-laptop.toml"])):
        report = pages[name]
        assert report.command == " ".join(["make table1", *variables])
        res = subprocess.run(["make", "-n", "table1", *variables], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        argv = report.argv
        preset, records = argv[argv.index("--preset") + 1], argv[argv.index("--records") + 1]
        assert f"--preset {preset} " in res.stdout and f"--records {ROOT / records} " in res.stdout + " "
        assert records == f"docs/records/{report.records}"
        against = argv[argv.index("--against") + 1] if "--against" in argv else None
        assert (f"--against {ROOT / against}" in res.stdout) if against else "--against" not in res.stdout
