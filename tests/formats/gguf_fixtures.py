"""Test helpers that write real GGUF files with gguf-py (and libgguf for K-/IQ-quants).

Used by tests/formats and tests/kernels (import via sys.path insertion of this folder).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

import gguf
from gguf import GGMLQuantizationType as QT

# Types gguf-py can quantize itself; the rest come from libgguf (ggml's own C quantizers).
GGUF_PY_QUANTIZABLE = {QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1}

QTypePolicy = Callable[[str, torch.Tensor], QT]


def quantize_array(x: np.ndarray, qtype: QT) -> np.ndarray:
    """float32 [rows, cols] -> the GGUF bytes of ``qtype`` as uint8 [rows, bytes_per_row]."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype in GGUF_PY_QUANTIZABLE:
        q = gguf.quants.quantize(x, qtype)
    else:
        import libgguf

        q = libgguf.quantize_rows(x, getattr(libgguf.GGMLQuantizationType, qtype.name))
    q = np.ascontiguousarray(q)
    return q.view(np.uint8).reshape(x.shape[0], -1)


def policy(matrix_qtype: QT, *, vector_qtype: QT = QT.F32, fallback: QT = QT.F32) -> QTypePolicy:
    """1-D tensors -> ``vector_qtype``; >=2-D tensors -> ``matrix_qtype`` when the row length fits its
    block size, else ``fallback`` (as community converters do for odd-sized layers)."""
    block = gguf.GGML_QUANT_SIZES[matrix_qtype][0]

    def choose(name: str, t: torch.Tensor) -> QT:
        if t.ndim < 2:
            return vector_qtype
        return matrix_qtype if t.shape[-1] % block == 0 else fallback

    return choose


def write_gguf(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    arch: str | None = "flux",
    qtype_policy: QTypePolicy | None = None,
    metadata: Mapping[str, object] | None = None,
) -> dict[str, QT]:
    """Write ``state_dict`` to a GGUF file; returns the qtype used per tensor.

    ``arch=None`` writes no general.architecture (to exercise name-based detection)."""
    qtype_policy = qtype_policy or policy(QT.F32)
    w = gguf.GGUFWriter(str(path), arch or "")
    if arch is None:  # GGUFWriter always adds general.architecture: drop it again
        w.kv_data[0].pop("general.architecture", None)
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, (list, tuple)):
            w.add_array(key, list(value))
        else:
            w.add_uint32(key, int(value))
    used: dict[str, QT] = {}
    for name, t in state_dict.items():
        qtype = qtype_policy(name, t)
        arr = t.detach().to(torch.float32).cpu().numpy()
        if qtype == QT.F32:
            w.add_tensor(name, np.ascontiguousarray(arr))
        elif qtype == QT.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            rows = arr.reshape(-1, arr.shape[-1])
            packed = quantize_array(rows, qtype).reshape(*arr.shape[:-1], -1)
            w.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)
        used[name] = qtype
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return used


def tensor_info_offsets(data: bytes, name: str, n_dims: int) -> dict[str, int]:
    """Byte positions of one tensor-info record's fields, for patching bad-input cases."""
    key = struct.pack("<Q", len(name.encode())) + name.encode()
    start = data.index(key) + len(key)
    return {
        "n_dims": start,
        "ne": start + 4,
        "type": start + 4 + 8 * n_dims,
        "offset": start + 8 + 8 * n_dims,
    }


def patched(data: bytes, pos: int, fmt: str, value) -> bytes:
    """``data`` with the struct ``fmt`` field at ``pos`` replaced by ``value``."""
    out = bytearray(data)
    struct.pack_into(fmt, out, pos, value)
    return bytes(out)
