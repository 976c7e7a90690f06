"""The demo page in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by
Selenium uploads a DICOM and a PNG, and the probabilities on the page equal ``predict_proba``'s.

A screenshot of each result is kept in the test's temporary folder (``demo_dicom.png``,
``demo_png.png``) as a CI artifact. Skipped, with the reason, only when the browser, Gradio or
Selenium is absent here; with ``CI=true`` (set by ``.ci/run``, which installs them) that is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest
from PIL import Image

from tests.test_webdemo import dicom_file, routed_clip, write_png


def _requirements() -> str | None:
    """Why the browser test cannot run here (None: it can)."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    for module in ("gradio", "selenium"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"python package {module}")
    return f"needs {', '.join(missing)} (apt-get install chromium chromium-driver; pip install 'medadapt[demo,demo-test]')" if missing else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser():
    reason = _requirements()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _analyse(driver, path: str, domain_wait: float = 60.0) -> dict[str, float]:
    """Upload ``path``, press Analyse, and read every label's probability from the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, domain_wait)
    for clear in driver.find_elements(By.CSS_SELECTOR, "#medadapt-upload button[aria-label=Clear]"):  # the last upload
        clear.click()
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#medadapt-upload input[type=file]")))
    upload.send_keys(path)
    stem = os.path.basename(path).split(".")[0]  # the page breaks the name before its extension
    wait.until(lambda d: stem in d.find_element(By.ID, "medadapt-upload").text)
    driver.find_element(By.CSS_SELECTOR, "#medadapt-run").click()
    name = os.path.basename(path)
    table = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'#medadapt-probabilities[data-source="{name}"]')))
    rows = table.find_elements(By.CSS_SELECTOR, "tr[data-label]")
    return {row.get_attribute("data-label"): float(row.get_attribute("data-prob")) for row in rows}


def test_upload_dicom_and_png_in_a_browser(browser, tmp_path):
    from medadapt.webdemo import build_demo

    model = routed_clip()
    page = build_demo(model)
    port = _free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait as Wait

        try:  # Gradio renders the page in the browser: wait for it (a loaded CI machine may take seconds)
            Wait(browser, 60).until(lambda d: "Not for clinical use" in d.page_source)
        except TimeoutException:
            pytest.fail(f"the demo page never showed its not-for-clinical-use line; page source: {browser.page_source[:2000]!r}")
        dicom = dicom_file()
        shown = _analyse(browser, dicom)
        want = model.predict_proba([dicom], domain="auto")[0]  # the file itself, as the page reads it
        assert shown == {label: float(p) for label, p in zip(want.labels, want.probs)}
        browser.save_screenshot(str(tmp_path / "demo_dicom.png"))

        png = write_png(tmp_path, seed=3)
        shown = _analyse(browser, str(png))
        want = model.predict_proba([Image.open(png)], domain="auto")[0]
        assert shown == {label: float(p) for label, p in zip(want.labels, want.probs)}
        browser.save_screenshot(str(tmp_path / "demo_png.png"))
        assert (tmp_path / "demo_png.png").stat().st_size > 1000

        text = tmp_path / "notes.txt"
        text.write_text("not an image")
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        from selenium.webdriver.support import expected_conditions as ec

        browser.find_element(By.CSS_SELECTOR, "#medadapt-upload button[aria-label=Clear]").click()
        WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#medadapt-upload input[type=file]"))).send_keys(str(text))
        WebDriverWait(browser, 60).until(lambda d: "notes" in d.find_element(By.ID, "medadapt-upload").text)
        browser.find_element(By.CSS_SELECTOR, "#medadapt-run").click()
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#medadapt-error"))
        assert "not an image this demo reads" in browser.find_element(By.CSS_SELECTOR, "#medadapt-error").text
        assert "Traceback" not in browser.page_source
    finally:
        page.close()

