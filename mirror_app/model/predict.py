"""Run an exported audio model on real files.

    python -m mirror_app.model.predict --model results/<run>/export clip.wav song.mp3 video.mp4 folder/
    python -m mirror_app.model.predict --model ... --csv predictions.csv --top-k 3 folder/

Audio files (wav, flac, mp3, ogg, m4a, ...) and video files (their first audio track) are decoded with the
project's own decoder (data.decode, PyAV) to mono 16 kHz, and turned into features by the same code as
training (data.features.log_mel and normalise, with the settings in the export's model.json). A file as
long as the training clip or shorter is scored once (shorter ones are zero-padded, as in training); a
longer one is scored over windows of the clip length every half clip, the last window ending at the end
of the file (at most --max-seconds are read), and the window probabilities are averaged. The ONNX model
runs in ONNX Runtime (CPU).

A file that cannot be scored (unreadable, empty, no audio stream, silent) gets one line saying why; the
other files are still scored, and the exit status is 1. A model folder that is not an export of this
version stops everything with exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mirror_app.model.export import EXPORT_FORMAT

MEDIA_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".mp4", ".avi", ".mkv", ".mov", ".webm"}


class ModelError(ValueError):
    """The model folder cannot be used."""


@dataclass
class Prediction:
    path: str
    windows: int = 0
    top: list[tuple[str, float]] | None = None
    error: str = ""


class Predictor:
    """An export folder, loaded: ``score(path)`` -> Prediction."""

    def __init__(self, folder: str | Path, max_seconds: float = 60.0):
        from data.features import FeatureSpec, front_end

        self.folder = Path(folder).expanduser()
        meta_path, onnx_path = self.folder / "model.json", self.folder / "model.onnx"
        if not meta_path.is_file() or not onnx_path.is_file():
            raise ModelError(
                f"{folder} is not an export folder (model.json and model.onnx expected; make one with "
                "`python -m mirror_app.model.export <run folder>`)"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{meta_path} is not valid JSON ({exc})") from None
        if meta.get("format") != EXPORT_FORMAT:
            raise ModelError(
                f"{folder} was exported in format {meta.get('format')!r}, this version reads format "
                f"{EXPORT_FORMAT}: export the run again with this version"
            )
        fe = meta["front_end"]
        self.spec = FeatureSpec(num_mel_bins=int(fe["num_mel_bins"]), audio_seconds=float(fe["audio_seconds"]))
        ours = front_end(self.spec, fe["normalisation"])
        if ours != fe:
            raise ModelError(f"{folder} was made with another front end ({fe}) than this version computes ({ours})")
        import onnxruntime as ort

        self.meta = meta
        self.norm = fe["normalisation"]
        self.classes = list(meta["classes"])
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.max_seconds = max_seconds

    def features(self, wave: np.ndarray) -> tuple[np.ndarray, int]:
        """(windows, frames, mels) features of a mono 16 kHz waveform, and the number of windows."""
        from data.features import log_mel, normalise

        clip = self.spec.num_samples
        if wave.size <= clip:
            starts = [0]
        else:
            hop = max(clip // 2, 1)
            starts = list(range(0, wave.size - clip + 1, hop))
            if starts[-1] != wave.size - clip:
                starts.append(wave.size - clip)  # the last window ends at the end of the file
        feats = np.stack([normalise(log_mel(wave[s : s + clip], self.spec), self.norm) for s in starts])
        return feats.astype(np.float32), len(starts)

    def score(self, path: str | Path, top_k: int = 5) -> Prediction:
        from data import decode

        out = Prediction(str(path))
        if not Path(path).exists():
            out.error = "no such file"
            return out
        try:
            if Path(path).is_file() and Path(path).stat().st_size == 0:
                raise decode.Skip("empty file")
            wave = decode.audio(path, self.max_seconds)
        except decode.Skip as exc:
            out.error = {"no-audio": "no audio stream"}.get(str(exc), str(exc))
            return out
        except OSError as exc:
            out.error = f"unreadable: {exc.strerror or exc}"
            return out
        feats, out.windows = self.features(wave)
        probs = self.session.run(["probabilities"], {"features": feats})[0].mean(axis=0)
        order = np.argsort(-probs)[:top_k]
        out.top = [(self.classes[i], float(probs[i])) for i in order]
        return out


def expand(paths: list[str]) -> list[Path]:
    """Files as given; folders -> their media files (by suffix), sorted, recursively."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES)
        else:
            out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Score audio or video files with an exported audio model.")
    p.add_argument("--model", required=True, help="an export folder (python -m mirror_app.model.export)")
    p.add_argument("paths", nargs="+", help="audio or video files, or folders of them")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--csv", default="", help="also write one row per file to this CSV")
    p.add_argument("--max-seconds", type=float, default=60.0, help="read at most this much of each file")
    args = p.parse_args(argv)
    if args.top_k < 1:
        print("predict: --top-k must be >= 1", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(args.model, args.max_seconds)
    except ModelError as exc:
        print(f"predict: {exc}", file=sys.stderr)
        return 2
    files = expand(args.paths)
    if not files:
        print(
            f"predict: no media files in {args.paths} (suffixes: {', '.join(sorted(MEDIA_SUFFIXES))})", file=sys.stderr
        )
        return 1
    clip = predictor.spec.audio_seconds
    print(
        f"{predictor.meta['method']} model, {len(predictor.classes)} classes; files scored over {clip:g} s "
        f"windows (shorter files zero-padded, longer ones averaged over windows every {clip / 2:g} s)"
    )
    results = []
    for f in files:
        r = predictor.score(f, args.top_k)
        results.append(r)
        if r.error:
            print(f"{f}: cannot score: {r.error}")
        else:
            top = ", ".join(f"{name} {prob:.3f}" for name, prob in r.top or [])
            print(f"{f}: {top} ({r.windows} window{'s' if r.windows != 1 else ''})")
    if args.csv:
        k = args.top_k
        with open(args.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(
                ["path", "status", "windows"] + [f"{x}{i}" for i in range(1, k + 1) for x in ("class", "p")] + ["error"]
            )
            for r in results:
                top = [v for name, prob in (r.top or []) for v in (name, f"{prob:.6f}")]
                top += [""] * (2 * k - len(top))
                w.writerow([r.path, "error" if r.error else "ok", r.windows] + top + [r.error])
    failed = sum(1 for r in results if r.error)
    if failed:
        print(f"{failed} of {len(results)} files could not be scored", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
