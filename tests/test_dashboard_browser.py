"""The dashboard in a real headless Chromium against the whole system: the local control plane, the
controller (in a thread), `ringmaster serve` as its own process on the same SQLite database, and three
Rollouts baking their canary ring. Someone opens the page, pulls the andon cord from it, watches every
rollout turn Halted, releases the pull from the page, and watches them go on; the page logs no error.

Chromium is Debian's (`scripts/ensure-debian-packages chromium`, which `make control-plane` runs),
driven by Playwright for Python; Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from rollout.localcluster.cluster import LocalCluster
from tests.test_andon_controller import line, start_rollouts
from tests.test_cli import (
    cli_token,
    free_port,
    run,
    serving,
)

CHROMIUM = Path("/usr/bin/chromium")
NAMES = ("web", "api", "shop")
REASON = "checkout errors up in eu-west"
# Set it to a path to keep a screenshot of the page with every rollout halted (docs/images/dashboard.png).
SCREENSHOT_ENV = "RINGMASTER_DASHBOARD_SCREENSHOT"


@dataclass(frozen=True)
class System:
    base_url: str
    namespace: str
    token: str


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the dashboard's browser test needs Debian's Chromium. Install it with "
                    "`scripts/ensure-debian-packages chromium` (`make control-plane` does), not with "
                    "`playwright install`.", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture
def system(local_cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[System]:
    """Three StatefulSets, the controller, `ringmaster serve`, and a Rollout of each baking its canary ring."""
    url = f"sqlite:///{tmp_path / 'ringmaster.db'}"
    environment = {**os.environ, "RINGMASTER_DATA_DIR": str(tmp_path / "data"), "RINGMASTER_DATABASE_URL": url,
                   "RINGMASTER_KUBECONFIG": str(local_cluster.kubeconfig)}
    run(environment, "db", "upgrade")
    token = cli_token(environment, "ana", "releaser")
    port = free_port()
    with line(local_cluster, namespace, url, NAMES) as running, serving(environment, port, tmp_path / "serve.log"):
        # A long canary bake: nothing but the cord moves these rollouts while the test watches.
        start_rollouts(running, ("30m", "0s", "0s", "0s"), NAMES, timeout_s=120)
        yield System(f"http://127.0.0.1:{port}", namespace, token)


def expect_phases(page: Page, namespace: str, phase: str, timeout_ms: float) -> None:
    for name in NAMES:
        expect(page.locator(f'[data-rollout="{namespace}/{name}"]')).to_have_attribute(
            "data-phase", phase, timeout=timeout_ms)


def test_pulling_the_cord_from_the_page_halts_every_rollout_and_releasing_it_lets_them_go_on(
        browser: Browser, system: System) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))

    page.goto(system.base_url + "/")
    assert page.url == system.base_url + "/dashboard"
    expect_phases(page, system.namespace, "Progressing", timeout_ms=15_000)
    web = page.locator(f'[data-rollout="{system.namespace}/web"]')
    expect(web.locator('[data-ring="canary"]')).to_have_attribute("data-state", "current")
    expect(web.locator('[data-ring="canary"]')).to_have_attribute("data-flag", "on")
    expect(web.locator('[data-ring="early-adopter"]')).to_have_attribute("data-state", "pending")
    expect(web.locator(".bake")).to_contain_text("left")
    expect(page.locator("body")).to_have_attribute("data-line", "running")

    # The big red button asks why, over what, and for a token; a bad token is refused with the API's detail.
    page.get_by_role("button", name="Pull the andon cord").click()
    dialog = page.locator("#pull-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("input[name=scope][value=global]")).to_be_checked()
    dialog.locator("#pull-reason").fill(REASON)
    dialog.locator("#pull-token").fill("rmt_not-a-token")
    dialog.locator("#pull-confirm").click()
    expect(dialog.locator("#pull-problem")).to_contain_text("the API token is unknown or revoked")
    # Chromium logs the refused request as a console error; that one was asked for.
    assert all("status of 401" in error for error in errors), errors
    errors.clear()

    dialog.locator("#pull-token").fill(system.token)
    dialog.locator("#pull-confirm").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("body")).to_have_attribute("data-line", "stopped", timeout=10_000)
    expect_phases(page, system.namespace, "Halted", timeout_ms=15_000)
    pull = page.locator("#cord .pull")
    expect(pull).to_have_count(1)
    expect(pull).to_contain_text(REASON)
    expect(pull).to_contain_text("over every rollout")
    expect(pull).to_contain_text("by ana via dashboard")
    expect(web.locator(".bake")).to_contain_text("standing still")
    expect(page.locator("#history .event-pull")).to_contain_text(REASON)
    screenshot = os.environ.get(SCREENSHOT_ENV)
    if screenshot:
        page.screenshot(path=screenshot)

    # Releasing: the token typed once is remembered for the session (sessionStorage, not a cookie).
    pull.get_by_role("button", name="Release pull").click()
    release = page.locator("#release-dialog")
    expect(release).to_be_visible()
    expect(release.locator("#release-token")).to_have_value(system.token)
    release.locator("#release-reason").fill("config rolled back")
    release.locator("#release-confirm").click()
    expect(release).to_be_hidden()
    expect(page.locator("#cord .pull")).to_have_count(0)
    expect_phases(page, system.namespace, "Progressing", timeout_ms=15_000)
    expect(page.locator("body")).to_have_attribute("data-line", "running")
    expect(page.locator("#history .event-release")).to_contain_text("config rolled back")
    assert page.context.cookies() == []
    assert errors == []


def test_when_reads_need_a_token_the_page_asks_for_one_and_shows_the_cord_once_given(
        browser: Browser, tmp_path: Path) -> None:
    environment = {**os.environ, "RINGMASTER_DATA_DIR": str(tmp_path / "data"),
                   "RINGMASTER_DATABASE_URL": f"sqlite:///{tmp_path / 'ringmaster.db'}",
                   "RINGMASTER_READS_REQUIRE_TOKEN": "true"}
    environment.pop("RINGMASTER_KUBECONFIG", None)
    environment.pop("KUBECONFIG", None)
    run(environment, "db", "upgrade")
    viewer = cli_token(environment, "victor", "viewer")
    port = free_port()
    with serving(environment, port, tmp_path / "serve.log"):
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
        page.goto(f"http://127.0.0.1:{port}/dashboard")
        form = page.locator("#token-needed")
        expect(form).to_be_visible()
        expect(page.locator("#cord")).not_to_contain_text("Not pulled")

        page.locator("#read-token").fill("rmt_not-a-token")
        page.get_by_role("button", name="Use token").click()
        expect(page.locator("#read-token-problem")).to_contain_text("unknown or revoked")

        page.locator("#read-token").fill(viewer)
        page.get_by_role("button", name="Use token").click()
        expect(form).to_be_hidden()
        expect(page.locator("#cord")).to_contain_text("Not pulled: the line is running.")
        expect(page.locator("#rollouts")).to_contain_text("Kubernetes is not configured")
        # A viewer may read but not pull: the dialog shows the API's refusal.
        page.get_by_role("button", name="Pull the andon cord").click()
        expect(page.locator("#pull-token")).to_have_value(viewer)
        page.locator("#pull-reason").fill("trying with a viewer token")
        page.locator("#pull-confirm").click()
        expect(page.locator("#pull-problem")).to_contain_text("needs the puller role or above")
        assert errors and all("status of 401" in error or "status of 403" in error for error in errors), errors
