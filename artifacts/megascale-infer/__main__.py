from core.artifact import main

from .artifact import ARTIFACT

raise SystemExit(main(ARTIFACT))
