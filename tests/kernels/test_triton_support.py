"""Selection logic for the Triton kernels (CPU): reasons for unsupported devices and shapes."""
import torch

from quantomni.kernels.triton.support import KERNELS, can_implement, is_supported


def test_cpu_device_is_not_supported_with_reason():
    ok, why = is_supported("nvfp4_w4a16_mm", "cpu")
    assert not ok and ("not CUDA" in why or "triton is not installed" in why)


def test_unknown_kernel():
    ok, why = is_supported("nope", "cuda")
    assert not ok and "unknown Triton kernel" in why


def test_shape_rules():
    assert can_implement("q4_k_mm", 3072, 3072) == (True, "")
    ok, why = can_implement("q4_k_mm", 3000, 3072)
    assert not ok and "% 256" in why
    ok, why = can_implement("fp8_scaled_mm", 40, 8)
    assert not ok and "% 16" in why
    assert can_implement("int8_scaled_mm", 41, 7)[0]
    assert not can_implement("q8_0_mm", 0, 7)[0]


def test_every_kernel_has_rules():
    for name, (cap, mult, desc) in KERNELS.items():
        assert cap >= (8, 0) and mult >= 1 and desc


@torch.no_grad()
def test_cuda_capability_reason_when_gpu_present():
    if not torch.cuda.is_available():
        ok, why = is_supported("fp8_scaled_mm", "cuda")
        assert not ok and why
    else:  # pragma: no cover - GPU machines
        ok, why = is_supported("int8_scaled_mm", "cuda")
        assert ok or "compute capability" in why
