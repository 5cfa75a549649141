"""Modality alignment with federated broadcasting: server part, client tasks, model and loss, text anchors."""

from .server import ModalityAlign, ModalityAlignETF, ModalityAlignRandom

__all__ = ["ModalityAlign", "ModalityAlignRandom", "ModalityAlignETF"]
