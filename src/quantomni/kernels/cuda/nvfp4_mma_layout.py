"""The load-time NVFP4 layout of the CUDA ``nvfp4_mma`` kernels, and a torch emulation of their decode.

The kernels feed decoded weights straight into ``mma.sync.m16n8k16`` A fragments (weights are the
16-row operand, activations the 8-column one, so one MMA covers up to 8 tokens and a decoded word is
reused for tokens 9-16). To make the decode cheap, the packed codes are re-laid out once at load
time; the byte count does not change (4 bits per weight + 8 bits per block of 16), so weight memory
stays 0.28x BF16.

**Tiling.** ``N`` is cut into tiles of 16 rows, ``K`` into steps of 64. For tile ``t``, step ``j``
and lane ``l = 4 g + c`` of a warp, one 16-byte vector holds the 16 codes of rows ``16 t + g`` and
``16 t + g + 8`` at columns ``64 j + 16 c .. 64 j + 16 c + 15`` (one scale block per row): the warp
reads 512 contiguous bytes per step. Word ``i`` of the vector feeds MMA ``i`` of the step, whose
logical k ``2c, 2c+1`` are columns ``16 c + 4 i + 0, 1`` and logical k ``2c+8, 2c+9`` are
``16 c + 4 i + 2, 3``; the activation fragments follow the same K order, so the dot product is
unchanged. The word's four registers are the A fragment: ``a0a1`` = row g, codes 0-1; ``a2a3`` =
row g+8, codes 0-1; ``a4a5`` = row g, codes 2-3; ``a6a7`` = row g+8, codes 2-3.

**Bits.** Register ``r`` (0..3) of a word is a bf16 pair (codes ``2r``, ``2r+1``) with each code's
magnitude bits ``e1 e0 m`` at bf16 bits 8, 7, 6 and its sign at bit 15 (high half: 24, 23, 22, 31),
i.e. the bf16 value ``e2m1 * 2**-126`` (code 1, 0.5, is a bf16 subnormal). The kernel gets each
register with one rotate and one AND (two for register 3): ``REG_ROTATIONS`` below says, for each
target bit, which rotation brings it into place, and the word stores each bit at
``(target + rotation) % 32``. Three rotations (0, 4, 10) tile 24 bits; the remaining 8 cannot be
reached by one rotation (checked exhaustively), so register 3 takes two.

**Scales.** Two bytes per lane per step (a uint16: low byte for row g, high byte for row g+8), in
our own unsigned 5.3 format: ``u = (E + 9) << 3 | mmm`` for the value
``2**E * (1 + mmm / 8)``, E in [-9, 8]. Every finite E4M3 magnitude, subnormals included, is exact
in it, and ``u * 16 + 0x7600`` is the bf16 bit pattern of ``value * 2**118`` (one PRMT + one IMAD per
scale pair in the kernel). A negative block scale is folded into the codes' sign bits, a zero block
scale into zero codes; NaN scales are rejected.

The product ``(e2m1 * 2**-126) * (s * 2**118) = e2m1 * s * 2**-8`` is exact in bf16 (at most 6
significant bits, no underflow), so the kernels' weights equal the reference dequantization; the
``2**8`` and the per-tensor ``weight_scale_2`` are applied in float32 in the epilogue.
"""

from __future__ import annotations

import torch

ROWS = 16  # rows (N) per tile
STEP = 64  # K per step
#: bf16x2 positions of (m, e0, e1, sign) of the low and high halves
TARGET_BITS = ((6, 7, 8, 15), (22, 23, 24, 31))
MASK = sum(1 << b for half in TARGET_BITS for b in half)  # 0x81C081C0
#: register -> rotation (right) for each target bit; register 3 uses two rotations
REG_ROTATIONS = (
    {b: 0 for half in TARGET_BITS for b in half},
    {b: 4 for half in TARGET_BITS for b in half},
    {b: 10 for half in TARGET_BITS for b in half},
    {b: (14 if b in (6, 22) else 6) for half in TARGET_BITS for b in half},
)
#: scale code -> bf16 bits of value * 2**118
SCALE_BF16_OFFSET = (245 - 9) << 7  # 0x7600
SCALE_EXP_MIN, SCALE_EXP_MAX = -9, 8


