"""Build-and-cache of the C++ sources behind ``ops.Custom(func_type="aot")`` CPU kernels.

``build_library(source, cache_dir, link)`` compiles ``source`` with g++ (-O3, OpenMP, and AVX2/FMA
where the CPU has them, then the ``link`` arguments) into ``cache_dir``, named by a hash of the
source, the headers beside it and the flags, so an edited source or header rebuilds and
concurrent processes never load a half-written library (the library is written under a
temporary name and renamed). The result of each build, path or error, is remembered for the
process, so a missing compiler costs one attempt.
"""
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("MVDREAM_CACHE_DIR", Path.home() / ".cache" / "mvdream_ms"))


def _cpu_flags():
    # x86-64-v3 (AVX2 + FMA) lets the kernels' polynomials vectorise 8 wide; the flag
    # enters the library's hash, so a cache shared by different CPUs never mixes them.
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return []
    return ["-march=x86-64-v3"] if {"avx2", "fma", "bmi2"} <= set(flags) else []


@functools.lru_cache(maxsize=None)
def _build(source: str, cache_dir: str, link: tuple = ()):
    """(library path, None) or (None, error), once per process and source."""
    try:
        src = Path(source)
        # -fno-trapping-math: no kernel reads floating-point exception flags, and without it GCC
        # will not vectorise a loop with std::floor or a float comparison (the polynomial exp and
        # erf, so SiLU and GELU ran one element at a time). The results are the same bits.
        flags = ["-O3", "-std=c++14", "-fopenmp", "-fno-trapping-math", "-shared", "-fPIC"] + _cpu_flags()
        # the headers beside the source (#include "...") are part of what is built
        headers = b"".join(h.read_bytes() for h in sorted(src.parent.glob("*.h")))
        digest = hashlib.sha1(src.read_bytes() + headers + " ".join(flags + list(link)).encode()).hexdigest()[:12]
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        lib = cache / f"{src.stem}_{digest}.so"
        if lib.exists():
            return str(lib), None
        compiler = shutil.which(os.environ.get("CXX", "g++"))
        if compiler is None:
            raise RuntimeError("no C++ compiler (g++) found")
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        try:
            result = subprocess.run([compiler, *flags, str(src), "-o", tmp, *link], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"compiling {src.name} failed: {result.stderr[-2000:]}")
            os.replace(tmp, lib)  # atomic: other processes see either nothing or the whole library
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return str(lib), None
    except Exception as err:  # noqa: BLE001 - remembered and re-raised on each request
        return None, err


def build_library(source, cache_dir=None, link=()) -> str:
    """Path of the compiled shared library of ``source`` (``link``: extra linker arguments, e.g.
    a library to link against); raises the build error."""
    lib, err = _build(str(source), str(cache_dir or default_cache_dir()), tuple(link))
    if err is not None:
        raise err
    return lib
