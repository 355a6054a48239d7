"""The video, live webcam and 3D views in a real browser: headless Chromium (selenium) uploads a
clip in the Video tab and plays the result, opens the 3D section under a photo's results and
checks the scene is drawn, and streams a webcam (Chromium's fake camera, fed a street clip) in the
Live webcam tab until the results and the frame rate show.

Skipped when chromium or chromedriver is missing (Debian: apt-get install chromium chromium-driver).

Also the tool that takes the README's screenshots of these views with the default model::

    python tests/test_browser_media.py docs/
"""
from __future__ import annotations

import io
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from apphelpers import REPO, running_app  # noqa: E402
from mediahelpers import write_clip, write_pan  # noqa: E402
from test_browser import DESKTOP, Page, have_browser, new_driver  # noqa: E402

WEIGHTS = REPO / "weights"


def camera_feed(path: Path, photo: Path, size=(240, 320), frames: int = 30) -> Path:
    """A Y4M clip (what Chromium's fake camera plays) of the camera panning across ``photo``."""
    return write_pan(path, photo, size, 10, frames, y4m=True)


def open_tab(driver, name: str) -> None:
    from selenium.webdriver.common.by import By

    next(t for t in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if name in t.text).click()
    time.sleep(0.5)


@contextmanager
def page_with_tabs(url: str, timeout: float, **driver_options):
    """``(driver, page, wait)``: headless Chromium on the app's page, its tabs drawn; closed after."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as profile:
        driver = new_driver(profile, DESKTOP, **driver_options)
        try:
            wait = WebDriverWait(driver, timeout)
            driver.get(url)
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "button[role=tab]")))
            yield driver, Page(driver), wait
        finally:
            driver.quit()


def colours(png: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return len(im.convert("RGB").getcolors(1 << 20) or range(1 << 20))


def visit_media(url: str, clip: Path, photo: Path, shots: Path | None = None, timeout: float = 240.0) -> dict:
    """The Video tab and the 3D section, as a visitor uses them; what each shows (and screenshots
    into ``shots``)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    seen = {}
    with page_with_tabs(url, timeout, webgl=True) as (driver, page, wait):
        # Video: upload, the result plays
        open_tab(driver, "Video")
        driver.find_element(By.CSS_SELECTOR, "#video-input input[type=file]").send_keys(str(clip.resolve()))
        video = "#video-output video"
        wait.until(lambda d: d.execute_script(
            f"const v = document.querySelector('{video}'); return v && v.readyState >= 2 && v.duration > 0"))
        seen["video"] = driver.execute_script(
            f"const v = document.querySelector('{video}'); return [v.duration, v.videoWidth, v.videoHeight]")
        seen["video_summary"] = driver.find_element(By.CSS_SELECTOR, "#video-summary").text
        seen["video_legend"] = driver.find_element(By.CSS_SELECTOR, "#video-legend").text
        driver.execute_script(f"document.querySelector('{video}').currentTime = 1.0")
        time.sleep(1.0)
        if shots:
            driver.save_screenshot(str(shots / "app_video.png"))

        # 3D: a photo, then the section opened
        open_tab(driver, "Photo")
        driver.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(photo.resolve()))
        wait.until(lambda d: page.src("segmentation") and page.images_loaded("segmentation", "depth"))
        driver.execute_script("document.querySelector('#scene-section .label-wrap').click()")
        wait.until(lambda d: "points" in d.find_element(By.CSS_SELECTOR, "#scene-caption").text)
        canvas = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#scene canvas")))
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
        time.sleep(4.0)  # the viewer loads the mesh and draws it
        seen["scene_caption"] = driver.find_element(By.CSS_SELECTOR, "#scene-caption").text
        seen["scene_colours"] = colours(canvas.screenshot_as_png)
        seen["scene_files"] = [a.get_attribute("href") or ""
                               for a in driver.find_elements(By.CSS_SELECTOR, "#scene-downloads a")]
        if shots:
            driver.save_screenshot(str(shots / "app_3d.png"))
        seen["orbit"] = turn_scene(driver, canvas)

        return seen


