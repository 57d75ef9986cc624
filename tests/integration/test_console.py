"""The live console in a real browser: Debian's headless Chromium, driven by Playwright.

The page is served by the session's gunicorn ingress and talks to it as any client would, with the
session's real worker behind it. No browser is downloaded: Playwright drives ``/usr/bin/chromium``
(``make test`` installs it when missing). Screenshots are kept in ``test-artifacts/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulators.localrun import ROOT
from tests.support.stacks import KEYS, Service

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("OMNI_TEST_ARTIFACTS", ROOT / "test-artifacts"))
# Headless, and quiet: no sandbox (root in CI), and nothing that reaches for Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 90_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 1400})
    page = context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda msg: msg.type == "error" and page.errors.append(msg.text))
    yield page
    context.close()


def submit(page: Any, task: str) -> None:
    """Submit the task's example input; return once the new job's terminal event is shown."""
    before = page.text_content("#job-id")
    page.select_option("#task", task)
    page.click("#submit")
    page.wait_for_function(
        "(before) => document.getElementById('job-id').textContent !== before",
        arg=before,
        timeout=WAIT_MS,
    )
    page.wait_for_selector("#result[data-status='succeeded']", timeout=WAIT_MS)


def test_the_console_submits_jobs_and_renders_their_events_and_results(
    ingress: Service, worker: Service, page: Any
) -> None:
    key = KEYS["tenant-a"]
    requests_seen: list[tuple[str, dict[str, str]]] = []
    page.on("request", lambda r: requests_seen.append((r.url, r.headers)))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    page.goto(f"{ingress.url}/console")
    page.fill("#api-key", key)
    page.click("#load-tasks")
    page.wait_for_selector("#task option[value='embed']", state="attached", timeout=WAIT_MS)

    # embed: the terminal event arrives and the vectors are summarised (unit length).
    submit(page, "embed")
    events = page.locator("#events li").all_text_contents()
    assert events[-1].startswith("#3 succeeded"), events
    assert page.text_content("#job-status") == "succeeded"
    summaries = page.locator(".embedding-summary").all_text_contents()
    assert len(summaries) == 2 and all("‖v‖ = 1.0000" in s for s in summaries), summaries
    assert page.locator("#result svg rect").count() == 2 * 384
    page.screenshot(path=str(ARTIFACTS / "console-embed.png"), full_page=True)

    # entities: highlighted in their text.
    submit(page, "entities")
    marks = page.locator("#result mark.PERSON").all_text_contents()
    assert any(m.startswith("Angela Merkel") for m in marks), marks
    page.screenshot(path=str(ARTIFACTS / "console-entities.png"), full_page=True)

    # forecast: drawn as a chart, history and forecast lines over the interval band.
    submit(page, "forecast")
    assert page.locator("svg.forecast-chart polyline").count() == 2
    assert page.locator("svg.forecast-chart polygon").count() == 1
    page.screenshot(path=str(ARTIFACTS / "console-forecast.png"), full_page=True)

    assert page.errors == []  # type: ignore[attr-defined]
    # The key went out only as a header, never in a URL.
    assert requests_seen and all(key not in url for url, _ in requests_seen)
    streams = [h for url, h in requests_seen if url.endswith("/events")]
    assert len(streams) >= 3 and all(h.get("x-api-key") == key for h in streams)


def test_the_console_shows_a_problem_for_a_wrong_key(ingress: Service, page: Any) -> None:
    page.goto(f"{ingress.url}/console")
    page.fill("#api-key", "not-a-key")
    page.click("#load-tasks")
    page.wait_for_selector("#form-error:has-text('401')", timeout=WAIT_MS)
    assert page.locator("#task option").count() == 0


def test_the_console_page_forbids_inline_script(ingress: Service) -> None:
    import requests

    response = requests.get(f"{ingress.url}/console", timeout=10)
    assert response.status_code == 200 and "text/html" in response.headers["Content-Type"]
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert requests.get(f"{ingress.url}/console/app.js", timeout=10).status_code == 200
    assert requests.get(f"{ingress.url}/console/secrets.txt", timeout=10).status_code == 404
