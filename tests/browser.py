"""A real browser for page tests: Debian's Chromium, driven by Playwright through its
executable path (Playwright's own browser download is not used)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

__all__ = ["chromium_path", "page"]

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """Chromium's executable: ``HEXBOOK_CHROMIUM``, else ``chromium`` on the PATH."""
    path = os.environ.get("HEXBOOK_CHROMIUM") or shutil.which("chromium")
    path = path or shutil.which("chromium-browser")
    if not path:
        pytest.fail(
            "the browser tests need Chromium and none was found: `make browser` installs "
            "Debian's (apt-get install chromium), or set HEXBOOK_CHROMIUM to its executable",
            pytrace=False,
        )
    return path


@contextmanager
def page() -> Iterator[Any]:
    """A fresh headless page (its own profile); closed after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=FLAGS)
        try:
            context = browser.new_context()
            yield context.new_page()
        finally:
            browser.close()
