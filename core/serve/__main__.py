"""``python -m core.serve MODEL [options]``: the same as ``servelab serve MODEL [options]``."""

from core.serve.cli import module_main

if __name__ == "__main__":
    raise SystemExit(module_main())
