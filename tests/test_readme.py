"""The README's commands run as written: its tiny workflow block top to bottom (bash, from a
copy of the repository root's layout), its first block offline (the one-line advice), and its
test commands' marker expression."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trimesh
from PIL import Image

from launch_helpers import REPO

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)
# Only for speed: the tiny workflow's first --train gets smaller renders and fewer steps (the
# resumed commands take them from the trial's configs/parsed.yaml, as a user's run does).
FAST = ("trainer.max_steps=3 data.resolution_milestones=[2] data.width=[8,16] data.height=[8,16] "
        "data.eval_height=8 data.eval_width=8 data.n_val_views=1 data.n_test_views=2 "
        "trainer.val_check_interval=1000 system.renderer.num_samples_per_ray=8")


def _block(marker: str) -> str:
    (block,) = [b for b in BLOCKS if marker in b]
    return block


def _bash(script: str, cwd: Path, env_extra=None):
    env = dict(os.environ, MS_DEV_HOST_BLOCKING_RUN="1", GLOG_v="3",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
               PYTHONPATH=os.pathsep.join([str(REPO / "MVDream"), os.environ.get("PYTHONPATH", "")]))
    env.update(env_extra or {})
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def _root_copy(tmp_path: Path) -> Path:
    """The repository root's layout (linked), so outputs land in tmp_path."""
    for name in ("MVDream", "MVDream-threestudio", "tools", "tests", "requirements.txt"):
        (tmp_path / name).symlink_to(REPO / name)
    return tmp_path


def test_readme_leads_with_two_root_commands_then_the_test_command():
    assert BLOCKS[0].strip().splitlines() == ["pip install -r requirements.txt",
                                              'python MVDream/scripts/t2i.py --text "an astronaut riding a horse"']
    assert BLOCKS[1].strip() == "python -m pytest -q -n 2 tests"
    assert not any(re.search(r"(^|[;&|]\s*)cd\s", b, re.M) for b in BLOCKS), "a block cd's away from the root"
    assert 'python -m pytest -q -n 2 -m "not slow" tests' in README
    markers = (REPO / "pytest.ini").read_text()
    assert all(f"    {m}:" in markers for m in ("slow", "e2e", "parity", "bench"))
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest -q -n 2 tests" in ci


@pytest.mark.e2e
def test_first_block_offline_without_weights_gives_the_one_line_advice(tmp_path):
    t2i = BLOCKS[0].strip().splitlines()[1]
    hf, root = tmp_path / "hf", tmp_path / "root"
    root.mkdir()
    r = _bash(t2i, _root_copy(root), {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf), "HF_HUB_CACHE": str(hf / "hub")})
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "sd-v2.1-base-4view.pt" in lines[0] and "--ckpt_path" in lines[0]


@pytest.mark.e2e
@pytest.mark.slow
def test_tiny_workflow_block_runs_top_to_bottom(tmp_path):
    block = _block("mvdream-tiny.yaml --train")
    lines = block.strip().splitlines()
    assert [ln.split()[1] for ln in lines if ln.startswith("python")] == [
        "MVDream/scripts/t2i.py", "tools/convert_pt2ms.py", "MVDream-threestudio/launch.py",
        "MVDream-threestudio/launch.py", "MVDream-threestudio/launch.py", "MVDream-threestudio/launch.py",
        "MVDream-threestudio/extract_color_mesh.py"]
    script = block.replace('--train system.prompt_processor.prompt="a red apple"',
                           f'--train system.prompt_processor.prompt="a red apple" {FAST}', 1)
    assert script != block
    root = _root_copy(tmp_path)
    r = _bash(script, root)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    assert "Traceback" not in r.stderr
    (trial,) = list((root / "outputs" / "mvdream-tiny").glob("a_red_apple@*"))
    assert Image.open(root / "previews" / "tiny.png").size == (4 * 16, 16)
    assert (root / "tiny_mvdream.ckpt").stat().st_size > 0
    ckpts = sorted(p.name for p in (trial / "ckpts").iterdir())
    assert ckpts == ["last.ckpt", "step2.ckpt", "step3.ckpt"]
    assert (trial / "save" / "it3-test.mp4").is_file() and (trial / "save-1" / "it3-test.mp4").is_file()
    assert (trial / "save" / "it3-export" / "model.obj").is_file()
    mesh = trimesh.load(root / "apple.obj", process=False, force="mesh")
    assert len(mesh.faces) > 0
    assert r.stderr.count(f"config: {trial.relative_to(root)}/configs/parsed.yaml") == 3
