"""Kernels against float64 references on fresh random inputs.

Tolerances: FP8 E4M3 keeps 3 mantissa bits (relative rounding <= 2**-4 per element); with both
operands quantized, the output's relative L2 error on Gaussian data is ~3%, so we require < 6%.
INT8 per-channel/per-token keeps ~7 bits: relative error ~0.5-1%, we require < 2%. Kernels that
compute the same quantized products must agree with the torch reference to float32 rounding.
"""

import pytest
import torch
from torch import nn

from qo_testing import cuda_only, rel_error
from quantomni.kernels.base import KernelSelectionError, KernelSpec, select_linear_kernel
from quantomni.kernels.fp8_torch import fp8_linear_reference
from quantomni.kernels.int8_torch import int8_linear_reference
from quantomni.kernels.quant_ops import quantize_act_fp8, quantize_weight_fp8, quantize_weight_int8
from quantomni.pipeline.backends import BackendRequest
from quantomni.schemes import Fp8Scheme

SHAPES = [(1, 64, 32), (7, 17, 5), (33, 96, 48), (128, 256, 128)]


def _data(m, k, n, dtype=torch.float32, device="cpu"):
    x = torch.randn(m, k, device=device, dtype=dtype) * 2.0
    w = torch.randn(n, k, device=device, dtype=dtype) / k**0.5
    b = torch.randn(n, device=device, dtype=dtype)
    return x, w, b


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("wg", ["tensor", "channel"])
@pytest.mark.parametrize("act", ["token", "tensor"])
def test_fp8_reference_close_to_float64(rng_seed, m, k, n, wg, act):
    x, w, b = _data(m, k, n)
    wq, ws = quantize_weight_fp8(w, wg)
    out = fp8_linear_reference(x, wq, ws, act, None, b)
    ref = x.double() @ w.double().t() + b.double()
    assert rel_error(out, ref) < 0.06


def test_fp8_reference_is_exact_emulation(rng_seed):
    x, w, b = _data(19, 80, 24)
    wq, ws = quantize_weight_fp8(w, "channel")
    xq, xs = quantize_act_fp8(x, "token")
    emulated = (xq.double() * xs.double()) @ (wq.double() * ws.double()[:, None]).t() + b.double()
    out = fp8_linear_reference(x, wq, ws, "token", None, b)
    assert rel_error(out, emulated) < 1e-6


def test_fp8_static_scale_saturates_instead_of_overflowing(rng_seed):
    x, w, b = _data(8, 32, 16)
    wq, ws = quantize_weight_fp8(w, "tensor")
    tiny_scale = torch.tensor(1e-4)  # forces saturation at +-448 * scale
    out = fp8_linear_reference(x, wq, ws, "static", tiny_scale, b)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_int8_reference_close_to_float64(rng_seed, m, k, n):
    x, w, b = _data(m, k, n)
    wq, ws = quantize_weight_int8(w)
    out = int8_linear_reference(x, wq, ws, b)
    ref = x.double() @ w.double().t() + b.double()
    assert rel_error(out, ref) < 0.02


class _Layer(nn.Module):
    pass


def _layer(weight_q, weight_scale, bias, scheme=None, input_scale=None):
    layer = _Layer()
    layer.weight, layer.weight_scale, layer.bias, layer.scheme, layer.input_scale = weight_q, weight_scale, bias, scheme, input_scale
    return layer


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_int_mm_kernel_matches_reference_on_cpu(rng_seed, m, k, n):
    from quantomni.kernels.int8_int_mm import IntMmInt8Kernel

    x, w, b = _data(m, k, n)
    wq, ws = quantize_weight_int8(w)
    out = IntMmInt8Kernel.apply(_layer(wq, ws, b), x)
    ref = int8_linear_reference(x, wq, ws, b)
    assert rel_error(out, ref) < 1e-6


def test_non_finite_rows_stay_non_finite_and_isolated(rng_seed):
    x, w, b = _data(6, 32, 16)
    x[2, 3] = float("nan")
    x[4, 0] = float("inf")
    for out in (
        fp8_linear_reference(x, *quantize_weight_fp8(w, "channel"), "token", None, b),
        int8_linear_reference(x, *quantize_weight_int8(w), b),
    ):
        assert not torch.isfinite(out[2]).any(), "a NaN input row must not produce finite output"
        assert not torch.isfinite(out[4]).all(), "an Inf input row must not produce all-finite output"
        good = [0, 1, 3, 5]
        ref = x[good].double() @ w.double().t() + b.double()
        assert rel_error(out[good], ref) < 0.06


