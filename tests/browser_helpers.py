"""Run a gradio app as a subprocess and drive it with headless Chromium (Debian's chromium +
chromium-driver, through selenium). Without them the browser tests skip and say how to install."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--window-size=1400,2200")


def chromium_paths():
    """(chromium, chromedriver) paths, or skip the test with the install command."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        browser = None
    if not browser or not driver:
        message = f"browser tests need headless Chromium and selenium: {INSTALL}"
        if os.environ.get("MVDREAM_REQUIRE_BROWSER"):  # CI: must run
            pytest.fail(message)
        pytest.skip(message)
    return browser, driver


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_env():
    return dict(os.environ, MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3", HF_HUB_OFFLINE="1",
                PYTHONPATH=os.pathsep.join([str(REPO / "MVDream-threestudio"), str(REPO / "MVDream"),
                                            os.environ.get("PYTHONPATH", "")]))


class AppServer:
    """``python <script> *args --port P`` until the page answers; ``stop()`` ends it (SIGINT, then kill)."""

    def __init__(self, script, args, cwd, env=None, timeout=240):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = Path(cwd) / f"server-{self.port}.log"
        self.t0 = time.time()
        self.proc = subprocess.Popen([sys.executable, str(script), *map(str, args), "--port", str(self.port)],
                                     cwd=cwd, env=env or app_env(), stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.startup_s = self._wait(timeout)

    def _wait(self, timeout):
        while time.time() - self.t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        return time.time() - self.t0
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"server did not answer in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def make_driver(download_dir=None):
    browser, driver_path = chromium_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    if download_dir:
        options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                                  "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(120)
    driver.profile_dir = profile
    return driver


def quit_driver(driver):
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def driver():
    """One headless Chromium per test module (import this fixture into the module)."""
    drv = make_driver()
    yield drv
    quit_driver(drv)


def wait_for(predicate, timeout, what, poll=0.5, page=None):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` (and, given a
    ``page`` callable, what the page showed then)."""
    t0 = time.time()
    last = None
    while time.time() - t0 < timeout:
        try:
            last = predicate()
        except Exception as err:  # the page re-renders under us: try again
            last = err
        else:
            if last:
                return last
        time.sleep(poll)
    shown = f"; page: {page()!r}" if page else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r}){shown}")


def text_of(driver, elem_id):
    """Visible text of the component ``elem_id`` ('' until the page has rendered it)."""
    found = driver.find_elements("css selector", f"#{elem_id}")
    return found[0].text if found else ""


def click_first(driver, find, what, timeout=60):
    """Click the first element ``find()`` returns once the page has rendered it and nothing covers
    it: while an event runs, Gradio lays a translucent status overlay over components, and a click
    then raises ElementClickInterceptedException (retried here) instead of reaching them."""
    def attempt():
        find()[0].click()
        return True
    wait_for(attempt, timeout, what)


def click(driver, elem_id):
    """Click the component ``elem_id`` once the page has rendered it and nothing covers it."""
    click_first(driver, lambda: driver.find_elements("css selector", f"#{elem_id}"), elem_id)


def type_into(driver, elem_id, text, clear=True):
    """Type into the textbox/number input of the component ``elem_id``."""
    field = wait_for(lambda: driver.find_element("css selector", f"#{elem_id} textarea, #{elem_id} input"), 60,
                     f"the {elem_id} field")
    if clear:  # select all + delete, so the page sees the edit (WebElement.clear() fires no input event)
        field.send_keys("\ue009", "a", "\ue000")
        field.send_keys("\ue003")
    if text:
        field.send_keys(text)
    return field


def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def save_screenshot(driver, name):
    """With WEBAPP_SCREENSHOTS=<dir> (how docs/ was made), a full-page screenshot <dir>/<name>.png."""
    folder = os.environ.get("WEBAPP_SCREENSHOTS")
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    driver.set_window_size(1280, 700)  # the page fills the window: measure it in a short one
    time.sleep(0.5)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 20, 2400))
    time.sleep(1.5)  # let the layout and the 3D viewer settle
    path = Path(folder) / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def foreign_requests(driver, base_url):
    """URLs the page fetched from anywhere but the app itself (fonts, CDNs, analytics)."""
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [u for u in urls if not u.startswith((base_url, "data:", "blob:"))]
