"""Flower NumPyClients: one kind per modality a device has, and the shared client tasks."""

from .base import CLIENT_KINDS, AudioClient, AudioVisualClient, GroupClient, Task, TaskError, Workspace

__all__ = ["AudioClient", "AudioVisualClient", "GroupClient", "Task", "TaskError", "Workspace", "CLIENT_KINDS"]
