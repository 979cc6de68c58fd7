"""Torch GGUF dequantizers vs gguf-py's numpy reference, on data quantized by gguf-py / libgguf."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "formats"))
from gguf_fixtures import quantize_array  # noqa: E402
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402

from quantomni.kernels.gguf_dequant import (  # noqa: E402
    GGUF_QTYPE_INFO,
    dequantize_gguf,
    packed_row_bytes,
    supported_qtypes,
)

ALL = [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
       QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ4_NL, QT.IQ4_XS]
# Upper bounds on ||deq - x|| / ||x|| for Gaussian data (measured values are ~60-80% of these).
MAX_REL_ERR = {QT.F32: 0.0, QT.F16: 1e-3, QT.BF16: 5e-3, QT.Q8_0: 0.01, QT.Q4_0: 0.12, QT.Q4_1: 0.11,
               QT.Q5_0: 0.06, QT.Q5_1: 0.055, QT.Q2_K: 0.4, QT.Q3_K: 0.2, QT.Q4_K: 0.1, QT.Q5_K: 0.05,
               QT.Q6_K: 0.025, QT.IQ4_NL: 0.1, QT.IQ4_XS: 0.1}


def _data(seed=0, shape=(24, 512)):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    x.reshape(-1, shape[-1])[1] *= 40.0  # a row with a different range: scales must be per block
    return x


def test_supported_set_and_info():
    assert set(supported_qtypes()) == set(ALL)
    for qt in ALL:
        assert tuple(GGUF_QTYPE_INFO[qt].__dict__.values()) == gguf.GGML_QUANT_SIZES[qt]


@pytest.mark.parametrize("qtype", ALL, ids=lambda q: q.name)
def test_matches_gguf_reference(qtype):
    x = _data()
    packed = quantize_array(x, qtype)
    assert packed.shape == (x.shape[0], packed_row_bytes(qtype, x.shape[1]))
    ref = gguf.quants.dequantize(packed, qtype).reshape(x.shape)
    out = dequantize_gguf(torch.from_numpy(packed), qtype, x.shape)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    rel = np.linalg.norm(out.numpy() - x) / np.linalg.norm(x)
    assert rel <= MAX_REL_ERR[qtype], f"{qtype.name}: rel err {rel}"
    if qtype != QT.F32:
        assert rel > 0  # the data really went through the quantizer


def test_output_dtype_and_3d_shape():
    x = _data(1, (2, 3, 256))
    packed = quantize_array(x.reshape(-1, 256), QT.Q4_K)
    out = dequantize_gguf(torch.from_numpy(packed), QT.Q4_K, x.shape, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 256)
    ref = dequantize_gguf(torch.from_numpy(packed), QT.Q4_K, (6, 256))
    assert torch.equal(out.float().view(6, 256), ref.bfloat16().float())


def test_bad_inputs_are_clear_errors():
    packed = torch.from_numpy(quantize_array(_data(), QT.Q8_0))
    with pytest.raises(ValueError, match="IQ2_XXS is not supported.*supported: .*Q4_K"):
        dequantize_gguf(packed, QT.IQ2_XXS, (24, 512))
    with pytest.raises(ValueError, match="needs 13056 packed bytes, got"):
        dequantize_gguf(packed[:-1], QT.Q8_0, (24, 512))
    with pytest.raises(ValueError, match="not a multiple of the Q8_0 block size 32"):
        dequantize_gguf(packed, QT.Q8_0, (24 * 512 // 48, 48))
    with pytest.raises(ValueError, match="must be uint8"):
        dequantize_gguf(packed.float(), QT.Q8_0, (24, 512))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("qtype", ALL, ids=lambda q: q.name)
def test_cuda_matches_cpu(qtype):
    x = _data(2)
    packed = torch.from_numpy(quantize_array(x, qtype))
    cpu = dequantize_gguf(packed, qtype, x.shape)
    gpu = dequantize_gguf(packed.cuda(), qtype, x.shape)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [1, 16, 17, 300])
@pytest.mark.parametrize("qtype_name", ["Q8_0", "Q4_K"])
def test_triton_gguf_backend_matches_torch_reference(m, qtype_name):
    from quantomni.kernels.gguf_torch import gguf_linear_reference
    from quantomni.kernels.gguf_triton import TritonGgufKernel
    from quantomni.schemes import GgufScheme

    qt = getattr(QT, qtype_name)
    n, k = 96, 512
    w = np.random.randn(n, k).astype(np.float32)
    packed = torch.from_numpy(quantize_array(w, qt)).cuda()

    class L:
        pass

    layer = L()
    layer.weight, layer.in_features, layer.out_features = packed, k, n
    layer.scheme = GgufScheme(qtype_name)
    layer.bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = TritonGgufKernel.apply(layer, x)
    ref = gguf_linear_reference(x.float(), packed, qt, n, layer.bias.float())
    assert float((out.float() - ref).norm() / ref.norm()) < 1e-2


def _interp(code: str) -> str:
    import os
    import subprocess
    import sys as _sys

    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(_sys.path))
    proc = subprocess.run([_sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize("qtype_name,module,fn", [("Q8_0", "q8_0_dequant", "q8_0_dequantize"),
                                                 ("Q4_K", "q4_k_dequant", "q4_k_dequantize")])
def test_triton_dequantizers_exact_under_interpreter(qtype_name, module, fn):
    """The one-pass Triton dequantizers reproduce the torch dequantizer bit for bit (float32 out)."""
    pytest.importorskip("triton")
    code = f"""
import numpy as np, torch
from gguf_fixtures import quantize_array
from gguf import GGMLQuantizationType as QT
from quantomni.kernels.gguf_dequant import dequantize_gguf
from quantomni.kernels.triton.{module} import {fn}
rng = np.random.default_rng()
w = rng.standard_normal((5, 512)).astype(np.float32) * rng.uniform(0.1, 3.0, (5, 1)).astype(np.float32)
packed = torch.from_numpy(quantize_array(w, QT.{qtype_name}))
ref = dequantize_gguf(packed, QT.{qtype_name}, (5, 512), dtype=torch.float32)
out = {fn}(packed, 512, torch.float32)
assert torch.isfinite(out).all()
assert torch.equal({fn}(packed, 512, torch.float16), ref.half())  # 16-bit output: two values per word
print(float((out - ref).abs().max()))
"""
    assert float(_interp(code).strip()) == 0.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("qtype_name,module,fn", [("Q8_0", "q8_0_dequant", "q8_0_dequantize"),
                                                 ("Q4_K", "q4_k_dequant", "q4_k_dequantize")])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows,k", [(37, 768), (1, 256), (130, 3072)])
def test_triton_dequantizers_match_torch_on_gpu(qtype_name, module, fn, dtype, rows, k):
    """Flat-run dequantizers (two values per 32-bit store for 16-bit outputs): every element equals
    the torch dequantizer's float32 value rounded to the output dtype; no element left unwritten."""
    import importlib

    from gguf import GGMLQuantizationType as QT
    from gguf_fixtures import quantize_array

    qt = getattr(QT, qtype_name)
    w = np.random.randn(rows, k).astype(np.float32) * np.random.uniform(0.1, 3.0, (rows, 1)).astype(np.float32)
    packed = torch.from_numpy(quantize_array(w, qt)).cuda()
    ref = dequantize_gguf(packed, qt, (rows, k), dtype=torch.float32).to(dtype)
    out = getattr(importlib.import_module(f"quantomni.kernels.triton.{module}"), fn)(packed, k, dtype)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert torch.equal(out, ref)
