"""CUDA C++ GGUF Q8_0 dequantizer (``kernels/cuda/gguf_q8_0``): bit-identical to the torch dequantizer
(the exact product rounded once to bf16/fp16), tails and misaligned inputs included."""

import pytest
import torch

from quantomni.kernels.gguf_dequant import dequantize_gguf, qtype_id


def _random_q8_0(n, k, gen):
    d = (torch.rand(n, k // 32, generator=gen) * 0.02 + 0.001).to(torch.float16)
    d[0, 0] = -d[0, 0]  # a negative scale
    qs = torch.randint(-128, 128, (n, k // 32, 32), dtype=torch.int8, generator=gen)
    blocks = torch.cat([d.view(torch.uint8).reshape(n, k // 32, 2), qs.view(torch.uint8)], dim=-1)
    return blocks.reshape(n, -1).contiguous()


def test_refuses_cpu_with_reason():
    from quantomni.kernels.cuda import gguf_q8_0

    ok, why = gguf_q8_0.is_supported(torch.device("cpu"))
    assert not ok and "CUDA" in why


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n,k", [(1, 32), (3, 96), (64, 3072), (33, 1024), (3072, 3072)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bit_identical_to_torch_dequantizer(n, k, dtype):
    from quantomni.kernels.cuda import gguf_q8_0

    ok, why = gguf_q8_0.is_supported(torch.device("cuda"))
    if not ok:
        pytest.skip(why)
    packed = _random_q8_0(n, k, torch.Generator().manual_seed(n * k)).cuda()
    ref = dequantize_gguf(packed, qtype_id("Q8_0"), (n, k), torch.float32).to(dtype)
    out = gguf_q8_0.q8_0_dequantize(packed, k, dtype)
    assert torch.equal(out, ref)
    # a view 2 bytes into a buffer (Q8_0 rows are only 2-byte aligned in a file map)
    buf = torch.empty(packed.numel() + 2, dtype=torch.uint8, device="cuda")
    view = buf[2:].view(n, -1)
    view.copy_(packed)
    assert torch.equal(gguf_q8_0.q8_0_dequantize(view, k, dtype), ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gguf_backend_uses_it_at_large_m_and_traces():
    from quantomni.kernels import gguf_triton
    from quantomni.kernels.cuda import gguf_q8_0

    if not gguf_q8_0.is_supported(torch.device("cuda"))[0]:
        pytest.skip("no NVRTC")
    packed = _random_q8_0(256, 512, torch.Generator().manual_seed(1)).cuda()

    class Scheme:
        qtype_name = "Q8_0"

    class Layer(torch.nn.Module):
        in_features, out_features, scheme = 512, 256, Scheme()

        def __init__(self):
            super().__init__()
            self.register_buffer("weight", packed)
            self.bias = None

        def forward(self, x):
            return gguf_triton.TritonGgufKernel.apply(self, x)

    gguf_triton.TritonGgufKernel.prepare()
    layer = Layer()
    x = torch.randn(100, 512, device="cuda", dtype=torch.bfloat16)
    ref = x.double() @ dequantize_gguf(packed, qtype_id("Q8_0"), (256, 512), torch.float32).double().t()
    for fn in (layer, torch.compile(layer, fullgraph=True)):
        out = fn(x)
        assert float((out.double() - ref).norm() / ref.norm()) < 1e-2
    assert gguf_triton._dequant_fn("Q8_0", x.device) is gguf_q8_0.q8_0_dequantize
