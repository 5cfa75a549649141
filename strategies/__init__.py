"""Strategies, selected by run config ``strategy``: a short name below or a dotted class path.

A plug-in strategy is a subclass of :class:`strategies.base.PhasedStrategy`, given as
``strategy = "my_package.my_module.MyStrategy"``.
"""

from __future__ import annotations

import importlib

from .align import ModalityAlign
from .base import Instruction, Phase, PhasedStrategy
from .distillation import FederatedDistillation
from .fedcmi import FedCMI
from .harmony import Harmony
from .modality_aware import ModalityAwareFedAvg
from .modality_mirror import ModalityMirror
from .unifl import UniFL

STRATEGIES: dict[str, type[PhasedStrategy]] = {
    "modality-mirror": ModalityMirror,
    "multifl": ModalityAwareFedAvg,
    "modality-aware-fedavg": ModalityAwareFedAvg,
    "distill": FederatedDistillation,
    "unifl": UniFL,
    "harmony": Harmony,
    "fedcmi": FedCMI,
    "modality-align": ModalityAlign,
}


def resolve_strategy(name: str) -> type[PhasedStrategy]:
    """Short name or ``package.module.Class`` -> strategy class."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    if "." not in name:
        raise KeyError(f"one of {sorted(STRATEGIES)} or a dotted path to a PhasedStrategy subclass")
    module_name, _, cls_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise KeyError(f"cannot import {name!r} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, PhasedStrategy)):
        raise KeyError(f"{name!r} is not a subclass of strategies.base.PhasedStrategy")
    return cls


__all__ = ["STRATEGIES", "resolve_strategy", "PhasedStrategy", "Phase", "Instruction", "ModalityMirror",
           "ModalityAwareFedAvg", "FederatedDistillation", "UniFL", "Harmony", "FedCMI",
           "ModalityAlign"]
