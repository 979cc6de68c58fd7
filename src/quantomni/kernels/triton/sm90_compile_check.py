"""Compile the Triton kernels ahead of time for sm_90 (H100/H200) on a machine without a GPU.

Why: the CPU interpreter checks arithmetic but not whether Triton can lower a kernel for Hopper
(layouts, fp8/int8 wgmma, join/reshape). triton.compile with an explicit GPUTarget runs the whole
pipeline down to a cubin with the ptxas bundled in the triton wheel, no driver needed; the SASS
then shows which tensor-core instructions each kernel uses (HGMMA/QGMMA/IGMMA = Hopper wgmma) and
how many instructions a thread issues per K-loop iteration ("loop").

Usage: python -m quantomni.kernels.triton.sm90_compile_check   (TRITON_INTERPRET must be unset)
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

from ._common import require_triton

_MMA_OPS = ("HGMMA", "QGMMA", "IGMMA", "HMMA", "IMMA")


def _cases(all_configs: bool = False):
    """(name, jit function, signature, constexprs, indices of 16-divisible args) per kernel variant."""
    from . import _scaled_mm_core, act_quant, gguf_gemm, group_affine_gemm, nvfp4_fast

    _, aq = act_quant._build(False)
    _, mm = _scaled_mm_core.build_scaled_mm(False)
    _, q8_large, q4k_large = gguf_gemm._build(False)
    cases = []
    for dt, is_int8 in (("i8", True), ("fp8e4nv", False)):
        cases.append((f"per_token_quant[{dt}]", aq,
                      {"x_ptr": "*bf16", "q_ptr": f"*{dt}", "s_ptr": "*fp32", "M": "i32", "stride_xm": "i32",
                       "stride_qm": "i32", "K": "constexpr", "QMAX": "constexpr", "IS_INT8": "constexpr",
                       "SINGLE_PASS": "constexpr", "STORE_F32": "constexpr", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr"},
                      {"K": 3072, "QMAX": 127.0 if is_int8 else 448.0, "IS_INT8": is_int8, "SINGLE_PASS": True,
                       "STORE_F32": False, "BLOCK_M": 1, "BLOCK_K": 4096}, (0, 1, 2, 4, 5)))
    for dt, acc_int in (("i8", True), ("fp8e4nv", False)):
        for cfg in (mm.configs if all_configs else mm.configs[:1]):
            kw = cfg.kwargs
            cases.append((f"scaled_mm[{dt},{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}]", mm.fn,
                          {"a_ptr": f"*{dt}", "b_ptr": f"*{dt}", "c_ptr": "*bf16", "as_ptr": "*fp32", "bs_ptr": "*fp32",
                           "bias_ptr": "*bf16", "M": "i32", "N": "i32", "M_BUCKET": "i32", "stride_am": "i32",
                           "stride_bn": "i32", "stride_cm": "i32", "stride_as": "i32", "stride_bs": "i32",
                           "K": "constexpr", "HAS_BIAS": "constexpr", "ACC_INT32": "constexpr", "BLOCK_M": "constexpr",
                           "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "GROUP_M": "constexpr"},
                          {"K": 3072, "HAS_BIAS": True, "ACC_INT32": acc_int, **kw}, (0, 1, 2, 3, 4, 5, 7, 9, 10, 11),
                          cfg))
    for cfg in (q8_large.configs if all_configs else q8_large.configs[:1]):
        kw = cfg.kwargs
        cases.append((f"q8_0_mm[{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}]", q8_large.fn,
                      gguf_gemm.SIGNATURE, {"K": 3072, "HAS_BIAS": True, "DOT_F32": False, **kw},
                      gguf_gemm.DIVISIBLE_ARGS, cfg))
    for cfg in (q4k_large.configs if all_configs else q4k_large.configs[:1]):
        kw = cfg.kwargs
        cases.append((f"q4_k_mm[{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}]", q4k_large.fn,
                      gguf_gemm.SIGNATURE, {"K": 3072, "HAS_BIAS": True, "DOT_F32": False, **kw},
                      gguf_gemm.DIVISIBLE_ARGS, cfg))
    for mode, asm, split in ((0, True, 1), (0, False, 1), (0, True, 2), (2, True, 1), (2, True, 4), (2, False, 1)):
        cases.append((f"nvfp4_gemv[mode={mode},asm={asm},split={split}]", nvfp4_fast.gemv_kernel,
                      {"x_ptr": "*bf16", "w_ptr": "*u8", "s_ptr": "*u8", "out_ptr": "*bf16", "part_ptr": "*fp32",
                       "cnt_ptr": "*i32", "gscale_ptr": "*fp32", "bias_ptr": "*bf16", "M": "i32", "N": "i32",
                       "split": "i32", "stride_xm": "i32", "stride_wn": "i32", "stride_sn": "i32", "stride_om": "i32",
                       "K_PER_SPLIT": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
                       "BLOCK_K": "constexpr", "ATOMIC": "constexpr", "HAS_BIAS": "constexpr", "MODE": "constexpr",
                       "X_SPLIT": "constexpr", "DOT_F32": "constexpr", "DECODE_ASM": "constexpr",
                       "STAGES": "constexpr"},
                      {"K_PER_SPLIT": 3072 // split, "BLOCK_M": 1 if mode == 0 else 16,
                       "BLOCK_N": 16 if mode == 0 else 64, "BLOCK_K": 512 if mode == 0 else 128, "ATOMIC": split > 1,
                       "HAS_BIAS": True, "MODE": mode, "X_SPLIT": True, "DOT_F32": False, "DECODE_ASM": asm,
                       "STAGES": 4},
                      (0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14)))
    _, ga = group_affine_gemm._build(False)
    variants = ((8, False), (4, True)) if all_configs else ((4, True),)
    for bits, has_min, cfg in [(b, m, c) for b, m in variants
                               for c in (ga.configs if all_configs else ga.configs[:1])]:
        kw = cfg.kwargs
        cases.append((f"group_affine_mm[w{bits},{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}]", ga.fn,
                      {"x_ptr": "*bf16", "c_ptr": "*i8" if bits == 8 else "*u8", "s_ptr": "*fp32", "mn_ptr": "*fp32",
                       "bias_ptr": "*bf16", "out_ptr": "*bf16", "M": "i32", "N": "i32", "M_BUCKET": "i32",
                       "stride_xm": "i32", "stride_cn": "i32", "stride_sn": "i32", "stride_om": "i32",
                       "K": "constexpr", "BITS": "constexpr", "HAS_MIN": "constexpr", "HAS_BIAS": "constexpr",
                       "DOT_F32": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
                       "BLOCK_K": "constexpr", "GROUP_M": "constexpr"},
                      {"K": 3072, "BITS": bits, "HAS_MIN": has_min, "HAS_BIAS": True, "DOT_F32": False, **kw},
                      (0, 1, 2, 3, 4, 5, 9, 10, 11, 12), cfg))
    from . import attention_int8

    cases.append(attention_int8.sm90_case())
    return cases


def _sass_mma_counts(cubin: bytes) -> dict:
    triton, _ = require_triton()
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        tool = shutil.which("cuobjdump")
    if not tool:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, timeout=120).stdout
    counts = {op: len(re.findall(rf"\b{op}\b", sass)) for op in _MMA_OPS if re.search(rf"\b{op}\b", sass)}
    # local-memory stores in SASS mean register spills
    counts["STL"] = len(re.findall(r"\bSTL\b", sass))
    counts["loop"] = _main_loop_length(sass)
    return counts


def _main_loop_length(sass: str) -> int:
    """SASS instructions (per thread) in the longest backward-branch loop: the K loop's issue cost."""
    addrs, spans = [], []
    for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)([^;]*);", sass):
        addr = int(m.group(1), 16)
        addrs.append(addr)
        target = re.search(r"0x([0-9a-f]+)", m.group(3)) if m.group(2).startswith("BRA") else None
        if target and int(target.group(1), 16) < addr:
            spans.append((int(target.group(1), 16), addr))
    if not spans:
        return 0
    lo, hi = max(spans, key=lambda sp: sp[1] - sp[0])
    return sum(lo <= a <= hi for a in addrs)


