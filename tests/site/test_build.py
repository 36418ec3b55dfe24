"""The site builder without a browser: what it collects, what it refuses, what it never shows."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from core.data import REPO_ROOT
from core.site import Scrubber, SiteError, build_site, collect_artifacts
from core.site.__main__ import main
from core.site.build import MARKER, cell_text, format_duration, format_number
from core.site.collect import (
    artifact_folders,
    bench_command,
    bench_ratios,
    public_command,
    readme_facts,
)


def _texts(folder: Path):
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".html", ".json", ".csv", ".css", ".js"):
            yield path, path.read_text(encoding="utf-8")


def test_scrubber_makes_paths_relative_or_anonymous(tmp_path):
    s = Scrubber([tmp_path / "repo"])
    assert s.path(str(tmp_path / "repo" / "data" / "x.csv")) == "data/x.csv"
    assert s.path("/home/someone/secret/trace.jsonl") == "…/trace.jsonl"
    text = f"nox -s artifact-x -- --trace {tmp_path}/repo/data/t.csv --out /tmp/abc/out"
    assert s.text(text) == "nox -s artifact-x -- --trace data/t.csv --out …/out"
    for kept in ("tokens/s", "A/B test", "https://arxiv.org/abs/2401.1", "1/5/15-minute"):
        assert s.text(kept) == kept
    value = {"host": {"hostname": "box", "cpu_count": 2}, "argv": ["/usr/bin/python"], "n": 1.5}
    assert s.value(value) == {"host": {"cpu_count": 2}, "n": 1.5}
    assert s.value({f"{tmp_path}/repo/d.csv": "ab"}) == {"d.csv": "ab"}


def test_public_command_drops_a_private_out_folder(tmp_path):
    s = Scrubber([tmp_path])
    cmd = f"nox -s artifact-t -- --scale smoke --trace {tmp_path}/data/t.csv --out /tmp/x/out"
    assert public_command(cmd, s) == "nox -s artifact-t -- --scale smoke --trace data/t.csv"
    kept = f"nox -s artifact-t -- --out {tmp_path}/results/t"
    assert public_command(kept, s) == "nox -s artifact-t -- --out results/t"


def test_bench_command_comes_from_the_recorded_argv(tmp_path):
    s = Scrubber([tmp_path])
    report = {
        "benchmark": "engine",
        "provenance": {"argv": [f"{tmp_path}/x.py", "engine", "--quick"]},
    }
    assert bench_command(report, "engine", s) == "nox -s bench -- engine --quick"
    assert bench_command({"benchmark": "serve"}, "serve", s) == "nox -s bench -- serve"


def test_formatting():
    assert format_number(1469.0) == "1469"
    assert format_number(9.923456) == "9.923"
    assert format_number(None) == "—"
    assert format_number(float("nan")) == "—"
    assert format_duration(2.61) == "2.6 s" and format_duration(303) == "5 min 3 s"
    assert format_duration(3840) == "1 h 4 min"
    assert cell_text("80.99999999999999") == "81" and cell_text("0.005") == "0.005"
    assert cell_text("12") == "12" and cell_text("coding") == "coding" and cell_text("") == ""


def test_readme_facts_reads_the_heading_and_first_paragraph(tmp_path):
    (tmp_path / "README.md").write_text(
        "# Foo (X'25): bar\n\n*Foo: a paper*, A. Author. Code: [a/b](https://x.y/a/b).\n\n"
        "Second paragraph.\n"
    )
    assert readme_facts(tmp_path / "README.md") == (
        "Foo (X'25): bar",
        "Foo: a paper, A. Author. Code: a/b.",
    )


def test_bench_ratios_find_ratios_anywhere():
    results = {"peers": {"t1": {"ratios": {"vllm": {"ratio": 1.2, "ours": 3}}}}, "overhead": 0.02}
    assert bench_ratios(results) == [("peers / t1 / ratios / vllm", 1.2), ("overhead", 0.02)]


def test_discovers_artifact_folders_not_a_fixed_list(tmp_path):
    arts = tmp_path / "artifacts"
    for name in ("alpha", "beta", "_private"):
        (arts / name).mkdir(parents=True)
        (arts / name / "__main__.py").write_text("")
    (arts / "not-an-artifact").mkdir()
    assert artifact_folders(arts) == ["alpha", "beta"]
    pages = collect_artifacts(arts, tmp_path / "no-results", Scrubber([tmp_path]))
    assert [(p.name, p.ran, p.command) for p in pages] == [
        ("alpha", False, "nox -s artifact-alpha"),
        ("beta", False, "nox -s artifact-beta"),
    ]
    (tmp_path / "results" / "beta" / "points").mkdir(parents=True)
    (tmp_path / "results" / "beta" / "points" / "abc.json").write_text("{}")
    pages = collect_artifacts(arts, tmp_path / "results", Scrubber([tmp_path]))
    assert [(p.ran, p.stored_points) for p in pages] == [(False, 0), (False, 1)]
    real = artifact_folders(REPO_ROOT / "artifacts")
    assert {"marconi", "splitwise"} <= set(real)


def test_site_holds_every_page_and_file(site_dir, results_dir):
    for name in artifact_folders(REPO_ROOT / "artifacts") + ["toy"]:
        assert (site_dir / "artifacts" / name / "index.html").is_file(), name
    toy = site_dir / "artifacts" / "toy"
    for f in ("fig-squares.png", "fig-squares.pdf", "claims.json", "provenance.json"):
        assert (toy / f).is_file(), f
    published = (toy / "metrics.csv").read_text().splitlines()
    written = (results_dir / "toy" / "metrics.csv").read_text().splitlines()
    assert len(published) == len(written) and published[0] == written[0]
    assert "…/trace.txt" in published[1]  # the trace's machine path, scrubbed
    assert (site_dir / "benchmarks" / "toybench.json").is_file()
    assert (site_dir / MARKER).is_file()


def test_nothing_private_is_published(site_dir, results_dir):
    prov = json.loads((results_dir / "toy" / "provenance.json").read_text())
    trace_folder = str(Path(prov["config"]["trace"]).parent)
    assert trace_folder.startswith("/")  # the run itself did record a machine path
    private = [str(REPO_ROOT), trace_folder, str(results_dir), str(Path.home())]
    hostname = socket.gethostname()
    for path, text in _texts(site_dir):
        for secret in private:
            assert secret not in text, f"{path.relative_to(site_dir)} shows {secret}"
        assert '"hostname"' not in text, path
        if len(hostname) > 3:  # a short name ("vm") also matches ordinary words
            assert hostname not in text, path
    published = json.loads((site_dir / "artifacts" / "toy" / "provenance.json").read_text())
    assert "invocation" not in published and "hostname" not in published["host"]
    assert list(published["data_files"]) == ["…/trace.txt"]


def test_links_are_relative(site_dir):
    for path, text in _texts(site_dir):
        if path.suffix != ".html":
            continue
        for link in re.findall(r'(?:href|src)="([^"]*)"', text):
            assert not link.startswith(("/", "file:")), f"{path.name}: {link}"
            assert link.startswith(("http://", "https://", "data:")) or ":" not in link, link


def test_a_build_with_no_results_is_a_site(empty_site_dir):
    index = (empty_site_dir / "index.html").read_text()
    assert "No artifact folders and no results were found" in index
    assert "No benchmark has run yet" in index
    assert (empty_site_dir / "benchmarks.html").is_file()
    assert (empty_site_dir / "static" / "site.css").is_file()


def test_unreadable_results_show_as_problems(tmp_path):
    results = tmp_path / "results"
    (results / "broken").mkdir(parents=True)
    (results / "broken" / "claims.json").write_text("{not json")
    (results / "bench").mkdir()
    (results / "bench" / "other.json").write_text('{"schema": "something/else"}')
    build_site(tmp_path / "site", results, tmp_path / "no-artifacts")
    page = (tmp_path / "site" / "artifacts" / "broken" / "index.html").read_text()
    assert "Could not read claims.json:" in page
    assert "not a benchmark report" in (tmp_path / "site" / "benchmarks.html").read_text()


def test_figures_are_only_files_of_the_run_folder(tmp_path):
    results = tmp_path / "results"
    (results / "evil").mkdir(parents=True)
    (results / "outside.png").write_bytes(b"\x89PNG private")
    (results / "evil" / "fig-ok.png").write_bytes(b"\x89PNG")
    (results / "evil" / "claims.json").write_text("[]")
    prov = {"figures": ["../outside.png", "/etc/hostname", "fig-ok.png"]}
    (results / "evil" / "provenance.json").write_text(json.dumps(prov))
    build_site(tmp_path / "site", results, tmp_path / "no-artifacts")
    published = sorted(p.name for p in (tmp_path / "site").rglob("*.png"))
    assert published == ["fig-ok.png"]


def test_rebuild_replaces_its_own_site_but_never_a_foreign_folder(tmp_path, results_dir):
    out = tmp_path / "site"
    build_site(out, results_dir, tmp_path / "none")
    (out / "stale.html").write_text("old")
    build_site(out, results_dir, tmp_path / "none")
    assert not (out / "stale.html").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SiteError, match="was not built by the site builder"):
        build_site(foreign, results_dir, tmp_path / "none")
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_command_line(tmp_path, results_dir, capsys):
    assert main(["--results", str(results_dir), "--out", str(tmp_path / "s")]) == 0
    assert "index.html" in capsys.readouterr().out
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    assert main(["--results", str(results_dir), "--out", str(tmp_path / "taken")]) == 2
    assert "was not built by the site builder" in capsys.readouterr().err
