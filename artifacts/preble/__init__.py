"""Preble (ICLR'25): distributed prompt scheduling with E2 routing; see README.md."""
