"""Persistent TMA W8A8 GEMM for Hopper (sm_90): an alternative to _scaled_mm_core's pointer-load kernel.

out[m, n] = (sum_k a[m, k] * b[n, k]) * a_scale[m] * b_scale[n] + bias[n], cast to the output dtype;
a [M, K] and b [N, K] (the weight as stored) are both int8 (int32 accumulation, exact) or both
float8_e4m3fn (fp32 accumulation; Hopper's fp8 wgmma accumulates with reduced precision).

Design:
- Persistent grid: min(#SMs, #tiles) programs; program p handles tiles p, p + #SMs, ... in a
  grouped order (GROUP_M row-blocks of A sweep the N tiles together, so A and B stay in L2).
- Operands move through TMA tensor descriptors made on the host (no triton.set_allocator needed).
  A descriptor zero-fills reads past M, N and K, so the mainloop has no masks and K need not be a
  multiple of BLOCK_K; b is read [BLOCK_N, BLOCK_K] and fed to tl.dot transposed (K-major B, the
  layout 8-bit wgmma requires).
- The tile loop is a tl.range with flatten=True (the compiler fuses the tile and K loops into one
  software-pipelined loop, so the next tile's TMA loads overlap this tile's epilogue); num_stages
  (a launch option) is the pipeline depth.
- warp_specialize: Triton 3.6's Hopper pass splits the kernel into 1 producer + 2 consumer
  warpgroups (num_warps=4 -> 12 warps) only for an unflattened tile loop, and its data partition
  fails to compile with the TMA store, so those configs use flatten=False, tma_store=False; with
  flatten=True the flag is silently ignored (checked by an sm_90a compile, see compile_for_sm90).
- Epilogue: float32 acc * a_scale[:, None] * b_scale[None, :] (+ bias), cast, then a TMA store,
  which clips rows/cols past M, N. epilogue_subtile stores two [BLOCK_M, BLOCK_N/2] halves, halving
  the shared-memory staging buffer; tma_store=False uses masked pointer stores instead.

TMA needs 16-byte aligned base pointers and row strides and unit stride along the last dim:
K % 16 == 0 for the 8-bit operands (their row strides likewise) and, for the TMA store,
N * out_elem_bytes % 16 == 0; scaled_mm_tma raises KernelInputError (a ValueError) naming the
requirement otherwise.

Under TRITON_INTERPRET=1 the same tile body runs (descriptor loads with their zero fill, descriptor
and pointer stores, the persistent tile order over a 3-program grid), with two differences: the
tile loop is a while loop (the interpreter cannot bound range() by a run-time scalar under
numpy >= 2.3) and tl.range's flatten/warp_specialize hints do not exist there.
"""

import functools

import torch

from ._common import KernelInputError, check_gemm_shapes, interpret_mode, num_sms


def _cfg(bm, bn, bk, warps, stages, ws=False, flatten=True, subtile=False, tma_store=True, group_m=8):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, "num_warps": warps,
            "num_stages": stages, "warp_specialize": ws, "flatten": flatten, "epilogue_subtile": subtile,
            "tma_store": tma_store}


#: Used for any key a caller's config leaves out (and when config is None on the GPU).
DEFAULT_CONFIG = _cfg(128, 256, 128, 8, 3)
#: Small tile for the CPU interpreter (speed only; the code paths are the GPU's).
INTERPRET_CONFIG = _cfg(16, 32, 32, 4, 2, group_m=2)
INTERPRET_NUM_SMS = 3

