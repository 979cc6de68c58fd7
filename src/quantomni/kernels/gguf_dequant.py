"""Pure-torch dequantization of GGUF/ggml block formats, on CPU or CUDA.

Why torch and not numpy: the loader keeps weights packed (uint8) on the compute device and expands
them per layer when used, so the dequantizer must run wherever the bytes live. Every function takes
the packed bytes viewed as [n_blocks, block_bytes] and returns float32 [n_blocks, block_elems];
the layouts follow ggml's block structs (little-endian, scales as IEEE f16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


DequantFn = Callable[[torch.Tensor], torch.Tensor]  # uint8 [n_blocks, block_bytes] -> float32 [n_blocks, block_elems]


@dataclass(frozen=True)
class QTypeInfo:
    block_elems: int  # weights per block
    block_bytes: int  # bytes per block


def _qt():
    try:
        import gguf
    except ImportError as e:  # pragma: no cover
        raise ImportError("GGUF dequantization needs the gguf package: pip install 'gguf>=0.10'") from e
    return gguf.GGMLQuantizationType


# Non-linear 4-bit codebook shared by IQ4_NL and IQ4_XS.
_IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def _f16(b: torch.Tensor, start: int) -> torch.Tensor:
    """f16 field at byte ``start`` of each block -> float32 [n, 1]."""
    return b[:, start : start + 2].contiguous().view(torch.float16).float()


def _i32(b: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return b[:, start:stop].to(torch.int32)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[..., k] bytes -> [..., 2k]: all low nibbles, then all high nibbles (ggml's order)."""
    return torch.cat([qs & 0xF, qs >> 4], dim=-1)


def _bits(x: torch.Tensor, n: int, width: int = 1) -> torch.Tensor:
    """[..., m] ints -> [..., n, m]: field i is (x >> (i*width)) & mask."""
    shifts = torch.arange(n, device=x.device, dtype=x.dtype).view(n, 1) * width
    return (x.unsqueeze(-2) >> shifts) & ((1 << width) - 1)


def _q8_0(b):
    return _f16(b, 0) * b[:, 2:34].contiguous().view(torch.int8).float()


def _q4_0(b):
    return _f16(b, 0) * (_nibbles(_i32(b, 2, 18)) - 8).float()


def _q4_1(b):
    return _f16(b, 0) * _nibbles(_i32(b, 4, 20)).float() + _f16(b, 2)


def _q5_high(b, start):
    """The u32 of 5th bits at byte ``start`` -> [n, 32] (bit j belongs to weight j)."""
    qh = b[:, start : start + 4].to(torch.int64)
    word = qh[:, 0] | (qh[:, 1] << 8) | (qh[:, 2] << 16) | (qh[:, 3] << 24)
    return _bits(word.unsqueeze(-1), 32).squeeze(-1).to(torch.int32)


def _q5_0(b):
    q = _nibbles(_i32(b, 6, 22)) | (_q5_high(b, 2) << 4)
    return _f16(b, 0) * (q - 16).float()


def _q5_1(b):
    q = _nibbles(_i32(b, 8, 24)) | (_q5_high(b, 4) << 4)
    return _f16(b, 0) * q.float() + _f16(b, 2)


def _q2_k(b):
    n = b.shape[0]
    sc = _i32(b, 0, 16).view(n, 2, 4, 2, 1)
    q = _bits(_i32(b, 16, 80).view(n, 2, 32), 4, 2).view(n, 2, 4, 2, 16)
    d, dmin = _f16(b, 80).view(n, 1, 1, 1, 1), _f16(b, 82).view(n, 1, 1, 1, 1)
    return (d * (sc & 0xF) * q - dmin * (sc >> 4)).reshape(n, 256)


def _q3_k(b):
    n = b.shape[0]
    s = _i32(b, 96, 108)
    low = torch.cat([s[:, 0:8] & 0xF, s[:, 0:8] >> 4], dim=1)
    high = _bits(s[:, 8:12], 4, 2).reshape(n, 16)
    scale = ((low | (high << 4)) - 32).view(n, 2, 4, 2, 1)
    q = _bits(_i32(b, 32, 96).view(n, 2, 32), 4, 2)  # [n, half, j, 32]
    hbit = _bits(_i32(b, 0, 32), 8).view(n, 2, 4, 32)
    vals = (q - 4 * (1 - hbit)).view(n, 2, 4, 2, 16)
    return (_f16(b, 108).view(n, 1, 1, 1, 1) * scale * vals).reshape(n, 256)


