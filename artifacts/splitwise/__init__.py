"""Splitwise (ISCA'24): the characterization of the Azure LLM inference trace it released."""

from .artifact import ARTIFACT

__all__ = ["ARTIFACT"]