#: Candidates to sweep on H100 for large M. Shared memory with bf16 out (from an sm_90a compile):
#: a stage holds (BLOCK_M + BLOCK_N) * BLOCK_K bytes, the TMA store buffer BLOCK_M * BLOCK_N * 2
#: (half with subtile); Hopper allows 227 KB a block.
TMA_CANDIDATE_CONFIGS = [
    _cfg(128, 256, 128, 8, 3),                               # 209 KB: 3 x 48 KB + 64 KB
    _cfg(128, 256, 128, 8, 4, subtile=True),                 # 225 KB: 4 x 48 KB + 32 KB
    _cfg(128, 256, 128, 8, 4, tma_store=False),              # 224 KB: 4 x 48 KB + layout scratch
    _cfg(256, 128, 128, 8, 3),                               # 209 KB
    _cfg(256, 128, 128, 8, 4, subtile=True),                 # 225 KB
    _cfg(128, 128, 128, 8, 4),                               # 160 KB
    _cfg(128, 256, 64, 8, 6, subtile=True),                  # 176 KB: 6 x 24 KB + 32 KB
    _cfg(128, 256, 128, 8, 3, flatten=False),                # 208 KB: epilogue not overlapped
    # more, smaller tiles for N = 3072 (432 tiles of 128x256 fill 132 SMs only 3.3 times)
    _cfg(128, 128, 128, 4, 6),                               # 224 KB: 6 x 32 KB + 32 KB
    _cfg(128, 128, 256, 8, 3),                               # 224 KB: 3 x 64 KB + 32 KB
    _cfg(64, 256, 128, 4, 4),                                # 192 KB: 4 x 40 KB + 32 KB
]
# Not candidates: warp-specialized configs (ws=True, flatten=False, tma_store=False) compiled but
# never finished on an H100 (Triton 3.6, torch 2.11; sweep of 2026-11-25: the first one hung).


#: Large-M INT8 choice from the H100 sweeps (benchmarks/sweep_weight_kernels.py --parts w8a8, M = 4608,
#: FLUX shapes, GEMM alone, three runs): 128x256x128 with 4 stages and a split epilogue; for long K
#: (12288) 3 stages and a whole-tile store (equal within run-to-run noise); for wide N (>= 8192)
#: with short K, 256x128x128 with 4 stages and a split epilogue (1.41-1.45x BF16 against 1.2-1.4x
#: for the first, whose time varied more between runs).
LARGE_M_MIN = 128


def pick_config(m: int, n: int, k: int) -> dict:
    if k >= 8192:
        return TMA_CANDIDATE_CONFIGS[0]
    if n >= 8192:
        return TMA_CANDIDATE_CONFIGS[4]
    return TMA_CANDIDATE_CONFIGS[1]


@functools.lru_cache(maxsize=None)
def _has_tma(index) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def tma_applicable(a: torch.Tensor, b: torch.Tensor, out_dtype) -> bool:
    """True where the TMA kernel is the better INT8/FP8 path: CUDA sm_90+, M >= LARGE_M_MIN, 16-bit
    output, and operands meeting TMA's 16-byte alignment rules (else the pointer kernel runs)."""
    if interpret_mode() or a.device.type != "cuda" or not _has_tma(a.device.index):
        return False
    if a.shape[0] < LARGE_M_MIN or out_dtype not in (torch.bfloat16, torch.float16):
        return False
    for t in (a, b):
        if t.stride(1) != 1 or t.data_ptr() % 16 or (t.stride(0) * t.element_size()) % 16:
            return False
    return (b.shape[0] * 2) % 16 == 0