def _k_scale_min(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 packed bytes -> eight 6-bit scales and eight 6-bit mins (Q4_K / Q5_K)."""
    sc = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], dim=1)
    mn = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], dim=1)
    return sc, mn


def _k_quant_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, 128] bytes -> [n, 8, 32]: sub-block 2j = low nibbles of chunk j, 2j+1 = high nibbles."""
    n = qs.shape[0]
    qs = qs.view(n, 4, 1, 32)
    return torch.cat([qs & 0xF, qs >> 4], dim=2).view(n, 8, 32)


def _q4_k(b):
    n = b.shape[0]
    sc, mn = _k_scale_min(_i32(b, 4, 16))
    q = _k_quant_nibbles(_i32(b, 16, 144))
    d, dmin = _f16(b, 0).view(n, 1, 1), _f16(b, 2).view(n, 1, 1)
    return (d * sc.unsqueeze(-1) * q - dmin * mn.unsqueeze(-1)).reshape(n, 256)


def _q5_k(b):
    n = b.shape[0]
    sc, mn = _k_scale_min(_i32(b, 4, 16))
    q = _k_quant_nibbles(_i32(b, 48, 176)) | (_bits(_i32(b, 16, 48), 8) << 4)
    d, dmin = _f16(b, 0).view(n, 1, 1), _f16(b, 2).view(n, 1, 1)
    return (d * sc.unsqueeze(-1) * q - dmin * mn.unsqueeze(-1)).reshape(n, 256)


def _q6_k(b):
    n = b.shape[0]
    ql = _i32(b, 0, 128).view(n, 2, 1, 2, 32)  # [n, half, ., a, l]
    low = torch.cat([ql & 0xF, ql >> 4], dim=2).view(n, 2, 4, 32)  # quarter k = nibble*2 + a
    high = _bits(_i32(b, 128, 192).view(n, 2, 32), 4, 2)  # [n, half, k, l]
    q = ((low | (high << 4)) - 32).view(n, 2, 4, 2, 16)
    sc = b[:, 192:208].contiguous().view(torch.int8).to(torch.int32).view(n, 2, 4, 2, 1)
    return (_f16(b, 208).view(n, 1, 1, 1, 1) * sc * q).reshape(n, 256)


def _iq4_table(device) -> torch.Tensor:
    return torch.tensor(_IQ4_VALUES, dtype=torch.float32, device=device)


def _iq4_nl(b):
    return _f16(b, 0) * _iq4_table(b.device)[_nibbles(_i32(b, 2, 18)).long()]


def _iq4_xs(b):
    n = b.shape[0]
    sl = _i32(b, 4, 8).view(n, 4, 1)
    low = torch.cat([sl & 0xF, sl >> 4], dim=2).view(n, 8)
    sh = _i32(b, 2, 4)
    high = _bits((sh[:, 0] | (sh[:, 1] << 8)).unsqueeze(-1), 8, 2).view(n, 8)
    dl = _f16(b, 0) * ((low | (high << 4)) - 32).float()  # [n, 8]
    q = _nibbles(_i32(b, 8, 136).view(n, 8, 16))  # [n, 8, 32]
    return (dl.unsqueeze(-1) * _iq4_table(b.device)[q.long()]).reshape(n, 256)


# ggml type id -> (block info, dequantizer). Keyed by int so that this module needs no gguf import;
# gguf.GGMLQuantizationType is an IntEnum, so its members index these dicts directly.
_FLOAT_TYPES: dict[int, torch.dtype] = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}
_BLOCK_TYPES: dict[int, tuple[QTypeInfo, DequantFn]] = {
    8: (QTypeInfo(32, 34), _q8_0),  # Q8_0
    2: (QTypeInfo(32, 18), _q4_0),  # Q4_0
    3: (QTypeInfo(32, 20), _q4_1),  # Q4_1
    6: (QTypeInfo(32, 22), _q5_0),  # Q5_0
    7: (QTypeInfo(32, 24), _q5_1),  # Q5_1
    10: (QTypeInfo(256, 84), _q2_k),  # Q2_K
    11: (QTypeInfo(256, 110), _q3_k),  # Q3_K
    12: (QTypeInfo(256, 144), _q4_k),  # Q4_K
    13: (QTypeInfo(256, 176), _q5_k),  # Q5_K
    14: (QTypeInfo(256, 210), _q6_k),  # Q6_K
    20: (QTypeInfo(32, 18), _iq4_nl),  # IQ4_NL
    23: (QTypeInfo(256, 136), _iq4_xs),  # IQ4_XS
}

