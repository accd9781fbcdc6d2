"""The portal page in a real browser: Debian's headless Chromium, driven by selenium through Debian's chromedriver.

alice signs in (the sandbox login), picks web-server, fills the form, previews, submits, follows the event stream
to the end and sees her hosts and the deployment; bob then does not see it; a bad value shows its field's error.
A PNG of every step is kept in the test's output directory (``<tmp_path>/screenshots``, paths printed).

The service is the real one: ``umc-infra serve`` and ``umc-infra worker`` on the sandbox, with the sandbox login
on. ``UMC_PORTAL_TEST_URL=http://127.0.0.1:PORT`` runs the same steps against a service already running there
(its sandbox login on) instead.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from umc_infra.sandbox import scratch_database  # noqa: E402

from .conftest import running, served  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1000",
)  # fmt: skip
STEP_S = 30
"""How long a step of the page may take (sign-in, a form, a plan)."""
PLAN_S = 300
"""How long a preview may take (the API runs Terraform's plan)."""
JOB_S = 600
"""How long the provision may take on the sandbox (Terraform and two playbooks)."""


# -- the service ------------------------------------------------------------------------------------------------


def _destroy(base: str, token: str, deployment: str) -> None:
    """Destroy what the test made (through the API) and wait for the job: the sandbox is shared."""
    auth = {"Authorization": f"Bearer {token}"}
    answer = requests.delete(f"{base}/api/deployments/{deployment}", headers=auth, timeout=30)
    if answer.status_code != 202:
        return  # never made (the test failed before), or already going
    job = answer.json()["job"]
    deadline = time.monotonic() + JOB_S
    while time.monotonic() < deadline:
        state = requests.get(f"{base}/api/jobs/{job}", headers=auth, timeout=30).json()["state"]
        if state in ("succeeded", "failed", "cancelled"):
            return
        time.sleep(2)


@pytest.fixture(scope="module")
def portal(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a service whose page has the sandbox login; a deployment the test names is destroyed after.

    ``umc-infra serve`` and ``umc-infra worker`` with the sandbox's settings (``SandboxInfo.environment()``), a
    database of their own on the sandbox's PostgreSQL, and ``UMC_SERVICE_SANDBOX_LOGIN=1``.
    """
    given = os.environ.get("UMC_PORTAL_TEST_URL")
    if given:
        yield given.rstrip("/")
        return
    sandbox = request.getfixturevalue("sandbox")
    info = request.getfixturevalue("info")
    log = tmp_path_factory.mktemp("portal-service") / "service.log"
    with scratch_database(request.getfixturevalue("info")) as database:
        env = {**os.environ, **info.environment(), "UMC_SERVICE_SANDBOX_LOGIN": "1",
               "UMC_SERVICE_DATABASE_URL": database.get_secret_value()}  # fmt: skip
        with served(env, log) as base, running(["worker"], env, log):
            yield base
            for deployment in request.node.stash.get(MADE, []):
                _destroy(base, sandbox.token("alice").get_secret_value(), deployment)
        print(f"service log: {log}")


MADE = pytest.StashKey[list[str]]()
"""Deployments the module's tests made (the fixture destroys them)."""


# -- the browser ------------------------------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium from Debian, through Debian's chromedriver (selenium downloads nothing)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("Chromium is not installed: apt-get install chromium chromium-driver (.ci/run does)")
    os.environ.setdefault("SE_OFFLINE", "true")  # belt and braces: selenium-manager never fetches anything
    options = Options()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(STEP_S)
    try:
        yield driver
        for entry in driver.get_log("browser"):
            print(f"browser console: {entry['level']} {entry['message']}")
    finally:
        driver.quit()


Shot = Callable[[str], Path]


@pytest.fixture
def shot(browser: WebDriver, tmp_path: Path) -> Shot:
    """Save a numbered PNG of the page (``<tmp_path>/screenshots/NN-name.png``) and print its path."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    count = iter(range(1, 100))

    def save(name: str) -> Path:
        path = folder / f"{next(count):02d}-{name}.png"
        # The whole page, not only the window (Chromium's DevTools protocol).
        png = browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(png["data"]))
        print(f"screenshot: {path}")
        return path

    return save


def by_testid(driver: WebDriver, name: str, timeout: float = STEP_S) -> WebElement:
    """The element with ``data-testid=name``, once it is visible."""
    return WebDriverWait(driver, timeout).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, f'[data-testid="{name}"]'))
    )


def field(driver: WebDriver, path: str) -> WebElement:
    """A json-editor input by its name (``root[params][cpu]``)."""
    return WebDriverWait(driver, STEP_S).until(ec.element_to_be_clickable((By.NAME, path)))


def fill(driver: WebDriver, path: str, value: str) -> None:
    element = field(driver, path)
    element.clear()
    element.send_keys(value)
    driver.execute_script("arguments[0].dispatchEvent(new Event('change', {bubbles: true}))", element)


def sign_in(driver: WebDriver, base: str, user: str) -> None:
    driver.get(f"{base}/")
    by_testid(driver, f"sandbox-user-{user}").click()
    WebDriverWait(driver, STEP_S).until(lambda d: d.find_element(By.ID, "whoami").get_attribute("data-user") == user)


def pick(driver: WebDriver, blueprint: str) -> None:
    select = by_testid(driver, "blueprint")
    WebDriverWait(driver, STEP_S).until(lambda d: select.find_elements(By.CSS_SELECTOR, f'option[value="{blueprint}"]'))
    select.find_element(By.CSS_SELECTOR, f'option[value="{blueprint}"]').click()
    WebDriverWait(driver, STEP_S).until(lambda d: d.find_element(By.ID, "form").get_attribute("data-ready") == "true")


def new_request(driver: WebDriver, base: str, user: str, **params: str) -> str:
    """Sign in as ``user``, pick web-server, name a new deployment and set ``params``; returns the name."""
    sign_in(driver, base, user)
    pick(driver, "web-server")
    deployment = f"portal-{secrets.token_hex(3)}"
    fill(driver, "root[deployment]", deployment)
    for name, value in params.items():
        fill(driver, f"root[params][{name}]", value)
    return deployment


def deployment_rows(driver: WebDriver) -> list[str]:
    return [
        row.get_attribute("data-name") or "" for row in driver.find_elements(By.CSS_SELECTOR, "#deployments tbody tr")
    ]


def no_token_kept(driver: WebDriver) -> None:
    """The token lives in the page's memory only: no storage, no cookie, not in the address."""
    assert driver.execute_script("return window.localStorage.length + window.sessionStorage.length") == 0
    assert driver.get_cookies() == []
    assert "token" not in driver.current_url


# -- the steps --------------------------------------------------------------------------------------------------


def test_alice_requests_web_server_and_bob_does_not_see_it(
    portal: str, browser: WebDriver, shot: Shot, request: pytest.FixtureRequest
) -> None:
    deployment = f"portal-{secrets.token_hex(3)}"
    request.node.parent.stash.setdefault(MADE, []).append(deployment)

    browser.get(f"{portal}/")
    by_testid(browser, "sandbox-user-alice")
    shot("sign-in")

    sign_in(browser, portal, "alice")
    assert "cardiology" in by_testid(browser, "whoami").text
    no_token_kept(browser)
    shot("signed-in-as-alice")

    pick(browser, "web-server")
    fill(browser, "root[deployment]", deployment)
    fill(browser, "root[params][instances]", "1")
    fill(browser, "root[params][site_title]", "Cardiology portal test")
    shot("form-filled")

    by_testid(browser, "preview").click()
    summary = by_testid(browser, "plan-summary", PLAN_S)
    assert summary.get_attribute("data-add") not in (None, "0"), summary.text
    assert by_testid(browser, "plan-param-site_title").text.endswith("Cardiology portal test")
    assert "fits" in browser.find_element(By.CSS_SELECTOR, "#plan-quota caption").text
    shot("preview")

    by_testid(browser, "submit").click()
    by_testid(browser, "job-id")
    WebDriverWait(browser, STEP_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#events li"))
    shot("job-running")
    WebDriverWait(browser, JOB_S, poll_frequency=1).until(
        lambda d: d.find_element(By.ID, "job").get_attribute("data-state") in ("succeeded", "failed", "cancelled")
    )
    shot("job-finished")
    kinds = [li.get_attribute("data-kind") for li in browser.find_elements(By.CSS_SELECTOR, "#events li")]
    events = by_testid(browser, "events").text
    assert browser.find_element(By.ID, "job").get_attribute("data-state") == "succeeded", events
    assert kinds[0] == "job_started" and kinds[-1] == "job_finished" and "step_started" in kinds, kinds

    hosts = browser.find_elements(By.CSS_SELECTOR, "#hosts tbody tr")
    assert hosts, "no hosts in the result"
    cells = hosts[0].find_elements(By.TAG_NAME, "td")
    assert cells[0].text.startswith(f"{deployment}-web") and cells[1].text.count(".") == 3
    assert cells[3].text.startswith("http://")
    WebDriverWait(browser, STEP_S).until(lambda d: deployment in deployment_rows(d))
    shot("result-and-deployments")
    no_token_kept(browser)

    by_testid(browser, "sign-out").click()
    by_testid(browser, "sign-in")
    sign_in(browser, portal, "bob")
    assert "radiology" in by_testid(browser, "whoami").text
    WebDriverWait(browser, STEP_S).until(
        lambda d: d.find_element(By.ID, "deployments-empty").is_displayed() or deployment_rows(d)
    )
    assert deployment not in deployment_rows(browser)
    shot("bob-does-not-see-it")


def test_a_bad_value_shows_the_field_and_what_is_allowed(portal: str, browser: WebDriver, shot: Shot) -> None:
    new_request(browser, portal, "alice", cpu="99")
    shot("bad-value")

    by_testid(browser, "preview").click()
    problem = by_testid(browser, "problem-params.cpu")
    assert "params.cpu" in problem.text and "16" in problem.text, problem.text
    inline = by_testid(browser, "field-error-params.cpu")
    assert field(browser, "root[params][cpu]").get_attribute("aria-invalid") == "true"
    assert by_testid(browser, "error").get_attribute("data-status") == "422"
    assert inline.text == problem.text
    assert not browser.find_element(By.ID, "plan").is_displayed()
    shot("field-error")

    fill(browser, "root[params][cpu]", "2")
    fill(browser, "root[deployment]", "Not_A_Name")
    by_testid(browser, "submit").click()
    assert "deployment" in by_testid(browser, "problem-deployment").text
    with contextlib.suppress(Exception):
        shot("deployment-name-error")


def test_a_pasted_token_signs_in_and_a_refused_one_says_so(portal: str, browser: WebDriver, shot: Shot) -> None:
    """A real site's way: a bearer token from its own sign-in, pasted (here: the sandbox's token for admin)."""
    issued = requests.post(f"{portal}/api/sandbox/token", json={"user": "admin"}, timeout=STEP_S)
    issued.raise_for_status()
    browser.get(f"{portal}/")
    by_testid(browser, "token-input").send_keys(issued.json()["token"])
    by_testid(browser, "token-use").click()
    WebDriverWait(browser, STEP_S).until(
        lambda d: d.find_element(By.ID, "whoami").get_attribute("data-user") == "admin"
    )
    assert "every department" in by_testid(browser, "whoami").text
    assert browser.find_element(By.ID, "token-input").get_attribute("value") == ""  # hidden, and emptied
    no_token_kept(browser)
    shot("pasted-token-admin")

    by_testid(browser, "sign-out").click()
    by_testid(browser, "token-input").send_keys(issued.json()["token"][:-4] + "AAAA")
    by_testid(browser, "token-use").click()
    error = by_testid(browser, "error")
    assert error.get_attribute("data-status") == "401", error.text
    assert by_testid(browser, "sign-in").is_displayed()
    shot("refused-token")


def test_a_request_over_the_quota_shows_the_numbers(portal: str, browser: WebDriver, shot: Shot) -> None:
    """radiology may run 2 VMs: bob asking for 3 is refused before anything is made, with the quota's numbers."""
    new_request(browser, portal, "bob", instances="3")
    by_testid(browser, "submit").click()
    breach = by_testid(browser, "quota-breach")
    assert by_testid(browser, "error").get_attribute("data-status") == "409"
    assert "radiology" in breach.text and "vms" in breach.text, breach.text
    quota, requested = (
        [td.text for td in breach.find_elements(By.CSS_SELECTOR, f"tbody tr:nth-child({n}) td")] for n in (1, 3)
    )
    assert quota[0] == "2" and requested[0] == "3", (quota, requested)
    assert not browser.find_element(By.ID, "job").is_displayed()
    shot("quota-refused")
