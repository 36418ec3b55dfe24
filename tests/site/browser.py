"""Headless Chromium for the site's browser tests: the OS's own build, driven by Playwright.

Playwright is told where the browser is (``executable_path``) and never downloads one. When no
Chromium is on the machine, :func:`install_chromium` installs Debian's ``chromium`` package
with apt-get, as CI does on a fresh machine; tests skip, saying why, only when that fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Chromium on a closed network: no background connections to the vendor's hosts, no sandbox
# (the tests may run as root), no GPU.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """``$SERVELAB_CHROMIUM`` if set, else the first Chromium or Chrome on PATH."""
    explicit = os.environ.get("SERVELAB_CHROMIUM")
    if explicit:
        return explicit
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def install_chromium() -> tuple[str | None, str]:
    """Install Debian's ``chromium`` with apt-get (root only); the browser's path, or None and
    why not. ``SERVELAB_NO_BROWSER_INSTALL=1`` forbids the install."""
    if os.environ.get("SERVELAB_NO_BROWSER_INSTALL") == "1":
        return None, "SERVELAB_NO_BROWSER_INSTALL=1 forbids installing it"
    apt = shutil.which("apt-get")
    if apt is None:
        return None, "no apt-get on this machine to install it with"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return None, "installing it with apt-get needs root (run: sudo apt-get install chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "chromium"]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{' '.join(cmd)}: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return None, f"{' '.join(cmd)} exited {done.returncode}: {' / '.join(tail)}"
    path = find_chromium()
    return path, "" if path else "apt-get installed chromium but it is not on PATH"
