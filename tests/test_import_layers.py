"""Layers import one way (see the README's layout):

    entry points (launch.py, extract_color_mesh.py, scripts/, tools/)
    -> threestudio.systems -> threestudio.models, threestudio.data -> threestudio.utils -> mvdream

Checked statically (every import statement of every module, including function-level ones), so a
lazy import inside a function cannot hide an upward dependency. Importing ``mvdream.runtime`` has
no side effect on the environment."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"mvdream": REPO / "MVDream" / "mvdream", "threestudio": REPO / "MVDream-threestudio" / "threestudio"}
ENTRY_POINTS = ("launch", "extract_color_mesh")
RUNTIME_ENV = ("MS_DEV_HOST_BLOCKING_RUN", "OMP_WAIT_POLICY", "GLOG_v")  # what setup_runtime sets


def module_name(package: str, path: Path) -> str:
    parts = (package,) + path.relative_to(PACKAGES[package]).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(name: str, path: Path):
    """Absolute names of everything ``path`` (module ``name``) imports."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def all_imports():
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            name = module_name(package, path)
            yield name, set(imported_modules(name, path))


def layer(module: str):
    """The layer of a project module (higher imports lower), or None for anything else."""
    parts = module.split(".")
    if parts[0] == "mvdream":
        return 0
    if parts[0] != "threestudio" or len(parts) == 1:
        return None  # the threestudio package root is the registry: it imports its subpackages
    return {"utils": 1, "models": 2, "data": 2, "systems": 3}.get(parts[1])


def test_module_names_resolve():
    names = dict(all_imports())
    assert "threestudio.models.renderers.nerf_volume_renderer" in names
    assert "threestudio.utils.autodiff" in names["threestudio.models.renderers.nerf_volume_renderer"]
    assert "threestudio.models.renderers.volume_rendering.PackedLayout" in names[
        "threestudio.models.renderers.nerf_volume_renderer"]


def test_layers_import_one_way():
    wrong = []
    for name, imports in all_imports():
        own = layer(name)
        for target in imports:
            if target.split(".")[0] in ENTRY_POINTS:
                wrong.append(f"{name} imports the entry point {target}")
            other = layer(target)
            if own is not None and other is not None and other > own:
                wrong.append(f"{name} imports {target} (a higher layer)")
            elif own == 2 and other == 2 and name.split(".")[1] != target.split(".")[1]:
                wrong.append(f"{name} imports {target} (models and data are siblings)")
    assert not wrong, "\n".join(wrong)


def test_no_tool_or_script_imports_an_entry_point():
    """launch.py and extract_color_mesh.py are run, never imported (tests aside)."""
    paths = [*(REPO / "tools").glob("*.py"), *(REPO / "MVDream" / "scripts").glob("*.py"),
             *(REPO / "MVDream-threestudio").glob("*.py")]
    assert len(paths) > 5
    wrong = [f"{path.name} imports {target}" for path in paths for target in imported_modules(path.stem, path)
             if target.split(".")[0] in ENTRY_POINTS]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", ["mvdream.runtime", "threestudio"])
def test_import_sets_no_environment_variable(module):
    code = ("import os, sys, json; before = dict(os.environ); import " + module +
            "; print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p.parent) for p in PACKAGES.values()))
    for key in RUNTIME_ENV:
        env.pop(key, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _mvdream_env():
    """This environment with the checkout's ``mvdream`` importable, for a fresh interpreter."""
    return dict(os.environ, PYTHONPATH=str(PACKAGES["mvdream"].parent))


def _last_line_of(code, env):
    """The last line ``code`` prints in a fresh interpreter with ``env``."""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_setup_runtime_sets_the_cpu_environment_it_documents():
    code = ("import os, json; from mvdream.runtime import setup_runtime; setup_runtime('CPU'); "
            f"print(json.dumps([os.environ.get(k) for k in {RUNTIME_ENV!r}]))")
    env = _mvdream_env()
    for key in RUNTIME_ENV:
        env.pop(key, None)
    assert _last_line_of(code, env) == '["1", "PASSIVE", "3"]'
    # a value the user set is kept
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert _last_line_of(code, env) == '["1", "ACTIVE", "3"]'


def test_thread_count_default_follows_omp_num_threads(monkeypatch):
    from mvdream.runtime import _omp_num_threads
    for value, want in (("3", 3), ("4,2", 4), (" 2 ", 2), ("", None), ("0", None), ("four", None)):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert _omp_num_threads() == want, value
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert _omp_num_threads() is None


def test_explicit_threads_become_the_kernels_omp_default_for_child_processes():
    code = ("import os; from mvdream.runtime import setup_runtime; setup_runtime('CPU', threads=3); "
            "print(os.environ.get('OMP_NUM_THREADS'))")
    env = _mvdream_env()
    env.pop("OMP_NUM_THREADS", None)
    assert _last_line_of(code, env) == "3"
    env["OMP_NUM_THREADS"] = "2"  # a value the user set is kept
    assert _last_line_of(code, env) == "2"


def test_setup_runtime_sizes_the_cpu_memory_pool():
    """One first block of half the physical memory, or a size the caller set before is kept."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    code = ("import mindspore as ms; from mvdream.runtime import setup_runtime, cpu_pool_size_gb; {before}"
            "setup_runtime('CPU'); setup_runtime('CPU'); print(cpu_pool_size_gb())\n"
            "try:\n    ms.runtime.set_memory(init_size='3GB')\nexcept RuntimeError as err:\n    print(err)")
    env = _mvdream_env()
    for before in ("", "ms.runtime.set_memory(init_size='3GB'); "):
        out = subprocess.run([sys.executable, "-c", code.format(before=before)], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        size, error = out.stdout.strip().splitlines()[-2:]
        assert int(size) == max(2, (physical // 2) >> 30)
        assert "can not be set repeatedly" in error  # configured once, by setup_runtime or the caller


def test_one_line_errors_need_no_mindspore():
    """The command-line tools' error types import without MindSpore, so t2i.py rejects bad input at
    once; the checkpoint functions that need MindSpore still import by name."""
    code = ("import sys; import mvdream.errors; before = 'mindspore' in sys.modules; "
            "from mvdream.checkpoint import load_checkpoint_file, check_keys; "
            "print(before, 'mindspore' in sys.modules, callable(load_checkpoint_file), callable(check_keys))")
    env = _mvdream_env()
    assert _last_line_of(code, env) == "False True True True"
