"""The app in headless Chromium: the heatmap renders, rho updates it, a run trains live, every tab is screenshotted.

Needs Debian's `chromium` and `chromium-driver` and selenium from PyPI; skipped when any of them is missing.
Screenshots go to tests/artifacts/ (git-ignored).
"""

import base64
import shutil
import socket
from pathlib import Path

import pytest
import torch

from greencore_app.main import LAUNCH_OPTIONS, build_app
from greencore.explore import ExploreSpec
from greencore.training import TrainConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT = 60

if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("headless browser test needs chromium and chromedriver (apt-get install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (pip install selenium)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: the app's runs and handlers share 2 busy cores, where 2 threads each run 3-5x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    spec = ExploreSpec(model="tiny-gpt2", batch_size=2, seq_len=64, probe_batches=1)
    demo = build_app(tmp_path_factory.mktemp("runs"), explore_defaults=spec)
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                        **LAUNCH_OPTIONS)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def wait(driver, condition, timeout=TIMEOUT):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))


def text_of(driver, elem_id: str) -> str:
    found = driver.find_elements(By.ID, elem_id)
    return found[0].text if found else ""


def set_number(driver, css: str, value) -> None:
    """Put `value` into a number box as one edit. Typing it key by key sends every prefix ("0" on the way to "0.8"),
    which a slider refuses below its minimum; under load those refusals raced the final value."""
    box = driver.find_element(By.CSS_SELECTOR, css)
    driver.execute_script(
        "const [box, value] = arguments;"
        "Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(box, value);"
        "box.dispatchEvent(new Event('input', {bubbles: true}));"
        "box.dispatchEvent(new Event('change', {bubbles: true}));", box, str(value))
    box.send_keys(Keys.TAB)


def open_tab(driver, name: str) -> None:
    tab = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button[role='tab']") if b.text.strip() == name)
    tab.click()


def screenshot(driver, name: str) -> None:
    """A PNG of the whole page, beyond the window (Chrome DevTools protocol)."""
    ARTIFACTS.mkdir(exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                             "clip": clip})
    (ARTIFACTS / f"app-{name}.png").write_bytes(base64.b64decode(shot["data"]))


def test_app_in_a_browser(url, browser):
    browser.get(url)
    # Explore: the page profiles its default on load and draws the heatmap as a plotly heatmap layer
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#explore-heatmap .js-plotly-plot g.hm"))
    start = TrainConfig.demo().rho  # the rho slider and the Train tab start at the demo run's budget
    wait(browser, lambda d: f"rho = {start:.2f}" in text_of(d, "explore-summary"))
    set_number(browser, "#rho input[type='number']", 0.8)
    wait(browser, lambda d: "rho = 0.80" in text_of(d, "explore-summary"))
    assert browser.find_elements(By.CSS_SELECTOR, "#explore-heatmap .js-plotly-plot g.hm")
    set_number(browser, "#rho input[type='number']", 0.2)
    wait(browser, lambda d: "trains no tensor" in text_of(d, "explore-message"))
    set_number(browser, "#rho input[type='number']", 0.6)
    wait(browser, lambda d: "rho = 0.60" in text_of(d, "explore-summary"))
    screenshot(browser, "explore")
    # config only: the metric list turns structural, and a profile says it has no weights
    browser.find_element(By.CSS_SELECTOR, "#config-only input[type='checkbox']").click()
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#explore-metric input").get_attribute("value")
         == "uniform")
    browser.find_element(By.ID, "profile-button").click()
    wait(browser, lambda d: "Config only (no weights)" in text_of(d, "explore-summary"))
    assert "not GreenTrainer's learned choice" in browser.find_element(By.ID, "explore-heatmap").text
    screenshot(browser, "explore-config-only")

    # Train: a short green run, followed live until it finishes
    open_tab(browser, "Train")
    set_number(browser, "#max-steps input", 4)
    set_number(browser, "#train-batch input", 4)
    set_number(browser, "#max-train input", 32)
    set_number(browser, "#max-eval input", 4)
    browser.find_element(By.ID, "start-run").click()
    wait(browser, lambda d: "Started" in text_of(d, "train-message"))
    wait(browser, lambda d: "finished" in text_of(d, "train-status"), timeout=120)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#loss-plot .js-plotly-plot .scatterlayer .trace"))
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline .js-plotly-plot g.hm"))
    screenshot(browser, "train")

    # Compare: the finished run is in the table and on the ROUGE-L / FLOPs plot
    open_tab(browser, "Compare")
    wait(browser, lambda d: TrainConfig.demo().scheme in text_of(d, "compare-table"))
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#pareto .js-plotly-plot .scatterlayer .trace"))
    screenshot(browser, "compare")
