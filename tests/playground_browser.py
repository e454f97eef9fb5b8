"""Headless Chromium for the playground tests: Playwright for Python driving the system's chromium
(Debian's ``chromium`` package; ``.ci/run`` installs it). Browsers are never downloaded
(no ``playwright install``): the binary is ``$DGAE_CHROMIUM`` or the first of CHROMIUM_NAMES on PATH.

Also the reference PSNR the page must reproduce: both images 8-bit RGB at the original's size,
MSE over every R, G, B value, 10 log10(255^2 / MSE)."""
from __future__ import annotations

import importlib.util
import io
import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image

CHROMIUM_ENV = "DGAE_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PIXEL_MAX = 255.0
# Chromium logs every HTTP error response the page receives as a console error of its own
# ("Failed to load resource: the server responded with a status of 413 ..."); no page can
# suppress it. Tests name the one response they expect; any other console error fails them.
NETWORK_LOG_PREFIX = "Failed to load resource: the server responded with a status of {status}"


def chromium_path() -> str | None:
    explicit = os.environ.get(CHROMIUM_ENV)
    if explicit:
        return explicit  # checked in launch(): a wrong explicit path fails, it does not skip
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here (no chromium binary), or None. A missing Playwright is
    not a reason to skip: it is a dev dependency, so its absence fails the tests (see ``launch``)."""
    if chromium_path() is None:
        return (f"no chromium on PATH (tried {', '.join(CHROMIUM_NAMES)}): apt-get install chromium "
                f"(.ci/run does), or set ${CHROMIUM_ENV}")
    return None


def sync_playwright():
    if importlib.util.find_spec("playwright") is None:
        pytest.fail("playwright is not installed: pip install -e '.[dev]' (the browser itself comes from apt)")
    from playwright.sync_api import sync_playwright as start  # noqa: PLC0415 - dev extra

    return start()


def launch(playwright):
    path = chromium_path()
    if path is None:
        pytest.skip(browser_unavailable())
    if not os.access(path, os.X_OK):
        pytest.fail(f"${CHROMIUM_ENV}={path} is not an executable")
    return playwright.chromium.launch(executable_path=path)


def rgb(data: bytes) -> np.ndarray:
    """Image bytes -> uint8 [H, W, 3] (opaque test images only: no alpha to composite)."""
    img = Image.open(io.BytesIO(data))
    assert img.mode in ("RGB", "L", "P"), f"test images must be opaque, got mode {img.mode}"
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, f"sizes differ: {a.shape} vs {b.shape}"
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(PIXEL_MAX ** 2 / mse)


class ConsoleLog:
    """Every console message, page error and HTTP error response of one page."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.page_errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))

    def _on_console(self, msg) -> None:
        if msg.type == "error":
            self.errors.append(f"{msg.text} @ {msg.location.get('url', '')}")

    def assert_clean(self, *expected: tuple[int, str]) -> None:
        """No page errors; console errors only Chromium's own line for each expected (status, path)."""
        assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"
        unexpected = list(self.errors)
        for status, path in expected:
            match = next((e for e in unexpected if e.startswith(NETWORK_LOG_PREFIX.format(status=status))
                          and path in e.split(" @ ")[-1]), None)
            assert match, f"expected Chromium's network log line for {status} on {path}; console: {self.errors}"
            unexpected.remove(match)
        assert not unexpected, f"console errors: {unexpected}"
