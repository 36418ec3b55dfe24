"""Fixtures of the results-site tests: real runs in a temporary results folder, the site built
from them, a local HTTP server for it and a headless Chromium.

The runs are real harness outputs: the toy artifact of tests/harness (one claim fails on
purpose) replaying a trace from a temporary folder (so its provenance holds machine paths the
site must not show), Splitwise at smoke scale, and a benchmark report from scripts/bench.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.artifact import RunOptions, Scale, run_artifact
from core.data import REPO_ROOT
from core.site import build_site

from .browser import LAUNCH_ARGS, find_chromium, install_chromium


def _bench_report() -> dict:
    from scripts.bench.report import make_report, provenance, target

    targets = [
        target(
            "tokens-vs-generate", "offline tokens/s of our engine / generate", 2.5, ">=", 2.0, "x"
        ),
        target("ttft-hit", "TTFT with a prefix hit / without", 0.7, "<=", 0.5, "x"),
        target("gpu-only", "needs a GPU", None, ">=", 1.0, "x", reason="no GPU on this machine"),
    ]
    results = {"offline": {"vs_generate": {"ratio": 2.5, "ours": 250.0, "peer": 100.0}}}
    return make_report("toybench", {"scale": "quick"}, results, targets, provenance(), 1.5)


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory) -> Path:
    """A results folder with two artifact runs and one benchmark report."""
    from artifacts.splitwise import ARTIFACT as SPLITWISE
    from scripts.bench.report import write_json
    from tests.harness.toy_artifact import TOY

    root = tmp_path_factory.mktemp("site-results")
    secret = tmp_path_factory.mktemp("private-machine-folder")
    trace = secret / "trace.txt"
    trace.write_text("one\ntwo\n")
    quick = {"scale": Scale.SMOKE, "jobs": 1, "progress": False}
    run_artifact(TOY, RunOptions(out=root / "toy", trace=trace, **quick))
    run_artifact(SPLITWISE, RunOptions(out=root / "splitwise", **quick))
    write_json(root / "bench" / "toybench.json", _bench_report())
    return root


@pytest.fixture(scope="session")
def site_dir(results_dir, tmp_path_factory) -> Path:
    """The site built from :func:`results_dir` and the repository's artifact folders."""
    out = tmp_path_factory.mktemp("site-out") / "site"
    build_site(out, results_dir, REPO_ROOT / "artifacts")
    return out


@pytest.fixture(scope="session")
def empty_site_dir(tmp_path_factory) -> Path:
    """A site built from nothing: no results, no artifact folders, no benchmarks."""
    base = tmp_path_factory.mktemp("empty")
    (base / "results").mkdir()
    (base / "artifacts").mkdir()
    build_site(base / "site", base / "results", base / "artifacts")
    return base / "site"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture(scope="session")
def serve() -> Iterator:
    """``serve(folder)`` starts an HTTP server on 127.0.0.1 for ``folder`` and returns its
    base URL; every server stops at the end of the session."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of a Chromium on this machine, installed with apt-get if there is none."""
    path = find_chromium()
    if path is None:
        path, why = install_chromium()
        if path is None:
            pytest.skip(f"no headless Chromium for the site's browser tests: {why}")
    return path


@pytest.fixture(scope="module")
def browser(chromium) -> Iterator:
    """Playwright driving ``chromium``, for one test module: while Playwright runs, its event
    loop counts as running on this thread and ``asyncio.run`` in any later test would fail, so
    it stops with the module, not with the session."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is in the test extra: pip install -e '.[test]'"
    )
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator:
    """A fresh page that records console errors, uncaught script errors, failed requests and
    HTTP error responses in ``page.problems``."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    page.problems = problems
    yield page
    context.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    """Where the browser tests leave screenshots for people to look at (pytest's temporary
    folder of this session; the path is printed)."""
    path = tmp_path_factory.getbasetemp() / "site-screenshots"
    path.mkdir(exist_ok=True)
    return path
