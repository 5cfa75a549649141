"""A new machine, as a newcomer meets it: `make` prints the help with each target's cost, `make report` needs nothing
but the records, `make clean` says what it deletes and keeps exports, a key given twice is one line, and the two
commands of docs/datasets.md that take a prepared folder to a run work for real (a tiny size, an empty HOME)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_tool

ROOT = Path(__file__).resolve().parents[1]


def user_env(**extra: str) -> dict:
    """The environment of a user at a shell: this one without what a calling make (`make test`) passes down."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")} | extra


def make(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", *args], cwd=cwd, env=env or user_env(), capture_output=True, text=True, timeout=timeout
    )


def phony_targets() -> list[str]:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Makefile").read_text())
    return re.search(r"^\.PHONY:(.*)$", text, flags=re.M).group(1).split()


def test_plain_make_prints_every_target_with_its_cost_and_installs_nothing():
    res = make()
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: make <target>")
    assert "pip install" not in res.stdout + res.stderr
    lines = {line.split()[0]: line for line in res.stdout.splitlines() if line.startswith("  ")}
    for target in phony_targets():
        if target == "help":
            continue
        assert target in lines, f"make help has no line for {target}"
        cost = lines[target][15:39].strip()  # the cost column
        assert re.search(r"\d|seconds", cost), f"{target}: no cost in {lines[target]!r}"


def test_make_report_needs_no_encoder_and_no_data_on_an_empty_home(tmp_path):
    """What the README says runs nothing reads only the records: with HOME empty (no ~/.cache/modality-mirror) the
    reports are still what the repository holds: docs/results/*, docs/configuration.md's key table, docs/methods.md's
    recipes and README.md's results are exactly what `make report` makes of the records and pyproject.toml (run
    `make report` after changing either), and docs/results holds nothing else."""
    env = user_env(HOME=str(tmp_path))
    res = subprocess.run(
        [sys.executable, "-m", "mirror_app.studies.report", "--check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert not (tmp_path / ".cache" / "modality-mirror").exists()


def test_make_clean_names_what_it_deletes_and_keeps_exports_unless_asked(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(ROOT / "Makefile", checkout / "Makefile")
    for name in (".venv", "mirror_app"):
        (checkout / name).symlink_to(ROOT / name)
    run = checkout / "results" / "20261207-modality-mirror-run1"
    (run / "export").mkdir(parents=True)
    (run / "export" / "model.onnx").write_bytes(b"\0" * 1000)
    (run / "model.pt").write_bytes(b"\0" * 2_000_000)
    (checkout / "results" / "table1" / "runs").mkdir(parents=True)
    (checkout / ".pytest_cache").mkdir()
    env = user_env(HOME=str(tmp_path / "home"))

    res = make("clean", cwd=checkout, env=env)
    assert res.returncode == 0, res.stderr
    assert (
        "deleting results/table1" in res.stdout
        and "deleting results/20261207-modality-mirror-run1/model.pt (2.0 MB)" in (res.stdout)
    )
    assert "kept the export results/20261207-modality-mirror-run1/export" in res.stdout
    assert (run / "export" / "model.onnx").is_file() and not (run / "model.pt").exists()
    assert not (checkout / "results" / "table1").exists() and not (checkout / ".pytest_cache").exists()

    res = make("clean", "EXPORTS=1", cwd=checkout, env=env)
    assert res.returncode == 0, res.stderr
    assert "deleting results (" in res.stdout and not (checkout / "results").exists()
    assert (ROOT / "mirror_app").is_dir()  # the symlinked package, not its target, was what the checkout held


def test_a_key_given_twice_is_one_line_before_anything_starts(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent), "FLWR_HOME": str(tmp_path / "flwr"), "HOME": str(tmp_path)}
    res = run_tool(["--run-config", f"seed=1 output-dir='{tmp_path}' seed=2"], env=env)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: run config key 'seed' is given twice (1 and 2): give each key once"
    ]
    assert not (tmp_path / "flwr").exists()


def test_the_users_run_config_overrides_the_makefiles_paths(tmp_path):
    """--data-dir / --output-dir (what the Makefile passes) count only where the run config names no such key."""
    env = {"PATH": str(Path(sys.executable).parent), "FLWR_HOME": str(tmp_path / "flwr"), "HOME": str(tmp_path)}
    res = run_tool(
        [
            "--data-dir",
            str(tmp_path / "makefiles"),
            "--output-dir",
            str(tmp_path / "o"),
            "--run-config",
            f"dataset='manifest' data-dir='{tmp_path / 'users'}'",
        ],
        env=env,
    )
    assert res.returncode == 2
    assert f"is not prepared under data-dir {tmp_path / 'users'}" in res.stderr, res.stderr


def datasets_page_commands() -> list[str]:
    """The two commands under docs/datasets.md's "From `make prepare` to `make run`"."""
    text = (ROOT / "docs" / "datasets.md").read_text()
    section = text.split("**From `make prepare` to `make run`.**", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


@pytest.mark.timeout(900)
def test_the_documented_prepare_then_run_works_on_a_new_machine(tmp_path):
    """docs/datasets.md's two commands, as printed, on a folder of clips the test makes: only the paths are the
    test's, and the run is made tiny with keys added to RUN_CONFIG (the Makefile adds data-dir too: the user's
    word wins). HOME is empty, so the encoders are pretrained for the prepared front end into DATA_DIR (a small front
    end, so that pretraining takes seconds)."""
    from data.media import make_manifest

    prepare_cmd, run_cmd = datasets_page_commands()
    assert prepare_cmd.startswith("make prepare DATASET=manifest") and run_cmd.startswith("make run RUN_CONFIG=")
    src = make_manifest(tmp_path / "clips", per_class=8)
    data = tmp_path / "mm"
    home = tmp_path / "home"
    home.mkdir()
    env = user_env(HOME=str(home), FLWR_HOME=str(home / ".flwr"))

    words = shlex.split(prepare_cmd.replace("/my/clips", str(src)).replace("/data/mm", str(data)))
    words.append("PREPARE_ARGS=--mel-bins 16 --audio-seconds 0.5 --image-size 16 --workers 1")
    res = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (data / "manifest").is_dir()

    tiny = (
        "num-server-rounds=1 distill-rounds=1 clients-per-round=2 missing-rate=0.34 dirichlet-alpha=100.0 eval-every=1"
    )
    words = shlex.split(run_cmd.replace("/data/mm", str(data)))
    words = [
        w.replace("RUN_CONFIG=", "RUN_CONFIG=" + tiny + " ", 1) if w.startswith("RUN_CONFIG=") else w for w in words
    ]
    words += ["NUM_CLIENTS=3", f"OUTPUT_DIR={tmp_path / 'results'}"]
    res = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = [d for d in (tmp_path / "results").iterdir() if (d / "summary.json").is_file()]
    assert len(runs) == 1, res.stdout[-3000:]
    metrics = pd.read_csv(runs[0] / "metrics.csv")
    assert list(metrics["phase"]) == ["modality-aware-fl"] * 2 + ["distillation"]  # rounds 0 (initial), 1, 2
    assert sorted(p.name for p in (data / "pretrained").glob("*.pt")) == [
        "audio-tdnn-small-d64-mel16-t48.pt",
        "video-cnn-small-d64-img16.pt",
    ]
    assert not (home / ".cache" / "modality-mirror").exists()  # everything went where DATA_DIR said
