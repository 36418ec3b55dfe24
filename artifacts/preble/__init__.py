"""Preble (ICLR'25): distributed prompt scheduling with E2 routing; see README.md.

Importing the package registers Preble's local scheduler as the queue policy
``"preble-priority"`` (:mod:`.priority`)."""

from . import priority as priority
