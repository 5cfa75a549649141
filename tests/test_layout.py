"""The house rules: layered packages without cycles (import-linter), Flower names from their documented
paths, the sweep's methods from the registry."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PACKAGES, copy_packages

ROOT = Path(__file__).resolve().parents[1]
# where Flower 1.42 documents its app-facing names; a name that lives in one of these is imported from it
DOCUMENTED = ("flwr.app", "flwr.clientapp", "flwr.serverapp")
# the one compat module allowed: the Message <-> FitIns/FitRes conversion that Flower's own client mods
# (LocalDpMod, fixedclipping_mod) use, needed by a mod that wraps a NumPyClient's messages
MOD_CONVERSION = ("flwr.compat.common", "recorddict_compat")


def flwr_imports() -> list[tuple[str, int, str, str]]:
    """(file, line, module, name) of every ``from flwr... import name`` in the project and its tests."""
    out = []
    for folder in (*PACKAGES, "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flwr":
                    out += [(str(path.relative_to(ROOT)), node.lineno, node.module, a.name) for a in node.names]
    return out


def test_flower_names_come_from_the_paths_flower_documents():
    imports = flwr_imports()
    assert imports, "the project imports Flower somewhere"
    documented = {m: set(dir(importlib.import_module(m))) for m in DOCUMENTED}
    wrong = []
    for file, line, module, name in imports:
        if module.startswith(("flwr.compat", "flwr.simulation")) and (module, name) != MOD_CONVERSION:
            wrong.append(f"{file}:{line}: {module}.{name} (compat / deprecated simulation entry point)")
        home = next((m for m in DOCUMENTED if name in documented[m]), None)
        if home and module != home:
            wrong.append(f"{file}:{line}: {name} from {module}, documented in {home}")
    assert not wrong, "\n".join(wrong)


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "lint-imports"
    return subprocess.run(
        [str(exe)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": str(exe.parent), "PYTHONPATH": str(cwd)},
    )


def test_import_contracts_hold():
    res = lint_imports(ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(
    "file,line,contract",
    [
        ("mirror_app/core/config.py", "import strategies  # upward\n", "layers: bench > apps"),
        (
            "clients/base.py",
            "from strategies.fedcmi import client  # a base reaching into a plug-in\n",
            "layers: bench > apps",
        ),
        ("data/partition.py", "from data import cache  # fine by layers, but a cycle\n", "no import cycles"),
    ],
)
def test_import_contracts_catch_an_upward_import_and_a_cycle(tmp_path, file, line, contract):
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy)
    copy_packages(copy)
    target = copy / file
    target.write_text(target.read_text() + "\n" + line)
    if contract == "no import cycles":  # make data.cache import data.partition back
        cache = copy / "data/cache.py"
        cache.write_text(cache.read_text() + "\nfrom data import partition  # noqa\n")
    res = lint_imports(copy)
    assert res.returncode != 0
    assert f"{contract}" in res.stdout and "BROKEN" in res.stdout, res.stdout[-3000:]


def test_the_sweep_takes_its_methods_and_labels_from_the_registry():
    from mirror_app.studies import sweep
    from strategies import STRATEGIES

    assert sweep.METHODS == (
        "modality-mirror",
        "harmony",
        "multifl",
        "unifl",
        "fedcmi",
        "modality-align",
        "modality-mirror-agreement",
        "modality-mirror-control",
        "multifl-av-head",
        "multifl-av-head-prox",
        "modality-align-random",
        "modality-align-etf",
    )
    families = [STRATEGIES[m].family for m in sweep.METHODS]  # Table 1's rows grouped by family, in FAMILIES' order
    assert families == sorted(families, key=list(sweep.FAMILIES).index)
    assert all(STRATEGIES[m].display_name() == sweep.LABELS[m] for m in sweep.METHODS)
    assert "distill" not in sweep.METHODS and "modality-aware-fedavg" not in sweep.METHODS  # alias, not a method


def test_a_main_block_is_the_last_statement_of_its_module():
    """`python -m tool` runs the module top to bottom: a def or class below `if __name__ == "__main__"` does not exist
    yet when main() runs (an import of the module, as most tests do, would not notice)."""
    late = []
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            body = ast.parse(path.read_text()).body
            mains = [
                i for i, node in enumerate(body) if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
            ]
            if mains and mains[-1] != len(body) - 1:
                late.append(f"{path.relative_to(ROOT)}:{body[mains[-1] + 1].lineno}")
    assert not late, "statements below the __main__ block: " + ", ".join(late)


def test_the_heavy_first_order_names_test_files_that_exist():
    from conftest import HEAVY_FIRST

    assert len(set(HEAVY_FIRST)) == len(HEAVY_FIRST)
    assert [name for name in HEAVY_FIRST if not (ROOT / "tests" / name).is_file()] == []
