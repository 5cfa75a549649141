"""How a study's cells run and what they leave behind: each cell (a method, a missing rate, a seed and its own run
config) runs through `flwr run .` on a private SuperLink; a finished run, and the run record kept of it in the
repository (docs/records: its resolved config, summary.json, metrics.csv, per-class F1), is taken as the cell's
only when its resolved config is the one the cell has now. The sweep (Table 1) and every ablation build on this."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mirror_app.deploy.preflight import pairs_to_values, parse_pairs
from mirror_app.results import MACHINE_KEYS, megabytes_per_round, write_json

ROOT = Path(__file__).resolve().parents[2]


# one CPU per simulated client: small CPU models train faster as parallel single-threaded
# clients than one at a time on two threads (Flower's default); see `make bench`
CLIENT_RESOURCES = "client-resources-num-cpus=1"


# run config a method needs beyond the shared one (unless the sweep's --run-config sets the key)
METHOD_CONFIG = {"fedcmi": {"mu": "0.01"}}


class SweepError(ValueError):
    """The sweep was asked for something it cannot run."""


@dataclass(frozen=True)
class Cell:
    method: str
    rate: float
    seed: int
    config: str = ""  # run config of this cell alone ("key=value ..."), over the sweep's (ablations)
    tag: str = ""  # names the cell's own config in its key

    @property
    def key(self) -> str:
        return f"{self.method}-mr{self.rate:g}-s{self.seed}" + (f"-{self.tag}" if self.tag else "")


def override_pairs(base: str, over: str) -> str:
    """``key=value`` pairs of ``base`` with those of ``over`` replacing the same keys."""
    pairs = parse_pairs(base) | parse_pairs(over)
    return " ".join(f"{k}={v}" for k, v in pairs.items())


def check_settings(out: Path, settings: dict, flag: str = "--out", runs: Path | None = None) -> None:
    """Finished runs are reused by key (method, rate, seed, tag): refuse a folder made with other settings.

    A run that keeps its resolved config (config.json) is checked on its own against the config its cell would
    run with now (:func:`check_finished`), so the folder's ``sweep.json`` only has to agree on what config.json
    does not hold, the federation's size (``num-supernodes``); a folder holding a run without config.json (made
    before runs kept it) must agree on every setting, the run-config string included. ``runs``: where the runs
    are (``out/runs`` by default; a records folder holds them directly)."""
    marker = out / "sweep.json"
    if not marker.is_file():
        from mirror_app.results import atomic_write

        atomic_write(marker, lambda path: path.write_text(json.dumps(settings)))
        return
    before = json.loads(marker.read_text())
    folder = runs if runs is not None else out / "runs"
    legacy = folder.is_dir() and any(
        (d / "summary.json").is_file() and not (d / "config.json").is_file() for d in folder.iterdir()
    )
    keys = set(before) | set(settings) if legacy else {"num-supernodes"}
    if any(before.get(k) != settings.get(k) for k in keys):
        shown = before if legacy else {k: before.get(k) for k in keys}
        wanted = settings if legacy else {k: settings.get(k) for k in keys}
        raise SweepError(f"{out} holds runs made with {shown}, not {wanted}; use another {flag}")


def check_folders(out: Path, records: Path | None, settings: dict) -> None:
    """Create ``out`` (and ``records``) and refuse either when it holds runs made with other ``settings``
    (:func:`check_settings`); one SweepError line."""
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings)
    if records:
        records.mkdir(parents=True, exist_ok=True)
        check_settings(records, settings, "--records", runs=records)


# keys of a run's resolved config that may differ between two runs of the same cell (where it writes, on which
# device, where the data were prepared)
CONFIG_IGNORED = ("resume", "output-dir", "round-timeout", "device", "tensorboard", "data-dir")


def cell_run_config(cell: Cell, extra_config: str) -> str:
    """The ``key=value`` run config a sweep run of ``cell`` gets (besides its output-dir): the cell's strategy,
    missing rate and seed, the sweep's run config with the method's own defaults, then the cell's config."""
    from mirror_app.deploy.preflight import with_defaults

    return f"strategy='{cell.method}' missing-rate={cell.rate} seed={cell.seed} " + override_pairs(
        with_defaults(extra_config, METHOD_CONFIG.get(cell.method, {})), cell.config
    )


def resolved_config(cell: Cell, extra_config: str) -> dict:
    """The fully resolved run config of ``cell`` (pyproject defaults, preset, overrides, the method's fixed
    settings), as its ServerApp writes it to config.json, without the keys that may differ between machines."""
    from strategies import resolve_config

    cfg, _ = resolve_config(pairs_to_values(parse_pairs(cell_run_config(cell, extra_config))))
    return {k: v for k, v in cfg.to_dict().items() if k not in CONFIG_IGNORED}


