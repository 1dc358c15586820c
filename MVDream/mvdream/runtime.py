"""Process-level MindSpore setup: one explicit ``setup_runtime(...)`` call at each entry point
(scripts, tools, the test session), before the first MindSpore op. Importing this module
changes nothing."""
import logging
import os

logger = logging.getLogger(__name__)

# Devices in order of preference when none is given.
DEVICE_TARGETS = ("Ascend", "GPU", "CPU")

# The CPU memory pool's first block, as a fraction of physical memory. MindSpore's default
# (2 GB blocks) fragments across blocks: the VAE encoder's forward+backward at 4 x 256^2 peaks
# at 4.8 GB in its first call and at 5.6 GB from its second on; with one large block, 4.8 GB
# every call. It is address space, not memory: pages count once they are touched.
CPU_POOL_FRACTION = 0.5


def cpu_pool_size_gb() -> int:
    """The CPU memory pool's first block in whole GB (at least 2, MindSpore's default)."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(2, int(physical * CPU_POOL_FRACTION) >> 30)


def detect_device_target() -> str:
    """The best device this MindSpore build can use here: Ascend, then GPU, then CPU."""
    import mindspore as ms

    # is_available() logs two warnings per missing device plugin: expected here, not news
    logging.disable(logging.WARNING)
    try:
        for target in DEVICE_TARGETS[:-1]:
            if getattr(ms.device_context, target.lower()).is_available():
                return target
    finally:
        logging.disable(logging.NOTSET)
    return "CPU"


def _omp_num_threads():
    """The first level of ``OMP_NUM_THREADS`` (e.g. ``4`` or ``4,2``), or None when unset or invalid."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def setup_runtime(device_target=None, threads=None, report=None) -> str:
    """Set up MindSpore for this process; returns the device target used.

    * environment (only where not set already): ``MS_DEV_HOST_BLOCKING_RUN=1`` (PyNative on CPU
      otherwise spin-waits on its host queue, 3-4x slower; read when the runtime starts, so this
      must run before the first op), ``OMP_WAIT_POLICY=PASSIVE`` (the fused CPU kernels' OpenMP
      threads otherwise spin between calls against MindSpore's own on the same cores: the text
      encoder's graph 0.48 s instead of 0.70 s, the VAE encoder's forward+backward 3% faster,
      the UNet within 3%; read when the OpenMP runtime loads, on the kernels' first use) and
      ``GLOG_v=3`` (quiet C++ log);
    * PyNative mode on ``device_target`` (None: ``detect_device_target()``, and the choice is
      reported with ``report(line)``, default: this module's logger at INFO);
    * ``threads`` caps the CPU kernel threads (default on CPU: ``OMP_NUM_THREADS`` where set, as
      PyTorch does, else the core count; MindSpore's default of 25 oversubscribes small
      machines); given explicitly, it also becomes the default ``OMP_NUM_THREADS`` of the fused
      CPU kernels (read when OpenMP loads, with MindSpore), which child processes inherit;
    * on CPU, the memory pool starts as one block of ``cpu_pool_size_gb()`` (see
      ``CPU_POOL_FRACTION``), unless ``mindspore.runtime.set_memory`` was called already.
    """
    os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("GLOG_v", "3")
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(int(threads)))
    import mindspore as ms

    if device_target is None:
        device_target = detect_device_target()
        (report or logger.info)(f"device_target: {device_target} (the best device present; "
                                "pass --device_target to choose)")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device(device_target)
    if device_target == "CPU":
        try:
            ms.runtime.set_memory(init_size=f"{cpu_pool_size_gb()}GB")
        except RuntimeError:
            pass  # set already in this process (by the caller, or a second call): keep it
        if threads is None:
            threads = _omp_num_threads() or os.cpu_count() or 1
    if threads:
        try:
            ms.device_context.cpu.op_tuning.threads_num(int(threads))
        except RuntimeError:
            pass  # the runtime already started in this process (a second call): keep its setting
    return device_target
