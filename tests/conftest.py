"""Suite-wide settings and the fixtures that tests in several folders share.

Under CI, hypothesis runs derandomized so a green main stays green (locally it keeps exploring
new examples; a failure prints its reproduction). torch and transformers are imported inside
the fixtures that need them, so a run of the torch-free tests does not load them.
"""

import os
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

TESTS = Path(__file__).resolve().parent
# Folders whose every test runs torch on one thread (see ``one_thread``).
ONE_THREAD_DIRS = frozenset({"engine", "kernels", "model"})


@pytest.fixture
def restore_threads():
    """torch's thread count as it was before the test, whatever the test sets."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread(restore_threads):
    """torch on one thread during the test: tiny tensors run faster on one thread, and far
    faster when other jobs share the cores."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread_dirs(request):
    """``one_thread`` for every test in ``ONE_THREAD_DIRS``."""
    if Path(request.path).resolve().relative_to(TESTS).parts[0] in ONE_THREAD_DIRS:
        request.getfixturevalue("one_thread")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    """A tiny random Llama (``tests.model.conftest.build_hf``) saved with save_pretrained;
    shared by the whole session, so tests copy it before changing it."""
    from tests.model.conftest import build_hf

    path = tmp_path_factory.mktemp("llama")
    build_hf("llama").save_pretrained(path)
    return path
