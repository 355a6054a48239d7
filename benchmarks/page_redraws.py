"""How long the page takes to answer a control that redraws without running the network, measured
in a real browser (headless Chromium): from moving the control to the new picture shown.

Starts the app with the default model (or --model), uploads a photo, waits for every result, then
moves each control --repeats times (alternating values) and times until the picture it changes
has a new address and has loaded: the overlay opacity (segmentation), the depth colours (from the menu's Enter), the
before/after choice and the attention stage and channel. Prints one JSON object of medians.

    python benchmarks/page_redraws.py                         # examples/street_01.jpg, weights/
    python benchmarks/page_redraws.py --photo my.jpg --repeats 9
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from apphelpers import running_app  # noqa: E402
from test_browser import DESKTOP, Page, have_browser, new_driver  # noqa: E402

SET_SLIDER = """const r = document.querySelector(arguments[0] + ' input[type=range]');
const set = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set;
set.call(r, arguments[1]); r.dispatchEvent(new Event('input', {bubbles: true}));
r.dispatchEvent(new Event('change', {bubbles: true})); r.dispatchEvent(new PointerEvent('pointerup', {bubbles: true}));"""
CLICK_RADIO = "document.querySelector(arguments[0] + ` input[type=radio][value='${arguments[1]}']`).click()"


def time_control(driver, page: Page, picture: str, move, values, repeats: int, timeout: float = 30.0,
                 prepare=None) -> list[float]:
    """Seconds from each ``move(value)`` until ``picture``'s image has a new address and is loaded
    (``prepare(value)`` first, untimed)."""
    seconds = []
    for i in range(repeats):
        before = page.src(picture)
        if prepare:
            prepare(values[i % len(values)])
        t = time.perf_counter()
        move(values[i % len(values)])
        deadline = t + timeout
        while not (page.src(picture) != before and page.images_loaded(picture)):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{picture} did not change within {timeout} s")
            time.sleep(0.005)
        seconds.append(time.perf_counter() - t)
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photo", default=str(REPO / "examples" / "street_01.jpg"))
    p.add_argument("--model", default="weights")
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    if have_browser():
        sys.exit(have_browser())
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as tmp, running_app({"MTAN_MODEL": a.model, "MTAN_MODELS": ""},
                                                           Path(tmp) / "app.log") as url:
        driver = new_driver(str(Path(tmp) / "profile"), DESKTOP)
        page = Page(driver)
        try:
            driver.get(url)
            WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-image input[type=file]"))
            driver.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(Path(a.photo).resolve()))
            WebDriverWait(driver, 300).until(lambda d: page.src("attention-panel") and page.images_loaded("segmentation"))
            slider = lambda elem: lambda v: driver.execute_script(SET_SLIDER, f"#{elem}", v)  # noqa: E731
            radio = lambda elem: lambda v: driver.execute_script(CLICK_RADIO, f"#{elem}", v)  # noqa: E731
            driver.execute_script("document.querySelector('#attention-panel').scrollIntoView()")
            def type_colours(name):  # untimed: the visitor choosing
                box = driver.find_element(By.CSS_SELECTOR, "#colormap input")
                box.click()
                box.send_keys(Keys.CONTROL, "a")
                box.send_keys(name)

            def choose(name):
                driver.find_element(By.CSS_SELECTOR, "#colormap input").send_keys(Keys.ENTER)

            timings = {
                "colours": time_control(driver, page, "depth", choose, ["viridis", "magma"], a.repeats,
                                        prepare=type_colours),
                "opacity": time_control(driver, page, "segmentation", slider("opacity"), [0.3, 0.8], a.repeats),
                "compare": time_control(driver, page, "compare", radio("compare-choice"), ["depth", "segmentation"],
                                        a.repeats),
                "attention_stage": time_control(driver, page, "attention-panel", slider("att-level"), [2, 3, 4, 5, 1],
                                                a.repeats),
                "attention_channel": time_control(driver, page, "attention-panel", slider("att-channel"), [1, 2, 0],
                                                  a.repeats),
                "attention_part": time_control(driver, page, "attention-panel", radio("att-part"),
                                               ["decoder", "encoder"], a.repeats),
            }
        finally:
            driver.quit()
    print(json.dumps({"photo": Path(a.photo).name, "model": a.model, "repeats": a.repeats,
                      "median_s": {k: round(statistics.median(v), 3) for k, v in timings.items()},
                      "max_s": {k: round(max(v), 3) for k, v in timings.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
