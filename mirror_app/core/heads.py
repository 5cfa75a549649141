"""Classifier heads and calibrated label losses: the field's remedies for label skew, as capabilities of every
model and every client task (run config ``classifier``, ``classifier-heads``, ``loss-calibration``), never of a
method.

Heads (``classifier``; ``classifier-heads`` says which of the audio head and the fusion head take it):

* ``linear``: ``nn.Linear``, trained (the paper's; the default until the head-drift study chose ``etf``).
* ``fixed-random`` (FedBABU, Oh, Kim and Yun, ICLR 2022): the same ``nn.Linear``, randomly initialised by the
  server's seed (PyTorch's default init, with a bias) and never trained: the clients learn the body under it, so
  no round's draw of labels can tip it.
* ``etf`` (FedETF, Li et al., ICCV 2023, as its code builds it): a learnable projection (``nn.Linear`` to K
  dimensions, K the classes), L2-normalised, against a fixed simplex equiangular tight frame V (K x K: unit columns
  with pairwise cosine -1/(K-1)), scaled by a learnable temperature beta (initialised at 10, the code's value for
  small CNNs): logits = beta x normalise(P z) V. V is a buffer of the head: part of its group and of the exported
  graph, the same on every node, never trained.

Calibrated label losses (``loss-calibration``), from the client's own counts n_c of each class, in training only
(evaluation reads the raw logits):

* ``fedlc`` (FedLC, Zhang et al., ICML 2022): logits z_c - tau x n_c^(-1/4) (``fedlc-tau``), absent classes left
  out of the softmax (n_c = 0: minus infinity), then the cross-entropy;
* ``fedrs`` (FedRS, Li and Zhan, KDD 2021, as its official code scales them): logits times a_c = alpha + (1 -
  alpha) x n_c / max n (``fedrs-alpha``): alpha for absent classes, 1 for the client's most frequent one;
* ``balanced`` (the balanced softmax FedETF trains with): logits + log n_c (absent classes: + 0);
* ``restricted`` (``restricted-softmax = true``, this project's earlier switch): absent classes left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CLASSIFIERS = ("linear", "fixed-random", "etf")
HEADS = ("audio", "fusion")  # the heads classifier-heads may name
CALIBRATIONS = ("none", "fedlc", "fedrs", "balanced")
ETF_TEMPERATURE = 10.0  # FedETF's code initialises its learnable scale at 10 for small CNNs (1 for ResNets)
ETF_SEED = 2023  # the frame's own generator: the same V whatever the run's seed


def simplex_etf(num_classes: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A (dim x num_classes) simplex equiangular tight frame: sqrt(K / (K - 1)) U (I - 11^T / K), U with orthonormal
    columns (the Q factor of a random matrix, as FedETF's code draws it). Its columns have norm 1 and pairwise
    cosine -1 / (K - 1); they sum to zero. Needs dim >= num_classes."""
    k = num_classes
    if k < 2:
        raise ValueError(f"a simplex ETF needs at least 2 classes, got {k}")
    if dim < k:
        raise ValueError(f"a simplex ETF of {k} classes needs at least {k} dimensions, got {dim}")
    a = torch.rand(dim, k, generator=generator, dtype=torch.float64)
    u, _ = torch.linalg.qr(a)  # (dim, k), orthonormal columns
    centred = torch.eye(k, dtype=torch.float64) - torch.full((k, k), 1.0 / k, dtype=torch.float64)
    return (torch.sqrt(torch.tensor(k / (k - 1), dtype=torch.float64)) * u @ centred).float()


class FixedLinear(nn.Linear):
    """FedBABU's head: an ``nn.Linear`` whose weight and bias never train (``requires_grad`` off, so the local loop
    leaves them out of its optimiser); they stay what the server's seed made them."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)


class ETFHead(nn.Module):
    """FedETF's classifier: a learnable projection to K dimensions, L2-normalised, against a fixed simplex ETF,
    scaled by a learnable temperature."""

    etf: torch.Tensor
    fixed_buffers = ("etf",)  # never released: no client changes it, and DP must not noise it (fixed_keys)

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, num_classes  # as nn.Linear's (what methods read)
        self.proj = nn.Linear(in_features, num_classes)
        generator = torch.Generator().manual_seed(ETF_SEED)
        self.register_buffer("etf", simplex_etf(num_classes, num_classes, generator))
        self.scale = nn.Parameter(torch.tensor(ETF_TEMPERATURE))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(self.proj(z), dim=1) @ self.etf


def fixed_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of ``model`` that nothing trains: parameters with ``requires_grad`` off (a fixed random
    head) and the buffers a module declares fixed (``fixed_buffers``: the ETF frame). A round must leave them as they
    are: the server keeps its value under DP and secure aggregation, and a local-DP client sends them back as
    received."""
    keys = {name for name, p in model.named_parameters() if not p.requires_grad}
    for prefix, module in model.named_modules():
        for buffer in getattr(module, "fixed_buffers", ()):
            keys.add(f"{prefix}.{buffer}" if prefix else buffer)
    return keys


def make_head(kind: str, in_features: int, num_classes: int) -> nn.Module:
    """A classifier head of ``kind`` (one of CLASSIFIERS)."""
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "fixed-random":
        return FixedLinear(in_features, num_classes)
    if kind == "etf":
        return ETFHead(in_features, num_classes)
    raise ValueError(f"classifier {kind!r} is unknown; one of {list(CLASSIFIERS)}")


@dataclass(frozen=True)
class Calibration:
    """A client's calibrated label loss: its class counts and the rule (``kind``: fedlc, fedrs, balanced,
    restricted)."""

    kind: str
    counts: torch.Tensor  # (classes,) this client's examples of each class
    tau: float = 1.0  # fedlc
    alpha: float = 0.5  # fedrs

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The training logits of this rule (evaluation reads the raw ones)."""
        n = self.counts.to(logits.device, dtype=logits.dtype)
        absent = n <= 0
        if self.kind == "fedlc":
            shift = self.tau * n.clamp(min=1e-12).pow(-0.25)
            return (logits - shift).masked_fill(absent, float("-inf"))
        if self.kind == "fedrs":
            return logits * (self.alpha + (1 - self.alpha) * n / n.max().clamp(min=1e-12))
        if self.kind == "balanced":
            return logits + torch.where(absent, torch.zeros_like(n), n.clamp(min=1e-12).log())
        if self.kind == "restricted":
            return logits.masked_fill(absent, float("-inf"))
        raise ValueError(f"calibration {self.kind!r} is unknown")


def calibrated_ce(logits: torch.Tensor, labels: torch.Tensor, calibration: Calibration | None = None) -> torch.Tensor:
    """The label cross-entropy, on the client's calibrated logits where it has a calibration."""
    return F.cross_entropy(calibration(logits) if calibration is not None else logits, labels)
