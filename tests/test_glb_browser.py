"""A textured glb from the exporter opens in a browser viewer: three.js's GLTFLoader in headless
Chromium (Debian's chromium + chromium-driver, driven by selenium), three.js from npm served on
127.0.0.1. The image must be non-blank, textured, and upright: the known field's albedo has blue
growing with the world's up (z), which the y-up file puts on the viewer's +y (image top)."""
import base64
import functools
import http.server
import io
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from test_mesh_export import exporter, known_fields

BROWSER = Path(__file__).resolve().parent / "browser"
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = ("apt-get install -y chromium chromium-driver && pip install selenium && "
           "npm install --prefix tests/browser (three.js)")


def _missing() -> str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        return f"{CHROMIUM} / {DRIVER} not found"
    if not (BROWSER / "node_modules" / "three" / "build" / "three.module.js").exists():
        return "three.js is not installed in tests/browser/node_modules"
    return ""


@pytest.fixture
def served(tmp_path):
    """tmp_path (viewer.html, node_modules, model.glb) on http://127.0.0.1:<port>/."""
    shutil.copy(BROWSER / "viewer.html", tmp_path / "viewer.html")
    os.symlink(BROWSER / "node_modules", tmp_path / "node_modules")
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".glb": "model/gltf-binary"}

    def log_message(self, *args):
        pass


def render(url: str, user_data_dir: str) -> tuple:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader", f"--user-data-dir={user_data_dir}",
                 "--window-size=300,300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(url)
        result = WebDriverWait(driver, 60).until(lambda d: d.execute_script("return window.__result"))
        data = driver.execute_script("return document.getElementById('c').toDataURL('image/png')")
    finally:
        driver.quit()
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))).convert("RGB"))
    return result, image.astype(np.float64) / 255.0


def test_textured_glb_renders_upright_in_chromium(served, tmp_path_factory):
    missing = _missing()
    if missing:
        pytest.skip(f"{missing}: install with {INSTALL}")
    root, base = served
    geometry, material = known_fields()
    exp = exporter(geometry, material, fmt="glb", save_uv=True, save_texture=True, texture_size=256,
                   resolution=48, target_faces=3000)
    exp.write(exp(), str(root / "model.glb"))
    result, image = render(f"{base}/viewer.html", str(tmp_path_factory.mktemp("chromium-profile")))
    assert result.get("ok"), result
    assert result["textured"]  # the material has a base-colour map
    covered = image.max(-1) > 0.02  # black background
    rows = np.nonzero(covered.any(1))[0]
    cols = np.nonzero(covered.any(0))[0]
    # the sphere (radius 0.705 at 2.5 from a 45-degree camera) is a disc of ~70% of the width
    assert 0.2 < covered.mean() < 0.6 and image[covered].std() > 0.02
    assert abs((rows[0] + rows[-1]) / 2 - 127.5) < 8 and abs((cols[0] + cols[-1]) / 2 - 127.5) < 8
    height = rows[-1] - rows[0]
    top = image[rows[0]:rows[0] + height // 3][covered[rows[0]:rows[0] + height // 3]]
    bottom = image[rows[-1] - height // 3:rows[-1] + 1][covered[rows[-1] - height // 3:rows[-1] + 1]]
    # upright: blue (world z, up) at the top, yellowish (low blue) at the bottom
    assert top[:, 2].mean() > bottom[:, 2].mean() + 0.2
