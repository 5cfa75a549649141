"""A failed run says so: `make run`'s tool checks the config first and exits non-zero, with one line, when a run
fails; the deployment and the sweep do the same."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PACKAGES, copy_packages, run_tool

from mirror_app.deploy.launch import SuperLink, TracebackFilter, failure_reason

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "config,line",
    [
        ("misssing-rate=0.5", "error: run config key 'misssing-rate' is unknown; known keys: aggregator, "),
        ("missing-rate=1.5", "error: run config 'missing-rate' = 1.5 is invalid: a fraction in [0, 1)"),
        ("attack='sign-flip' attack-fraction=1.2", "error: run config 'attack-fraction' = 1.2 is invalid: a fraction"),
        (
            "aggregator='krum' num-malicious=4",
            "error: run config 'num-malicious' = 4 is invalid: at most 3 with aggregator 'krum' and 10 clients",
        ),
        ("dp='central'", "error: run config 'dp-clipping-norm' = 0.0 is invalid: a number > 0 with dp 'central'"),
        ("sample-missing-video=1.0", "error: run config 'sample-missing-video' = 1.0 is invalid: a fraction in [0, 1)"),
        (
            "missing-schedule='300:+0.1'",
            "error: run config 'missing-schedule' = '300:+0.1' is invalid: rounds in [1, 250] (round 300 is past",
        ),
        (
            "dp='central' dp-clipping-norm=1.0 dp-noise-multiplier=0.5 dp-target-epsilon=8.0 clients-per-round=2",
            "error: run config 'dp-target-epsilon' = 8 is exceeded: with 3 clients",
        ),
        (
            "dataset='manifest' data-dir='{tmp}'",
            "error: dataset 'manifest' is not prepared under data-dir {tmp}: run "
            "`make prepare DATASET=manifest SRC=<folder> DATA_DIR={tmp}` first",
        ),
    ],
)
def test_a_bad_config_or_unprepared_data_stops_before_flower_starts(config, line, tmp_path):
    home = tmp_path / "flwr-home"
    env = {"PATH": str(Path(sys.executable).parent), "FLWR_HOME": str(home), "HOME": str(tmp_path)}
    res = run_tool(
        ["--num-supernodes", "3", "--run-config", config.format(tmp=tmp_path) + f" output-dir='{tmp_path}/o'"], env=env
    )
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line.format(tmp=tmp_path)), res.stderr[-2000:]
    assert "Traceback" not in res.stdout + res.stderr
    assert not home.exists()  # Flower was never called: no federation config written, no SuperLink


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    link = SuperLink(tmp_path_factory.mktemp("flwr-home"))
    yield link
    assert not link.stop()


@pytest.mark.timeout(600)
def test_a_run_that_fails_inside_flower_exits_1_with_its_reason(superlink, data_dir, tmp_path):
    """More clients per round than SuperNodes passes the config check (the tool does not know the size of a
    remote federation) and fails in the ServerApp: flwr run exits 0, the tool reads the run's status."""
    config = f"clients-per-round=5 num-server-rounds=1 distill-rounds=0 data-dir='{data_dir}' output-dir='{tmp_path}'"
    res = run_tool(
        ["--connection", "test", "--federation-config", "num-supernodes=3", "--run-config", config], env=superlink.env
    )
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "run failed: run config 'clients-per-round' = 5 is invalid: only 3 SuperNodes are connected"
    ), res.stderr[-2000:]
    assert "status finished:failed" in last
    assert "Traceback" not in res.stdout and "Traceback" not in res.stderr  # shown without it ...
    log = Path(last.rsplit("full log: ", 1)[1].rstrip(")"))
    assert "Traceback (most recent call last)" in log.read_text()  # ... which stays in the log


