"""The text-to-3D web app (MVDream-threestudio/gradio_app.py) in headless Chromium with the tiny
config: a run's live progress, queue, cancel and resume, the finished video, 3D viewer and glb
download, and the errors a user meets."""
import io
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from browser_helpers import driver  # noqa: F401  (the browser fixture)
from browser_helpers import (REPO, AppServer, app_env, click, click_first, fetch, foreign_requests, save_screenshot,
                             text_of, type_into, wait_for)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
APP = REPO / "MVDream-threestudio" / "gradio_app.py"
ENTER = "\ue007"  # selenium's Keys.ENTER


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("app3d")
    env = dict(app_env(), HF_HOME=str(cwd / "hf"), HF_HUB_CACHE=str(cwd / "hf" / "hub"))  # no cached weights
    srv = AppServer(APP, ["--outputs", cwd / "outputs", "--config", "mvdream-tiny.yaml", "--poll", "0.5"], cwd,
                    env=env)
    srv.outputs = cwd / "outputs"
    yield srv
    srv.stop()


def open_advanced(driver):
    """Open the 'advanced' accordion (the overrides field is inside it)."""
    if not driver.find_elements("css selector", "#overrides textarea"):
        click_first(driver, lambda: driver.find_elements("css selector", "#advanced button, #advanced .label-wrap")
                    or driver.find_elements("css selector", "#advanced"), "the advanced accordion")
    wait_for(lambda: driver.find_element("css selector", "#overrides textarea").is_displayed(), 30, "the overrides")


def status(driver):
    return text_of(driver, "status")


def message(driver):
    return text_of(driver, "message")


def shown_step(driver):
    m = re.search(r"step (\d+) /", text_of(driver, "progress"))
    return int(m.group(1)) if m else -1


def test_run_progress_queue_cancel_resume_video_mesh(server, driver, tmp_path):
    import trimesh

    driver.get(server.url)
    type_into(driver, "prompt", "a red apple")
    # a short schedule through the advanced overrides: stage 1 is steps 1-3, stage 2 steps 4-10
    type_into(driver, "steps", "10")
    open_advanced(driver)
    type_into(driver, "overrides", "data.resolution_milestones=[3]\ntrainer.val_check_interval=3")
    click(driver, "start")
    wait_for(lambda: status(driver).startswith("running"), 60, "the run to start")
    first = wait_for(lambda: shown_step(driver) >= 1 and shown_step(driver), 120, "a first step")
    wait_for(lambda: shown_step(driver) > first, 60, "the step counter to advance")
    assert re.search(r"loss \S+ · \S+ step/s · ETA", text_of(driver, "progress")), text_of(driver, "progress")

    # a second run from another page while this one is busy: queued, with its place shown
    main = driver.current_window_handle
    driver.switch_to.new_window("tab")
    driver.get(server.url)
    type_into(driver, "prompt", "a blue chair")
    click(driver, "start")
    queued = wait_for(lambda: status(driver).startswith("queued") and status(driver), 30, "the queued state")
    assert "position 1" in queued
    click(driver, "cancel")
    wait_for(lambda: "cancelled before it started" in status(driver), 30, "the queued run to be cancelled")
    driver.close()
    driver.switch_to.window(main)

    # validation images of step 3, then stage 2 starts by itself; cancel it there
    wait_for(lambda: len(driver.find_elements("css selector", "#val_images img")) >= 4, 120,
             "the validation images")
    src = driver.find_elements("css selector", "#val_images img")[0].get_attribute("src")
    val = np.asarray(Image.open(io.BytesIO(fetch(src))).convert("RGB"))
    assert val.ndim == 3 and val.std() > 1.0
    wait_for(lambda: shown_step(driver) >= 4 and "stage 2" in status(driver), 120, "stage 2 to run")
    click(driver, "cancel")
    cancelled = wait_for(lambda: status(driver).startswith("cancelled") and status(driver), 60, "the cancel")
    # with launch.py saving on SIGINT the checkpoint is the cancelled step; before that, stage 1's (3)
    saved = int(re.search(r"checkpoint at step (\d+)", cancelled).group(1))
    assert 3 <= saved < 10

    click(driver, "resume")
    shows = lambda: (message(driver), status(driver), text_of(driver, "progress"))  # noqa: E731
    wait_for(lambda: "stage 2 (from step" in status(driver), 120, "the resumed stage 2", page=shows)
    wait_for(lambda: status(driver).startswith("finished"), 300, "the run to finish", page=shows)

    duration = wait_for(lambda: driver.execute_script(
        "const v = document.querySelector('#video video'); if (!v) return 0;"
        "v.muted = true; v.play(); return v.readyState >= 1 ? v.duration : 0;"), 60, "the video to load")
    assert duration > 0
    canvas = wait_for(lambda: driver.find_element("css selector", "#model3d canvas"), 60, "the 3D viewer")
    time.sleep(2)  # let the viewer draw the mesh
    shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB"))
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 1, "the 3D viewer is blank"

    links = wait_for(lambda: [a.get_attribute("href") for a in driver.find_elements("css selector", "#downloads a")
                              if a.get_attribute("href")], 30, "the download links")
    names = [urllib.parse.unquote(h).rsplit("/", 1)[-1] for h in links]
    for ext in ("glb", "obj", "ply", "mp4", "ckpt"):
        assert any(n.endswith(ext) for n in names), (ext, names)
    glb = tmp_path / "model.glb"
    glb.write_bytes(fetch(next(h for h in links if urllib.parse.unquote(h).endswith(".glb"))))
    mesh = trimesh.load(glb, force="mesh")
    assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
    save_screenshot(driver, "webapp_text_to_3d")
    assert foreign_requests(driver, server.url) == [], "the page (3D viewer included) must work offline"

    # a fresh page reopens the run from the past-runs list: its video is back
    trial = next(server.outputs.glob("mvdream-tiny/a_red_apple@*"))
    driver.get(server.url)
    type_into(driver, "past_runs", f"mvdream-tiny/{trial.name}" + ENTER)
    click(driver, "open_run")
    wait_for(lambda: status(driver).startswith("Opened mvdream-tiny/a_red_apple@"), 30, "the reopened run",
             page=lambda: (message(driver), status(driver)))
    wait_for(lambda: driver.find_elements("css selector", "#video video"), 30, "the reopened run's video")