@functools.cache
def build_tma_kernel():
    """Define the jitted kernel (lazy: importing this module never imports triton)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M):
        per_group = GROUP_M * num_pid_n
        first_m = (tile // per_group) * GROUP_M
        group_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (tile % per_group) % group_m
        pid_n = (tile % per_group) // group_m
        return pid_m, pid_n

    @triton.jit
    def _one_tile(a_desc, b_desc, c_desc, c_ptr, as_ptr, bs_ptr, bias_ptr, M, N, stride_as, stride_bs, tile, tile_out,
                  num_pid_m, num_pid_n, K: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_INT32: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                  EPILOGUE_SUBTILE: tl.constexpr, TMA_STORE: tl.constexpr):
        """Mainloop and epilogue of one output tile (inlined into the tile loop)."""
        acc_dtype: tl.constexpr = tl.int32 if ACC_INT32 else tl.float32
        pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
        for kb in range((K + BLOCK_K - 1) // BLOCK_K):  # the descriptors zero-fill the K tail
            a = a_desc.load([off_m, kb * BLOCK_K])
            b = b_desc.load([off_n, kb * BLOCK_K])
            acc = tl.dot(a, b.T, acc, out_dtype=acc_dtype)

        # the epilogue takes its tile from a second counter (tile_out == tile): Triton's persistent
        # tutorial does the same so that no value lives in both the pipelined prologue and epilogue
        pid_m, pid_n = _tile_coords(tile_out, num_pid_m, num_pid_n, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        a_s = tl.load(as_ptr + offs_m * stride_as, mask=offs_m < M, other=0.0)
        b_s = tl.load(bs_ptr + offs_n * stride_bs, mask=offs_n < N, other=0.0)
        out = acc.to(tl.float32) * a_s[:, None] * b_s[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        out = out.to(c_ptr.dtype.element_ty)
        if not TMA_STORE:
            c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
            tl.store(c_ptrs, out, mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])
        elif EPILOGUE_SUBTILE:
            left, right = tl.split(tl.permute(tl.reshape(out, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
            c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], left)
            c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N + BLOCK_N // 2], right)
        else:
            c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], out)

    # the interpreter resolves called jit functions through the module's globals, not closures
    globals().update(_tile_coords=_tile_coords, _one_tile=_one_tile)

    @triton.jit
    def w8a8_tma_kernel(
        a_desc, b_desc, c_desc, c_ptr, as_ptr, bs_ptr, bias_ptr, M, N, stride_as, stride_bs,
        K: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_INT32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        NUM_SMS: tl.constexpr, FLATTEN: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
        EPILOGUE_SUBTILE: tl.constexpr, TMA_STORE: tl.constexpr, INTERPRET: tl.constexpr,
    ):
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        num_tiles = num_pid_m * num_pid_n
        if INTERPRET:
            # the interpreter cannot bound range() by a run-time scalar under numpy >= 2.3 (its
            # scalars are 1-element arrays, which int() rejects): the same tiles in a while loop
            tile = tl.program_id(0)
            while tile < num_tiles:
                _one_tile(a_desc, b_desc, c_desc, c_ptr, as_ptr, bs_ptr, bias_ptr, M, N, stride_as, stride_bs,
                          tile, tile, num_pid_m, num_pid_n, K, HAS_BIAS, ACC_INT32, BLOCK_M, BLOCK_N, BLOCK_K,
                          GROUP_M, EPILOGUE_SUBTILE, TMA_STORE)
                tile += NUM_SMS
        else:
            tile_out = tl.program_id(0) - NUM_SMS
            for tile in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=FLATTEN,
                                 warp_specialize=WARP_SPECIALIZE):
                tile_out += NUM_SMS
                _one_tile(a_desc, b_desc, c_desc, c_ptr, as_ptr, bs_ptr, bias_ptr, M, N, stride_as, stride_bs, tile,
                          tile_out, num_pid_m, num_pid_n, K, HAS_BIAS, ACC_INT32, BLOCK_M, BLOCK_N, BLOCK_K,
                          GROUP_M, EPILOGUE_SUBTILE, TMA_STORE)

    return w8a8_tma_kernel


def _check_tma_layout(a: torch.Tensor, b: torch.Tensor, out_dtype, tma_store: bool) -> None:
    """TMA's rules (16-byte aligned bases and row strides, unit last stride) as clear errors."""
    for name, t in (("a", a), ("b", b)):
        if t.stride(1) != 1:
            raise KernelInputError(f"TMA needs {name} with unit stride along K; got strides {tuple(t.stride())}")
        if t.data_ptr() % 16:
            raise KernelInputError(f"TMA needs {name}'s data pointer 16-byte aligned; it is {t.data_ptr() % 16} mod 16")
        if (t.stride(0) * t.element_size()) % 16:
            raise KernelInputError(
                f"TMA needs {name}'s row stride to be a multiple of 16 bytes (K % 16 == 0 for 8-bit operands); "
                f"got row stride {t.stride(0)} for shape {tuple(t.shape)}"
            )
    elem = torch.empty((), dtype=out_dtype).element_size()
    if tma_store and (b.shape[0] * elem) % 16:
        raise KernelInputError(
            f"the TMA store needs output rows of a multiple of 16 bytes (N * {elem} for {out_dtype}); "
            f"N={b.shape[0]} (config tma_store=False lifts this)"
        )


