"""Decoding with PyAV (FFmpeg's libraries): a clip's first seconds of audio and its middle frame.

Every failure that is a property of the file (no audio stream, silence, unreadable data)
raises :class:`Skip` with a short reason, so that preprocessing reports it and goes on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .features import SAMPLE_RATE

SILENCE = 1e-4  # peak amplitude (full scale 1.0) under which a clip counts as silent


class Skip(Exception):
    """This file cannot give a sample; ``str(exc)`` is the reason (``no-audio``, ``silent``, ``corrupt: ...``)."""


def quiet() -> None:
    """Keep FFmpeg's own warnings about damaged files off the console (they become Skip reasons)."""
    import av.logging

    av.logging.set_level(av.logging.PANIC)


def _errors() -> tuple[type[BaseException], ...]:
    import av

    return (av.FFmpegError, EOFError, UnicodeDecodeError, IndexError, ValueError)


def audio(path: str | Path, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first ``seconds`` of the file's first audio stream, mono float32 at ``sample_rate``."""
    import av

    want = int(round(seconds * sample_rate))
    chunks, have = [], 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise Skip("no-audio" if container.streams.video else "corrupt: no audio or video stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    have += chunk.size
                if have >= want:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
    except Skip:
        raise
    except _errors() as exc:
        raise Skip(f"corrupt: {type(exc).__name__}: {exc}") from None
    wave = np.concatenate(chunks)[:want].astype(np.float32) if chunks else np.zeros(0, np.float32)
    if wave.size == 0 or float(np.abs(wave).max()) < SILENCE:
        raise Skip("silent")
    return wave


def middle_frame(path: str | Path) -> np.ndarray:
    """The frame at half the video's duration, as uint8 RGB (H, W, 3)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise Skip("no-video")
            stream = container.streams.video[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1e6
            frame = None
            if duration and duration > 0:
                target = duration / 2
                container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
                for f in container.decode(stream):
                    frame = f
                    if f.time is not None and f.time >= target:
                        break
            if frame is None:  # no duration (or seeking found nothing): count, then decode again
                container.seek(0)
                count = sum(1 for _ in container.decode(stream))
                if count == 0:
                    raise Skip("corrupt: no video frames")
                container.seek(0)
                for i, f in enumerate(container.decode(stream)):
                    if i == count // 2:
                        frame = f
                        break
            return frame.to_ndarray(format="rgb24")
    except Skip:
        raise
    except _errors() as exc:
        raise Skip(f"corrupt: {type(exc).__name__}: {exc}") from None


def image(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise Skip(f"corrupt: {type(exc).__name__}: {exc}") from None
