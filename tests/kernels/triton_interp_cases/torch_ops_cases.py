"""The custom ops trace under torch.compile(fullgraph=True) (no graph breaks) and match the
direct wrappers; run on the interpreter in a subprocess by test_triton_torch_ops.py."""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from quantomni.kernels.triton.torch_ops import register_ops  # noqa: E402
from triton_kernel_refs import nvfp4_dequant_f64, random_nvfp4, random_q8_0, rel_err  # noqa: E402


def test_fullgraph_compile_of_quantized_linears():
    register_ops()
    register_ops()  # idempotent
    ops = torch.ops.quantomni_triton
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 64, generator=gen).to(torch.bfloat16)
    w = torch.randn(24, 64, generator=gen)
    ws = w.abs().amax(dim=1) / 127.0
    w8 = torch.round(w / ws[:, None]).to(torch.int8)
    w_packed, w_scale, w_scale_2 = random_nvfp4(24, 64, gen)
    q8raw, q8f64 = random_q8_0(24, 64, gen)
    bias = torch.randn(24, generator=gen).to(torch.bfloat16)

    def block(x):
        xq, xs = ops.per_token_quant_int8(x)
        a = ops.int8_scaled_mm(xq, w8, xs, ws, bias, torch.float32)
        b = ops.nvfp4_w4a16_mm(x, w_packed, w_scale, w_scale_2, bias, torch.float32)
        c = ops.q8_0_mm(x, q8raw, None, torch.float32)
        d = ops.group_affine_mm(x, q8prep.codes, q8prep.scale, None, 8, None, torch.float32)
        return a, b, c, d

    from quantomni.kernels.triton.group_affine_gemm import prepare_q8_0_weight

    q8prep = prepare_q8_0_weight(q8raw)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    a, b, c, d = compiled(x)
    assert rel_err(d, c.double()) < 1e-6
    assert rel_err(a, x.double() @ w.double().T + bias.double()) < 0.02
    assert rel_err(b, x.double() @ nvfp4_dequant_f64(w_packed, w_scale, w_scale_2).T + bias.double()) < 1e-6
    assert rel_err(c, x.double() @ q8f64.to(torch.bfloat16).double().T) < 1e-6
    eager = block(x)
    assert [t.shape for t in eager[:4]] == [a.shape, b.shape, c.shape, d.shape] == [(5, 24)] * 4
