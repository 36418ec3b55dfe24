"""An OpenAI-compatible HTTP server on the real engine (``servelab serve MODEL``).

- :mod:`core.serve.engine`: :class:`AsyncEngine`, one driver thread stepping the engine
  replicas, reached from asyncio through per-request streams; :mod:`core.serve.remote`:
  replicas as Ray actors;
- :mod:`core.serve.protocol`: the OpenAI request models and error bodies;
- :mod:`core.serve.text`: tokenizing, chat templates, streaming detokenization, stop strings;
- :mod:`core.serve.app`: the FastAPI app; :mod:`core.serve.metrics`: ``/metrics``;
- :mod:`core.serve.server`: model loading and uvicorn; :mod:`core.serve.cli`: the command line.

It needs the ``serve`` extra (``pip install -e '.[serve]'``: FastAPI and uvicorn); the rest of
``core`` does not. Design, options and status codes: docs/core/serve.md.
"""

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"core.serve needs the 'serve' extra ({exc.name} is missing): pip install -e '.[serve]'"
    ) from exc
