"""``QuantMoEExperts``: a drop-in for transformers' fused MoE experts module with quantized experts.

transformers 5 stores the experts of Qwen3-MoE-style blocks as ONE module holding 3-D parameters
``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I] (forward(hidden [T, H], top_k_index
[T, k], top_k_weights [T, k]) -> [T, H]). This module keeps that call contract, so the block's
router (``mlp.gate``) is untouched and routing is identical; only the expert matmuls change.
"""

from __future__ import annotations

import torch
from torch import nn

from quantomni.kernels.moe_torch import (ACT_MODES, EXPERT_FORMATS, moe_experts_grouped, moe_experts_reference,
                                         select_moe_backend)
from quantomni.kernels.nvfp4_ref import NVFP4ShapeError, nvfp4_quantize
from quantomni.kernels.quant_ops import check_finite_weight, quantize_weight_fp8, quantize_weight_int8


class ExpertWeights(nn.Module):
    """One projection of all experts, quantized (see ``kernels.moe_torch`` for the layouts).

    fmt: "fp8" | "int8" | "nvfp4"; act: activation mode; out_features/in_features: N/K per expert.
    """

    def __init__(self, fmt: str, act: str, weight, weight_scale, weight_scale_2=None, input_scale=None):
        super().__init__()
        if fmt not in EXPERT_FORMATS:
            raise ValueError(f"expert format {fmt!r} unknown; formats: {list(EXPERT_FORMATS)}")
        if act not in ACT_MODES:
            raise ValueError(f"expert activation mode {act!r} unknown; modes: {list(ACT_MODES)}")
        if act in ("fp8_static", "nvfp4_static") and input_scale is None:
            raise ValueError(f"expert activation mode {act!r} needs a per-expert input_scale")
        self.fmt = fmt
        self.act = act
        self.num_experts = weight.shape[0]
        self.out_features = weight.shape[1]
        self.in_features = weight.shape[2] * (2 if fmt == "nvfp4" else 1)
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("weight_scale_2", weight_scale_2)
        self.register_buffer("input_scale", input_scale)

    @classmethod
    def quantize(cls, w: torch.Tensor, fmt: str, act: str, name: str) -> "ExpertWeights":
        """Quantize a float [E, N, K] expert tensor: per expert and output channel (fp8/int8) or
        per expert 16-element blocks with a per-expert global scale (nvfp4)."""
        check_finite_weight(w, name)
        e, n, k = w.shape
        if fmt in ("fp8", "int8"):
            fn = (lambda m: quantize_weight_fp8(m, "channel")) if fmt == "fp8" else quantize_weight_int8
            q, s = fn(w.reshape(e * n, k))
            return cls(fmt, act, q.view(e, n, k), s.view(e, n))
        if fmt == "nvfp4":
            if k % 32:
                raise NVFP4ShapeError(f"{name}: NVFP4 experts need K % 32 == 0, K is {k}")
            packed, scales, globals_ = [], [], []
            for i in range(e):  # load time only; execution never loops over experts
                p, s, g = nvfp4_quantize(w[i])
                packed.append(p)
                scales.append(s)
                globals_.append(g.expand(n))
            return cls(fmt, act, torch.stack(packed), torch.stack(scales), torch.stack(globals_))
        raise ValueError(f"{name}: expert format {fmt!r} unknown; formats: {list(EXPERT_FORMATS)}")

    def quantized_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers() if b is not None)

    def mma_layout_reason(self) -> tuple[bool, str]:
        """Can these NVFP4 experts use the CUDA kernels' layout (shape rules of ``nvfp4_mma_layout``)?"""
        from quantomni.kernels.cuda.nvfp4_mma_layout import supports_shape

        if self.fmt != "nvfp4":
            return False, f"{self.fmt} experts"
        if getattr(self, "weight_mma", None) is not None:
            return True, "already in the CUDA layout"
        return supports_shape(self.out_features, self.in_features)

    def to_mma_layout(self) -> None:
        """Re-lay out NVFP4 experts once (same bytes) for the CUDA decode-GEMV / dequantizer
        (``kernels/cuda``); ``weight``/``weight_scale`` become ``weight_mma``/``scale_mma``."""
        from quantomni.kernels.cuda.nvfp4_mma_layout import relayout

        if getattr(self, "weight_mma", None) is not None:
            return
        ok, why = self.mma_layout_reason()
        if not ok:
            raise ValueError(f"experts cannot use the CUDA NVFP4 layout: {why}")
        # one expert at a time: relayout's int32/int64 temporaries are several times the packed
        # bytes, so all experts at once would briefly need gigabytes on a 128-expert layer
        words, scales = zip(*(relayout(self.weight[e], self.weight_scale[e]) for e in range(self.num_experts)))
        self._buffers["weight"] = None
        self._buffers["weight_scale"] = None
        self.register_buffer("weight_mma", torch.stack(words))
        self.register_buffer("scale_mma", torch.stack(scales))
        self.weight_scale_2 = self.weight_scale_2.float().contiguous()

    def extra_repr(self) -> str:
        layout = ", layout=cuda-mma" if getattr(self, "weight_mma", None) is not None else ""
        return (f"experts={self.num_experts}, out={self.out_features}, in={self.in_features}, fmt={self.fmt}, "
                f"act={self.act}{layout}")