def drag(driver, canvas, dx: int, moves: int) -> tuple:
    """A left-button drag across the 3D view in ``moves`` steps of ``dx`` pixels; the travel the
    page's script handed to the viewer, and the view once the viewer's inertia has settled."""
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(driver, duration=10).move_to_element(canvas).click_and_hold()
    for _ in range(moves):
        chain.move_by_offset(dx, 0)
    chain.release().perform()

    def shot():
        with Image.open(io.BytesIO(canvas.screenshot_as_png)) as im:
            return np.asarray(im.convert("L"), dtype=np.float32)
    view, deadline = shot(), time.monotonic() + 60
    while time.monotonic() < deadline:  # the viewer's inertia settles (slowly, with software WebGL)
        time.sleep(1.0)
        view, before = shot(), view
        if np.array_equal(view, before):
            break
    return driver.execute_script("return arguments[0].dataset.orbit || ''", canvas), view


def turn_scene(driver, canvas) -> dict:
    """Drags the 3D view: a little, then far past the bound twice, then back: what each showed."""
    import numpy as np

    from mtan.serve.page_text import ORBIT_PX

    _, start = drag(driver, canvas, 0, 1)
    small, turned = drag(driver, canvas, 2, 10)
    far, at_bound = drag(driver, canvas, 5, 40)
    farther, still = drag(driver, canvas, 5, 40)
    back, _ = drag(driver, canvas, -2, 10)

    def change(a, b):
        return float(np.abs(a - b).mean())
    return {"bound": ORBIT_PX["x"], "small": small, "far": far, "farther": farther, "back": back,
            "turned_by_small": change(start, turned), "turned_past_bound": change(at_bound, still)}


def visit_live(url: str, camera: Path, shots: Path | None = None, timeout: float = 120.0,
               live_seconds: float = 6.0) -> dict:
    """The Live webcam tab with Chromium's fake camera playing ``camera``: the camera allowed,
    Record, results stream in with their rate. (A browser of its own, without WebGL: software
    WebGL would take this machine's CPU from the server.)"""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    seen = {}
    with page_with_tabs(url, timeout, camera=camera) as (driver, page, wait):
        open_tab(driver, "Live webcam")
        driver.find_element(By.CSS_SELECTOR, "#live-input div[title='grant webcam access'] button").click()
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#live-input button[aria-label='capture photo']"))
                   ).click()
        wait.until(lambda d: "frames/s" in d.find_element(By.CSS_SELECTOR, "#live-rate").text
                   and page.images_loaded("live-output"))
        time.sleep(live_seconds)  # a few seconds of streaming: the rate over the last frames
        wait.until(lambda d: page.images_loaded("live-output"))
        seen["live_rate"] = driver.find_element(By.CSS_SELECTOR, "#live-rate").text
        seen["live_image"] = driver.execute_script(
            "const i = document.querySelector('#live-output img'); return [i.naturalWidth, i.naturalHeight]")
        if shots:
            driver.save_screenshot(str(shots / "app_live.png"))
        return seen


def visit_bad_clip(url: str, bad: Path, timeout: float = 120.0) -> dict:
    """The Video tab given a text file named .mp4: the messages the visitor sees."""
    from selenium.webdriver.common.by import By

    with page_with_tabs(url, timeout) as (driver, page, wait):
        open_tab(driver, "Video")
        driver.find_element(By.CSS_SELECTOR, "#video-input input[type=file]").send_keys(str(bad.resolve()))
        wait.until(lambda d: "⚠️" in d.find_element(By.CSS_SELECTOR, "#video-summary").text)
        time.sleep(2.0)  # any toast the browser's failed preview raises has come by now
        return {"summary": driver.find_element(By.CSS_SELECTOR, "#video-summary").text,
                "toasts": [t.text for t in driver.find_elements(By.CSS_SELECTOR, ".toast-body")],
                "error_pills": page.error_pills(),
                "clip_left_in_box": len(driver.find_elements(By.CSS_SELECTOR, "#video-input video"))}


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if have_browser():
        pytest.skip(have_browser())
    tmp = tmp_path_factory.mktemp("browser-media")
    with running_app({"MTAN_MODEL": str(WEIGHTS), "MTAN_MODELS": "", "MTAN_DEFAULT_MODEL": str(WEIGHTS)},
                     tmp / "app.log") as url:
        yield url


