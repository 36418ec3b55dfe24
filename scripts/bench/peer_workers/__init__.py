"""Worker scripts the engine benchmark's peer comparison runs, one per system, each in that
system's own interpreter (a peer's cached venv, or the project's for ours). They import only the
standard library and their own system; the protocol is in ``_protocol.py``."""