def _stored_position(reg: int, target_bit: int) -> int:
    return (target_bit + REG_ROTATIONS[reg][target_bit]) % 32


def _check_tiling() -> None:
    seen = sorted(_stored_position(r, b) for r in range(4) for half in TARGET_BITS for b in half)
    if seen != list(range(32)):  # pragma: no cover - a constants edit gone wrong
        raise AssertionError(f"nvfp4_mma layout does not tile a 32-bit word: {seen}")


_check_tiling()


def register_masks(reg: int) -> list[tuple[int, int]]:
    """(rotation, AND mask) pairs whose OR decodes register ``reg`` from a word."""
    by_rot: dict[int, int] = {}
    for b, rot in REG_ROTATIONS[reg].items():
        by_rot[rot] = by_rot.get(rot, 0) | (1 << b)
    return sorted(by_rot.items())


def cuda_defines() -> str:
    """The constants above as C macros for the kernel source (one source of truth)."""
    lines = [f"#define QO_MASK 0x{MASK:08X}u", f"#define QO_SCALE_OFFSET 0x{SCALE_BF16_OFFSET:04X}u"]
    for reg in range(4):
        parts = register_masks(reg)
        terms = [f"(qo_rotr(v, {rot}) & 0x{mask:08X}u)" for rot, mask in parts]
        lines.append(f"#define QO_REG{reg}(v) ({' | '.join(terms)})")
    return "\n".join(lines) + "\n"


def supports_shape(n: int, k: int) -> tuple[bool, str]:
    if n % ROWS:
        return False, f"needs out_features divisible by {ROWS}, layer has {n}"
    if k % STEP:
        return False, f"needs in_features divisible by {STEP}, layer has {k}"
    return True, ""


