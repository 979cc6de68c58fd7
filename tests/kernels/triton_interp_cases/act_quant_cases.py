"""Interpreter cases for the per-token quant kernel; run by test_triton_act_quant.py in a subprocess
with TRITON_INTERPRET=1 set before triton is imported (the interpreter needs that)."""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import torch  # noqa: E402

from quantomni.kernels.triton import act_quant  # noqa: E402


def _ref(x, qmax, dtype):
    xf = x.float()
    s = (xf.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
    if dtype == torch.int8:
        q = torch.round(xf / s).clamp(-127, 127).to(torch.int8)
    else:
        q = (xf / s).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q, s


SHAPES = [(1, 7), (5, 100), (3, 33), (2, 1000)]


@pytest.mark.parametrize("m,k", SHAPES)
@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float32])
def test_int8_matches_torch_round_half_even(m, k, in_dtype):
    gen = torch.Generator().manual_seed(m * 1000 + k)
    x = (torch.randn(m, k, generator=gen) * 3).to(in_dtype)
    q, s = act_quant.per_token_quant_int8(x)
    q_ref, s_ref = _ref(x, 127.0, torch.int8)
    assert q.dtype == torch.int8 and s.shape == (m, 1) and s.dtype == torch.float32
    assert torch.equal(s, s_ref)
    assert torch.equal(q, q_ref)


def test_int8_ties_round_to_even():
    # row max 127 -> scale 1: x/scale hits exact .5 ties
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 127.0, 3.5]])
    q, s = act_quant.per_token_quant_int8(x)
    assert s.item() == 1.0
    assert q.tolist() == [[0, 2, 2, 0, -2, -2, 127, 4]]


@pytest.mark.parametrize("m,k", SHAPES)
def test_fp8_matches_torch(m, k):
    gen = torch.Generator().manual_seed(7 * m + k)
    x = (torch.randn(m, k, generator=gen) * 5).to(torch.bfloat16)
    q, s = act_quant.per_token_quant_fp8(x)
    q_ref, s_ref = _ref(x, 448.0, torch.float8_e4m3fn)
    assert q.dtype == torch.float8_e4m3fn
    assert torch.equal(s, s_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    assert (q.float().abs().amax(dim=1) == 448).all()  # the row max lands on the fp8 max


def test_nan_row_is_isolated():
    x = torch.randn(4, 40)
    x[2, 5] = float("nan")
    for fn in (act_quant.per_token_quant_fp8, act_quant.per_token_quant_int8):
        q, s = fn(x)
        assert torch.isnan(s[2]).all()
        assert not torch.isnan(s[[0, 1, 3]]).any()
        deq = q.float() * s
        assert torch.isnan(deq[2]).all()
        assert not torch.isnan(deq[[0, 1, 3]]).any()


def test_zero_row_uses_min_scale():
    x = torch.zeros(2, 16)
    x[1] = torch.linspace(-1, 1, 16)
    q, s = act_quant.per_token_quant_int8(x)
    assert s[0].item() == pytest.approx(1e-12)
    assert (q[0] == 0).all()


def test_two_pass_path_for_wide_rows(monkeypatch):
    monkeypatch.setattr(act_quant, "MAX_SINGLE_PASS_K", 16)  # force the looped kernel
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 50, generator=gen)
    for fn, qmax, dt in ((act_quant.per_token_quant_int8, 127.0, torch.int8),
                         (act_quant.per_token_quant_fp8, 448.0, torch.float8_e4m3fn)):
        q, s = fn(x)
        q_ref, s_ref = _ref(x, qmax, dt)
        assert torch.equal(s, s_ref)
        assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


