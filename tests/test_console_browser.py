"""The org admin's web console in a real browser (headless Chromium from the distribution, driven
by selenium): an admin signs in with the link, adds a member and enrolls their daemon with the code
the page shows, creates a relay token, sets a quota, sees the member's use in the usage table and
chart, removes the device and sees the member lose access. Screenshots of each page are kept for a
person to look at (the path is printed); no secret is on any page, in a screenshot's page or in the
server's log. Where Chromium, its driver or selenium is missing, the test skips naming what."""

from __future__ import annotations

import base64
import hashlib
import os
import pathlib
import re
import secrets
import shutil

import pytest
from conftest import DEADLINE, wait_for
from qpu_broker_client.errors import QpuBrokerError, ResourceExhaustedError

from testsupport.fakes import FakeServer, header_check, make_ca
from testsupport.orgserver import ORG, OrgServer

pytest.importorskip("jinja2", reason="the web console needs its extra: pip install 'qpu-broker[console]'")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
EVIL = "<script>alert(1)</script>"
QUOTA = 3  # bob's requests a day on the token


def _browser():
    """A headless Chromium that trusts the test server's own key only (by its SPKI hash), or a skip
    naming what is missing."""
    missing = []
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    binary = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = next((shutil.which(d) for d in DRIVERS if shutil.which(d)), None)
    if binary is None:
        missing.append("chromium (apt-get install chromium)")
    if driver is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if missing:
        pytest.skip(f"the browser test needs {', '.join(missing)}")
    return webdriver, Service, binary, driver


