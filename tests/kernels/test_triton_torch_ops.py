"""Custom-op wrappers (torch.library) for the Triton kernels: fullgraph torch.compile, no graph breaks.
The case runs on the CPU interpreter in a subprocess (triton_interp_cases/torch_ops_cases.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("triton")

from triton_kernel_refs import run_interpreter_cases  # noqa: E402


def test_interpreter_cases():
    run_interpreter_cases("torch_ops_cases.py")


def test_importing_quantomni_kernels_needs_no_triton_and_registers_nothing():
    import subprocess
    from pathlib import Path

    code = (
        "import sys; sys.modules['triton'] = None\n"  # any 'import triton' now raises ImportError
        "import quantomni.kernels.triton.act_quant, quantomni.kernels.triton.gguf_gemm\n"
        "import quantomni.kernels.triton.gguf_gemm, quantomni.kernels.triton.fp8_gemm\n"
        "import quantomni.kernels.triton.torch_ops as t\n"
        "assert t._REGISTERED is False\n"
        "import torch\n"
        "try:\n"
        "    quantomni.kernels.triton.gguf_gemm._build(False)\n"
        "except ImportError as e:\n"
        "    assert 'pip install triton' in str(e)\n"
        "else:\n"
        "    raise SystemExit('expected ImportError')\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_gpu_ops_replay_in_cuda_graph():
    """Warm up (autotune, workspaces), capture one 'layer' of every op in a CUDA graph, replay on new data."""
    import torch

    from quantomni.kernels.triton.group_affine_gemm import prepare_q8_0_weight
    from quantomni.kernels.triton.torch_ops import register_ops
    from triton_kernel_refs import nvfp4_dequant_f64, random_nvfp4, random_q8_0, rel_err

    register_ops()
    ops = torch.ops.quantomni_triton
    gen = torch.Generator().manual_seed(0)
    k, n = 3072, 1024
    w = torch.randn(n, k, generator=gen)
    wsf = (w.abs().amax(dim=1) / 448).cuda()
    wf8 = (w.cuda() / wsf[:, None]).to(torch.float8_e4m3fn)
    w_packed, w_scale, w_scale_2 = (t.cuda() for t in random_nvfp4(n, k, gen))
    q8raw, _ = random_q8_0(n, k, gen)
    q8 = prepare_q8_0_weight(q8raw.cuda())
    x_static = torch.randn(4, k, device="cuda").to(torch.bfloat16)

    def step():
        xq, xs = ops.per_token_quant_fp8(x_static)
        a = ops.fp8_scaled_mm(xq, wf8, xs, wsf, None, torch.float32)
        b = ops.nvfp4_w4a16_mm(x_static, w_packed, w_scale, w_scale_2, None, torch.float32)
        c = ops.group_affine_mm(x_static, q8.codes, q8.scale, None, 8, None, torch.float32)
        return a, b, c

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    x_static.copy_(torch.randn(4, k, device="cuda").to(torch.bfloat16))
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    for got, want in zip(outs, eager):
        assert rel_err(got, want.double()) < 1e-5
    ref_b = x_static.double().cpu() @ nvfp4_dequant_f64(w_packed.cpu(), w_scale.cpu(), w_scale_2.cpu()).T
    assert rel_err(outs[1].cpu(), ref_b) < 1e-5
