"""Read GGUF files safely: header, metadata and tensor directory, with tensor data memory-mapped.

Why our own parser instead of ``gguf.GGUFReader``: the reader must be safe on hostile files. Every
count and length read from the file is bounded by the file size *before* anything is allocated or
iterated, and every problem is raised as :class:`GGUFFormatError` naming the file and what is wrong.
Tensor data is never copied: :meth:`GGUFCheckpoint.packed` returns a view of a private memory map.

Layout (GGUF v2/v3, little-endian): magic ``GGUF``, u32 version, u64 tensor count, u64 KV count,
KV pairs, tensor infos (name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset), padding to
``general.alignment`` (default 32), then tensor data; offsets are relative to the data start.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import torch

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
SMALL_ARRAY_LIMIT = 1024  # metadata arrays longer than this are summarised, not materialised

# GGUF metadata value type ids -> (struct format, size); 8 = string, 9 = array.
_SCALAR_TYPES: dict[int, tuple[str, int]] = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # empty name, n_dims, one dim, type, offset
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, value type, smallest value


class GGUFFormatError(ValueError):
    """A GGUF file is malformed, truncated or uses something this reader does not support."""


@dataclass(frozen=True)
class GGUFLargeArray:
    """Placeholder for a metadata array too long to materialise (e.g. a tokenizer vocabulary)."""

    item_type: int
    count: int


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of the directory. ``shape`` is in torch order (GGUF ``ne`` reversed)."""

    name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    nbytes: int
    offset: int  # absolute byte offset in the file

    @property
    def rows(self) -> int:
        """Number of independent quantized rows (all dims but the innermost)."""
        n = 1
        for d in self.shape[:-1]:
            n *= d
        return n

    @property
    def bytes_per_row(self) -> int:
        return self.nbytes // self.rows


