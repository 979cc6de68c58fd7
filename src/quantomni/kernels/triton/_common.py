"""Shared helpers for the Triton kernels: lazy triton import, input checks.

Why lazy: importing quantomni must never require triton (CPU-only installs, CI);
each kernel module builds its jitted functions the first time a wrapper is called.
"""
from __future__ import annotations

import functools
import os

import torch


class KernelInputError(ValueError):
    """A tensor handed to a Triton kernel wrapper has the wrong device, dtype or shape."""


def require_triton():
    """Import triton and triton.language, or raise an ImportError naming the install command."""
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "quantomni's Triton kernels need triton: pip install triton "
            "(it ships with the CUDA builds of torch)"
        ) from exc
    return triton, tl


def interpret_mode() -> bool:
    """True when Triton runs kernels on the CPU interpreter (TRITON_INTERPRET=1); read at call time."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def check_device(name: str, t: torch.Tensor) -> None:
    """Tensors must live on CUDA, or on CPU when the interpreter is on."""
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and interpret_mode():
        return
    raise KernelInputError(
        f"{name} is on device {t.device}; Triton kernels need a CUDA tensor "
        "(CPU tensors only work with TRITON_INTERPRET=1)"
    )


def check_tensor(name: str, t, dtypes, ndim: int) -> torch.Tensor:
    """Check that `t` is a tensor of one of `dtypes` with `ndim` dimensions on a usable device."""
    if not isinstance(t, torch.Tensor):
        raise KernelInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise KernelInputError(f"{name} has dtype {t.dtype}; allowed: {allowed}")
    if t.dim() != ndim:
        raise KernelInputError(f"{name} has shape {tuple(t.shape)}; expected {ndim} dimensions")
    check_device(name, t)
    return t


def check_same_device(**tensors) -> None:
    devs = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        raise KernelInputError(f"tensors are on different devices: {devs}")


def check_gemm_shapes(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> tuple[int, int, int]:
    """a [M, K] and b [N, K] (the weight as stored) must agree on K and be non-empty; returns (M, N, K)."""
    M, K = a.shape
    N, Kb = b.shape
    if K != Kb:
        raise KernelInputError(f"{name_a} has K={K} but {name_b} [N, K] has K={Kb}")
    if M == 0 or N == 0 or K == 0:
        raise KernelInputError(f"empty GEMM: {name_a} {tuple(a.shape)}, {name_b} {tuple(b.shape)}")
    return M, N, K


OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def check_out_dtype(out_dtype) -> None:
    if out_dtype not in OUT_DTYPES:
        raise KernelInputError(f"out_dtype is {out_dtype}; allowed: torch.bfloat16, torch.float16, torch.float32")


def check_bias(bias, n: int, device) -> None:
    """bias is None or a 1-D float tensor [N]."""
    if bias is None:
        return
    check_tensor("bias", bias, (torch.bfloat16, torch.float16, torch.float32), 1)
    if bias.shape[0] != n:
        raise KernelInputError(f"bias has shape {tuple(bias.shape)}; expected [{n}] (N of the weight)")
    if bias.device != device:
        raise KernelInputError(f"bias is on {bias.device}; the inputs are on {device}")


def scale_vector(name: str, s, length: int, device) -> torch.Tensor:
    """Turn a per-row scale ([L], [L,1], or a scalar / 1-element tensor) into a float32 [L] view.

    A scalar becomes a stride-0 expanded view, so the kernel reads one value for every row.
    """
    if isinstance(s, (float, int)):
        s = torch.tensor([float(s)], dtype=torch.float32, device=device)
    if not isinstance(s, torch.Tensor):
        raise KernelInputError(f"{name} must be a float32 tensor or a Python float, got {type(s).__name__}")
    if s.dtype != torch.float32:
        raise KernelInputError(f"{name} has dtype {s.dtype}; allowed: torch.float32")
    if s.device != device:
        raise KernelInputError(f"{name} is on {s.device}; the inputs are on {device}")
    if s.numel() == 1:
        return s.reshape(1).expand(length)
    if s.dim() > 2 or s.numel() != length or (s.dim() == 2 and 1 not in s.shape):
        raise KernelInputError(
            f"{name} has shape {tuple(s.shape)}; expected [{length}], [{length}, 1], [1, {length}] or a single value"
        )
    return s.reshape(-1)


_WORKSPACES: dict = {}


def fixup_workspace(device, mn: int, n: int):
    """Zeroed fp32 [>= M*N] accumulator and int32 [>= N tiles] arrival counters for split-K kernels
    with an in-kernel fix-up, reused across calls.

    The kernels leave both zeroed after every launch, so no memset runs per call. Allocated on the
    first call: warm up before CUDA-graph capture. Launches on concurrent streams must not share a
    device (one stream per device, as the engine runs).
    """
    key = (device.type, device.index)
    acc, cnt = _WORKSPACES.get(key, (None, None))
    if acc is None or acc.numel() < mn or cnt.numel() < n:
        acc = torch.zeros(max(mn, 1 << 16), dtype=torch.float32, device=device)
        cnt = torch.zeros(max(n, 1 << 14), dtype=torch.int32, device=device)
        _WORKSPACES[key] = (acc, cnt)
    return acc, cnt


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device) -> int:
    """Streaming multiprocessors of a CUDA device (cached); 4 for the CPU interpreter."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def dequant_custom_op(name: str, fn):
    """``torch.ops.quantomni_gguf.<name>(packed, in_features, dtype)`` running ``fn`` with the same
    arguments, with a fake implementation ([N, in_features] in dtype) so torch.compile traces it.
    Call once per name (the callers cache it)."""

    @torch.library.custom_op(f"quantomni_gguf::{name}", mutates_args=())
    def op(packed: torch.Tensor, in_features: int, dtype: torch.dtype) -> torch.Tensor:
        return fn(packed, in_features, dtype)

    @op.register_fake
    def _(packed, in_features, dtype):
        return packed.new_empty((packed.shape[0], in_features), dtype=dtype)

    return getattr(torch.ops.quantomni_gguf, name)
