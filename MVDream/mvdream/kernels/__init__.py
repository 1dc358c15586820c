"""C++ CPU kernels behind ``ops.Custom(func_type="aot")``: fused norms and activations
(:mod:`.norm_act`), the Linear layer's GEMM (:mod:`.linear`), the 2-D convolution
(:mod:`.conv`) and attention (:mod:`.attention`), built by :mod:`.build`; ``vector_math.h``
holds the math they share."""
import os

import mindspore as ms


def cpu_kernels_enabled() -> bool:
    """The kernels run only when the device target is CPU; other targets, and
    ``MVDREAM_CPU_KERNELS=0``, keep MindSpore's own ops."""
    return ms.get_context("device_target") == "CPU" and os.environ.get("MVDREAM_CPU_KERNELS", "1") != "0"
