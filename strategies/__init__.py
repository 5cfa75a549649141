"""The method registry: run config ``strategy`` is a short name below or a dotted class path.

A plug-in method is a subclass of :class:`strategies.base.PhasedStrategy` that declares its client tasks
(``client_tasks``), given as ``strategy = "my_package.my_module.MyStrategy"``. The sweep's method list and
labels come from here (classes with ``compared = True``, in this order).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from mirror_app.core.config import ConfigError, RunConfig

from .align import ModalityAlign, ModalityAlignETF, ModalityAlignRandom
from .base import Instruction, Phase, PhasedStrategy
from .distillation import FederatedDistillation
from .fedcmi import FedCMI
from .harmony import Harmony
from .modality_mirror import ModalityMirror, ModalityMirrorAgreement, ModalityMirrorControl
from .multifl import ModalityAwareFedAvg, MultiFLAudioHead, MultiFLAudioHeadProx
from .unifl import UniFL

STRATEGIES: dict[str, type[PhasedStrategy]] = {
    "modality-mirror": ModalityMirror,
    "modality-mirror-agreement": ModalityMirrorAgreement,
    "modality-mirror-control": ModalityMirrorControl,
    "harmony": Harmony,
    "multifl": ModalityAwareFedAvg,
    "multifl-av-head": MultiFLAudioHead,
    "multifl-av-head-prox": MultiFLAudioHeadProx,
    "unifl": UniFL,
    "fedcmi": FedCMI,
    "modality-align": ModalityAlign,
    "modality-align-random": ModalityAlignRandom,
    "modality-align-etf": ModalityAlignETF,
    "distill": FederatedDistillation,
}
ALIASES = {"modality-aware-fedavg": "multifl"}  # other names run config ``strategy`` accepts


def compared_methods() -> dict[str, str]:
    """The paper's comparison, as the sweep runs it: registry name -> label."""
    return {name: cls.display_name() for name, cls in STRATEGIES.items() if cls.compared}


def resolve_strategy(name: str) -> type[PhasedStrategy]:
    """Short name or ``package.module.Class`` -> strategy class; a ConfigError naming what is allowed."""
    name = ALIASES.get(name, name)
    if name in STRATEGIES:
        return STRATEGIES[name]
    if "." not in name:
        raise ConfigError(
            f"run config 'strategy' = {name!r} is invalid: one of {sorted(STRATEGIES | ALIASES)} "
            "or a dotted path to a PhasedStrategy subclass"
        )
    module_name, _, cls_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"run config 'strategy' = {name!r} is invalid: cannot import {name!r} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, PhasedStrategy)):
        raise ConfigError(
            f"run config 'strategy' = {name!r} is invalid: {name!r} is not a subclass of strategies.base.PhasedStrategy"
        )
    return cls


def resolve_config(raw: Mapping[str, Any]) -> tuple[RunConfig, type[PhasedStrategy]]:
    """A run config (pyproject defaults + ``raw`` + the run config the method fixes, its ``settings``),
    validated, and the strategy class it names. A ``raw`` value that departs from the default where the method
    fixes another one is refused (Flower hands the server every key, so a default is indistinguishable from
    one the user wrote: those are taken as the method's)."""
    cfg = RunConfig.from_dict(raw)
    cls = resolve_strategy(cfg.strategy)
    if not cls.settings:
        return cfg, cls
    given, default = cfg.to_dict(), RunConfig.default().to_dict()
    for key, value in cls.settings.items():
        if given[key] != value and given[key] != default[key]:
            raise ConfigError(
                f"run config '{key}' = {given[key]!r} is invalid with strategy {cfg.strategy!r}, which runs with "
                f"{key} = {value!r} (use the method it varies for another value)"
            )
    return RunConfig.from_dict({**raw, **cls.settings}), cls


__all__ = [
    "STRATEGIES",
    "compared_methods",
    "resolve_strategy",
    "resolve_config",
    "PhasedStrategy",
    "Phase",
    "Instruction",
    "ModalityMirror",
    "ModalityMirrorAgreement",
    "ModalityMirrorControl",
    "MultiFLAudioHeadProx",
    "ModalityAlignRandom",
    "ModalityAlignETF",
    "ModalityAwareFedAvg",
    "MultiFLAudioHead",
    "FederatedDistillation",
    "UniFL",
    "Harmony",
    "FedCMI",
    "ModalityAlign",
]
