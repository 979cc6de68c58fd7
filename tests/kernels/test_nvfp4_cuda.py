"""CUDA C++ NVFP4 backend (``cuda``): the load-time layout and its decode on CPU (exact against the
float64 reference), a fragment-level emulation of the GEMV's register mapping, and on a GPU the
kernels themselves against the reference."""

import pytest
import torch

from quantomni.kernels.base import KernelSelectionError, KernelSpec, select_linear_kernel
from quantomni.kernels.cuda import nvfp4_mma_layout as L
from quantomni.kernels.nvfp4_ref import nvfp4_dequantize, nvfp4_quantize, nvfp4_unpack
from quantomni.schemes import Nvfp4Scheme


def _random_nvfp4(n, k, gen, gs=0.37):
    """Every byte value for the codes; scale bytes of every kind (negative, zero, subnormal), no NaN."""
    q = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen)
    raw = torch.randint(0, 256, (n, k // 16), dtype=torch.uint8, generator=gen)
    raw[(raw & 0x7F) == 0x7F] = 0x3C
    return q, raw.view(torch.float8_e4m3fn), torch.tensor(gs)


def _exact_reference(q, s, gs):
    n, half_k = q.shape
    vals = nvfp4_unpack(q).double().view(n, half_k // 8, 16)
    return (vals * s.double().unsqueeze(-1) * float(gs)).reshape(n, half_k * 2)


@pytest.mark.parametrize("n,k", [(16, 64), (48, 192), (64, 512)])
def test_relayout_decode_is_exact(n, k):
    gen = torch.Generator().manual_seed(n + k)
    q, s, gs = _random_nvfp4(n, k, gen)
    words, scales = L.relayout(q, s)
    assert words.shape == (n // 16, k // 64, 32, 4) and words.dtype == torch.int32
    assert scales.shape == (n // 16, k // 64, 32) and scales.dtype == torch.int16
    assert words.numel() * 4 == q.numel() and scales.numel() * 2 == s.numel()  # same bytes
    assert torch.equal(L.emulate_dequantize(words, scales, gs), _exact_reference(q, s, gs).float())


def test_every_e4m3_scale_and_every_code_round_trips():
    raw = torch.arange(256, dtype=torch.uint8)
    raw = raw[(raw & 0x7F) != 0x7F]  # all 254 non-NaN bytes
    n = 16 * 16
    s_raw = raw.repeat(n * 4 // raw.numel() + 1)[: n * 4].reshape(n, 4)  # K = 64 -> 4 blocks per row
    q = torch.arange(256, dtype=torch.uint8).repeat(n * 32 // 256).reshape(n, 32)
    s = s_raw.view(torch.float8_e4m3fn)
    words, scales = L.relayout(q, s)
    assert torch.equal(L.emulate_dequantize(words, scales, torch.tensor(1.0)), _exact_reference(q, s, 1.0).float())


def test_nan_scales_and_bad_shapes_are_refused():
    q = torch.zeros(16, 32, dtype=torch.uint8)
    s = torch.ones(16, 4).to(torch.float8_e4m3fn)
    s.view(torch.uint8)[3, 1] = 0x7F
    with pytest.raises(ValueError, match="NaN E4M3"):
        L.relayout(q, s)
    with pytest.raises(ValueError, match="divisible by 16"):
        L.relayout(torch.zeros(8, 32, dtype=torch.uint8), torch.ones(8, 4).to(torch.float8_e4m3fn))
    with pytest.raises(ValueError, match="divisible by 64"):
        L.relayout(torch.zeros(16, 16, dtype=torch.uint8), torch.ones(16, 2).to(torch.float8_e4m3fn))


def test_generated_decode_macros_tile_the_word():
    text = L.cuda_defines()
    assert "#define QO_REG3(v)" in text and "0x81C081C0u" in text
    bits = [L._stored_position(r, b) for r in range(4) for half in L.TARGET_BITS for b in half]
    assert sorted(bits) == list(range(32))


def _bf(bits: int) -> float:
    return float(L._bf16_bits_to_float(torch.tensor(bits & 0xFFFF, dtype=torch.int64)))


def _emulate_gemv(words, scales, x, gs):
    """The kernel's fragment mapping, lane by lane: A (16 x 16) from the decoded registers, B
    (16 x 8) from the activation words, as ``mma.m16n8k16`` defines them."""
    nt, steps = words.shape[:2]
    m = x.shape[0]
    xb = x.view(torch.int16).to(torch.int64) & 0xFFFF
    out = torch.zeros(m, nt * 16, dtype=torch.float64)
    for t in range(nt):
        acc = torch.zeros(2, 16, 8, dtype=torch.float64)
        for j in range(steps):
            for i in range(4):
                a = torch.zeros(16, 16, dtype=torch.float64)
                b = torch.zeros(2, 16, 8, dtype=torch.float64)
                for lane in range(32):
                    g, c = lane >> 2, lane & 3
                    v = int(words[t, j, lane, i]) & 0xFFFFFFFF
                    s = int(scales[t, j, lane]) & 0xFFFF
                    sc = (_bf((s & 0xFF) * 16 + L.SCALE_BF16_OFFSET), _bf((s >> 8) * 16 + L.SCALE_BF16_OFFSET))
                    regs = []
                    for reg in range(4):
                        r = 0
                        for rot, mask in L.register_masks(reg):
                            r |= ((((v >> rot) | (v << (32 - rot))) & 0xFFFFFFFF) if rot else v) & mask
                        regs.append((_bf(r) * sc[reg % 2], _bf(r >> 16) * sc[reg % 2]))
                    a[g, 2 * c:2 * c + 2] = torch.tensor(regs[0])
                    a[g + 8, 2 * c:2 * c + 2] = torch.tensor(regs[1])
                    a[g, 2 * c + 8:2 * c + 10] = torch.tensor(regs[2])
                    a[g + 8, 2 * c + 8:2 * c + 10] = torch.tensor(regs[3])
                    for tile in range(2):
                        tok = g + 8 * tile
                        if tok < m:
                            col = j * 64 + c * 16 + 4 * i
                            b[tile, 2 * c, g], b[tile, 2 * c + 1, g] = _bf(int(xb[tok, col])), _bf(int(xb[tok, col + 1]))
                            b[tile, 2 * c + 8, g], b[tile, 2 * c + 9, g] = _bf(int(xb[tok, col + 2])), _bf(int(xb[tok, col + 3]))
                acc += torch.stack([a @ b[0], a @ b[1]])
        for tok in range(m):
            out[tok, t * 16:(t + 1) * 16] = acc[tok // 8][:, tok % 8] * float(gs) * 256
    return out


def test_gemv_fragment_mapping_computes_x_times_w_transposed():
    gen = torch.Generator().manual_seed(3)
    n, k, m = 32, 128, 11  # two tiles, two steps, both token tiles
    q, s, gs = _random_nvfp4(n, k, gen, gs=0.01)
    words, scales = L.relayout(q, s)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    got = _emulate_gemv(words, scales, x, gs)
    ref = x.double() @ _exact_reference(q, s, gs).t()
    assert float((got - ref).norm() / ref.norm()) < 1e-12


def test_linear_path_rule():
    from quantomni.kernels.cuda import nvfp4_mma as mma

    assert mma.use_gemv(32, 768, 2048) and mma.use_gemv(1, 3072, 3072)
    # 33-64 rows: the GEMV on the large FLUX weights only (H100 measurements in the module)
    assert mma.use_gemv(64, 12288, 3072) and mma.use_gemv(48, 3072, 12288) and mma.use_gemv(64, 15360, 3072)
    assert not mma.use_gemv(64, 3072, 3072) and not mma.use_gemv(33, 768, 2048) and not mma.use_gemv(64, 6144, 2048)
    assert not mma.use_gemv(65, 15360, 3072)  # past the GEMV kernels' row limit


def test_backend_refuses_cpu_and_odd_shapes_with_reasons():
    from quantomni.kernels.nvfp4_cuda import CudaNvfp4Kernel

    ok, why = CudaNvfp4Kernel.is_supported(torch.device("cpu"))
    assert not ok and "CUDA" in why
    spec = KernelSpec("nvfp4", 100, 64, torch.bfloat16, torch.device("cpu"), Nvfp4Scheme(weight_only=True))
    assert CudaNvfp4Kernel.can_implement(spec) == (False, "needs in_features divisible by 64, layer has 100")
    spec = KernelSpec("nvfp4", 128, 64, torch.float16, torch.device("cpu"), Nvfp4Scheme(weight_only=True))
    assert not CudaNvfp4Kernel.can_implement(spec)[0]
    spec = KernelSpec("nvfp4", 128, 64, torch.bfloat16, torch.device("cpu"), Nvfp4Scheme(weight_only=True))
    with pytest.raises(KernelSelectionError, match="cuda"):
        select_linear_kernel(spec, "cuda")


def test_sources_compile_with_nvrtc_when_installed():
    from quantomni.kernels.cuda import nvfp4_mma, runtime

    ok, why = runtime.nvrtc_available()
    if not ok:
        pytest.skip(why)
    cubin, lowered = runtime.compile_cubin(nvfp4_mma.source(), nvfp4_mma._names(), "sm_90")
    assert len(cubin) > 10_000 and "qo_nvfp4_dequant<2, true>" in lowered


# ---- GPU -----------------------------------------------------------------------------------------

def _cuda_ready():
    from quantomni.kernels.cuda import nvfp4_mma

    ok, why = nvfp4_mma.is_supported(torch.device("cuda"))
    if not ok:
        pytest.skip(why)
    return nvfp4_mma


def _quantized(n, k, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(n, k, device="cuda") / k**0.5
    packed, ws, ws2 = nvfp4_quantize(w)
    words, scales = L.relayout(packed, ws)
    return packed, ws, ws2, words, scales


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("plan", [None, dict(warps=4, unroll=1, splits=1), dict(warps=8, unroll=6, splits=3),
                                  dict(warps=2, unroll=3, splits=64)])
@pytest.mark.parametrize("m", [1, 2, 7, 8, 9, 16, 17, 40, 64])
@pytest.mark.parametrize("k,n", [(64, 16), (192, 48), (3072, 1536), (768, 2048)])
def test_gemv_matches_reference(k, n, m, plan):
    mma = _cuda_ready()
    packed, ws, ws2, words, scales = _quantized(n, k, seed=m)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    p = None if plan is None else mma.gemv_plan(m, n, k, **plan)
    out = mma.gemv(x, words, scales, ws2, bias, n, plan=p)
    ref = x.double() @ nvfp4_dequantize(packed, ws, ws2, torch.float64).t() + bias.double()
    assert out.shape == (m, n) and torch.isfinite(out).all()
    assert float((out.double() - ref).norm() / ref.norm()) < 5e-3
    out2 = mma.gemv(x, words, scales, ws2, None, n, plan=p)  # workspace left clean by the first call
    ref2 = ref - bias.double()
    assert float((out2.double() - ref2).norm() / ref2.norm()) < 5e-3



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dequantize_is_the_reference_rounded_to_bf16():
    mma = _cuda_ready()
    gen = torch.Generator().manual_seed(7)
    q, s, gs = _random_nvfp4(272, 1024, gen)
    words, scales = L.relayout(q.cuda(), s.cuda())
    for items in mma.DEQUANT_ITEMS:  # 272 x 1024: 8704 items, a partial last block for items = 2, 4
        for staged in (False, True):
            got = mma.dequantize(words, scales, gs.cuda(), 272, 1024, items=items, staged=staged)
            assert torch.equal(got.cpu(), _exact_reference(q, s, gs).float().to(torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nan_activations_give_nan_and_workspace_stays_clean():
    mma = _cuda_ready()
    packed, ws, ws2, words, scales = _quantized(64, 4096)
    x = torch.randn(3, 4096, device="cuda", dtype=torch.bfloat16)
    x[1, 100] = float("nan")
    plan = mma.gemv_plan(3, 64, 4096, splits=8)
    out = mma.gemv(x, words, scales, ws2, None, 64, plan=plan)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()
    x[1, 100] = 1.0
    out = mma.gemv(x, words, scales, ws2, None, 64, plan=plan)
    assert torch.isfinite(out).all()  # NaN partials were not left behind in the workspace
    assert all(not b.any() for b in mma._workspaces[torch.cuda.current_device()])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_backend_layer_compiles_without_graph_breaks_and_captures_in_a_graph():
    from quantomni.kernels.nvfp4_cuda import CudaNvfp4Kernel

    _cuda_ready()
    packed, ws, ws2, _, _ = _quantized(512, 1024)

    class Layer(torch.nn.Module):
        out_features, in_features = 512, 1024

        def __init__(self):
            super().__init__()
            self.register_buffer("weight", packed.clone())
            self.register_buffer("weight_scale", ws.clone())
            self.register_buffer("weight_scale_2", ws2.clone())
            self.bias = None

        def forward(self, x):
            return CudaNvfp4Kernel.apply(self, x)

    layer = Layer()
    CudaNvfp4Kernel.prepare()
    CudaNvfp4Kernel.process_loaded(layer)
    assert layer.weight is None and layer.weight_mma.dtype == torch.int32
    ref_w = nvfp4_dequantize(packed, ws, ws2, torch.float64)
    for m in (4, 24, 100):  # the GEMV, the row-chunk GEMV, dequantize + cuBLAS
        x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
        compiled = torch.compile(layer, fullgraph=True)
        out = compiled(x)
        ref = x.double() @ ref_w.t()
        assert float((out.double() - ref).norm() / ref.norm()) < 5e-3
    x = torch.randn(2, 1024, device="cuda", dtype=torch.bfloat16)
    layer(x)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = layer(x)
    x.copy_(torch.randn_like(x))
    g.replay()
    ref = x.double() @ ref_w.t()
    assert float((y.double() - ref).norm() / ref.norm()) < 5e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_moe_gemv_and_per_row_dequant_match_reference():
    mma = _cuda_ready()
    gen = torch.Generator().manual_seed(11)
    e, n, k = 5, 48, 192
    packed, scales, words, sc = [], [], [], []
    for i in range(e):
        q, s, _ = _random_nvfp4(n, k, gen)
        packed.append(q)
        scales.append(s)
        w_, s_ = L.relayout(q, s)
        words.append(w_)
        sc.append(s_)
    gs = torch.rand(e, n, generator=gen) * 0.01 + 0.001  # per expert and row
    ref_w = torch.stack([_exact_reference(packed[i], scales[i], 1.0) for i in range(e)]) * gs.double().unsqueeze(-1)
    words, sc, gs_d = torch.stack(words).cuda(), torch.stack(sc).cuda(), gs.cuda()
    # per-row dequantization of all experts stacked
    deq = mma.dequantize(words.reshape(e * n // 16, k // 64, 32, 4), sc.reshape(e * n // 16, k // 64, 32),
                         gs_d.reshape(-1), e * n, k)
    assert torch.equal(deq.cpu(), ref_w.reshape(e * n, k).float().to(torch.bfloat16))
    # groups of 3, 17, 1 and 9 rows (chunks of 8 or 16 rows), then 2 dropped slots (expert id E)
    groups = [(0, 3), (2, 17), (3, 1), (4, 9)]
    expert_of = torch.tensor([ex for ex, c in groups for _ in range(c)] + [e, e], dtype=torch.int32)
    counts = torch.bincount(expert_of.long(), minlength=e + 1)[:e]
    offs = torch.zeros(e + 1, dtype=torch.int32)
    offs[1:] = torch.cumsum(counts, 0)
    rows = torch.randn(len(expert_of), k, generator=gen).to(torch.bfloat16)
    ref = torch.zeros(len(expert_of), n, dtype=torch.float64)
    for ex, _ in groups:
        sel = expert_of == ex
        ref[sel] = rows[sel].double() @ ref_w[ex].t()
    for max_rows in (17, 8):  # the 16-row kernel, and the 8-row kernel looping over chunks
        out = mma.moe_gemv(rows.cuda(), words, sc, gs_d, expert_of.cuda(), offs.cuda(), n, max_rows).cpu()
        assert torch.isfinite(out).all() and not out[-2:].any()  # dropped slots stay zero
        assert float((out.double() - ref).norm() / ref.norm()) < 5e-3, max_rows


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tokens", [3, 40, 100])  # grouped decode-GEMV (<= 64 tokens); dequant + grouped GEMM
def test_nvfp4_experts_in_cuda_layout_match_the_stored_layout(tokens):
    import copy
    import sys

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from test_moe_quant_experts import _experts, _routing

    from quantomni.layers.moe import QuantMoEExperts

    _cuda_ready()
    ex = _experts(e=4, h=128, i=64)
    ref_mod = QuantMoEExperts.from_module(ex, "nvfp4", "none", "grouped").cuda()
    mod = copy.deepcopy(ref_mod)
    why = mod.prepare(torch.device("cuda"))
    assert "CUDA layout" in why and mod.gate_up.weight is None and mod.gate_up.weight_mma is not None
    assert mod.quantized_bytes() == ref_mod.quantized_bytes()
    x = torch.randn(tokens, 128, device="cuda", dtype=torch.bfloat16)
    idx, w = _routing(tokens, 4, 2)
    idx[0, 1] = 4  # a dropped slot (index E), as transformers pads
    idx, w = idx.cuda(), w.cuda().to(torch.bfloat16)
    ref, out = ref_mod(x, idx, w), mod(x, idx, w)
    assert torch.isfinite(out).all()
    assert float((out.double() - ref.double()).norm() / ref.double().norm()) < 1e-2
    if tokens <= 64:  # the decode path has no host sync: it captures in a CUDA graph
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = mod(x, idx, w)
        x.copy_(torch.randn_like(x))
        graph.replay()
        assert torch.equal(captured, mod(x, idx, w))


def test_compiled_cubins_are_cached_on_disk(tmp_path, monkeypatch):
    """A second process (here: a cleared in-process cache) reuses the cubin from disk; a corrupt
    entry is recompiled; QUANTOMNI_CUDA_CACHE="" turns the disk cache off."""
    from quantomni.kernels.cuda import runtime

    calls = []

    def fake_compile(source, names, arch, options=()):
        calls.append(arch)
        return b"CUBIN" + arch.encode(), {n: f"lowered_{i}" for i, n in enumerate(names)}

    monkeypatch.setattr(runtime, "compile_cubin", fake_compile)
    monkeypatch.setattr(runtime, "_nvrtc_version", lambda: "13.0")
    monkeypatch.setenv("QUANTOMNI_CUDA_CACHE", str(tmp_path))
    first = runtime._compile_cached.__wrapped__("k", "src", ("a<1>", "b"), "sm_90")
    second = runtime._compile_cached.__wrapped__("k", "src", ("a<1>", "b"), "sm_90")
    assert first == second and calls == ["sm_90"]
    runtime._compile_cached.__wrapped__("k", "src changed", ("a<1>", "b"), "sm_90")
    assert calls == ["sm_90", "sm_90"]  # a different source is a different entry
    for f in tmp_path.glob("*.json"):
        f.write_text("{not json")
    assert runtime._compile_cached.__wrapped__("k", "src", ("a<1>", "b"), "sm_90") == first
    assert len(calls) == 3 and not list(tmp_path.glob("*.tmp"))
    monkeypatch.setenv("QUANTOMNI_CUDA_CACHE", "")
    assert runtime.cache_dir() is None
    runtime._compile_cached.__wrapped__("k", "src", ("a<1>", "b"), "sm_90")
    assert len(calls) == 4
