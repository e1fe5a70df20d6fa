"""A real browser for the live stack's UIs: Debian's headless chromium driven by Playwright.

Playwright is the PyPI package alone (its driver ships in the wheel); it never downloads a browser
of its own, it launches `/usr/bin/chromium`. A fresh machine gets chromium from `make browser`
(part of `make test`), or from `ensure_chromium()` here when the tests run as root with apt.
Screenshots go to the stack's folder and, when PRISMREC_TEST_ARTIFACTS names a folder, there too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS_ENV = "PRISMREC_TEST_ARTIFACTS"


def ensure_chromium() -> Path | None:
    """Debian's chromium, installed with apt-get when missing and possible; None when not to be had."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    log.info("installing Debian's chromium for the browser tests (apt-get)")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            log.warning("%s failed: %s", " ".join(command), done.stderr[-1000:])
            return None
    return CHROMIUM if CHROMIUM.exists() else None


class Screens:
    """Numbered screenshots of one browser page, kept under `folder` (and PRISMREC_TEST_ARTIFACTS)."""

    def __init__(self, page, folder: Path) -> None:
        self.page, self.folder = page, folder
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, name: str) -> Path:
        """Save the page as `NN-name.png`, numbered after the folder's screenshots so far (in test order)."""
        path = self.folder / f"{len(list(self.folder.glob('*.png'))) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        target = os.environ.get(ARTIFACTS_ENV)
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, Path(target) / path.name)
        return path


@contextlib.contextmanager
def browser_page(chromium: Path) -> Iterator:
    """A fresh headless page (1400 px wide, 60 s waits: the machine is shared and slow)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def log_into_airflow(page, airflow_url: str, username: str, password: str) -> None:
    """SimpleAuthManager's login form, as a person fills it."""
    page.goto(f"{airflow_url}/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)


def trigger_from_the_form(page, airflow_url: str, dag_id: str, params: dict, screens: Screens) -> dict:
    """Open the DAG, click Trigger, fill the Params form (counts, the switch, text, a JSON object) and submit;
    returns the request the UI sent (body) and Airflow's answer (the new run)."""
    page.goto(f"{airflow_url}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    for name, value in params.items():
        if isinstance(value, bool):
            switch = dialog.locator(f"#switch\\:element_{name}")
            if (switch.get_attribute("data-state") == "checked") != value:
                switch.click()
        elif isinstance(value, int):
            dialog.get_by_label(name, exact=True).fill(str(value))
        elif isinstance(value, dict):  # an object Param: the form's JSON editor (Monaco), typed over
            dialog.locator(f"#element_{name} .monaco-editor").click()
            page.keyboard.press("ControlOrMeta+A")
            page.keyboard.insert_text(json.dumps(value))
            # The editor closes brackets and quotes as they are typed: drop what it added after the text.
            page.keyboard.press("Shift+ControlOrMeta+End")
            page.keyboard.press("Delete")
        else:
            dialog.locator(f"input[name=element_{name}]").fill(str(value))
    screens.take("trigger-form")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith(f"/dags/{dag_id}/dagRuns")) \
            as answer:
        dialog.get_by_test_id("trigger-dag-submit").click()
    response = answer.value
    return {"status": response.status, "request": response.request.post_data_json, "run": response.json()}


def wait_for_text(page, *texts: str) -> None:
    """Wait until the page shows every one of `texts` (case-insensitive), wherever it renders them."""
    for text in texts:
        page.wait_for_function("t => document.body.innerText.toLowerCase().includes(t)", arg=text.lower())
