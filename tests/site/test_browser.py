"""The site as a person sees it, in a real headless Chromium: every artifact listed, no console
errors, every image and link resolving, the numbers of claims.json on the page, a screenshot."""

from __future__ import annotations

import json
import math
import re
from urllib.parse import urldefrag, urljoin

import pytest

from core.data import REPO_ROOT
from core.site.collect import artifact_folders

LINKS_JS = """() => ({
  links: Array.from(document.querySelectorAll('a[href]'), a => a.getAttribute('href')),
  images: Array.from(document.images, i => ({src: i.getAttribute('src'),
                                            ok: i.complete && i.naturalWidth > 0})),
})"""


def crawl(page, start: str) -> dict[str, dict]:
    """Visit every page of the site reachable from ``start``; for each, the problems the
    browser reported, its links and its images (each image scrolled into view and loaded)."""
    seen: dict[str, dict] = {}
    queue = [start]
    while queue:
        url = queue.pop()
        if url in seen:
            continue
        page.problems.clear()
        page.goto(url)
        page.wait_for_load_state("load")
        for img in page.locator("img").all():
            img.scroll_into_view_if_needed()
        page.wait_for_function("Array.from(document.images).every(i => i.complete)")
        found = page.evaluate(LINKS_JS)
        seen[url] = {**found, "problems": list(page.problems)}
        for href in found["links"]:
            target = urldefrag(urljoin(url, href)).url
            if target.startswith(start.rsplit("/", 1)[0]) and target.endswith(".html"):
                queue.append(target)
    return seen


def test_overview_lists_every_artifact_folder(page, site_dir, serve):
    page.goto(serve(site_dir) + "index.html")
    listed = page.locator("#overview tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.artifact)"
    )
    assert set(artifact_folders(REPO_ROOT / "artifacts")) | {"toy", "splitwise"} == set(listed)
    assert listed == sorted(listed)
    never_run = [a for a in artifact_folders(REPO_ROOT / "artifacts") if a != "splitwise"]
    for name in never_run:
        row = page.locator(f'#overview tr[data-artifact="{name}"]')
        assert "not run yet" in row.inner_text() and f"nox -s artifact-{name}" in row.inner_text()
    assert page.problems == []


@pytest.mark.slow
def test_every_page_loads_cleanly_and_every_image_and_link_resolves(page, site_dir, serve):
    base = serve(site_dir)
    pages = crawl(page, base + "index.html")
    names = {a for a in artifact_folders(REPO_ROOT / "artifacts")} | {"toy"}
    assert {f"{base}artifacts/{n}/index.html" for n in names} <= set(pages)
    assert base + "benchmarks.html" in pages
    checked = 0
    for url, found in pages.items():
        assert found["problems"] == [], url
        assert all(img["ok"] for img in found["images"]), (url, found["images"])
        for href in found["links"]:
            if href.startswith(("http://", "https://")) and not href.startswith(base):
                continue  # a paper's own page: outside the site, not fetched offline
            response = page.request.get(urldefrag(urljoin(url, href)).url)
            assert response.status == 200, (url, href, response.status)
            checked += 1
    toy = pages[f"{base}artifacts/toy/index.html"]
    assert {"fig-squares.png"} == {img["src"] for img in toy["images"]}
    assert {"fig-squares.pdf", "metrics.csv", "claims.json", "provenance.json"} <= set(toy["links"])
    assert checked > 20


def test_opens_from_the_file_system(page, site_dir):
    page.goto((site_dir / "index.html").as_uri())
    page.locator("a", has_text="toy").first.click()
    page.wait_for_load_state("load")
    assert page.url.endswith("/artifacts/toy/index.html")
    assert page.locator("figure img").evaluate("i => i.naturalWidth") > 0
    assert page.problems == []