def test_video_3d_and_live_webcam_render(app_url, tmp_path):
    clip = write_clip(tmp_path / "street.mp4", seconds=2, fps=10, size=(120, 160))
    camera = camera_feed(tmp_path / "camera.y4m", REPO / "examples" / "street_02.jpg")
    seen = visit_media(app_url, clip, REPO / "examples" / "street_01.jpg", shots=tmp_path)
    seen |= visit_live(app_url, camera, shots=tmp_path)
    duration, width, height = seen["video"]
    assert abs(duration - 2.0) < 0.15 and (width, height) == (3 * 160, 120), seen["video"]
    assert "20 frames at 10 frames/s" in seen["video_summary"]
    assert "points" in seen["scene_caption"] and "field of view" in seen["scene_caption"]
    assert seen["scene_colours"] > 200, seen["scene_colours"]  # the scene is drawn, not an empty canvas
    assert any(".glb" in f for f in seen["scene_files"]) and any(".ply" in f for f in seen["scene_files"]), seen
    assert "frames/s" in seen["live_rate"] and "measuring" not in seen["live_rate"], seen["live_rate"]
    assert seen["live_image"] == [2 * 320, 240]  # segmentation | depth of each 320x240 camera frame
    for shot in ("app_video.png", "app_3d.png", "app_live.png"):
        assert colours((tmp_path / shot).read_bytes()) > 50, shot
    assert "flat" in seen["video_legend"] and "bright is near" in seen["video_legend"]
    # the 3D view turns with a drag, but not past its bound, and turns back at once
    orbit = seen["orbit"]
    bound = orbit["bound"]
    assert bound > 20 and orbit["small"] == "20,0" and orbit["far"] == orbit["farther"] == f"{bound},0", orbit
    assert orbit["back"] == f"{bound - 20},0", orbit
    assert orbit["turned_by_small"] > 2 and orbit["turned_past_bound"] == 0, orbit
    bad = tmp_path / "holiday.mp4"
    bad.write_text("this is a text file, not a clip\n" * 20)
    messages = visit_bad_clip(app_url, bad)  # one message, the app's own
    assert "not a video clip" in messages["summary"] and messages["toasts"] == [] and messages["error_pills"] == 0, messages
    assert messages["clip_left_in_box"] == 0, messages  # the upload box is ready for another clip


if __name__ == "__main__":
    if have_browser():
        sys.exit(have_browser())
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    out.mkdir(parents=True, exist_ok=True)
    # as the app runs once warmed up, both cores (torch.compile's start-up warm-up would take them for minutes)
    with tempfile.TemporaryDirectory() as tmp, running_app(
            {"MTAN_MODEL": str(WEIGHTS), "MTAN_MODELS": "", "MTAN_COMPILE": "off", "MTAN_THREADS": ""},
            Path(tmp) / "app.log") as url:
        clip = write_pan(Path(tmp) / "street.mp4", REPO / "examples" / "street_05.jpg", (360, 640), 15, 45)
        camera = camera_feed(Path(tmp) / "camera.y4m", REPO / "examples" / "street_02.jpg", (480, 640))
        seen = visit_media(url, clip, REPO / "examples" / "street_01.jpg", shots=out)
        seen |= visit_live(url, camera, shots=out, live_seconds=20)
        print({k: v for k, v in seen.items()})
