"""InferCept (ICML'24): serving LLMs that pause for tools; see README.md."""