def _spki_hash(cert_file: pathlib.Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def screenshots(tmp_path, tmp_path_factory, request):
    """Where this run's screenshots go; afterwards copied where a person finds them (printed):
    $QPU_CONSOLE_SCREENSHOTS, else console-screenshots/ beside pytest's temp dirs."""
    taken = tmp_path / "screenshots"
    taken.mkdir()
    yield taken
    run = tmp_path_factory.getbasetemp()
    if run.name.startswith("popen-"):  # an xdist worker's: the run's is its parent
        run = run.parent
    # Beside the runs pytest keeps (three, rotated), so the newest screenshots outlive their run's.
    kept = pathlib.Path(os.environ.get("QPU_CONSOLE_SCREENSHOTS") or run.parent / "console-screenshots")
    shutil.copytree(taken, kept, dirs_exist_ok=True)
    print(f"\nconsole screenshots: {kept}")
    request.node.user_properties.append(("console-screenshots", str(kept)))


def test_an_admin_runs_the_org_from_the_browser(make_daemon, short_tmp, screenshots):
    webdriver, Service, binary, driver_path = _browser()
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    ca = make_ca(short_tmp / "ca")
    secret = f"canary-org-{secrets.token_hex(8)}"
    fake = FakeServer(header_check("Authorization", lambda: "apiKey " + secret), ca)
    server = OrgServer(short_tmp, ca)
    server.console = True
    server.start()
    # Where org tokens may go is org-wide settings (the CLI's; the console's providers page makes the same change).
    assert server.cli("provider", "set", "ionq", "--host", fake.netloc, "--ca-file", str(ca.ca_file)).returncode == 0
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 f"--user-data-dir={short_tmp / 'chromium'}", f"--ignore-certificate-errors-spki-list={_spki_hash(ca.cert_file)}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    pages: list[str] = []

    def shot(name: str) -> None:
        pages.append(browser.page_source)
        browser.save_screenshot(str(screenshots / f"{len(list(screenshots.iterdir())) + 1:02d}-{name}.png"))

    def visit(path: str) -> None:
        browser.get(server.console_url() + path)
        pages.append(browser.page_source)

    def submit(form_action: str, **fields: str) -> None:
        form = browser.find_element(By.CSS_SELECTOR, f"form[action='{form_action}']")
        for name, value in fields.items():
            field = form.find_element(By.NAME, name)
            if field.tag_name == "select":
                Select(field).select_by_value(value)
            else:
                field.clear()
                field.send_keys(value)
        press(form.find_element(By.TAG_NAME, "button"))

    def press(button) -> None:
        """Click a form's button and wait until its answer replaced the page (a click does not wait)."""
        browser.execute_script("window.qpuOldPage = true")  # a new page's window has no such mark
        button.click()
        WebDriverWait(browser, DEADLINE).until(lambda b: b.execute_script(
            "return window.qpuOldPage === undefined && document.readyState === 'complete'"))
        pages.append(browser.page_source)

    try:
        browser.get(server.console_link())
        press(browser.find_element(By.ID, "signin"))
        assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
        shot("overview-signed-in")

        visit("/members")
        submit("/members/add", name=EVIL)  # a name with markup: shown as the text it is, and nothing runs
        assert browser.find_element(By.ID, "notice").text == f"added member '{EVIL}'"
        with pytest.raises(NoAlertPresentException):
            _ = browser.switch_to.alert.text  # an alert would be there had the name run
        submit("/members/add", name="bob")
        code = browser.find_element(By.ID, "enrollment-code").text  # shown this once: no screenshot of it
        member = make_daemon("member")
        member.home.mkdir(mode=0o700, parents=True)
        member.start()
        assert member.broker().org_login(server.address, code, ca_pem=ca.ca_file.read_bytes()).state == "connected"
        visit("/members")
        assert code not in browser.page_source
        shot("members-bob-enrolled")

        visit("/tokens")
        submit("/tokens/create", name="Org IonQ", provider="ionq", secret=secret, mode="relay")
        assert "created 'Org IonQ' (relay)" in browser.find_element(By.ID, "notice").text
        assert browser.find_element(By.ID, "token-secret").get_attribute("value") == ""  # never shown again
        shot("tokens-relay-created")

        visit("/quotas")
        submit("/quotas/set", who="member", member="bob", token="Org IonQ", unit="requests", limit=str(QUOTA), per="1d")
        assert f"bob's requests on organization token 'Org IonQ', {QUOTA} per 1d" in browser.find_element(
            By.ID, "notice").text

        def use():
            return member.broker().forward("GET", fake.url("/v0.3/jobs"), provider="ionq", qpu_tokens=ORG)

        def first_use():
            try:
                return use()
            except QpuBrokerError:
                return None  # the token's push not there yet: nothing reached the server's quota

        assert wait_for(first_use, "bob's first use of the relay token").status_code == 200
        for _ in range(QUOTA - 1):
            assert use().status_code == 200
        with pytest.raises(ResourceExhaustedError):
            use()
        visit("/quotas")
        assert f"{QUOTA} requests of {QUOTA} requests" in browser.find_element(By.TAG_NAME, "table").text
        shot("quotas-bob-used-up")

        visit("/usage?member=bob&since=1h")
        rows = browser.find_elements(By.CSS_SELECTOR, "#usage-table tr")[1:]
        assert len(rows) == QUOTA + 1 and all("Org IonQ" in r.text for r in rows)
        assert sum("refused-quota" in r.text for r in rows) == 1
        lines = browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline.series title")
        assert "bob: 4" in [t.get_attribute("textContent") for t in lines]
        shot("usage-bob")

        visit("/members")
        [device] = browser.find_elements(By.CSS_SELECTOR, "form[action='/devices/remove']")
        press(device.find_element(By.TAG_NAME, "button"))
        assert "removed device" in browser.find_element(By.ID, "notice").text

        def lost_access():
            try:
                use()
            except QpuBrokerError as exc:
                return exc
            return None

        assert not isinstance(wait_for(lost_access, "bob's daemon to lose org access"), ResourceExhaustedError)
        shot("members-device-removed")
        visit("/audit")
        assert "console:127.0.0.1" in browser.page_source and "device.rm" in browser.page_source
        shot("admin-record")
        visit("/")
        shot("overview-after")
    finally:
        browser.quit()
        server.stop()
        fake.close()
    for page in pages:
        assert secret not in page and "<script>alert" not in page
    assert secret not in server.log() and not re.search(r"link=[\w-]{20}", server.log())