def test_zero_row_gives_bias_not_nan(rng_seed):
    x, w, b = _data(3, 32, 16)
    x[1] = 0.0
    out = fp8_linear_reference(x, *quantize_weight_fp8(w, "channel"), "token", None, b)
    assert torch.allclose(out[1], b, atol=1e-6)
    out = int8_linear_reference(x, *quantize_weight_int8(w), b)
    assert torch.allclose(out[1], b, atol=1e-6)


def test_nan_weight_is_refused():
    from quantomni.kernels.quant_ops import check_finite_weight

    w = torch.randn(4, 4)
    w[1, 1] = float("nan")
    with pytest.raises(ValueError, match="'blk.0'.*NaN/Inf"):
        check_finite_weight(w, "blk.0")


# ------------------------------------------------------------------ selection (CPU)
def _spec(fmt, k=64, n=64, device="cpu", scheme=None, dtype=torch.bfloat16):
    return KernelSpec(fmt, k, n, dtype, torch.device(device), scheme)


def test_auto_selection_on_cpu_gives_reasons():
    kernel, why = select_linear_kernel(_spec("fp8", scheme=Fp8Scheme()), "auto")
    assert kernel.name == "torch" and "scaled_mm: needs a CUDA device" in why
    kernel, why = select_linear_kernel(_spec("int8"), "auto")
    assert kernel.name == "int_mm"


def test_naming_an_unavailable_backend_is_an_error_not_a_fallback():
    with pytest.raises(KernelSelectionError, match="'scaled_mm' cannot run on cpu: needs a CUDA device"):
        select_linear_kernel(_spec("fp8", scheme=Fp8Scheme()), "scaled_mm")
    with pytest.raises(KernelSelectionError, match="does not implement format 'int8'"):
        select_linear_kernel(_spec("int8"), "scaled_mm")
    with pytest.raises(KernelSelectionError, match="no kernels registered for format 'fp4'"):
        select_linear_kernel(_spec("fp4"), "auto")


def test_scaled_mm_shape_rules_are_reported():
    from quantomni.kernels.fp8_scaled_mm import ScaledMmFp8Kernel

    ok, why = ScaledMmFp8Kernel.can_implement(_spec("fp8", k=17, n=64, scheme=Fp8Scheme()))
    assert not ok and "divisible by 16" in why
    ok, why = ScaledMmFp8Kernel.can_implement(_spec("fp8", scheme=Fp8Scheme(), dtype=torch.float16))
    assert not ok and "bfloat16" in why
    ok, _ = ScaledMmFp8Kernel.can_implement(_spec("fp8", scheme=Fp8Scheme("tensor", "tensor"), dtype=torch.float16))
    assert ok


def test_backend_request_parsing():
    assert BackendRequest.parse("auto").for_format("fp8") == "auto"
    req = BackendRequest.parse("fp8=torch,int8=int_mm")
    assert req.for_format("fp8") == "torch" and req.for_format("int8") == "int_mm"
    assert BackendRequest.parse({"fp8": "cutlass"}).for_format("fp8") == "cutlass"
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        BackendRequest.parse("fast")
    with pytest.raises(ValueError, match="does not implement int8"):
        BackendRequest.parse("int8=scaled_mm")
    with pytest.raises(ValueError, match="unknown format 'fp4'"):
        BackendRequest.parse({"fp4": "torch"})
    with pytest.raises(ValueError, match="cannot parse"):
        BackendRequest.parse("fp8=")


# ------------------------------------------------------------------ GPU
@cuda_only
@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n", [(1, 64, 32), (16, 128, 64), (100, 3072, 3072 // 2), (257, 512, 1024)])
@pytest.mark.parametrize("wg,act", [("channel", "token"), ("tensor", "tensor"), ("tensor", "token")])
def test_scaled_mm_matches_reference_on_gpu(rng_seed, m, k, n, wg, act):
    from quantomni.kernels.fp8_scaled_mm import ScaledMmFp8Kernel

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs sm_89+")
    x, w, b = _data(m, k, n, torch.bfloat16, "cuda")
    wq, ws = quantize_weight_fp8(w, wg)
    layer = _layer(wq, ws, b, Fp8Scheme(wg, act))
    out = ScaledMmFp8Kernel.apply(layer, x)
    ref = fp8_linear_reference(x.float(), wq, ws, act, None, b.float())
    assert rel_error(out, ref) < 1e-2  # bf16 output rounding


