"""GGUF reader: valid files round-trip; every malformed variant of a valid file is a clear error."""

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from gguf_fixtures import patched, quantize_array, tensor_info_offsets, write_gguf  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402

from quantomni.formats.gguf_file import GGUFFormatError, GGUFLargeArray, read_gguf  # noqa: E402


@pytest.fixture()
def sample(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {
        "a.weight": torch.randn(8, 64, generator=g),
        "a.bias": torch.randn(8, generator=g),
        "b.weight": torch.randn(4, 3, 32, generator=g),
        "c.weight": torch.randn(2, 256, generator=g),
    }
    qtypes = {"a.weight": QT.Q8_0, "a.bias": QT.F32, "b.weight": QT.F16, "c.weight": QT.Q4_K}
    path = tmp_path / "m.gguf"
    write_gguf(path, sd, arch="flux", qtype_policy=lambda n, t: qtypes[n],
               metadata={"test.note": "hello", "test.small": [1, 2, 3], "test.big": list(range(2000))})
    return path, sd, qtypes


def test_valid_file_roundtrip(sample):
    path, sd, qtypes = sample
    ck = read_gguf(path)
    assert ck.architecture == "flux"
    assert ck.metadata["test.note"] == "hello" and ck.metadata["test.small"] == [1, 2, 3]
    assert isinstance(ck.metadata["test.big"], GGUFLargeArray) and ck.metadata["test.big"].count == 2000
    assert set(ck.tensors) == set(sd)
    for name, t in sd.items():
        info = ck.tensors[name]
        assert info.shape == tuple(t.shape) and info.qtype == qtypes[name]
    torch.testing.assert_close(ck.plain("a.bias"), sd["a.bias"], rtol=0, atol=0)
    torch.testing.assert_close(ck.plain("b.weight", torch.float32), sd["b.weight"].half().float(), rtol=0, atol=0)
    packed = ck.packed("a.weight")
    assert packed.dtype == torch.uint8 and packed.shape == (8, 2 * 34)
    assert np.array_equal(packed.numpy(), quantize_array(sd["a.weight"].numpy(), QT.Q8_0))
    assert ck.packed("c.weight").shape == (2, 144)
    # zero-copy: all tensors are views of one file mapping
    assert ck.packed("c.weight").untyped_storage().data_ptr() == packed.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="quantized"):
        ck.plain("a.weight")
    with pytest.raises(KeyError, match="nope"):
        ck.packed("nope")