@dataclass
class GGUFCheckpoint:
    """A parsed GGUF file; tensor bytes are read lazily through a private memory map."""

    path: str
    version: int
    architecture: str | None
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensorInfo]
    alignment: int
    data_offset: int
    file_size: int
    _base: torch.Tensor | None = field(default=None, repr=False)

    def _file_bytes(self) -> torch.Tensor:
        if self._base is None:
            # shared=False -> MAP_PRIVATE: no copy of the file, and writes never reach it.
            self._base = torch.from_file(self.path, shared=False, size=self.file_size, dtype=torch.uint8)
        return self._base

    def _info(self, name: str) -> GGUFTensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r} in this GGUF file") from None

    def packed(self, name: str) -> torch.Tensor:
        """Raw bytes of tensor ``name`` as uint8 [rows, bytes_per_row], a view of the file map."""
        info = self._info(name)
        flat = self._file_bytes()[info.offset : info.offset + info.nbytes]
        return flat.view(info.rows, info.bytes_per_row)

    def plain(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor ``name`` of an unquantized type (F32/F16/BF16/F64/I8/I16/I32/I64) in its shape.

        Returned as a view of the file map when possible (copy-on-write), converted to ``dtype``
        if given. Quantized types raise ValueError: use the dequantizer on :meth:`packed` instead.
        """
        info = self._info(name)
        torch_dtype = _plain_torch_dtype(info.qtype)
        if torch_dtype is None:
            raise ValueError(
                f"{self.path}: tensor {name!r} is {info.qtype.name}, which is quantized; "
                f"plain() supports {sorted(t.name for t in _plain_types())}"
            )
        flat = self._file_bytes()[info.offset : info.offset + info.nbytes]
        itemsize = torch.empty((), dtype=torch_dtype).element_size()
        if info.offset % itemsize:
            flat = flat.clone()  # misaligned: a dtype view needs an aligned storage offset
        out = flat.view(torch_dtype).view(info.shape)
        return out if dtype is None else out.to(dtype)


def _gguf_types():
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading GGUF files needs the gguf package: pip install 'gguf>=0.10'") from e
    return gguf


def _plain_types():
    T = _gguf_types().GGMLQuantizationType
    return {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16, T.F64: torch.float64,
            T.I8: torch.int8, T.I16: torch.int16, T.I32: torch.int32, T.I64: torch.int64}


def _plain_torch_dtype(qtype) -> torch.dtype | None:
    return _plain_types().get(qtype)


class _Cursor:
    """Bounds-checked little-endian reader over a byte buffer."""

    def __init__(self, buf, size: int, path: str):
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def fail(self, msg: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.path}: {msg}")

    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"file truncated while reading {what}: needs {n} bytes at offset {self.pos}, "
                f"file has {self.size} bytes"
            )

    def unpack(self, fmt: str, size: int, what: str):
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def string(self, what: str) -> str:
        n = self.u64(f"{what} length")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at offset {self.pos - n} is not valid UTF-8") from None

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n


def _read_value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> Any:
    if vtype in _SCALAR_TYPES:
        fmt, size = _SCALAR_TYPES[vtype]
        return cur.unpack(fmt, size, f"value of {key!r}")
    if vtype == _STRING:
        return cur.string(f"string value of {key!r}")
    if vtype == _ARRAY:
        if depth > 0:
            raise cur.fail(f"metadata {key!r}: nested arrays are not supported")
        item_type = cur.u32(f"array item type of {key!r}")
        count = cur.u64(f"array length of {key!r}")
        if item_type in _SCALAR_TYPES:
            item_size = _SCALAR_TYPES[item_type][1]
        elif item_type == _STRING:
            item_size = 8  # every string has at least its u64 length
        else:
            raise cur.fail(f"metadata {key!r}: array item type {item_type} is not a GGUF scalar or string type")
        if count * item_size > cur.remaining():
            raise cur.fail(
                f"metadata {key!r}: array of {count} items cannot fit in the {cur.remaining()} bytes left"
            )
        if count > SMALL_ARRAY_LIMIT:
            if item_type == _STRING:
                for _ in range(count):
                    cur.skip(cur.u64(f"string length in array {key!r}"), f"string in array {key!r}")
            else:
                cur.skip(count * item_size, f"array {key!r}")
            return GGUFLargeArray(item_type, count)
        return [_read_value(cur, item_type, key, depth + 1) for _ in range(count)]
    raise cur.fail(f"metadata {key!r}: unknown value type id {vtype} (allowed 0-12)")


def read_gguf(path: str | os.PathLike) -> GGUFCheckpoint:
    """Parse and validate the GGUF file at ``path``; tensor data is not read.

    Raises GGUFFormatError (a ValueError) naming the file and the problem for any malformed input.
    """
    path = os.fspath(path)
    gguf = _gguf_types()
    QT, sizes = gguf.GGMLQuantizationType, gguf.GGML_QUANT_SIZES
    file_size = os.path.getsize(path)
    if file_size < 24:
        raise GGUFFormatError(f"{path}: file is {file_size} bytes, too small for a GGUF header (24 bytes)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        cur = _Cursor(mm, file_size, path)
        magic = bytes(mm[0:4])
        if magic != GGUF_MAGIC:
            raise GGUFFormatError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        cur.pos = 4
        version = cur.u32("version")
        if version not in SUPPORTED_VERSIONS:
            swapped = struct.unpack("<I", struct.pack(">I", version))[0]
            hint = " (looks big-endian, which is not supported)" if swapped in SUPPORTED_VERSIONS else ""
            raise GGUFFormatError(f"{path}: GGUF version {version} is not supported{hint}; supported: {SUPPORTED_VERSIONS}")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        if n_kv * _MIN_KV_BYTES > cur.remaining():
            raise cur.fail(f"metadata count {n_kv} cannot fit in a file of {file_size} bytes")
        if n_tensors * _MIN_TENSOR_INFO_BYTES > cur.remaining():
            raise cur.fail(f"tensor count {n_tensors} cannot fit in a file of {file_size} bytes")

        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string("metadata key")
            vtype = cur.u32(f"value type of {key!r}")
            if key in metadata:
                raise cur.fail(f"metadata key {key!r} appears twice")
            metadata[key] = _read_value(cur, vtype, key)

        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment & (alignment - 1):
            raise cur.fail(f"general.alignment is {alignment!r}; it must be a positive power of two")

        raw: list[tuple[str, tuple[int, ...], Any, int, int]] = []
        seen: set[str] = set()
        for _ in range(n_tensors):
            name = cur.string("tensor name")
            if name in seen:
                raise cur.fail(f"tensor name {name!r} appears twice")
            seen.add(name)
            n_dims = cur.u32(f"n_dims of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.fail(f"tensor {name!r} has n_dims={n_dims}; allowed 1..{MAX_DIMS}")
            ne = [cur.u64(f"dims of tensor {name!r}") for _ in range(n_dims)]
            if any(d <= 0 or d > file_size * 256 for d in ne):
                raise cur.fail(f"tensor {name!r} has dims {ne}; each must be >= 1 and fit the file")
            type_id = cur.u32(f"type of tensor {name!r}")
            try:
                qtype = QT(type_id)
                block_elems, block_bytes = sizes[qtype]
            except (ValueError, KeyError):
                raise cur.fail(f"tensor {name!r} has unknown quantization type id {type_id}") from None
            rel_offset = cur.u64(f"data offset of tensor {name!r}")
            if ne[0] % block_elems:
                raise cur.fail(
                    f"tensor {name!r} ({qtype.name}) has row length {ne[0]}, not a multiple of its block size {block_elems}"
                )
            n_elems = 1
            for d in ne:
                n_elems *= d
            nbytes = n_elems // block_elems * block_bytes
            if rel_offset % alignment:
                raise cur.fail(f"tensor {name!r} data offset {rel_offset} is not a multiple of the alignment {alignment}")
            raw.append((name, tuple(reversed(ne)), qtype, nbytes, rel_offset))

        data_offset = -(-cur.pos // alignment) * alignment
        tensors: dict[str, GGUFTensorInfo] = {}
        for name, shape, qtype, nbytes, rel in raw:
            start = data_offset + rel
            if start + nbytes > file_size:
                raise GGUFFormatError(
                    f"{path}: tensor {name!r} data [{start}, {start + nbytes}) runs past the end of the file ({file_size} bytes)"
                )
            tensors[name] = GGUFTensorInfo(name, shape, qtype, nbytes, start)
        _check_no_overlap(path, tensors)

    arch = metadata.get("general.architecture")
    return GGUFCheckpoint(
        path=path, version=version, architecture=arch if isinstance(arch, str) else None,
        metadata=metadata, tensors=tensors, alignment=alignment, data_offset=data_offset, file_size=file_size,
    )


def _check_no_overlap(path: str, tensors: dict[str, GGUFTensorInfo]) -> None:
    ordered = sorted(tensors.values(), key=lambda t: t.offset)
    for prev, nxt in zip(ordered, ordered[1:]):
        if nxt.offset < prev.offset + prev.nbytes:
            raise GGUFFormatError(
                f"{path}: data of tensors {prev.name!r} and {nxt.name!r} overlap "
                f"(offsets {prev.offset}+{prev.nbytes} and {nxt.offset})"
            )