class QuantMoEExperts(nn.Module):
    """Quantized experts with the HF experts' forward contract.

    gate_up: ExpertWeights [E, 2I, H]; down: ExpertWeights [E, H, I]; act_fn: gate activation;
    backend: "auto" | "torch" | "grouped" (resolved against the device at first use).
    """

    def __init__(self, gate_up: ExpertWeights, down: ExpertWeights, act_fn, backend: str = "auto", prefix: str = ""):
        super().__init__()
        if gate_up.num_experts != down.num_experts:
            raise ValueError(f"{prefix}: gate_up has {gate_up.num_experts} experts, down has {down.num_experts}")
        self.gate_up = gate_up
        self.down = down
        self.act_fn = act_fn
        self.num_experts = gate_up.num_experts
        self.prefix = prefix
        self.requested_backend = backend
        self._resolved: tuple | None = None

    @classmethod
    def from_module(cls, experts: nn.Module, fmt: str, act: str, backend: str = "auto", prefix: str = ""):
        """Quantize a transformers fused-experts module (gate_up_proj / down_proj 3-D params)."""
        gu = ExpertWeights.quantize(experts.gate_up_proj.detach(), fmt, act, f"{prefix}.gate_up_proj")
        dn = ExpertWeights.quantize(experts.down_proj.detach(), fmt, act, f"{prefix}.down_proj")
        return cls(gu, dn, experts.act_fn, backend, prefix)

    def backend_info(self, device=None, dtype=None) -> tuple[str, bool, str]:
        device = device or self.gate_up.weight.device
        dtype = dtype or torch.bfloat16
        if self._resolved is None or self._resolved[0] != (device, dtype):
            dims = (self.gate_up.in_features, self.gate_up.out_features, self.down.in_features, self.down.out_features)
            self._resolved = ((device, dtype), select_moe_backend(self.requested_backend, device, dtype, dims))
        return self._resolved[1]

    def prepare(self, device) -> str:
        """Once on the run device: NVFP4 experts take the CUDA kernels' layout where those kernels
        run (decode-GEMVs for few rows per expert, an exact dequantizer + grouped GEMM otherwise).
        Returns the reason for the record."""
        device = torch.device(device)
        if self.gate_up.fmt != "nvfp4":
            return f"{self.gate_up.fmt} experts: dequantize + grouped GEMM"
        if self.requested_backend == "torch":
            return "NVFP4 experts kept as stored: moe_backend=torch (reference)"
        from quantomni.kernels.cuda import nvfp4_mma

        ok, why = nvfp4_mma.is_supported(device)
        for ew in (self.gate_up, self.down):
            if ok:
                ok, why = ew.mma_layout_reason()
        if not ok:
            return f"NVFP4 experts kept as stored ({why}): dequantize + grouped GEMM"
        self.gate_up.to_mma_layout()
        self.down.to_mma_layout()
        return ("NVFP4 experts in the CUDA layout: grouped decode-GEMVs up to 64 tokens (no host sync), else exact "
                "dequant + grouped GEMM")

    def forward(self, hidden_states, top_k_index, top_k_weights):
        name, use_grouped_mm, _ = self.backend_info(hidden_states.device, hidden_states.dtype)
        if name == "torch":
            return moe_experts_reference(hidden_states, top_k_index, top_k_weights, self.gate_up, self.down, self.act_fn)
        return moe_experts_grouped(hidden_states, top_k_index, top_k_weights, self.gate_up, self.down, self.act_fn,
                                   use_grouped_mm)

    def quantized_bytes(self) -> int:
        return self.gate_up.quantized_bytes() + self.down.quantized_bytes()

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, fmt={self.gate_up.fmt}, backend={self.requested_backend}"
