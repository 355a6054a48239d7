"""The app in a real browser: headless Chromium (selenium) opens the page on a desktop screen and
on a phone screen, uploads a photo, and checks what a first-time visitor sees.

Skipped when chromium or chromedriver is missing (Debian: apt-get install chromium chromium-driver).

Also the tool that takes the README's screenshots of a real run::

    python tests/test_browser.py examples/street_01.jpg docs/app_desktop.png [--phone] [--model weights]
"""
from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from apphelpers import REPO, make_models, running_app, street_image  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
DESKTOP, PHONE = (1440, 900), (390, 844)
# A minus sign or hyphen right before a digit, not inside a word or a range ("1-16", "2026-12"): a negative number.
NEGATIVE_NUMBER = re.compile(r"(?<![\w.)\]])[-−]\d")


def have_browser() -> str:
    """Empty when the browser test can run, else the reason it cannot."""
    if not CHROMIUM or not CHROMEDRIVER:
        return "chromium and chromedriver are needed (Debian: apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return ""


def new_driver(profile: str, window=DESKTOP, camera: Path | None = None, webgl: bool = False):
    """Headless Chromium at ``window`` size. ``camera``: a Y4M clip the page's webcam shows
    (Chromium's fake capture device, permission granted); ``webgl``: WebGL in software
    (SwiftShader), for the 3D view."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    phone = window[0] < 600
    opts = Options()
    opts.binary_location = CHROMIUM
    extra = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader") if webgl else ("--disable-gpu",)
    if camera:
        extra += ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                  f"--use-file-for-fake-video-capture={camera}")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
                f"--window-size={window[0]},{window[1]}", *extra):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the viewport itself is window-sized
                           {"width": window[0], "height": window[1], "deviceScaleFactor": 1, "mobile": phone})
    driver.set_page_load_timeout(60)
    return driver


class Page:
    """One visitor's page: what is on screen, read the way a person would see it."""

    def __init__(self, driver):
        self.driver = driver

    def src(self, elem_id: str) -> str:
        from selenium.webdriver.common.by import By

        imgs = self.driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
        return next((s for s in (i.get_attribute("src") for i in imgs) if s), "")

    def in_view(self, elem_id: str) -> bool:
        """Whether the element's image is wholly inside the window as it is now (nobody scrolled)."""
        return bool(self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); if (!e) return false;"
            "const r = e.getBoundingClientRect();"
            "return r.height > 50 && r.top >= 0 && r.bottom <= window.innerHeight + 1;", f"#{elem_id} img"))

    def text(self) -> str:
        return self.driver.execute_script("return document.body.innerText")

    def error_pills(self) -> int:
        """Gradio's per-output "Error" badges now shown."""
        return int(self.driver.execute_script(
            "return [...document.querySelectorAll('.error, .status-tracker, .wrap')]"
            ".filter(e => e.offsetParent !== null && e.innerText.trim() === 'Error').length"))

    def error(self) -> str:
        """The page's one error message, "" when none is shown."""
        return self.driver.execute_script(
            "const e = document.querySelector('#error'); return e && e.offsetParent !== null ? e.innerText : ''")

    def shown(self, *elem_ids) -> list[str]:
        """Those of the elements that are on the page and displayed."""
        return self.driver.execute_script(
            "return arguments[0].filter(id => {const e = document.querySelector('#' + id);"
            " return e && e.offsetParent !== null})", list(elem_ids))

    def images_loaded(self, *elem_ids) -> bool:
        return bool(self.driver.execute_script(
            "return arguments[0].every(id => {const i = document.querySelector('#' + id + ' img');"
            " return i && i.complete && i.naturalWidth > 0})", list(elem_ids)))


