"""Errors raised while reading configs and checkpoints; each message names the file or key."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "MissingCheckpointFileError",
    "MissingWeightError",
    "UnknownArchitectureError",
]


class CheckpointError(Exception):
    """A checkpoint directory or config cannot be used as given."""


class ConfigError(CheckpointError, ValueError):
    """``config.json`` lacks a required key or asks for an unsupported feature."""


class UnknownArchitectureError(ConfigError):
    """``model_type`` names an architecture with no registered implementation."""


class MissingCheckpointFileError(CheckpointError, FileNotFoundError):
    """The directory, ``config.json``, a weights file or a shard is missing."""


class MissingWeightError(CheckpointError, KeyError):
    """A weight the model needs is not in the checkpoint."""

    def __str__(self) -> str:  # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""