def _scale_codes(scale_e4m3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u8 codes, negative mask, zero mask) of E4M3 block scales."""
    raw = scale_e4m3.view(torch.uint8)
    if bool(((raw & 0x7F) == 0x7F).any()):
        n_nan = int(((raw & 0x7F) == 0x7F).sum())
        raise ValueError(f"{n_nan} NaN E4M3 block scale(s) (0x7F/0xFF): NVFP4 weights cannot be decoded")
    value = scale_e4m3.float()
    mag = value.abs()
    zero = mag == 0
    mantissa, exponent = torch.frexp(torch.where(zero, torch.ones_like(mag), mag))  # mag = m * 2**e, m in [0.5, 1)
    e = exponent.to(torch.int32) - 1
    mmm = ((mantissa * 2 - 1) * 8).round().to(torch.int32)
    if bool(((e < SCALE_EXP_MIN) | (e > SCALE_EXP_MAX)).any()):  # pragma: no cover - E4M3 cannot produce it
        raise ValueError("E4M3 block scale outside the 5.3 scale code's range")
    code = ((e - SCALE_EXP_MIN) << 3) | mmm
    code = torch.where(zero, torch.zeros_like(code), code)
    return code.to(torch.uint8), value < 0, zero


def relayout(weight: torch.Tensor, weight_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored NVFP4 (uint8 [N, K/2], E4M3 [N, K/16]) -> (int32 [N/8, K/128, 32, 4], int16 [N/8, K/128, 32]).

    Runs on the tensors' device (a few elementwise passes over the weight, once at load)."""
    n, half_k = weight.shape
    k = half_k * 2
    ok, why = supports_shape(n, k)
    if not ok:
        raise ValueError(f"nvfp4_mma layout {why}")
    if tuple(weight_scale.shape) != (n, k // 16):
        raise ValueError(f"block scales must be [{n}, {k // 16}], got {list(weight_scale.shape)}")
    dev = weight.device
    codes = torch.stack((weight & 0xF, weight >> 4), dim=-1).reshape(n, k).to(torch.int32)
    scale_code, negative, zero = _scale_codes(weight_scale)
    block = lambda m: m.repeat_interleave(16, dim=1)  # noqa: E731 - [N, K/16] -> [N, K]
    codes = torch.where(block(zero), torch.zeros_like(codes), codes)  # 0 * anything = 0, exactly
    codes = codes ^ (block(negative).to(torch.int32) << 3)  # fold a negative scale into the signs
    # [N, K] -> [t, h, g, j, c, i, p] with row = 16t + 8h + g, col = 64j + 16c + 4i + p
    codes = codes.reshape(n // ROWS, 2, 8, k // STEP, 4, 4, 4)
    # register r of word i: (row half h, code pair q) = (r % 2, r // 2); its halves are p = 2q, 2q+1
    codes = codes.permute(0, 3, 2, 4, 5, 1, 6)  # [t, j, g, c, i, h, p]
    words = torch.zeros(codes.shape[:-2], dtype=torch.int64, device=dev)
    for reg in range(4):
        h, q = reg % 2, reg // 2
        for half, bits in enumerate(TARGET_BITS):
            code = codes[..., h, 2 * q + half].to(torch.int64)
            for src_bit, target in enumerate(bits):  # m, e0, e1, sign
                words |= ((code >> src_bit) & 1) << _stored_position(reg, target)
    words = words.reshape(n // ROWS, k // STEP, 32, 4)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    # scales: [N, K/16] -> [t, h, g, j, c] -> [t, j, g, c, h] uint16 (low byte: row g, high: row g+8)
    sc = scale_code.to(torch.int32).reshape(n // ROWS, 2, 8, k // STEP, 4).permute(0, 3, 2, 4, 1)
    sc = (sc[..., 0] | (sc[..., 1] << 8)).reshape(n // ROWS, k // STEP, 32)
    sc = torch.where(sc >= 2**15, sc - 2**16, sc).to(torch.int16)
    return words.contiguous(), sc.contiguous()


def _rotr(v: torch.Tensor, d: int) -> torch.Tensor:
    v = v & 0xFFFFFFFF
    return ((v >> d) | (v << (32 - d))) & 0xFFFFFFFF if d else v


def _bf16_bits_to_float(bits: torch.Tensor) -> torch.Tensor:
    b = (bits & 0xFFFF).to(torch.int32) << 16
    return b.view(torch.float32)


def emulate_dequantize(words: torch.Tensor, scales: torch.Tensor, weight_scale_2: torch.Tensor) -> torch.Tensor:
    """What the kernels compute, in torch integer/float ops: the float32 weight [N, K].

    Mirrors the CUDA decode instruction for instruction (rotations, masks, the scale code's bf16
    bits); tests compare it with the reference dequantization, exactly."""
    n_tiles, steps, _, _ = words.shape
    w = words.to(torch.int64) & 0xFFFFFFFF
    regs = []
    for reg in range(4):
        r = torch.zeros_like(w)
        for rot, mask in register_masks(reg):
            r |= _rotr(w, rot) & mask
        regs.append(r)
    s = scales.to(torch.int64) & 0xFFFF
    s_rows = (_bf16_bits_to_float((s & 0xFF) * 16 + SCALE_BF16_OFFSET),  # value * 2**118, row g
              _bf16_bits_to_float((s >> 8) * 16 + SCALE_BF16_OFFSET))  # row g + 8
    out = torch.empty(n_tiles, steps, 8, 4, 4, 2, 4, dtype=torch.float64)  # [t, j, g, c, i, h, p]
    for reg, r in enumerate(regs):
        h, q = reg % 2, reg // 2
        scale = s_rows[h].double().unsqueeze(-1)  # [t, j, lane, 1] broadcast over words
        for half in range(2):
            code = _bf16_bits_to_float(r >> (16 * half)).double()  # value * 2**-126
            prod = code * scale  # exact: e2m1 * s * 2**-8
            prod = prod.to(torch.bfloat16).double()  # the kernel's bf16 product: must not round
            out[..., h, 2 * q + half] = (prod * (float(weight_scale_2) * 256.0)).reshape(n_tiles, steps, 8, 4, 4)
    # [t, j, g, c, i, h, p] -> [t, h, g, j, c, i, p]
    out = out.permute(0, 5, 2, 1, 3, 4, 6)
    return out.reshape(n_tiles * ROWS, steps * STEP).float()
