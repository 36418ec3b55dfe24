"""The model zoo: small models trained in this repository on tasks it generates, so that what a
model *says* (accepted drafts, right steps, confident exits) means something.

- :mod:`core.zoo.tasks` (torch-free): the task generators and their exact checkers;
- :mod:`core.zoo.tokenizer`: the shared byte-level BPE tokenizer;
- :mod:`core.zoo.train`: the trainer (plain torch, our model modules, resumable);
- :mod:`core.zoo.recipes`: what each shipped model is and how it was trained;
- :mod:`core.zoo.evaluate`, :mod:`core.zoo.build`, :mod:`core.zoo.card`: measuring, building
  and describing the zoo; ``python -m core.zoo`` (``nox -s zoo``) rebuilds it.

The shipped models are Hugging Face folders under ``data/models/``; load one with
``core.engine.LLM("data/models/zoo-large")``.
"""
