"""The documentation tells the truth: the generated parts are what `make report` makes of pyproject.toml and the
records, every number of README.md is in a report (or is a setting), every command printed in README.md, docs/ and
CONTRIBUTING.md runs as written (the cheap ones for real, the long ones up to their checks), every relative link
resolves, and the README stays short."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def fenced(path: Path, language: str) -> list[str]:
    """The fenced code blocks of ``language`` in ``path``."""
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)


def commands(path: Path) -> list[str]:
    """Each command of the page's bash blocks: continuation lines joined, comments and blank lines dropped."""
    out = []
    for block in fenced(path, "bash"):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line, comments=True)
            if words:
                out.append(shlex.join(words))
    return out


ALL = [(path.relative_to(ROOT).as_posix(), cmd) for path in PAGES for cmd in commands(path)]
VENV_BIN = Path(sys.executable).parent


def test_the_pages_print_commands():
    assert len(ALL) > 30
    assert any(cmd == "make run" for _, cmd in ALL) and any(cmd == "make test" for _, cmd in ALL)


@pytest.mark.parametrize("page,command", ALL, ids=[f"{p}: {c[:60]}" for p, c in ALL])
def test_every_printed_command_runs_as_written(page, command, tmp_path):
    words = shlex.split(command)
    while re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the program
        words = words[1:]
    placeholder = any("<" in w and ">" in w for w in words)
    program = words[0]
    if program in ("export", "source"):
        return
    if program == "make":
        # a target and its variables as printed; make -n prints what it would run and fails on a bad target or
        # variable use (the recipes themselves run in the tests of each tool)
        res = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        return
    if program.endswith("python") and words[1:2] == ["-m"]:
        module, args = words[2], words[3:]
        if "--report-only" in args and not placeholder:  # cheap: print from the records, running nothing
            args += ["--out", str(tmp_path / "out")]
            res = subprocess.run(
                [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
            )
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
            return
        res = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
        return
    if words[:2] == ["flwr", "run"] and not placeholder:
        from mirror_app.deploy.preflight import pairs_to_values, parse_pairs
        from strategies import resolve_config

        given = words[words.index("--run-config") + 1] if "--run-config" in words else ""
        resolve_config(pairs_to_values(parse_pairs(given)))  # a bad key or value raises, as the ServerApp would
        return
    # everything else is a program of this venv or of the machine
    assert (VENV_BIN / program).exists() or subprocess.run(["which", program], capture_output=True).returncode == 0, (
        f"{program} is neither in the venv nor on PATH"
    )


def test_report_check_names_what_is_out_of_date_and_what_it_does_not_make(tmp_path):
    """`make report`'s check (run on the repository itself, with an empty HOME, by tests/test_newcomer.py): a file
    in docs/results that no report writes is named, as a stale page is."""
    from mirror_app.studies.report import orphans

    made = {tmp_path / "table1.md": b"page", tmp_path / "table1-curves.png": b"png"}
    for path, content in made.items():
        path.write_bytes(content)
    assert orphans(made, tmp_path) == []
    (tmp_path / "old-study.md").write_text("a study that is gone")
    assert orphans(made, tmp_path) == [tmp_path / "old-study.md"]
    assert orphans(made, tmp_path / "none") == []


def settings() -> set[str]:
    """Numbers that are settings, not measurements: every value of the run-config defaults and presets."""
    from mirror_app.studies.report import config_rows

    values = {value for _, value, _ in config_rows()}
    for preset in (ROOT / "conf").glob("*.toml"):
        values |= set(re.findall(r"=\s*([0-9.e-]+)\s*$", preset.read_text(), flags=re.M))
    return {str(float(v)) for v in values if re.fullmatch(r"[0-9.e-]+", v) and v not in ("-", ".")} | values


def test_every_number_in_the_readme_is_in_a_report_or_is_a_setting():
    text = (ROOT / "README.md").read_text()
    prose = re.sub(r"\[[^\]]*\]\([^)]*\)|https?://\S+|`[^`]*`|```.*?```", " ", text, flags=re.S)  # links, code
    numbers = set(re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", prose))
    reports = "".join(p.read_text() for p in (ROOT / "docs" / "results").glob("*.md"))
    known = settings()
    missing = sorted(n for n in numbers if n not in reports and n not in known and str(float(n)) not in known)
    assert not missing, f"numbers in README.md found in no report of docs/results: {missing}"


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    head = "\n".join(lines[:40])
    assert "make run" in head and "make test" in head


def test_every_relative_link_resolves():
    broken = []
    for page in [*PAGES, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs" / "results").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