@pytest.mark.parametrize("name", ["toy", "splitwise"])
def test_claim_numbers_equal_claims_json(page, site_dir, results_dir, serve, name):
    claims = json.loads((results_dir / name / "claims.json").read_text())
    page.goto(f"{serve(site_dir)}artifacts/{name}/index.html")
    rows = page.locator("table.claims tbody tr.claim")
    assert rows.count() == len(claims)
    for claim in claims:
        row = page.locator(f'tr[data-claim="{claim["id"]}"]')
        assert row.get_attribute("data-status") == claim["status"]
        assert row.locator("td").first.inner_text().strip() == claim["status"]
        cell = row.locator("td.measured")
        if claim["measured"] is None:
            assert cell.inner_text().strip() == "—"
            continue
        assert float(cell.get_attribute("data-measured")) == claim["measured"]
        shown = float(re.match(r"-?[\d.]+(e[-+]?\d+)?", cell.inner_text().strip()).group(0))
        assert math.isclose(shown, claim["measured"], rel_tol=5e-4), (claim["id"], shown)
        if claim.get("unit"):
            assert cell.inner_text().strip().endswith(claim["unit"])
        assert claim["paper_value"] in row.inner_text()
        if claim["note"]:
            note = page.locator(f'tr[data-note-of="{claim["id"]}"]').inner_text()
            assert " ".join(claim["note"].split()) in " ".join(note.split())


def test_a_failed_claim_is_as_visible_as_a_passed_one(page, site_dir, serve):
    base = serve(site_dir)
    page.goto(base + "index.html")
    toy = page.locator('#overview tr[data-artifact="toy"]')
    assert "2 of 3 checked claims reproduced" in " ".join(toy.inner_text().split())
    assert toy.locator(".badge.status-fail").inner_text() == "1 FAIL"
    page.goto(base + "artifacts/toy/index.html")
    failed = page.locator('tr[data-claim="small-cube"] .badge')
    passed = page.locator('tr[data-claim="max-square"] .badge')
    assert failed.inner_text() == "FAIL" and passed.inner_text() == "pass"
    assert failed.is_visible() and passed.is_visible()
    red, green = (b.evaluate("e => getComputedStyle(e).color") for b in (failed, passed))
    assert red != green


def test_metrics_table_sorts_by_a_column(page, site_dir, serve):
    page.goto(f"{serve(site_dir)}artifacts/toy/index.html")
    table = page.locator("table.metrics")
    header = table.locator("thead th")
    names = header.evaluate_all("ths => ths.map(th => th.innerText.trim())")
    column = names.index("noise")
    read = f"rows => rows.map(r => r.cells[{column}].dataset.sort)"
    header.nth(column).click()
    values = [float(v) if v else math.inf for v in table.locator("tbody tr").evaluate_all(read)]
    assert values == sorted(values) and len(values) == 9
    header.nth(column).click()
    again = [float(v) if v else math.inf for v in table.locator("tbody tr").evaluate_all(read)]
    assert [v for v in again if v != math.inf] == sorted(v for v in values if v != math.inf)[::-1]
    assert page.problems == []


def test_benchmark_targets_and_ratios_are_shown(page, site_dir, serve):
    page.goto(serve(site_dir) + "benchmarks.html")
    section = page.locator("#bench-toybench")
    assert section.locator('tr[data-target="tokens-vs-generate"] .badge').inner_text() == "pass"
    assert section.locator('tr[data-target="ttft-hit"] .badge').inner_text() == "FAIL"
    assert "no GPU on this machine" in section.locator('tr[data-target="gpu-only"]').inner_text()
    assert "Reproduce: nox -s bench -- " in section.inner_text()
    ratios = section.locator("table.ratios tbody tr").all_inner_texts()
    assert [" ".join(r.split()) for r in ratios] == ["offline / vs_generate 2.5"]
    assert page.problems == []


def test_overview_screenshot(page, site_dir, serve, screenshot_dir):
    page.goto(serve(site_dir) + "index.html")
    shot = screenshot_dir / "overview.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    print(f"screenshot of the overview: {shot}")


def test_an_empty_site_loads_cleanly(page, empty_site_dir, serve):
    base = serve(empty_site_dir)
    pages = crawl(page, base + "index.html")
    assert set(pages) == {base + "index.html", base + "benchmarks.html"}
    assert all(found["problems"] == [] for found in pages.values()), pages
    page.goto(base + "index.html")
    assert "No artifact folders and no results were found" in page.inner_text("main")