def test_errors_as_a_user_meets_them(server, driver):
    driver.get(server.url)
    click(driver, "start")  # empty prompt
    wait_for(lambda: "prompt is empty" in message(driver), 30, "the empty-prompt error")

    type_into(driver, "prompt", "a red apple")
    open_advanced(driver)
    type_into(driver, "overrides", "trainer.max_steps")
    click(driver, "start")
    wait_for(lambda: "is not key=value" in message(driver), 30, "the bad-override error")

    # the full-size config without its weights: the run stops at once with launch.py's advice
    field = type_into(driver, "config", "mvdream-sd21.yaml")
    field.send_keys(ENTER)
    wait_for(lambda: driver.find_element("css selector", "#config input").get_attribute("value")
             == "mvdream-sd21.yaml", 30, "the config choice")
    type_into(driver, "overrides", "")
    click(driver, "start")
    failed = wait_for(lambda: status(driver).startswith("error:") and status(driver), 240, "the checkpoint advice",
                      page=lambda: (message(driver), status(driver), driver.find_element(
                          "css selector", "#config input").get_attribute("value")))
    assert "sd-v2.1-base-4view.pt" in failed and "ckpt_path" in failed, failed
    assert server.proc.poll() is None

    # a reopen path from the client that leaves the outputs folder is refused
    type_into(driver, "past_runs", "../../../etc" + ENTER)
    click(driver, "open_run")
    wait_for(lambda: "refused" in message(driver) and "outside" in message(driver), 30, "the refusal")
    # and the server's file route does not hand out files outside the outputs folder either
    for path in (server.outputs / ".." / ".." / "etc" / "passwd", "/etc/passwd"):
        try:
            body = fetch(f"{server.url}gradio_api/file={path}")
        except urllib.error.HTTPError as err:
            assert err.code in (403, 404)
        else:
            assert b"root:" not in body
