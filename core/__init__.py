"""Servelab core: the shared library of LLM-serving primitives.

Subpackages (see the repository README for the map):

- ``core.workload``: the request/session schema, trace loaders, arrival processes, generators.
- ``core.artifact``: the artifact harness (scales, sweeps, claims, provenance, figures).
- ``core.data``: where shipped data lives, and a record of which data files a run read.
"""

__version__ = "0.1.0"
