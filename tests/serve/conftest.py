"""A tiny Llama checkpoint with a tokenizer and a chat template, and servers on loopback.

Every server listens on 127.0.0.1 on a port the OS picks, runs in a thread of the test process
(so tests can read its engine's KV pool) and is stopped by its fixture.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### ASSISTANT:{% endif %}"
)
MODEL = "tiny-chat"
ENGINE = dict(kv_cache_memory=4 * 2**20, max_num_seqs=8, seed=0)
TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Serving systems batch requests, cache prefixes and stream tokens to clients.",
    "### USER: hello there\n### ASSISTANT: hi! how can I help you today?",
    "Numbers like 12, 345 and 6789 appear in text; so do symbols: {}, [], <>, ()!",
] * 20


@pytest.fixture(scope="session")
def model_dir(llama_dir, tmp_path_factory):
    """The suite's tiny random Llama (vocab 512) with a byte-level BPE tokenizer and a chat
    template of its own (not the server's default)."""
    from core.zoo.tokenizer import save_tokenizer, train_tokenizer

    path = tmp_path_factory.mktemp("serve-model")
    shutil.copytree(llama_dir, path, dirs_exist_ok=True)
    save_tokenizer(train_tokenizer(TEXTS, vocab_size=512), path, model_max_length=2048)
    cfg_file = path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_file.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="session")
def offline(model_dir):
    """``LLM`` on the same checkpoint and engine options: the reference outputs."""
    from core.engine import LLM

    return LLM(model_dir, **ENGINE)


@pytest.fixture(scope="session")
def serve_threads():
    """torch on one thread while the servers run (tiny tensors), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def start_server(model_dir, serve_threads):
    """``start_server(**options)`` -> a context manager yielding a started HttpServer on the
    tiny model (options: EngineOptions fields; ``engine=`` entries override ENGINE)."""
    from core.serve.server import EngineOptions, HttpServer, load_engine

    @contextmanager
    def start(**options):
        engine_kw = {**ENGINE, **options.pop("engine", {})}
        options.setdefault("served_model_name", MODEL)
        engine, cfg = load_engine(model_dir, EngineOptions(engine=engine_kw, **options))
        server = HttpServer(engine, cfg, "127.0.0.1", 0).start()
        try:
            yield server
        finally:
            server.stop()

    return start


@pytest.fixture(scope="session")
def server(start_server):
    """One server with default options, shared by the tests that do not change it."""
    with start_server() as s:
        yield s


def client_for(server, **kw):
    import openai

    kw.setdefault("api_key", "unused")
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30.0)
    return openai.OpenAI(base_url=f"{server.url}/v1", **kw)


@pytest.fixture
def client(server):
    c = client_for(server)
    yield c
    c.close()