def config_changes(found: dict, expected: dict) -> list[str]:
    """The keys whose values differ between a finished run's config.json and the config expected of it. A key the
    run's config.json lacks was added to ``[tool.flwr.app.config]`` after the run: it counts as unchanged when the
    value expected is the default it was added with, since a new key's first default keeps the behaviour the
    project had before it (the rule every knob here follows): ``core.config.BEFORE_KEY``'s value for a key whose default
    changed since, today's default for the rest."""
    from mirror_app.core.config import as_recorded, defaults

    table = defaults()
    found = as_recorded(found)
    new_keys = {k for k in set(expected) - set(found) if k in table and expected[k] == table[k]}
    keys = (set(found) | set(expected)) - set(CONFIG_IGNORED) - new_keys
    return sorted(k for k in keys if found.get(k, "<absent>") != expected.get(k, "<absent>"))


def check_finished(run_dir: Path, cell: Cell, expected: Callable[[Cell], dict] | None, where: str) -> None:
    """Refuse to take ``run_dir`` (a finished run or a record of ``cell``) as the cell's run when its resolved
    config differs from the one the cell would run with now (a default changed since, say): one line naming the
    keys. A run or record without config.json (an older record) is left to the folder's sweep.json check."""
    path = run_dir / "config.json"
    if expected is None or not path.is_file():
        return
    from mirror_app.core.config import read_config

    want = expected(cell)
    found = read_config(path)
    changed = config_changes(found, want)
    if changed:
        diff = ", ".join(f"{k}: {found.get(k, '<absent>')!r} -> {want.get(k, '<absent>')!r}" for k in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise SweepError(
            f"{where} {run_dir} was run with another resolved config than {cell.key} has now ({diff}{more}); "
            "use another folder, or remove that run to make it again"
        )


def run_cells(
    cells: list[Cell],
    out: Path,
    runner: Callable[[Cell, Path, Path], bool],
    expected: Callable[[Cell], dict] | None = None,
    on_finished: Callable[[Cell], object] | None = None,
) -> pd.DataFrame:
    """Run every cell not finished yet; ``runner(cell, output_dir, log) -> ok``. Returns runs.csv. A run finished
    earlier is taken as the cell's only if its resolved config is ``expected(cell)`` (:func:`check_finished`),
    checked for every cell before anything runs. ``on_finished(cell)``: called as each run finishes (its record is
    kept then, so a sweep killed outright loses at most the run under way)."""
    from tqdm import tqdm

    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for cell in cells:
        if (out / "runs" / cell.key / "summary.json").is_file():
            check_finished(out / "runs" / cell.key, cell, expected, "the finished run")
    for cell in tqdm(cells, desc="sweep", unit="run"):
        final = out / "runs" / cell.key
        if (final / "summary.json").is_file():
            continue  # finished earlier: resume
        staging = out / "staging" / cell.key
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        log = out / "logs" / f"{cell.key}.log"
        ok = False
        try:
            ok = runner(cell, staging, log)
        except Exception as exc:  # a crash is recorded, the sweep goes on
            with open(log, "a") as fh:
                fh.write(f"\nsweep: run failed: {exc!r}\n")
        done = [d for d in staging.iterdir() if (d / "summary.json").is_file()]
        if ok and len(done) == 1:
            shutil.rmtree(final, ignore_errors=True)
            done[0].rename(final)  # only a finished run is ever moved into runs/
            if on_finished is not None:
                on_finished(cell)
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(out / "staging", ignore_errors=True)
    from mirror_app.results import write_csv

    table = collect(cells, out)
    write_csv(out / "runs.csv", table.to_dict("records"), list(table.columns))
    return table


# what a run record keeps of a finished run (a few KB, no model): its resolved config (config.json), what the
# tables and figures read (summary.json, metrics.csv, per_class_f1.csv gzipped); clients.csv only where a study
# reads it, gzipped
RECORD_FILES = ("config.json", "metrics.csv", "summary.json")  # summary.json last: it marks a record complete


GZIPPED = ("per_class_f1.csv", "per_class_f1_dev.csv")  # kept as <name>.gz


def _copy_atomic(src: Path, dst: Path, compress: bool = False) -> None:
    import gzip

    from mirror_app.results import atomic_write

    data = src.read_bytes()
    atomic_write(dst, lambda path: path.write_bytes(gzip.compress(data, mtime=0) if compress else data))


def restore_records(cells: list[Cell], out: Path, records: Path, expected: Callable[[Cell], dict] | None = None) -> int:
    """Make every cell with a record in ``records`` a finished run under ``out`` (run_cells then skips it), once
    every such record has been checked against ``expected`` (:func:`check_finished`). Returns how many were
    restored; a run already finished under ``out`` is left as it is."""
    import gzip

    for cell in cells:
        if (records / cell.key / "summary.json").is_file():
            check_finished(records / cell.key, cell, expected, "the record")
    restored = 0
    for cell in cells:
        src, dst = records / cell.key, out / "runs" / cell.key
        if not (src / "summary.json").is_file() or (dst / "summary.json").is_file():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("clients.csv", *GZIPPED):
            if (src / f"{name}.gz").is_file():
                (dst / name).write_bytes(gzip.decompress((src / f"{name}.gz").read_bytes()))
        for name in RECORD_FILES:
            if (src / name).is_file():
                _copy_atomic(src / name, dst / name)
        restored += 1
    return restored


def keep_config(src: Path, dst: Path) -> None:
    """A run's resolved config as a record keeps it: without the paths of the machine that ran it."""
    from mirror_app.results import atomic_write

    config = {k: v for k, v in json.loads(src.read_text()).items() if k not in MACHINE_KEYS}
    atomic_write(dst, lambda path: path.write_text(json.dumps(config, indent=2)))


def save_records(cells: list[Cell], out: Path, records: Path, with_clients: set[str] = frozenset()) -> int:
    """Keep a record of every finished run under ``out`` that ``records`` lacks (never overwriting one):
    ``RECORD_FILES``, plus clients.csv gzipped for the cells keyed in ``with_clients``. Returns how many."""
    saved = 0
    for cell in cells:
        src, dst = out / "runs" / cell.key, records / cell.key
        if not (src / "summary.json").is_file() or (dst / "summary.json").is_file():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        if cell.key in with_clients and (src / "clients.csv").is_file():
            _copy_atomic(src / "clients.csv", dst / "clients.csv.gz", compress=True)
        for name in GZIPPED:
            if (src / name).is_file():
                _copy_atomic(src / name, dst / f"{name}.gz", compress=True)
        write_json(dst / PROVENANCE, provenance(src))
        for name in RECORD_FILES:
            if name == "config.json" and (src / name).is_file():
                keep_config(src / name, dst / name)
            elif (src / name).is_file():
                _copy_atomic(src / name, dst / name)
        saved += 1
    return saved


PROVENANCE = "provenance.json"  # a record's: the commit and machine that ran it, and the day it finished


def machine() -> dict:
    """This machine, as a record names it: cores, CPU model, GPU."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:  # noqa: BLE001 - a machine without a working CUDA stack has no GPU for this purpose
        gpu = "none"
    return {"cores": os.cpu_count(), "cpu": cpu, "gpu": gpu}


def commit() -> str:
    """The project's commit (``-dirty`` when the working tree differs from it), or '' outside a git checkout."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else ""


def record_report(report: dict, name: str, records: Path) -> Path:
    """Keep a benchmark's report (its JSON) as a record, ``records/<name>/report.json``, with the commit, machine
    and day that made it: what ``make report`` prints its page from."""
    import datetime

    folder = records / name
    folder.mkdir(parents=True, exist_ok=True)
    write_json(
        folder / PROVENANCE, {"commit": commit(), "machine": machine(), "finished": datetime.date.today().isoformat()}
    )
    write_json(folder / "report.json", json.loads(json.dumps(report, default=float)))
    return folder


def provenance(run_dir: Path) -> dict:
    """What ran ``run_dir`` (a finished run): the commit, the machine and the day it finished (summary.json's)."""
    import datetime

    finished = datetime.datetime.fromtimestamp((run_dir / "summary.json").stat().st_mtime, datetime.UTC)
    return {"commit": commit(), "machine": machine(), "finished": finished.date().isoformat()}


def run_recorded(
    cells: list[Cell],
    out: Path,
    runner: Callable[[Cell, Path, Path], bool],
    expected: Callable[[Cell], dict],
    records: Path | None = None,
    with_clients: set[str] = frozenset(),
) -> pd.DataFrame:
    """:func:`run_cells` with run records: the cells recorded in ``records`` are restored as finished (once each
    record's resolved config is checked), and every run finished here is recorded there as it finishes, and again
    at the end for any finished before (a stopped sweep's, Ctrl-C or SIGTERM); ``with_clients``: the cells whose
    clients.csv the record keeps too."""
    if records is None:
        return run_cells(cells, out, runner, expected)
    restore_records(cells, out, records, expected)
    try:
        return run_cells(
            cells, out, runner, expected, on_finished=lambda cell: save_records([cell], out, records, with_clients)
        )
    finally:
        save_records(cells, out, records, with_clients)


RUN_COLUMNS = [
    "method",
    "missing_rate",
    "seed",
    "key",
    "log",
    "status",
    # the last round (summary.json "final")
    "audio_top1",
    "audio_top5",
    "audio_macro_f1",
    "av_top1",
    # test metrics at the round with the best dev audio top-1 (summary.json "best_dev")
    "best_dev_round",
    "best_dev_dev_audio_top1",
    "best_dev_audio_top1",
    "best_dev_audio_top5",
    "best_dev_audio_macro_f1",
    "best_dev_av_top1",
    # best dev over all rounds (summary.json "best_dev_all_rounds"; the headline above is chosen within the
    # method's product phases, e.g. ModalityMirror's phase 2)
    "all_best_dev_round",
    "all_best_dev_audio_top1",
    "all_best_dev_audio_top5",
    "all_best_dev_audio_macro_f1",
    # the model the first phase left behind, same run (summary.json "phases"): at its last round and at its
    # own best-dev round (ModalityMirror's phase 1, the paper's MultiFL)
    "phase1_round",
    "phase1_audio_top1",
    "phase1_audio_top5",
    "phase1_audio_macro_f1",
    "phase1_best_dev_round",
    "phase1_best_dev_audio_top1",
    "phase1_best_dev_audio_top5",
    "phase1_best_dev_audio_macro_f1",
    # mean of the last 5 evaluated rounds (summary.json "last5_mean")
    "last5_rounds",
    "last5_audio_top1",
    "last5_audio_top5",
    "last5_audio_macro_f1",
    # whether the last round is collapsed (summary.json "collapse")
    "audio_collapsed",
    "av_collapsed",
    "mb_per_round",
]


def summary_row(summary: dict) -> dict:
    """The runs.csv columns of one finished run's summary.json (None where an older run lacks a key)."""
    final = summary.get("final") or {}
    best = summary.get("best_dev") or {}
    last5 = summary.get("last5_mean") or {}
    collapse = summary.get("collapse") or {}
    row = {k: final.get(k) for k in ("audio_top1", "audio_top5", "audio_macro_f1", "av_top1")}
    row |= {"best_dev_round": best.get("round"), "best_dev_dev_audio_top1": best.get("dev_audio_top1")}
    row |= {f"best_dev_{k}": best.get(k) for k in ("audio_top1", "audio_top5", "audio_macro_f1", "av_top1")}
    every = summary.get("best_dev_all_rounds") or {}
    row |= {f"all_best_dev_{k}": every.get(k) for k in ("round", "audio_top1", "audio_top5", "audio_macro_f1")}
    phases = summary.get("phases") or {}
    order = [step["phase"] for step in summary.get("schedule") or []] or list(phases)
    first = phases.get(order[0], {}) if order else {}
    first_best = first.get("best_dev") or {}
    for k in ("round", "audio_top1", "audio_top5", "audio_macro_f1"):
        row[f"phase1_{k}"] = first.get(k)
        row[f"phase1_best_dev_{k}"] = first_best.get(k)
    row |= {"last5_rounds": last5.get("rounds")}
    row |= {f"last5_{k}": last5.get(k) for k in ("audio_top1", "audio_top5", "audio_macro_f1")}
    row |= {f"{m}_collapsed": (collapse.get(m) or {}).get("last_round_collapsed") for m in ("audio", "av")}
    return row


def collect(cells: list[Cell], out: Path) -> pd.DataFrame:
    rows = []
    for cell in cells:
        summary = out / "runs" / cell.key / "summary.json"
        row = {
            "method": cell.method,
            "missing_rate": cell.rate,
            "seed": cell.seed,
            "key": cell.key,
            "log": str(out / "logs" / f"{cell.key}.log"),
        }
        if summary.is_file():
            row.update(
                status="ok", **summary_row(json.loads(summary.read_text())), mb_per_round=_mb_per_round(out, cell)
            )
        elif (out / "logs" / f"{cell.key}.log").is_file():
            row.update(status="failed")
        else:
            row.update(status="not-run")
        rows.append(row)
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _mb_per_round(out: Path, cell: Cell) -> float | None:
    """Mean megabytes on the wire per round (to plus from the clients) of a finished run, whatever eval-every."""
    metrics = out / "runs" / cell.key / "metrics.csv"
    if not metrics.is_file():
        return None
    return megabytes_per_round(pd.read_csv(metrics))


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


PER_CELL = ("strategy", "missing-rate", "seed", "output-dir")  # run config keys each sweep run sets


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "") + "'"