@cuda_only
@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n", [(1, 64, 32), (16, 128, 64), (17, 256, 128), (300, 3072, 1536)])
def test_int_mm_matches_reference_on_gpu(rng_seed, m, k, n):
    from quantomni.kernels.int8_int_mm import IntMmInt8Kernel

    x, w, b = _data(m, k, n, torch.bfloat16, "cuda")
    wq, ws = quantize_weight_int8(w)
    out = IntMmInt8Kernel.apply(_layer(wq, ws, b), x)
    ref = int8_linear_reference(x.float(), wq, ws, b.float())
    assert rel_error(out, ref) < 1e-2


@cuda_only
@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n", [(1, 64, 32), (16, 128, 64), (17, 256, 128), (300, 3072, 1536), (4608, 3072, 3072)])
@pytest.mark.parametrize("backend", ["fused_scaled_mm", "triton_int8"])
def test_triton_backends_match_reference_on_gpu(rng_seed, m, k, n, backend):
    from quantomni.kernels.triton_backends import FusedQuantScaledMmFp8Kernel, TritonInt8Kernel

    x, w, b = _data(m, k, n, torch.bfloat16, "cuda")
    x[min(3, m - 1), :7] *= 40.0  # an outlier token must not disturb the other rows' scales
    if backend == "fused_scaled_mm":
        if torch.cuda.get_device_capability() < (8, 9):
            pytest.skip("needs sm_89+")
        wq, ws = quantize_weight_fp8(w, "channel")
        out = FusedQuantScaledMmFp8Kernel.apply(_layer(wq, ws, b, Fp8Scheme("channel", "token")), x)
        ref = fp8_linear_reference(x.float(), wq, ws, "token", None, b.float())
    else:
        wq, ws = quantize_weight_int8(w)
        out = TritonInt8Kernel.apply(_layer(wq, ws, b), x)
        ref = int8_linear_reference(x.float(), wq, ws, b.float())
    assert out.dtype == torch.bfloat16
    assert rel_error(out, ref) < 1e-2


@cuda_only
@pytest.mark.gpu
def test_auto_picks_triton_backends_on_hopper():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs sm_89+")
    kernel, _ = select_linear_kernel(_spec("fp8", device="cuda", scheme=Fp8Scheme()), "auto")
    assert kernel.name == "fused_scaled_mm"
    kernel, _ = select_linear_kernel(_spec("int8", device="cuda"), "auto")
    assert kernel.name == "triton"


def test_fp8_fast_accum_setting(monkeypatch):
    from quantomni.kernels.fp8_scaled_mm import ScaledMmFp8Kernel, fp8_fast_accum

    monkeypatch.delenv("QUANTOMNI_FP8_FAST_ACCUM", raising=False)
    assert fp8_fast_accum() is True
    spec = _spec("fp8", scheme=Fp8Scheme())
    assert "fast accumulation" in ScaledMmFp8Kernel.can_implement(spec)[1]
    monkeypatch.setenv("QUANTOMNI_FP8_FAST_ACCUM", "0")
    assert fp8_fast_accum() is False
    assert "full-precision accumulation" in ScaledMmFp8Kernel.can_implement(spec)[1]
    monkeypatch.setenv("QUANTOMNI_FP8_FAST_ACCUM", "maybe")
    with pytest.raises(ValueError, match="QUANTOMNI_FP8_FAST_ACCUM"):
        fp8_fast_accum()


@cuda_only
@pytest.mark.gpu
@pytest.mark.parametrize("k", [3072, 12288])
def test_fp8_fast_accum_error_is_far_below_quantization_error(rng_seed, monkeypatch, k):
    """Fast accumulation against the exact products (float64 of the same FP8 values): its error
    must stay under 1e-2 relative (the FP8 quantization error itself is ~3e-2) and no more than
    1.5x that of full-precision accumulation plus the bf16 output rounding."""
    from quantomni.kernels.fp8_scaled_mm import ScaledMmFp8Kernel

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs sm_89+")
    x, w, b = _data(1024, k, 3072, torch.bfloat16, "cuda")
    wq, ws = quantize_weight_fp8(w, "channel")
    layer = _layer(wq, ws, b, Fp8Scheme("channel", "token"))
    xq, xs = quantize_act_fp8(x, "token")
    exact = (xq.double() * xs.double()) @ (wq.double() * ws.double()[:, None]).T + b.double()
    errs = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("QUANTOMNI_FP8_FAST_ACCUM", flag)
        out = ScaledMmFp8Kernel.apply(layer, x)
        assert torch.isfinite(out).all()
        errs[flag] = rel_error(out, exact)
    assert errs["1"] < 1e-2, errs
    assert errs["1"] <= 1.5 * errs["0"] + 2e-3, errs
