"""The results site: ``python -m core.site`` (``nox -s site``) turns what artifact runs and
benchmarks wrote under ``results/`` into static HTML pages under ``results/site/``.

An overview of every artifact folder (run or not), one page per artifact (claims beside the
paper's numbers, figures, a sortable metrics table, provenance, the reproducing command) and one
page of benchmark targets and ratios. Pages are Jinja2 templates (``templates/``) linked by
relative paths only; every string read from a run is scrubbed of host names and machine paths
(:mod:`core.site.privacy`), so the folder can be published as it is.
"""

from .build import SiteError, SiteSummary, build_site
from .collect import ArtifactPage, BenchPage, collect_artifacts, collect_benchmarks
from .privacy import Scrubber

__all__ = [
    "ArtifactPage",
    "BenchPage",
    "Scrubber",
    "SiteError",
    "SiteSummary",
    "build_site",
    "collect_artifacts",
    "collect_benchmarks",
]