def merged_run_config(
    preset: str, run_config: str, per_run_keys: tuple[str, ...] = PER_CELL, validate: bool = True
) -> str:
    """A preset file's keys as ``key=value`` pairs, overridden by ``run_config``; checked as a run would be.

    Flower takes either a TOML file or ``key=value`` pairs, never both, and every sweep run adds its own
    pairs (strategy, missing rate, seed), so the preset is turned into pairs here. The result is
    validated with RunConfig before anything starts (unless ``validate`` is false: the caller checks the run as a
    whole), so a typo costs a second.
    """
    import tomllib

    from mirror_app.core.config import RunConfig

    pairs: dict[str, str] = {}
    if preset:
        path = Path(preset).expanduser()
        if not path.is_file():
            raise SweepError(f"--preset {preset!r}: no such file (see conf/*.toml)")
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SweepError(f"--preset {preset!r} is not valid TOML: {exc}") from None
        pairs = {k: _toml_value(v) for k, v in table.items() if k not in per_run_keys}  # the sweep sets these
    try:
        given = parse_pairs(run_config)
    except ValueError as exc:  # a key given twice
        raise SweepError(str(exc)) from None
    for key, value in given.items():
        if key in per_run_keys:
            raise SweepError(f"--run-config {key}={value}: the sweep sets {', '.join(PER_CELL)} for each run itself")
        pairs[key] = value
    try:
        raw = pairs_to_values(pairs)
        if validate:
            RunConfig.from_dict(raw)
    except ValueError as exc:  # a value that is not TOML, a ConfigError
        raise SweepError(str(exc)) from None
    return " ".join(f"{k}={v}" for k, v in pairs.items())


