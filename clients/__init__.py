"""Flower NumPyClients: one kind per modality a device has."""

from .audio import AudioClient
from .audiovisual import AudioVisualClient
from .base import GroupClient, LocalSettings, TaskError, Workspace

CLIENT_KINDS = {"audio": AudioClient, "audiovisual": AudioVisualClient}

__all__ = ["AudioClient", "AudioVisualClient", "GroupClient", "LocalSettings", "TaskError", "Workspace",
           "CLIENT_KINDS"]