#: H100/H200 opt-in shared memory per block (227 KB)
SM90_MAX_SHARED = 232448


def compile_for_sm90(only=None, all_configs: bool = False) -> list[dict]:
    """Compile every kernel variant for sm_90a; one record per variant (error text instead of a crash).

    all_configs=True compiles every autotune config (slow, ~1 s each), else the first of each kernel.
    A record with shared_bytes above SM90_MAX_SHARED would fail to launch on the GPU.
    """
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("unset TRITON_INTERPRET to compile for sm_90")
    triton, _ = require_triton()
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    records = []
    for case in _cases(all_configs):
        name, fn, sig, consts, divisible = case[:5]
        cfg = case[5] if len(case) > 5 else None
        if only and not any(o in name for o in only):
            continue
        rec = {"kernel": name}
        try:
            names = list(sig)
            attrs = {(names.index(a) if isinstance(a, str) else a,): [["tt.divisibility", 16]] for a in divisible}
            src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
            opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages} if cfg else {"num_warps": 4}
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
            rec["shared_bytes"] = compiled.metadata.shared
            rec["mma"] = _sass_mma_counts(compiled.asm["cubin"])
            rec["ok"] = compiled.metadata.shared <= SM90_MAX_SHARED
            if not rec["ok"]:
                rec["error"] = f"needs {compiled.metadata.shared} bytes of shared memory (> {SM90_MAX_SHARED})"
        except Exception as exc:  # record and go on: one failing kernel must not hide the others
            rec["ok"] = False
            rec["error"] = f"{type(exc).__name__}: {str(exc)[:800]}"
        records.append(rec)
    return records


if __name__ == "__main__":
    import sys

    for r in compile_for_sm90(all_configs="--all" in sys.argv):
        print(r, flush=True)
