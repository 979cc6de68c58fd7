// GGUF Q8_0 -> bf16 / fp16, for cuBLAS at large M.  Compiled at run time with NVRTC, no headers.
//
// A Q8_0 block is 34 bytes: an fp16 scale d, then 32 int8 codes; value = d * q, exact in fp32, rounded
// once to the output dtype (bit-identical to the torch dequantizer).  Blocks are only 2-byte aligned,
// so each warp moves 32 blocks (1088 bytes, 16-byte aligned) into shared memory with 16-byte loads,
// each lane decodes one block, and the 2048 output bytes leave through shared memory again, so that
// every store instruction writes 512 contiguous bytes.
//   grid = ceil(blocks / 256), block = 256 (8 warps x 32 Q8_0 blocks)

typedef unsigned int u32;
typedef unsigned short u16;

__device__ __forceinline__ u32 qo_smem(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ float qo_f16_to_f32(u16 h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

template <bool BF16>
__device__ __forceinline__ u32 qo_pack2(float lo, float hi) {
  u32 d;
  if (BF16) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  }
  return d;
}

template <bool BF16>
__global__ void __launch_bounds__(256) qo_q8_0_dequant(const unsigned char* __restrict__ w, u16* __restrict__ out,
                                                       long long nblocks) {
  __shared__ __align__(16) u32 in_s[8][272];        // 32 blocks x 34 bytes
  __shared__ __align__(16) u32 out_s[8][32 * 20];   // 32 blocks x 64 bytes, rows padded to 80 bytes
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const long long b0 = ((long long)blockIdx.x * 8 + warp) * 32;
  if (b0 >= nblocks) return;
  const int nb = nblocks - b0 < 32 ? (int)(nblocks - b0) : 32;
  const unsigned char* src = w + b0 * 34;
  if (nb == 32) {
    for (int v = lane; v < 68; v += 32) {
      u32 a, b, c, d;
      asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(a), "=r"(b), "=r"(c), "=r"(d) : "l"(src + v * 16));
      asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" :: "r"(qo_smem(&in_s[warp][v * 4])), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
    }
  } else {  // the last warp of the tensor: 2-byte loads
    const u16* s16 = reinterpret_cast<const u16*>(src);
    u16* d16 = reinterpret_cast<u16*>(in_s[warp]);
    for (int i = lane; i < nb * 17; i += 32) d16[i] = s16[i];
  }
  __syncwarp();
  if (lane < nb) {
    const u16* blk = reinterpret_cast<const u16*>(in_s[warp]) + lane * 17;
    const float d = qo_f16_to_f32(blk[0]);
    u32 pairs[16];
#pragma unroll
    for (int p = 0; p < 16; ++p) {
      const u32 qq = blk[1 + p];
      const float q0 = (float)(int)(signed char)(qq & 0xFFu), q1 = (float)(int)(signed char)(qq >> 8);
      pairs[p] = qo_pack2<BF16>(d * q0, d * q1);
    }
    u32* dst = &out_s[warp][lane * 20];
#pragma unroll
    for (int q = 0; q < 4; ++q)
      asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" :: "r"(qo_smem(dst + q * 4)), "r"(pairs[4 * q]),
                   "r"(pairs[4 * q + 1]), "r"(pairs[4 * q + 2]), "r"(pairs[4 * q + 3]) : "memory");
  }
  __syncwarp();
  u16* dst = out + b0 * 32;
  for (int i = lane; i < nb * 4; i += 32) {  // 16-byte chunk i: block i / 4, quarter i % 4
    u32 a, b, c, d;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(a), "=r"(b), "=r"(c), "=r"(d)
                 : "r"(qo_smem(&out_s[warp][(i >> 2) * 20 + (i & 3) * 4])) : "memory");
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" :: "l"(dst + i * 8), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
  }
}
