"""Open a report in real headless Chromium (Debian's package, driven by Playwright) and collect what a
reader would see: console errors, sections, images and a screenshot."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/setup-browser.sh (apt-get install chromium)")


def open_report(report: Path, screenshot: Path) -> dict:
    """Load ``report`` and return console errors, failed requests, section ids and per-image sizes."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url[:80]}"))
            page.goto(report.resolve().as_uri(), wait_until="load")
            page.wait_for_function("Array.from(document.images).every(image => image.complete)")
            sections = page.eval_on_selector_all("section", "nodes => nodes.map(n => n.id)")
            images = page.eval_on_selector_all(
                "img",
                "nodes => nodes.map(n => ({alt: n.alt, width: n.naturalWidth, section: n.closest('section')?.id}))",
            )
            not_run = page.eval_on_selector_all(".not-run", "nodes => nodes.map(n => n.closest('section').id)")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "sections": sections, "images": images, "not_run": not_run}
