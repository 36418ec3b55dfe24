"""Make run outputs safe to publish: no machine paths, host names or raw command lines.

Provenance records where a run happened so that a person on that machine can trace it; a
published site needs the what (commit, config, seeds, packages, data hashes), not the where.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Keys whose values describe the machine or the exact process, never the result: the host's
# name, the raw argv (absolute interpreter and file paths), a Ray head's network address.
PRIVATE_KEYS = frozenset({"hostname", "invocation", "argv", "ray_address"})

# An absolute POSIX path of at least two parts that is not part of a URL or of a word
# ("tokens/s", "A/B" and "https://host/x" stay as they are).
_ABSOLUTE_PATH = re.compile(
    r"(?<![\w.:/~-])/[^\s/'\"`,;:()\[\]{}<>|]+(?:/[^\s/'\"`,;:()\[\]{}<>|]*)+"
)


class Scrubber:
    """Rewrites strings and JSON-like values for publication.

    A path inside one of ``roots`` (the repository, say) becomes relative to that root, with
    POSIX separators; any other absolute path becomes ``…/<last part>``. Dict entries under
    :data:`PRIVATE_KEYS` are dropped. Everything else is returned unchanged.
    """

    def __init__(self, roots: Iterable[Path]) -> None:
        # longest first, so a root nested in another is rewritten relative to itself
        resolved = {str(Path(r).resolve()) for r in roots} | {str(Path(r)) for r in roots}
        self._roots = sorted((r.rstrip("/") for r in resolved if r not in ("", "/")), key=len)[::-1]

    def path(self, text: str) -> str:
        """One path: relative to the first root it lies in, else reduced to its last part."""
        for root in self._roots:
            if text == root:
                return "."
            if text.startswith(root + "/"):
                return text[len(root) + 1 :]
        if text.startswith("/"):
            return "…/" + text.rstrip("/").rsplit("/", 1)[-1]
        return text

    def text(self, text: str) -> str:
        """Every absolute path inside free text rewritten by :meth:`path`."""
        if "/" not in text:
            return text
        return _ABSOLUTE_PATH.sub(lambda m: self.path(m.group(0)), text)

    def value(self, value: Any) -> Any:
        """A JSON-like value with every string (dict keys included) scrubbed and every private
        key dropped."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                self.text(str(k)): self.value(v)
                for k, v in value.items()
                if str(k) not in PRIVATE_KEYS
            }
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value