def _write(tmp_path, data: bytes, name="bad.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _expect(tmp_path, data, match):
    p = _write(tmp_path, data)
    with pytest.raises(GGUFFormatError, match=match) as ei:
        read_gguf(p)
    assert str(p) in str(ei.value)
    return ei.value


def test_truncated_everywhere(sample, tmp_path):
    data = sample[0].read_bytes()
    ck = read_gguf(sample[0])
    cut_points = [0, 3, 10, 23, 30, 200, ck.data_offset - 40, ck.data_offset + 10, len(data) - 1]
    for cut in cut_points:
        _expect(tmp_path, data[:cut], "truncated|too small|past the end")


def test_wrong_magic_and_version(sample, tmp_path):
    data = sample[0].read_bytes()
    _expect(tmp_path, b"GGML" + data[4:], "not a GGUF file")
    _expect(tmp_path, patched(data, 4, "<I", 1), "version 1 is not supported")
    _expect(tmp_path, patched(data, 4, ">I", 3), "big-endian")


def test_absurd_counts_do_not_allocate(sample, tmp_path):
    data = sample[0].read_bytes()
    _expect(tmp_path, patched(data, 8, "<Q", 2**40), "tensor count 1099511627776 cannot fit")
    _expect(tmp_path, patched(data, 16, "<Q", 2**62), "metadata count .* cannot fit")
    big = data.index(b"test.big") + len(b"test.big") + 4 + 4  # key, value type, item type
    _expect(tmp_path, patched(data, big, "<Q", 2**50), "array of .* items cannot fit")


def test_bad_tensor_records(sample, tmp_path):
    data = sample[0].read_bytes()
    off = tensor_info_offsets(data, "a.weight", 2)
    _expect(tmp_path, patched(data, off["type"], "<I", 999), "'a.weight' has unknown quantization type id 999")
    _expect(tmp_path, patched(data, off["offset"], "<Q", 2**20), "'a.weight' data .* past the end")
    _expect(tmp_path, patched(data, off["offset"], "<Q", 7), "not a multiple of the alignment")
    _expect(tmp_path, patched(data, off["n_dims"], "<I", 5), "n_dims=5")
    _expect(tmp_path, patched(data, off["ne"], "<Q", 0), "dims")
    _expect(tmp_path, patched(data, off["ne"], "<Q", 48), "not a multiple of its block size 32")
    # point a.bias at a.weight's data: overlap
    bias = tensor_info_offsets(data, "a.bias", 1)
    w_rel = struct.unpack_from("<Q", data, off["offset"])[0]
    _expect(tmp_path, patched(data, bias["offset"], "<Q", w_rel), "overlap")


def test_duplicate_tensor_name(tmp_path):
    path = tmp_path / "dup.gguf"
    write_gguf(path, {"x.weight": torch.ones(4, 32), "y.weight": torch.ones(4, 32)})
    data = path.read_bytes().replace(b"y.weight", b"x.weight")
    _expect(tmp_path, data, "'x.weight' appears twice")


def test_wrapper_tensor_shape_order(tmp_path):
    path = tmp_path / "s.gguf"
    write_gguf(path, {"t": torch.arange(24, dtype=torch.float32).view(2, 3, 4)})
    ck = read_gguf(path)
    assert ck.tensors["t"].shape == (2, 3, 4)
    assert ck.packed("t").shape == (6, 16)
    assert torch.equal(ck.plain("t"), torch.arange(24, dtype=torch.float32).view(2, 3, 4))


def test_hostile_metadata(sample, tmp_path):
    data = sample[0].read_bytes()
    key = b"test.note"
    klen = data.index(key) - 8  # u64 length before the key
    _expect(tmp_path, patched(data, klen, "<Q", 2**60), "truncated while reading metadata key")
    vtype = data.index(key) + len(key)
    _expect(tmp_path, patched(data, vtype, "<I", 77), "'test.note': unknown value type id 77")
    _expect(tmp_path, patched(data, vtype + 4, "<Q", 2**61), "truncated while reading string value of 'test.note'")


def test_integer_tensor_plain(tmp_path):
    import gguf

    path = tmp_path / "ints.gguf"
    w = gguf.GGUFWriter(str(path), "flux")
    w.add_tensor("ids", np.arange(-6, 6, dtype=np.int32).reshape(3, 4))
    w.add_tensor("small", np.arange(-3, 5, dtype=np.int8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ck = read_gguf(path)
    assert ck.tensors["ids"].qtype == QT.I32 and ck.tensors["small"].qtype == QT.I8
    assert torch.equal(ck.plain("ids"), torch.arange(-6, 6, dtype=torch.int32).view(3, 4))
    assert torch.equal(ck.plain("small", torch.float32), torch.arange(-3, 5, dtype=torch.float32))


def test_random_corruption_is_rejected_cleanly(tmp_path):
    """Flip bytes/words anywhere in the header, metadata and tensor directory: every outcome is either
    a valid directory whose tensors lie inside the file, or a GGUFFormatError - never anything else."""
    src = tmp_path / "small.gguf"
    g = torch.Generator().manual_seed(0)
    write_gguf(src, {"w": torch.randn(4, 64, generator=g), "b": torch.randn(4, generator=g),
                     "k": torch.randn(2, 256, generator=g)},
               qtype_policy=lambda n, t: {"w": QT.Q8_0, "b": QT.F32, "k": QT.Q4_K}[n],
               metadata={"test.note": "hi", "test.list": [1, 2, 3]})
    data = src.read_bytes()
    head = read_gguf(src).data_offset
    rng = np.random.default_rng(1234)
    outcomes = {"ok": 0, "error": 0}
    for i in range(300):
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, head))
            if rng.random() < 0.5:
                buf[pos] = int(rng.integers(0, 256))
            else:
                word = [0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1][int(rng.integers(0, 6))]
                pos = min(pos, len(buf) - 8)
                struct.pack_into("<Q", buf, pos, word)
        p = tmp_path / f"fuzz{i}.gguf"
        p.write_bytes(bytes(buf))
        try:
            ck = read_gguf(p)
        except GGUFFormatError:
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        for name, info in ck.tensors.items():
            assert 0 <= info.offset and info.offset + info.nbytes <= len(buf)
            assert ck.packed(name).numel() == info.nbytes
    assert outcomes["error"] > 100, outcomes