GGUF_QTYPE_INFO: dict[int, QTypeInfo] = {
    **{k: QTypeInfo(1, torch.empty((), dtype=v).element_size()) for k, v in _FLOAT_TYPES.items()},
    **{k: info for k, (info, _) in _BLOCK_TYPES.items()},
}
"""ggml type id (or gguf.GGMLQuantizationType member) -> QTypeInfo(block_elems, block_bytes), supported types."""


def supported_qtypes() -> list:
    """The gguf.GGMLQuantizationType values :func:`dequantize_gguf` accepts."""
    T = _qt()
    return [T(k) for k in GGUF_QTYPE_INFO]


def packed_row_bytes(qtype, row_elems: int) -> int:
    """Bytes one row of ``row_elems`` weights takes in ``qtype`` (row_elems must fill whole blocks)."""
    info = _info(qtype)
    if row_elems % info.block_elems:
        raise ValueError(f"row length {row_elems} is not a multiple of the {_name(qtype)} block size {info.block_elems}")
    return row_elems // info.block_elems * info.block_bytes


_TYPE_NAMES = {0: "F32", 1: "F16", 30: "BF16", 8: "Q8_0", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 10: "Q2_K",
               11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 20: "IQ4_NL", 23: "IQ4_XS"}


def qtype_id(name: str) -> int:
    """ggml type id of a supported type given by name ("Q8_0", "q4_k", ...)."""
    for k, v in _TYPE_NAMES.items():
        if v == name.upper():
            return k
    raise ValueError(f"GGUF quantization type {name!r} is not supported; supported: {', '.join(_TYPE_NAMES.values())}")


def is_block_type(qtype) -> bool:
    """True for the packed (block-quantized) types, False for F32/F16/BF16 and unsupported ones."""
    return int(qtype) in _BLOCK_TYPES


def _name(qtype) -> str:
    if hasattr(qtype, "name"):
        return qtype.name
    return _TYPE_NAMES.get(qtype, f"type id {qtype!r}") if isinstance(qtype, int) else repr(qtype)


def _info(qtype) -> QTypeInfo:
    info = GGUF_QTYPE_INFO.get(qtype) if isinstance(qtype, int) else None
    if info is None:
        names = ", ".join(_name(q) for q in GGUF_QTYPE_INFO)
        raise ValueError(f"GGUF quantization type {_name(qtype)} is not supported for dequantization; supported: {names}")
    return info


def dequantize_gguf(packed: torch.Tensor, qtype, shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Expand GGUF-packed bytes into a dense tensor.

    packed: uint8, any shape whose numel is the packed size (typically [rows, bytes_per_row]), CPU or CUDA.
    qtype: gguf.GGMLQuantizationType of the data.
    shape: torch-order shape of the result (innermost dim = GGUF row length, a multiple of the block size).
    dtype: result dtype; the math is done in float32 and cast once at the end.
    Returns a tensor of ``shape`` and ``dtype`` on ``packed.device``.
    """
    info = _info(qtype)
    shape = tuple(int(s) for s in shape)
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed GGUF data must be uint8, got {packed.dtype}")
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"shape {shape} must have at least one dim and all dims >= 1")
    numel = 1
    for s in shape:
        numel *= s
    expected = packed_row_bytes(qtype, shape[-1]) * (numel // shape[-1])
    if packed.numel() != expected:
        raise ValueError(
            f"{_name(qtype)} tensor of shape {shape} needs {expected} packed bytes, got {packed.numel()} "
            f"(packed shape {tuple(packed.shape)})"
        )
    if qtype in _FLOAT_TYPES:
        flat = packed.contiguous().view(-1)
        if flat.data_ptr() % info.block_bytes:
            flat = flat.clone()  # a dtype view needs an aligned address
        return flat.view(_FLOAT_TYPES[qtype]).view(shape).to(dtype)
    _, fn = _BLOCK_TYPES[qtype]
    blocks = packed.contiguous().view(-1, info.block_bytes)
    return fn(blocks).reshape(shape).to(dtype)

