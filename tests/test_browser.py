"""The app in a real browser: headless Chromium (selenium) uploads a photo and sees the outputs.

Skipped when chromium or chromedriver is missing (Debian: apt-get install chromium chromium-driver).

Also a small tool to take the README's screenshot of a real run::

    python tests/test_browser.py street.png docs/app_screenshot.png [--model weights]
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from test_app import make_models, running_app, street_image  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
WINDOW = (1400, 1000)


def have_browser() -> str:
    """Empty when the browser test can run, else the reason it cannot."""
    if not CHROMIUM or not CHROMEDRIVER:
        return "chromium and chromedriver are needed (Debian: apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return ""


def new_driver(profile: str, window=WINDOW):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
                f"--window-size={window[0]},{window[1]}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the viewport itself is window-sized
                           {"width": window[0], "height": window[1], "deviceScaleFactor": 1, "mobile": False})
    driver.set_page_load_timeout(60)
    return driver


def run_in_browser(url: str, image: Path, screenshot: Path, timeout: float = 120.0,
                   example_summary: str | None = None, resolution: str | None = None) -> dict:
    """Open the app, upload ``image``, wait for the outputs, save a screenshot. Returns what it saw.

    With ``example_summary``, then click the first example and wait for the summary to contain it."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    def output_src(elem_id: str) -> str:
        imgs = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
        return next((s for s in (i.get_attribute("src") for i in imgs) if s), "")

    def outputs_ready(_driver) -> bool:
        return bool(output_src("segmentation") and output_src("depth")
                    and driver.find_elements(By.CSS_SELECTOR, "#legend .mtan-legend-item"))

    with tempfile.TemporaryDirectory() as profile:
        driver = new_driver(profile)
        try:
            driver.get(url)
            upload = WebDriverWait(driver, 60).until(
                ec.presence_of_element_located((By.CSS_SELECTOR, "#input-image input[type=file]")))
            if resolution:
                driver.find_element(By.CSS_SELECTOR, f"input[type=radio][value='{resolution}']").click()
            upload.send_keys(str(Path(image).resolve()))  # the upload event runs the model
            try:
                WebDriverWait(driver, 15).until(outputs_ready)
            except TimeoutException:  # not run yet: press the button
                driver.find_element(By.CSS_SELECTOR, "#run").click()
                WebDriverWait(driver, timeout).until(outputs_ready)
            driver.execute_script("document.querySelector('#all-masks .label-wrap').click()")  # open it
            WebDriverWait(driver, 60).until(  # filled just after the main outputs
                lambda d: d.find_elements(By.CSS_SELECTOR, "#mask-gallery img"))
            # let the images finish loading, then photograph the top of the page
            WebDriverWait(driver, 30).until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('#segmentation img, #depth img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"))
            driver.execute_script("window.scrollTo(0, 0)")
            time.sleep(1.0)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
            legend = [e.get_attribute("data-class") for e in
                      driver.find_elements(By.CSS_SELECTOR, "#legend .mtan-legend-item")]
            seen = {"segmentation": output_src("segmentation"), "depth": output_src("depth"),
                    "attention": output_src("attention"), "legend": legend,
                    "summary": driver.find_element(By.CSS_SELECTOR, "#summary").text,
                    "mask_thumbnails": len(driver.find_elements(By.CSS_SELECTOR, "#mask-gallery img"))}
            if example_summary:
                driver.find_element(By.CSS_SELECTOR, "#examples .gallery-item").click()
                WebDriverWait(driver, timeout).until(
                    lambda d: example_summary in d.find_element(By.CSS_SELECTOR, "#summary").text)
                seen["example_summary"] = driver.find_element(By.CSS_SELECTOR, "#summary").text
            return seen
        finally:
            driver.quit()


@pytest.mark.skipif(bool(have_browser()), reason=have_browser() or "browser available")
def test_upload_in_a_real_browser(tmp_path):
    models = make_models(tmp_path / "models")
    photo = tmp_path / "street.png"
    street_image(240, 480).save(photo)
    (tmp_path / "examples").mkdir()
    street_image(180, 420).save(tmp_path / "examples" / "wide.png")
    with running_app({"MTAN_MODEL": models["city"], "MTAN_MODELS": "", "MTAN_DEFAULT_MODEL": models["city"],
                      "MTAN_EXAMPLES": str(tmp_path / "examples")}, tmp_path / "app.log") as url:
        seen = run_in_browser(url, photo, tmp_path / "screenshot.png", example_summary="photo 420x180")
    assert seen["segmentation"].startswith("http") and seen["depth"].startswith("http")
    assert seen["attention"].startswith("http") and seen["mask_thumbnails"] >= 1
    assert seen["legend"] and set(seen["legend"]) <= {"flat", "construction", "object", "nature", "sky",
                                                      "human", "vehicle"}
    assert "photo 480x240" in seen["summary"]
    assert "network input 512x219" in seen["example_summary"]  # the example ran, no upload needed
    from PIL import Image

    with Image.open(tmp_path / "screenshot.png") as shot:
        assert shot.size[0] >= 1000 and len(shot.getcolors(1 << 20) or range(1000)) > 50  # not a blank page


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Screenshot of the app after a real run on IMAGE.")
    ap.add_argument("image", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="weights")
    ap.add_argument("--resolution", default=None, help="e.g. 128x256 (default: the app's)")
    a = ap.parse_args()
    if have_browser():
        sys.exit(have_browser())
    with tempfile.TemporaryDirectory() as log_dir, running_app(
            {"MTAN_MODEL": a.model, "MTAN_MODELS": ""}, Path(log_dir) / "app.log") as url:
        print(run_in_browser(url, a.image, a.out, resolution=a.resolution))
