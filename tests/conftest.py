"""Suite-wide settings: under CI, hypothesis runs derandomized so a green main stays green
(locally it keeps exploring new examples; a failure prints its reproduction)."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
