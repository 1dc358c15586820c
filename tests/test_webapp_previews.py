"""The multiview previews web app (MVDream/scripts/gradio_app.py) in headless Chromium, with the
tiny parity checkpoint: Generate shows the image t2i.py draws, errors show as one line."""
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from browser_helpers import driver  # noqa: F401  (the browser fixture)
from browser_helpers import (REPO, AppServer, app_env, click, fetch, foreign_requests, make_driver, quit_driver,
                             save_screenshot, text_of, type_into, wait_for)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
APP = REPO / "MVDream" / "scripts" / "gradio_app.py"
T2I = REPO / "MVDream" / "scripts" / "t2i.py"


@pytest.fixture(scope="module")
def tiny_server(parity_dir, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("previews")
    server = AppServer(APP, ["--config_path", parity_dir / "tiny_mvdream.yaml", "--ckpt_path",
                             parity_dir / "tiny_mvdream.pt", "--size", 16, "--output_dir", cwd / "outputs"], cwd)
    yield server
    server.stop()


def _grid_src(driver):
    imgs = driver.find_elements("css selector", "#grid img")
    return imgs[0].get_attribute("src") if imgs else None


def test_generate_shows_the_t2i_images(tiny_server, driver, parity_dir, tmp_path):
    driver.get(tiny_server.url)
    wait_for(lambda: "model ready" in text_of(driver, "status"), 120, "the model to load")
    type_into(driver, "prompt", "a red apple")
    type_into(driver, "steps", "3")
    click(driver, "generate")
    src = wait_for(lambda: _grid_src(driver), 120, "the generated grid")
    grid = np.asarray(Image.open(io.BytesIO(fetch(src))).convert("RGB"))
    # 2 rows (the original's default) x 4 views of 16x16 pixels
    assert grid.shape == (2 * 16, 4 * 16, 3)
    assert grid.std() > 1.0, "the grid is blank"
    shown = driver.execute_script("const i = document.querySelector('#grid img');"
                                  "return [i.naturalWidth, i.naturalHeight, i.complete];")
    assert shown == [64, 32, True]
    assert "done in" in text_of(driver, "message")
    links = driver.find_elements("css selector", "#downloads a")
    assert len(links) == 1 + 2 * 4, "grid + each view offered for download"
    save_screenshot(driver, "webapp_previews")
    assert foreign_requests(driver, tiny_server.url) == [], "the page must work offline"

    # The same settings through t2i.py give the same pixels (one sampler, not a copy).
    out = tmp_path / "cli.png"
    proc = subprocess.run([sys.executable, str(T2I), "--config_path", parity_dir / "tiny_mvdream.yaml",
                           "--ckpt_path", parity_dir / "tiny_mvdream.pt", "--size", "16", "--steps", "3",
                           "--scale", "7.5", "--camera_elev", "15", "--camera_azim", "0", "--n_samples", "2",
                           "--seed", "23", "--text", "a red apple", "--output", out, "--no_progress"],
                          env=app_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), grid)


def test_empty_prompt_shows_a_one_line_error(tiny_server, driver):
    driver.get(tiny_server.url)
    type_into(driver, "prompt", "   ")
    click(driver, "generate")
    message = wait_for(lambda: "error:" in text_of(driver, "message") and text_of(driver, "message"), 60,
                       "the empty-prompt error")
    assert "prompt is empty" in message and "Traceback" not in driver.page_source


def test_missing_checkpoint_shows_the_t2i_advice(tmp_path):
    env = dict(app_env(), HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"))
    server = AppServer(APP, ["--output_dir", tmp_path / "outputs"], tmp_path, env=env)
    drv = make_driver()
    try:
        drv.get(server.url)
        message = wait_for(lambda: "error:" in text_of(drv, "status") and text_of(drv, "status"), 120,
                           "the missing-checkpoint advice")
        assert "sd-v2.1-base-4view.pt" in message and "--ckpt_path" in message
        assert "huggingface.co/MVDream/MVDream" in message
        assert server.proc.poll() is None, "the server must keep running"
    finally:
        quit_driver(drv)
        server.stop()
