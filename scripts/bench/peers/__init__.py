"""The engine benchmark's peer comparison (``python -m scripts.bench engine --peers``): our
engine against vLLM's CPU build and llama.cpp on the same model and workload, interleaved.

- :mod:`.envs`: one cached venv per peer and version, built on first use;
- :mod:`.systems`: the systems, their install recipes, model conversion (GGUF for llama.cpp);
- :mod:`.tokenizer`: the SentencePiece tokenizer the GGUF converter needs;
- :mod:`.compare`: jobs, the interleaved order, ratios, agreement of greedy outputs;
- :mod:`.run`: worker processes and the interleaved rounds;
- :mod:`.bench`: the part as the engine benchmark runs it, its targets and tables.
"""
