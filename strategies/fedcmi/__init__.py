"""FedCMI (cross-modal infiltration): server part, client tasks, losses and model parts."""

from .server import FedCMI

__all__ = ["FedCMI"]
