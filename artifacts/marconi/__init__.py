"""Marconi (MLSys'25): prefix caching for hybrid (attention + SSM) LLMs; see README.md."""