def study_run_config(preset: str, run_config: str, data_dir: str = "") -> str:
    """A study's run config for every cell: the preset's keys under ``run_config``'s (:func:`merged_run_config`),
    and ``data_dir`` as the data-dir where neither names one (where the dataset and make pretrain's encoders are)."""
    from mirror_app.deploy.preflight import with_defaults

    return with_defaults(merged_run_config(preset, run_config), {"data-dir": f"'{data_dir}'"} if data_dir else {})


DATA_DIR_HELP = "the runs' data-dir (the dataset, make pretrain's encoders) where --run-config and the preset name none"


def flwr_runner(link, num_supernodes: int, extra_config: str, timeout: float):
    def run(cell: Cell, output_dir: Path, log: Path) -> bool:
        config = f"output-dir='{output_dir}' " + cell_run_config(cell, extra_config)
        res = link.flwr_run(
            ROOT,
            "--federation-config",
            f"num-supernodes={num_supernodes} {CLIENT_RESOURCES}",
            "--run-config",
            config,
            timeout=timeout,
            log_file=log,
        )
        return res.returncode == 0

    return run


def paired_points(a: pd.DataFrame, b: pd.DataFrame, rate: float, column: str = "best_dev_audio_top1") -> pd.Series:
    """100 x (``a``'s ``column`` minus ``b``'s), paired by seed at missing rate ``rate`` (so from the same phase 1 and
    partitions), in points; a seed missing from either side, or without a value, is left out."""
    x = a[np.isclose(a["missing_rate"], rate)].set_index("seed")[column]
    y = b[np.isclose(b["missing_rate"], rate)].set_index("seed")[column]
    both = x.index.intersection(y.index)
    return (100 * (pd.to_numeric(x[both], errors="coerce") - pd.to_numeric(y[both], errors="coerce"))).dropna()


def difference_cell(diff: pd.Series, count: bool = False) -> str:
    """A paired difference as a table cell: mean +- std over the pairs, '(no measurable effect)' where the mean is
    within one standard deviation of 0; 'n/a' without a pair; one pair has no spread and says so; ``count`` adds the
    number of pairs."""
    if diff.empty:
        return "n/a"
    if len(diff) == 1:
        return f"{diff.mean():+.1f} (one pair: no spread)"
    spread = float(diff.std(ddof=0))
    none = " (no measurable effect)" if abs(diff.mean()) <= spread else ""
    return f"{diff.mean():+.1f} +- {spread:.1f}{none}" + (f" (n = {len(diff)})" if count else "")
