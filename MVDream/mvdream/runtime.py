"""Process-level MindSpore setup shared by the command-line tools."""
import os

# PyNative on CPU spin-waits on its host queue without this (3-4x slower). It must be
# set before MindSpore starts its runtime, so importing this module sets it.
os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")
os.environ.setdefault("GLOG_v", "3")


def setup_runtime(device_target="CPU", threads=None):
    """PyNative mode on ``device_target``; ``threads`` caps the CPU kernel threads
    (MindSpore's default of 25 oversubscribes small machines)."""
    import mindspore as ms

    ms.set_context(mode=ms.PYNATIVE_MODE, device_target=device_target)
    if threads is None and device_target == "CPU":
        threads = os.cpu_count() or 1
    if threads:
        try:
            ms.device_context.cpu.op_tuning.threads_num(int(threads))
        except RuntimeError:
            pass  # the runtime already started in this process (a second call): keep its setting
