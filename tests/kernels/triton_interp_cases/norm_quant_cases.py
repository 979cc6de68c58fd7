"""Interpreter cases for the fused LayerNorm + modulation + per-token quant kernel
(run by test_triton_norm_quant.py). Reference: torch layer_norm in float32, then the act-quant
formula. The normalization may differ from torch's by float32 ulps, so codes may differ by one
step at rounding boundaries: scales must agree to 1e-5 relative, at most 1% of codes may differ,
and the dequantized result must be within one quantization step."""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402

from quantomni.kernels.triton.norm_quant import layernorm_modulate_quant  # noqa: E402


def _ref(x, shift, scale, qmax, eps=1e-6):
    b = shift.reshape(-1, x.shape[1]).shape[0]
    xf = x.float()
    y = torch.nn.functional.layer_norm(xf, (x.shape[1],), eps=eps)
    y = y.reshape(b, -1, x.shape[1]) * (1 + scale.float().reshape(b, 1, -1)) + shift.float().reshape(b, 1, -1)
    y = y.reshape(x.shape)
    s = (y.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
    return y, s


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int8])
@pytest.mark.parametrize("m,k,b", [(1, 48, 1), (6, 100, 2), (9, 64, 3)])
def test_matches_torch(dtype, m, k, b):
    gen = torch.Generator().manual_seed(m * k + b)
    x = (torch.randn(m, k, generator=gen) * 3 + 1).to(torch.bfloat16)
    shift = (torch.randn(b, k, generator=gen) * 0.5).to(torch.bfloat16)
    scale = (torch.randn(b, k, generator=gen) * 0.5).to(torch.bfloat16)
    q, s = layernorm_modulate_quant(x, shift if b > 1 else shift[0], scale if b > 1 else scale[0], dtype)
    qmax = 127.0 if dtype == torch.int8 else 448.0
    y, s_ref = _ref(x, shift, scale, qmax)
    assert q.dtype == dtype and s.shape == (m, 1)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=0)
    if dtype == torch.int8:
        q_ref = torch.round(y / s_ref).clamp(-127, 127)
        assert (q.float() - q_ref).abs().max() <= 1
        assert (q.float() != q_ref).float().mean() <= 0.01
    deq = q.float() * s
    step = s * (1.0 if dtype == torch.int8 else 32.0)  # fp8 spacing near 448 is 32
    assert ((deq - y).abs() <= step).all()


def test_nan_row_isolated():
    x = torch.randn(3, 32)
    x[1, 4] = float("nan")
    q, s = layernorm_modulate_quant(x, torch.zeros(32), torch.zeros(32), torch.int8)
    assert torch.isnan(s[1]).all() and not torch.isnan(s[[0, 2]]).any()
