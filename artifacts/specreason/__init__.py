"""SpecReason (NeurIPS'25): speculative reasoning, one step at a time; see README.md."""