def scaled_mm_tma(a, b, a_scale_vec, b_scale_vec, bias, out_dtype, acc_int32: bool, config=None) -> torch.Tensor:
    """Same contract as _scaled_mm_core.launch_scaled_mm, through the persistent TMA kernel.

    a: [M, K] int8 / float8_e4m3fn; b: [N, K] the same dtype; a_scale_vec float32 [M], b_scale_vec
    float32 [N] (any stride, 0 allowed); bias [N] or None; acc_int32 True for int8 operands.
    config: dict with any of DEFAULT_CONFIG's keys (the rest take DEFAULT_CONFIG's values); None
    picks DEFAULT_CONFIG on the GPU and INTERPRET_CONFIG under TRITON_INTERPRET=1.
    Raises KernelInputError (a ValueError) when the operands break TMA's alignment rules.
    """
    from triton.tools.tensor_descriptor import TensorDescriptor

    M, N, K = check_gemm_shapes(a, b, "a", "b")
    interp = interpret_mode()
    if config is None and interp:
        config = INTERPRET_CONFIG
    elif config is None and out_dtype == torch.float32:
        config = {"epilogue_subtile": True}  # a whole fp32 128x256 store buffer would not fit
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    _check_tma_layout(a, b, out_dtype, cfg["tma_store"])
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    c = torch.empty((M, N), dtype=out_dtype, device=a.device)
    a_desc = TensorDescriptor(a, [M, K], [a.stride(0), 1], [bm, bk])
    b_desc = TensorDescriptor(b, [N, K], [b.stride(0), 1], [bn, bk])
    c_desc = None
    if cfg["tma_store"]:
        c_desc = TensorDescriptor(c, [M, N], [N, 1], [bm, bn // 2 if cfg["epilogue_subtile"] else bn])
    sms = INTERPRET_NUM_SMS if interp else num_sms(a.device)
    num_tiles = -(-M // bm) * -(-N // bn)
    build_tma_kernel()[(min(sms, num_tiles),)](
        a_desc, b_desc, c_desc, c, a_scale_vec, b_scale_vec, bias if bias is not None else c,
        M, N, a_scale_vec.stride(0), b_scale_vec.stride(0),
        K=K, HAS_BIAS=bias is not None, ACC_INT32=acc_int32, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        GROUP_M=cfg["GROUP_M"], NUM_SMS=sms, FLATTEN=cfg["flatten"], WARP_SPECIALIZE=cfg["warp_specialize"],
        EPILOGUE_SUBTILE=cfg["epilogue_subtile"], TMA_STORE=cfg["tma_store"], INTERPRET=interp,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return c


def compile_for_sm90(config, operand="i8", out="bf16", K=3072) -> dict:
    """Compile one config ahead of time for sm_90a (no GPU needed; TRITON_INTERPRET must be unset).

    operand: "i8" or "fp8e4nv"; out: "bf16", "fp16" or "fp32". Returns shared_bytes, num_warps,
    warp_specialized (whether the compiler really split the warps) and the SASS MMA/spill counts.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .sm90_compile_check import _sass_mma_counts

    cfg = {**DEFAULT_CONFIG, **config}
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    store_n = bn // 2 if cfg["epilogue_subtile"] else bn
    sig = {"a_desc": f"tensordesc<{operand}[{bm}, {bk}]>", "b_desc": f"tensordesc<{operand}[{bn}, {bk}]>",
           "c_desc": f"tensordesc<{out}[{bm}, {store_n}]>" if cfg["tma_store"] else "constexpr",
           "c_ptr": f"*{out}", "as_ptr": "*fp32", "bs_ptr": "*fp32", "bias_ptr": "*bf16",
           "M": "i32", "N": "i32", "stride_as": "i32", "stride_bs": "i32"}
    consts = {"K": K, "HAS_BIAS": True, "ACC_INT32": operand == "i8", "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk,
              "GROUP_M": cfg["GROUP_M"], "NUM_SMS": 132, "FLATTEN": cfg["flatten"],
              "WARP_SPECIALIZE": cfg["warp_specialize"], "EPILOGUE_SUBTILE": cfg["epilogue_subtile"],
              "TMA_STORE": cfg["tma_store"], "INTERPRET": False}
    if not cfg["tma_store"]:
        consts["c_desc"] = None
    sig.update(dict.fromkeys(consts, "constexpr"))
    names = list(sig)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in ("c_ptr", "as_ptr", "bs_ptr", "bias_ptr", "N")}
    compiled = triton.compile(ASTSource(fn=build_tma_kernel(), signature=sig, constexprs=consts, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})
    return {"shared_bytes": compiled.metadata.shared, "num_warps": compiled.metadata.num_warps,
            "warp_specialized": "ttg.warp_specialize" in compiled.asm["ttgir"],
            "sass": _sass_mma_counts(compiled.asm["cubin"])}