def test_deploy_local_checks_the_config_before_starting_anything(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mirror_app.deploy.local",
            "--run-config",
            "lr=-1",
            "--out",
            str(tmp_path / "o"),
            "--home",
            str(tmp_path / "home"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: run config 'lr' = -1.0 is invalid: a number > 0"]
    assert not (tmp_path / "home").exists()


def test_the_reason_is_the_exception_message_and_tracebacks_are_kept_out_of_the_console():
    log = """INFO :      [ROUND 1]
ERROR :     Simulation raised an exception
Traceback (most recent call last):
  File "x.py", line 1, in f
    raise ConfigError("run config 'x' = 1 is invalid: a number > 1")
mirror_app.core.config.ConfigError: run config 'x' = 1 is invalid: a number > 1
ERROR :     Exit Code: 700
"""
    assert failure_reason(log) == "run config 'x' = 1 is invalid: a number > 1"
    shown = TracebackFilter()
    kept = [line for line in log.splitlines() if shown.keep(line)]
    assert kept == ["INFO :      [ROUND 1]", "ERROR :     Simulation raised an exception", "ERROR :     Exit Code: 700"]
    assert failure_reason("no error here") == ""


def test_a_default_is_added_only_for_keys_the_run_config_leaves_out():
    from mirror_app.deploy.preflight import with_defaults

    # "seed=3" inside a quoted value is not a key: the seed default is still added
    assert with_defaults("output-dir='/tmp/x seed=3'", {"seed": "1"}) == "seed=1 output-dir='/tmp/x seed=3'"
    assert with_defaults("seed=3 lr=0.1", {"seed": "1", "local-epochs": "2"}) == "local-epochs=2 seed=3 lr=0.1"


@pytest.mark.timeout(600)
def test_make_runs_tool_runs_on_a_superlink_of_its_own_and_leaves_nothing_behind(data_dir, tmp_path, request):
    """Without --connection the tool simulates on a SuperLink it starts in a temporary FLWR_HOME and stops at the
    end: the user's FLWR_HOME is never written (Flower's own `flwr run .` would write its simulation config there)
    and no Flower process outlives the run."""
    import os
    import shutil
    import tempfile
    import time

    import psutil

    user_home = tmp_path / "user-flwr-home"
    # the tool's temporary FLWR_HOME lands in a TMPDIR of this test's own, so that only this run's processes are
    # looked at (short: Ray puts its sockets under it too, and a socket path has at most 107 bytes)
    scratch = Path(tempfile.mkdtemp(prefix="mr-"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    env = {**os.environ, "FLWR_HOME": str(user_home), "TMPDIR": str(scratch)}
    config = (
        f"num-server-rounds=1 distill-rounds=1 clients-per-round=3 eval-every=1 data-dir='{data_dir}' "
        f"output-dir='{tmp_path / 'out'}'"
    )
    started = time.time()
    res = run_tool(["--num-supernodes", "3", "--run-config", config], env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "finished: " in res.stdout.strip().splitlines()[-1]
    assert not user_home.exists()
    left = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline", "create_time"])
        if p.info["create_time"]
        and p.info["create_time"] >= started - 1
        and any(str(scratch) in part for part in p.info["cmdline"] or [])
    ]
    assert not left, left


def test_the_app_package_flwr_run_ships_holds_the_code_and_not_the_records(tmp_path):
    """What `flwr run .` builds from this checkout (Flower's own builder and pyproject's fab-include):
    every module of the four packages, the presets and the example plugin method, and nothing of docs/, whose
    thousands of run records would otherwise approach Flower's 10 MB limit on a package as studies are added; and
    a copy of the code alone builds too."""
    import io
    import shutil
    import zipfile

    from flwr.cli.build import build_fab_from_disk
    from flwr.common.constant import FAB_MAX_SIZE

    fab = build_fab_from_disk(ROOT)
    names = set(zipfile.ZipFile(io.BytesIO(fab)).namelist())
    assert not [n for n in names if n.startswith("docs/")]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    code = [p for p in tracked if p.split("/")[0] in (*PACKAGES, "conf")]
    assert code and not [p for p in code if p.endswith((".py", ".toml")) and p not in names]
    assert "tests/plugin_method.py" in names and not [n for n in names if n.endswith(".md")]
    records = sum((ROOT / p).stat().st_size for p in tracked if p.startswith("docs/records/"))
    assert len(fab) < FAB_MAX_SIZE / 5 < records  # the records alone would take more than a fifth of the limit
    copy = tmp_path / "app"  # a copy of the code alone, as a device might hold: the patterns still resolve
    copy_packages(copy)
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    assert "mirror_app/server_app.py" in zipfile.ZipFile(io.BytesIO(build_fab_from_disk(copy))).namelist()
