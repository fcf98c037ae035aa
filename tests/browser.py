"""A real browser for page tests: Debian's Chromium, driven by Playwright through its
executable path (Playwright's own browser download is not used)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["axe_problems", "chromium_path", "page", "screenshots"]

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
def page(**context: Any) -> Iterator[Any]:
    """A fresh headless page (its own profile; ``context``: Playwright's context options,
    such as ``java_script_enabled=False`` or a ``viewport``); closed after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=FLAGS)
        try:
            yield browser.new_context(**context).new_page()
        finally:
            browser.close()


def axe_problems(p: Any) -> list[str]:
    """axe-core run on the page as it is: its serious and critical violations, each as
    "rule: what, where" (empty when the page passes)."""
    import axe_playwright_python

    script = Path(axe_playwright_python.__file__).with_name("axe.min.js").read_text()
    p.evaluate(script)  # through the devtools protocol: the page's CSP does not apply
    result = p.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']}: {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v.get("impact") in ("serious", "critical")
    ]


PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "img" / "pages"


def screenshots(p: Any, name: str, out: Path) -> list[Path]:
    """The page at desktop and phone widths (whole page), as ``<name>-desktop.png`` and
    ``<name>-phone.png`` in ``out``; the docs' copies when HEXBOOK_DOCS_IMAGES=1."""
    if os.environ.get("HEXBOOK_DOCS_IMAGES") == "1":
        out = SHOTS
    out.mkdir(parents=True, exist_ok=True)
    made = []
    size = p.viewport_size
    for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        p.set_viewport_size(viewport)
        path = out / f"{name}-{label}.png"
        p.screenshot(path=str(path), full_page=True)
        made.append(path)
    if size:
        p.set_viewport_size(size)
    return made
