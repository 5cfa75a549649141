"""``make clean``: delete what runs and tests wrote inside the checkout, say what goes and what stays.

    python -m mirror_app.clean [--exports] [--dry-run]

Deleted: ``results/`` (every run folder, its checkpoints and logs, the studies' outputs) and ``.pytest_cache``.
Kept unless ``--exports``: every exported model under ``results/`` (a folder holding ``model.onnx``, what ``make
export`` writes), with the folders above it. Never touched: the venv, the records in ``docs/records`` and the data
directory outside the checkout (the dataset and the pretrained encoders), whose size the last line gives.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def size(path: Path) -> int:
    """Bytes under ``path`` (a file or a folder; 0 when missing)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def exports(results: Path) -> list[Path]:
    """The exported models under ``results``: folders holding a model.onnx."""
    return sorted(p.parent for p in results.rglob("model.onnx")) if results.is_dir() else []


def doomed(results: Path, keep: list[Path]) -> list[Path]:
    """The paths under ``results`` to delete so that everything but ``keep`` (and the folders above them) goes."""
    if not keep:
        return [results] if results.exists() else []
    out: list[Path] = []
    for child in sorted(results.iterdir()):
        if any(child == k for k in keep):
            continue
        if child.is_dir() and any(child in k.parents for k in keep):
            out += doomed(child, keep)
        else:
            out.append(child)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Delete results/ and .pytest_cache, keeping exported models unless told.")
    p.add_argument("--exports", action="store_true", help="delete the exported models under results/ too")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    p.add_argument("--root", default=".", help="the checkout (default: this folder, where make runs)")
    p.add_argument("--data-dir", default="~/.cache/modality-mirror", help="the data directory named in the last line")
    args = p.parse_args(argv)
    root = Path(args.root).absolute()
    results = root / "results"
    keep = [] if args.exports else exports(results)
    targets = doomed(results, keep) + [p for p in (root / ".pytest_cache",) if p.exists()]
    verb = "would delete" if args.dry_run else "deleting"
    if not targets:
        print("nothing to delete")
    for path in targets:
        print(f"{verb} {path.relative_to(root)} ({megabytes(size(path))})")
        if not args.dry_run:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for folder in keep:
        print(
            f"kept the export {folder.relative_to(root)} ({megabytes(size(folder))}; make clean EXPORTS=1 deletes it)"
        )
    data = Path(args.data_dir).expanduser()
    if data.is_dir():
        print(f"kept {data} (the datasets and pretrained encoders, {megabytes(size(data))}; outside the checkout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
