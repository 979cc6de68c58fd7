"""Interpreter cases for the persistent TMA W8A8 GEMM; run by test_triton_w8a8_tma.py in a subprocess.

Fresh random operands every run (never zero; the seed is in each failure message). Tolerances:
float32 output 1e-5 relative to the output's max (int8 accumulation is exact, the epilogue is
float32); bf16 output 1e-2 (the interpreter truncates fp32 -> bf16 rather than rounding).
The interpreter runs the descriptor loads/stores (with their zero fill past M, N, K) and the
persistent tile loop (3 programs, several tiles each); tl.range's flatten/warp_specialize are
ignored there.
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402

from quantomni.kernels.triton.w8a8_gemm_tma import INTERPRET_CONFIG, scaled_mm_tma  # noqa: E402
from triton_kernel_refs import rel_err  # noqa: E402

FP8 = torch.float8_e4m3fn


def _nonzero_8bit(shape, dtype, gen):
    if dtype == torch.int8:
        mag = torch.randint(1, 128, shape, generator=gen)
        sign = torch.randint(0, 2, shape, generator=gen) * 2 - 1
        return (mag * sign).to(torch.int8)
    x = torch.randn(shape, generator=gen) * 50
    x = torch.where(x.abs() < 0.05, torch.full_like(x, 0.5), x)  # fp8 e4m3 never rounds these to 0
    return x.to(dtype)


def _case(m, n, k, dtype, with_bias, gen):
    a = _nonzero_8bit((m, k), dtype, gen)
    b = _nonzero_8bit((n, k), dtype, gen)
    a_s = torch.rand(m, generator=gen) + 0.1
    b_s = torch.rand(n, generator=gen) + 0.1
    bias = torch.randn(n, generator=gen) if with_bias else None
    return a, b, a_s, b_s, bias


def _ref(a, b, a_s, b_s, bias):
    out = (a.double() @ b.double().T) * a_s.double()[:, None] * b_s.double()[None, :]
    return out + bias.double() if bias is not None else out


TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("k", [64, 160])  # 160 is not a multiple of 64: zero-filled K tail below
@pytest.mark.parametrize("n", [48, 96])
@pytest.mark.parametrize("m", [1, 37, 64])
@pytest.mark.parametrize("dtype", [torch.int8, FP8], ids=["int8", "fp8"])
def test_matches_f64_reference(dtype, m, n, k, with_bias, out_dtype, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    a, b, a_s, b_s, bias = _case(m, n, k, dtype, with_bias, gen)
    # BLOCK_K 64 leaves a K tail at K=160; 16x32 tiles leave M and N tails
    out = scaled_mm_tma(a, b, a_s, b_s, bias, out_dtype, dtype == torch.int8, {**INTERPRET_CONFIG, "BLOCK_K": 64})
    assert out.shape == (m, n) and out.dtype == out_dtype
    err = rel_err(out, _ref(a, b, a_s, b_s, bias))
    assert err < TOL[out_dtype], f"rel err {err} (seed {rng_seed})"


CONFIGS = {
    "default": None,
    "subtile": {**INTERPRET_CONFIG, "epilogue_subtile": True},
    "ptr_store_ws": {**INTERPRET_CONFIG, "tma_store": False, "warp_specialize": True, "flatten": False},
    "group1_bk16": {**INTERPRET_CONFIG, "GROUP_M": 1, "BLOCK_K": 16},
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.int8, FP8], ids=["int8", "fp8"])
def test_configs_and_persistent_loop(dtype, name, rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    a, b, a_s, b_s, bias = _case(70, 104, 96, dtype, True, gen)  # 5 x 4 tiles over 3 programs
    out = scaled_mm_tma(a, b, a_s, b_s, bias, torch.float32, dtype == torch.int8, CONFIGS[name])
    err = rel_err(out, _ref(a, b, a_s, b_s, bias))
    assert err < 1e-5, f"rel err {err} (seed {rng_seed})"


def test_strided_rows_and_broadcast_scales(rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    big = _nonzero_8bit((9, 80), torch.int8, gen)
    a = big[:, :64]  # row stride 80 bytes (16-byte multiple), unit stride along K
    b = _nonzero_8bit((40, 64), torch.int8, gen)
    a_s = torch.tensor([0.02]).expand(9)  # per-tensor scale: stride 0
    b_s = torch.rand(40, generator=gen) + 0.1
    out = scaled_mm_tma(a, b, a_s, b_s, None, torch.float32, True)
    err = rel_err(out, _ref(a, b, a_s, b_s, None))
    assert err < 1e-5, f"rel err {err} (seed {rng_seed})"


def test_pointer_store_allows_unaligned_n(rng_seed):
    gen = torch.Generator().manual_seed(rng_seed)
    a, b, a_s, b_s, bias = _case(21, 45, 64, torch.int8, True, gen)  # N*2 bytes = 90, not a 16-multiple
    out = scaled_mm_tma(a, b, a_s, b_s, bias, torch.bfloat16, True, {**INTERPRET_CONFIG, "tma_store": False})
    err = rel_err(out, _ref(a, b, a_s, b_s, bias))
    assert err < 1e-2, f"rel err {err} (seed {rng_seed})"