def visit(url: str, window, image: Path, screenshot: Path | None = None, timeout: float = 180.0,
          bad_file: Path | None = None, example_summary: str | None = None) -> dict:
    """Open the app at ``window`` size, upload ``image`` and record what is seen without scrolling;
    then optionally a bad file and an example click."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    seen = {}
    with tempfile.TemporaryDirectory() as profile:
        driver = new_driver(profile, window)
        page = Page(driver)
        try:
            driver.get(url)
            upload = WebDriverWait(driver, 60).until(
                ec.presence_of_element_located((By.CSS_SELECTOR, "#input-image input[type=file]")))
            seen["first_screen"] = page.text()
            seen["shown_before"] = page.shown("compare", "segmentation", "depth", "downloads", "attention-panel")
            upload.send_keys(str(Path(image).resolve()))  # the upload itself runs the model
            WebDriverWait(driver, timeout).until(lambda d: page.src("compare") and page.images_loaded("compare"))
            time.sleep(1.0)  # the page's own scroll to the results has ended
            seen["compare_in_view"] = page.in_view("compare")
            seen["compare_width"] = driver.execute_script(
                "return document.querySelector('#compare').getBoundingClientRect().width")
            seen["scrolled"] = driver.execute_script("return window.scrollY")
            seen["first_view"] = driver.get_screenshot_as_png()  # what the visitor sees when the result comes
            driver.execute_script("document.querySelector('#segmentation').scrollIntoView()")
            WebDriverWait(driver, timeout).until(lambda d: page.src("segmentation") and page.src("depth")
                                                 and page.images_loaded("segmentation", "depth"))
            WebDriverWait(driver, timeout).until(lambda d: page.src("attention-panel"))  # (loaded when in view)
            driver.execute_script("document.querySelector('#all-masks .label-wrap').click()")  # open it
            WebDriverWait(driver, 60).until(lambda d: page.src("attention-overview"))
            legend = [e.get_attribute("data-class") for e in
                      driver.find_elements(By.CSS_SELECTOR, "#legend .mtan-legend-item")]
            seen.update(legend=legend, summary=driver.find_element(By.CSS_SELECTOR, "#summary").text,
                        text=page.text(), downloads=len(driver.find_elements(By.CSS_SELECTOR, "#downloads a")),
                        nearby=driver.find_element(By.CSS_SELECTOR, "#nearby").text,
                        attention_caption=driver.find_element(By.CSS_SELECTOR, "#attention-caption").text)
            driver.execute_script("document.querySelector('#downloads').scrollIntoView()")
            seen["remove_buttons"] = driver.execute_script(  # outputs: no remove button shown
                "return [...document.querySelectorAll('#downloads .label-clear-button')]"
                ".filter(b => b.offsetParent !== null).length")
            seen["cut_names"] = driver.execute_script(  # every name shown whole, on a phone too
                "return [...document.querySelectorAll('#downloads .stem')]"
                ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)")
            picture = driver.find_element(By.CSS_SELECTOR, "#segmentation img")  # a click reads that spot
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", picture)
            picture.click()
            WebDriverWait(driver, 30).until(lambda d: "At (" in d.find_element(By.CSS_SELECTOR, "#point").text)
            seen["point"] = driver.find_element(By.CSS_SELECTOR, "#point").text
            if screenshot:  # what the visitor saw when the results came, before anything was opened
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(seen["first_view"])
            if bad_file:
                driver.execute_script("window.scrollTo(0, 0)")
                driver.find_element(By.CSS_SELECTOR, "#input-image button[aria-label='Remove Image']").click()
                upload = WebDriverWait(driver, 30).until(
                    ec.presence_of_element_located((By.CSS_SELECTOR, "#input-image input[type=file]")))
                upload.send_keys(str(Path(bad_file).resolve()))
                WebDriverWait(driver, timeout).until(lambda d: page.error().strip())
                time.sleep(1.0)
                seen["error"] = page.error()
                seen["error_pills"] = page.error_pills()
                seen["error_toasts"] = len(driver.find_elements(By.CSS_SELECTOR, ".toast-body"))
            driver.execute_script("window.scrollTo(0, 0)")  # the Live tab without a camera says so
            driver.find_element(By.CSS_SELECTOR, "#live-tab-button").click()
            WebDriverWait(driver, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, "#live-camera-note").text)
            seen["camera_note"] = driver.find_element(By.CSS_SELECTOR, "#live-camera-note").text
            driver.find_element(By.CSS_SELECTOR, "#photo-tab-button").click()
            if example_summary:
                driver.find_element(By.CSS_SELECTOR, "#examples .gallery-item").click()
                WebDriverWait(driver, timeout).until(
                    lambda d: example_summary in d.find_element(By.CSS_SELECTOR, "#summary").text)
                seen["example_summary"] = driver.find_element(By.CSS_SELECTOR, "#summary").text
                seen["error_after_example"] = page.error()
            return seen
        finally:
            driver.quit()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if have_browser():
        pytest.skip(have_browser())
    tmp = tmp_path_factory.mktemp("browser")
    models = make_models(tmp / "models")
    (tmp / "examples").mkdir()
    street_image(180, 420).save(tmp / "examples" / "wide.png")
    shutil.copy(REPO / "examples" / "camvid_2_cyclists.jpg", tmp / "examples")  # a real photo: its own row
    with running_app({"MTAN_MODEL": models["city"], "MTAN_MODELS": "", "MTAN_DEFAULT_MODEL": models["city"],
                      "MTAN_EXAMPLES": str(tmp / "examples")}, tmp / "app.log") as url:
        yield url


def test_desktop_results_above_the_fold_and_one_message_for_a_bad_file(app_url, tmp_path):
    photo, bad = tmp_path / "street.png", tmp_path / "holiday.jpg"
    street_image(240, 480).save(photo)
    bad.write_bytes(b"this is not a picture at all " * 40)
    seen = visit(app_url, DESKTOP, photo, tmp_path / "desktop.png", bad_file=bad, example_summary="photo 420x180")
    assert "Upload a photo" in seen["first_screen"] and "local default" not in seen["first_screen"]
    assert "normals" not in seen["first_screen"].split("\n")[0]  # the title names only what this model does
    # before a photo: the upload and the examples, no empty result boxes; after: the slider is the
    # result, on the first screen, at least 60 % of the window wide
    assert seen["shown_before"] == [], seen["shown_before"]
    assert seen["compare_in_view"] and seen["compare_width"] >= 0.6 * DESKTOP[0], seen
    assert seen["legend"] and set(seen["legend"]) <= {"flat", "construction", "object", "nature", "sky",
                                                      "human", "vehicle"}
    assert "photo 480x240" in seen["summary"] and seen["downloads"] >= 5
    assert seen["nearby"].startswith("In front of you"), seen["nearby"]
    assert re.fullmatch(r"At \(\d+, \d+\): (flat|construction|object|nature|sky|human|vehicle)(, (about \d+ m|over 200 m "
                        r"away))?\.", seen["point"]), seen["point"]
    assert not NEGATIVE_NUMBER.search(seen["text"]), NEGATIVE_NUMBER.search(seen["text"])
    assert "generated street scenes" in seen["text"] and "each task" in seen["text"].lower()
    assert "differ by" in seen["attention_caption"] and "In this photo" in seen["attention_caption"]
    assert seen["remove_buttons"] == 0 and seen["cut_names"] == [], seen
    assert "No camera was found" in seen["camera_note"], seen["camera_note"]
    assert "real street photos" in seen["first_screen"] and "Pattern Recognition Letters 2009" in seen["first_screen"]
    assert "could not be read" in seen["error"].lower() or "not" in seen["error"].lower(), seen["error"]
    assert seen["error_pills"] == 0 and seen["error_toasts"] == 0  # one message, not one per output
    assert "network input 512x219" in seen["example_summary"] and not seen["error_after_example"]
    from PIL import Image

    with Image.open(tmp_path / "desktop.png") as shot:
        assert shot.size == DESKTOP and len(shot.getcolors(1 << 20) or range(1000)) > 50  # not a blank page


def test_phone_brings_a_result_into_view_by_itself(app_url, tmp_path):
    photo = tmp_path / "street.png"
    street_image(240, 480).save(photo)
    seen = visit(app_url, PHONE, photo, tmp_path / "phone.png")
    # stacked under the upload box, a result is on screen without the visitor scrolling (the page
    # scrolls to it when it would not be)
    assert seen["compare_in_view"] and seen["shown_before"] == [], seen
    assert not NEGATIVE_NUMBER.search(seen["text"]), NEGATIVE_NUMBER.search(seen["text"])
    assert seen["remove_buttons"] == 0 and seen["cut_names"] == [], seen  # whole, distinct names on a phone


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Screenshot of the app after a real run on IMAGE.")
    ap.add_argument("image", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="weights")
    ap.add_argument("--phone", action="store_true", help=f"a {PHONE[0]}x{PHONE[1]} phone screen "
                                                          f"(default {DESKTOP[0]}x{DESKTOP[1]})")
    a = ap.parse_args()
    if have_browser():
        sys.exit(have_browser())
    with tempfile.TemporaryDirectory() as log_dir, running_app(
            {"MTAN_MODEL": a.model, "MTAN_MODELS": ""}, Path(log_dir) / "app.log") as url:
        seen = visit(url, PHONE if a.phone else DESKTOP, a.image, a.out)
        print({k: v for k, v in seen.items() if k not in ("text", "first_screen", "first_view")})
