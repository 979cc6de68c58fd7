"""Persistent TMA W8A8 GEMM (quantomni.kernels.triton.w8a8_gemm_tma).

Numerical cases: triton_interp_cases/w8a8_tma_cases.py on the CPU interpreter (subprocess).
Here: TMA alignment errors, lazy triton import, an sm_90a ahead-of-time compile of every
candidate config (shared memory, wgmma, spills, warp specialization), and a GPU sweep test.
Not checkable on CPU: wgmma numerics (fp8 fast accumulation), the real TMA engine, speed.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("triton")

from quantomni.kernels.triton.w8a8_gemm_tma import TMA_CANDIDATE_CONFIGS, scaled_mm_tma  # noqa: E402
from triton_kernel_refs import rel_err, run_interpreter_cases  # noqa: E402

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def test_interpreter_cases():
    run_interpreter_cases("w8a8_tma_cases.py")


def _ops(m=8, n=32, k=64, dtype=torch.int8):
    return torch.ones(m, k, dtype=dtype), torch.ones(n, k, dtype=dtype), torch.ones(m), torch.ones(n)


def test_bad_alignment_raises_value_error():
    a, b, a_s, b_s = _ops()
    # K = 40: 40-byte rows are not 16-byte multiples
    a40, b40, _, _ = _ops(k=40)
    with pytest.raises(ValueError, match=r"a's row stride to be a multiple of 16 bytes \(K % 16 == 0"):
        scaled_mm_tma(a40, b40, a_s, b_s, None, torch.bfloat16, True)
    with pytest.raises(ValueError, match="b's row stride"):  # K = 48 but b's rows are 56 bytes apart
        scaled_mm_tma(a[:, :48], torch.ones(32, 56, dtype=torch.int8)[:, :48], a_s, b_s, None, torch.bfloat16, True)
    # base pointer 1 byte past a 16-byte boundary
    storage = torch.ones(8 * 64 + 16, dtype=torch.int8)
    offset = (16 - storage.data_ptr() % 16) % 16 + 1
    a_odd = storage[offset:offset + 8 * 64].view(8, 64)
    with pytest.raises(ValueError, match="a's data pointer 16-byte aligned"):
        scaled_mm_tma(a_odd, b, a_s, b_s, None, torch.bfloat16, True)
    with pytest.raises(ValueError, match="unit stride along K"):
        scaled_mm_tma(a, torch.ones(64, 32, dtype=torch.int8).T, a_s, b_s, None, torch.bfloat16, True)
    # output rows: N=36 bf16 = 72 bytes
    with pytest.raises(ValueError, match=r"output rows of a multiple of 16 bytes .*N=36.*tma_store=False"):
        scaled_mm_tma(a, torch.ones(36, 64, dtype=torch.int8), a_s, torch.ones(36), None, torch.bfloat16, True)
    with pytest.raises(ValueError, match="K=64 but b"):
        scaled_mm_tma(a, torch.ones(32, 48, dtype=torch.int8), a_s, b_s, None, torch.bfloat16, True)


def test_import_does_not_need_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import quantomni.kernels.triton.w8a8_gemm_tma as m\n"
            "assert len(m.TMA_CANDIDATE_CONFIGS) >= 6\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


SM90_MAX_SHARED = 232448  # 227 KB opt-in shared memory per block on H100/H200


def test_candidate_configs_compile_for_sm90():
    """Each candidate lowers to wgmma on sm_90a, fits shared memory, does not spill, and the
    warp_specialize ones are really split into producer/consumer warps."""
    pytest.importorskip("triton.backends.nvidia")
    code = (
        "import json\n"
        "from quantomni.kernels.triton.w8a8_gemm_tma import TMA_CANDIDATE_CONFIGS, compile_for_sm90\n"
        "recs = [dict(compile_for_sm90(c, op), i=i, op=op) for op in ('i8', 'fp8e4nv')\n"
        "        for i, c in enumerate(TMA_CANDIDATE_CONFIGS)]\n"
        "recs.append(dict(compile_for_sm90({'epilogue_subtile': True}, 'i8', 'fp32'), i=-1, op='i8'))\n"
        "print(json.dumps(recs))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in json.loads(proc.stdout.strip().splitlines()[-1]):
        assert r["shared_bytes"] <= SM90_MAX_SHARED, r
        assert r["sass"].get("IGMMA" if r["op"] == "i8" else "QGMMA", 0) > 0, r
        assert r["sass"].get("STL", 0) == 0, f"register spills: {r}"
        if r["i"] >= 0:
            assert r["warp_specialized"] == TMA_CANDIDATE_CONFIGS[r["i"]]["warp_specialize"], r


def _gpu_ok():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ok(), reason="needs a CUDA GPU of compute capability 9.0+ (Hopper)")
@pytest.mark.parametrize("m,k,n", [(4608, 3072, 3072), (17, 3072, 12288), (300, 768, 2048)])
def test_gpu_candidate_configs_against_reference(m, k, n):
    gen = torch.Generator(device="cuda").manual_seed(int.from_bytes(os.urandom(4), "little"))
    seed = gen.initial_seed()
    a_s = torch.rand(m, device="cuda", generator=gen) + 0.1
    b_s = torch.rand(n, device="cuda", generator=gen) + 0.1
    bias = torch.randn(n, device="cuda", generator=gen).to(torch.bfloat16)
    a8 = torch.randint(-127, 128, (m, k), device="cuda", dtype=torch.int8, generator=gen)
    b8 = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8, generator=gen)
    af = (torch.randn(m, k, device="cuda", generator=gen) * 20).to(torch.float8_e4m3fn)
    bf = (torch.randn(n, k, device="cuda", generator=gen) * 20).to(torch.float8_e4m3fn)
    ref8 = (a8.double() @ b8.double().T) * a_s.double()[:, None] * b_s.double()[None, :] + bias.double()
    reff = (af.double() @ bf.double().T) * a_s.double()[:, None] * b_s.double()[None, :] + bias.double()
    # int8 accumulation is exact: fp32 output matches to float32 epilogue rounding
    assert rel_err(scaled_mm_tma(a8, b8, a_s, b_s, bias, torch.float32, True), ref8) < 1e-6, seed
    for i, cfg in enumerate(TMA_CANDIDATE_CONFIGS):
        out8 = scaled_mm_tma(a8, b8, a_s, b_s, bias, torch.bfloat16, True, cfg)
        assert rel_err(out8, ref8) < 1e-2, (i, cfg, seed)
        # fp8 wgmma accumulates with reduced precision (fast accumulation)
        outf = scaled_mm_tma(af, bf, a_s, b_s, bias, torch.bfloat16, False, cfg)
        assert rel_err(outf, reff) < 1e-2, (i, cfg, seed)
