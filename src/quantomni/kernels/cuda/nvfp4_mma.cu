// NVFP4 W4A16 kernels for GPUs without FP4 tensor cores (sm_80+; tuned on sm_90).
//
// Weights come in the load-time layout of nvfp4_mma_layout.py (its docstring is the
// specification; the QO_* macros are generated from it and prepended by the loader).
// Compiled at run time with NVRTC; no headers are included.
//
//   qo_nvfp4_gemv    out[M, N] = x[M, K] @ W^T (M <= 16): weights decoded in registers straight
//                    into mma.sync.m16n8k16 A fragments (the 16-row operand; tokens are the
//                    8-column one; bf16, fp32 accumulation); K split over
//                    the warps of a block (shared-memory reduction) and over blocks (fp32 atomics
//                    into a zeroed workspace; the last block of a tile applies the epilogue and
//                    zeroes the workspace and its counter again).
//   qo_nvfp4_moe_gemv  MoE experts on rows grouped by expert (decode), no host sync.
//   qo_nvfp4_dequant W[N, K] bf16, for cuBLAS at larger M (one global scale, or one per row).

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

__device__ __forceinline__ u32 qo_rotr(u32 v, int d) { return d ? ((v >> d) | (v << (32 - d))) : v; }

__device__ __forceinline__ void qo_ld_nc_v4(const void* p, u32& a, u32& b, u32& c, u32& d) {
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(a), "=r"(b), "=r"(c), "=r"(d) : "l"(p));
}

__device__ __forceinline__ void qo_ld_v4(const void* p, u32& a, u32& b, u32& c, u32& d) {
  asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(a), "=r"(b), "=r"(c), "=r"(d) : "l"(p));
}

__device__ __forceinline__ void qo_st_shared_v4(u32* p, u32 a, u32 b, u32 c, u32 d) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" :: "r"((u32)__cvta_generic_to_shared(p)), "r"(a), "r"(b),
               "r"(c), "r"(d) : "memory");
}

__device__ __forceinline__ void qo_ld_shared_v4(const u32* p, u32& a, u32& b, u32& c, u32& d) {
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(a), "=r"(b), "=r"(c), "=r"(d)
               : "r"((u32)__cvta_generic_to_shared(p)) : "memory");
}

__device__ __forceinline__ u32 qo_ld_nc_u16(const void* p) {
  unsigned short v;
  asm("ld.global.nc.L1::no_allocate.u16 %0, [%1];" : "=h"(v) : "l"(p));
  return (u32)v;
}

__device__ __forceinline__ void qo_st_v4(void* p, u32 a, u32 b, u32 c, u32 d) {
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" :: "l"(p), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}

// bf16 pair (s, s) * 2**118 from byte `sel` (0 or 1) of a two-byte scale word
__device__ __forceinline__ u32 qo_scale_pair(u32 sc, u32 sel) {
  u32 t;
  asm("prmt.b32 %0, %1, 0, %2;" : "=r"(t) : "r"(sc), "r"(sel));
  return t * 16u + (QO_SCALE_OFFSET | (QO_SCALE_OFFSET << 16));
}

__device__ __forceinline__ u32 qo_bf16x2_mul(u32 a, u32 b) {
  u32 d;
  const u32 neg_zero = 0x80008000u;  // a * b + (-0) == a * b, signed zeros kept
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(neg_zero));
  return d;
}

// One word of the layout -> the four bf16-pair registers of an A fragment, block scales applied:
// a0 = row g codes 0-1, a1 = row g+8 codes 0-1, a2 = row g codes 2-3, a3 = row g+8 codes 2-3.
__device__ __forceinline__ void qo_decode(u32 v, u32 s_lo, u32 s_hi, u32& a0, u32& a1, u32& a2, u32& a3) {
  a0 = qo_bf16x2_mul(QO_REG0(v), s_lo);
  a1 = qo_bf16x2_mul(QO_REG1(v), s_hi);
  a2 = qo_bf16x2_mul(QO_REG2(v), s_lo);
  a3 = qo_bf16x2_mul(QO_REG3(v), s_hi);
}

__device__ __forceinline__ void qo_mma(float& c0, float& c1, float& c2, float& c3, u32 a0, u32 a1, u32 a2, u32 a3,
                                       u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 qo_pack_bf16x2(float lo, float hi) {
  u32 d;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  return d;
}

__device__ __forceinline__ float qo_bf16_lo(u32 v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float qo_bf16_hi(u32 v) { return __uint_as_float(v & 0xFFFF0000u); }

// ---------------------------------------------------------------------------------------------
// The K loop of one block on one 16-row tile: steps [j0, j1) split over the block's warps, then
// summed in shared memory.  wtile / stile: the tile's first step; x: M <= 16 activation rows.
// Returns true in warp 0, which then holds the block's sums in acc[0 .. NACC); other warps return
// false and must exit.  acc[4 * tile + r]: row g + 8 * (r / 2) of the tile, token 8 * tile + 2 c + r % 2.
template <int WARPS, int UNROLL, bool M16>
__device__ __forceinline__ bool qo_gemv_tile(const u32* __restrict__ wtile, const u16* __restrict__ stile,
                                             const u16* __restrict__ x, int M, int K, int j0, int j1, float* acc) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const bool tok_lo = g < M;
  const bool tok_hi = M16 && (g + 8 < M);
  const u32* wbase = wtile + lane * 4;
  const u16* sbase = stile + lane;
  const u16* xlo = x + (size_t)(tok_lo ? g : 0) * K + c * 16;
  const u16* xhi = x + (size_t)(tok_hi ? g + 8 : 0) * K + c * 16;
#pragma unroll
  for (int q = 0; q < 8; ++q) acc[q] = 0.f;

  // Each iteration issues every load of its UNROLL steps (weights, scales, activations) before
  // any math, so one DRAM latency covers them all.
  for (int j = j0 + warp; j < j1; j += WARPS * UNROLL) {
    u32 wv[UNROLL][4], sv[UNROLL], xa[UNROLL][8], xb[UNROLL][8];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int jj = j + u * WARPS;
#pragma unroll
      for (int q = 0; q < 8; ++q) xa[u][q] = xb[u][q] = 0u;
      wv[u][0] = wv[u][1] = wv[u][2] = wv[u][3] = 0u;
      sv[u] = 0u;
      if (jj < j1) {
        qo_ld_nc_v4(wbase + (size_t)jj * 128, wv[u][0], wv[u][1], wv[u][2], wv[u][3]);
        sv[u] = qo_ld_nc_u16(sbase + (size_t)jj * 32);
        if (tok_lo) {
          const u16* p = xlo + (size_t)jj * 64;
          qo_ld_v4(p, xa[u][0], xa[u][1], xa[u][2], xa[u][3]);
          qo_ld_v4(p + 8, xa[u][4], xa[u][5], xa[u][6], xa[u][7]);
        }
        if (tok_hi) {
          const u16* p = xhi + (size_t)jj * 64;
          qo_ld_v4(p, xb[u][0], xb[u][1], xb[u][2], xb[u][3]);
          qo_ld_v4(p + 8, xb[u][4], xb[u][5], xb[u][6], xb[u][7]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      if (j + u * WARPS >= j1) break;  // uniform over the warp
      const u32 s_lo = qo_scale_pair(sv[u], 0x4040u);  // row g
      const u32 s_hi = qo_scale_pair(sv[u], 0x4141u);  // row g + 8
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        u32 a0, a1, a2, a3;
        qo_decode(wv[u][i], s_lo, s_hi, a0, a1, a2, a3);
        qo_mma(acc[0], acc[1], acc[2], acc[3], a0, a1, a2, a3, xa[u][2 * i], xa[u][2 * i + 1]);
        if (M16) qo_mma(acc[4], acc[5], acc[6], acc[7], a0, a1, a2, a3, xb[u][2 * i], xb[u][2 * i + 1]);
      }
    }
  }

  constexpr int NACC = M16 ? 8 : 4;
  if (WARPS > 1) {
    __shared__ float red[WARPS > 1 ? WARPS - 1 : 1][NACC][32];
    if (warp > 0) {
#pragma unroll
      for (int q = 0; q < NACC; ++q) red[warp - 1][q][lane] = acc[q];
    }
    __syncthreads();
    if (warp > 0) return false;
#pragma unroll
    for (int w = 0; w < WARPS - 1; ++w) {
#pragma unroll
      for (int q = 0; q < NACC; ++q) acc[q] += red[w][q][lane];
    }
  }
  return true;
}

// Split K: called by warp 0 of every block of a tile after it added its partial sums; true in
// the last block to arrive, which then reads the sums back (and zeroes them and the counter).
__device__ __forceinline__ bool qo_split_last(int* counters, int t) {
  const int lane = threadIdx.x & 31;
  __threadfence();
  __syncwarp();
  int last = 0;
  if (lane == 0) last = atomicAdd(counters + t, 1) == (int)gridDim.y - 1;
  last = __shfl_sync(0xFFFFFFFFu, last, 0);
  if (last) __threadfence();
  return last;
}

// ---------------------------------------------------------------------------------------------
// GEMV / small-M GEMM.  grid = (N / 16, splits), block = WARPS * 32.
//   wq  [N/16][K/64][32][4] u32   sc [N/16][K/64][32] u16   x [M][K] bf16 (16-byte aligned rows)
//   out [M][N] bf16   ws [M][N] f32 (zero; splits > 1)   counters [N/16] int (zero; splits > 1)
// MMA A = decoded weights (16 rows), B = activations (8 tokens; M16: a second MMA for tokens 8-15).
// chunk: K steps per split.
template <int WARPS, int UNROLL, bool M16>
__global__ void __launch_bounds__(WARPS * 32) qo_nvfp4_gemv(
    const u32* __restrict__ wq, const u16* __restrict__ sc, const u16* __restrict__ x,
    const float* __restrict__ gscale, const u16* __restrict__ bias, u16* __restrict__ out, float* ws,
    int* counters, int M, int N, int K, int chunk, int has_bias) {
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const int t = blockIdx.x;
  const int steps = K >> 6;
  const int j0 = blockIdx.y * chunk;
  const int j1 = j0 + chunk < steps ? j0 + chunk : steps;
  constexpr int NACC = M16 ? 8 : 4;
  float acc[8];
  if (!qo_gemv_tile<WARPS, UNROLL, M16>(wq + (size_t)t * steps * 128, sc + (size_t)t * steps * 32, x, M, K, j0, j1,
                                        acc))
    return;

  int row[NACC], tok[NACC];
  bool ok[NACC];
#pragma unroll
  for (int q = 0; q < NACC; ++q) {
    row[q] = t * 16 + g + 8 * ((q & 3) >> 1);
    tok[q] = 8 * (q >> 2) + 2 * c + (q & 1);
    ok[q] = tok[q] < M;
  }
  if (gridDim.y > 1) {
#pragma unroll
    for (int q = 0; q < NACC; ++q)
      if (ok[q]) atomicAdd(ws + (size_t)tok[q] * N + row[q], acc[q]);
    if (!qo_split_last(counters, t)) return;
#pragma unroll
    for (int q = 0; q < NACC; ++q)
      if (ok[q]) acc[q] = atomicExch(ws + (size_t)tok[q] * N + row[q], 0.f);
    if (lane == 0) counters[t] = 0;
  }

  const float gs = gscale[0] * 256.f;
#pragma unroll
  for (int q = 0; q < NACC; ++q) {
    if (!ok[q]) continue;
    float v = acc[q] * gs;
    if (has_bias) v += qo_bf16_lo((u32)bias[row[q]]);
    out[(size_t)tok[q] * N + row[q]] = (u16)(qo_pack_bf16x2(v, 0.f) & 0xFFFFu);
  }
}

// ---------------------------------------------------------------------------------------------
// GEMM for 16 < M <= 64 (the GEMV's loop over row chunks; a separate kernel, so that the M <= 16
// GEMV keeps its code).  grid = (N / 16, splits), block = WARPS * 32.
//   wq  [N/16][K/64][32][4] u32   sc [N/16][K/64][32] u16   x [M][K] bf16 (16-byte aligned rows)
//   out [M][N] bf16   ws [M][N] f32 (zero; splits > 1)   counters [N/16] int (zero; splits > 1)
// MMA A = decoded weights (16 rows), B = activations (8 tokens; M16: a second MMA for tokens 8-15).
// Rows are taken 8 (16 with M16) at a time; later chunks re-read the block's weights, mostly from
// L2.  chunk: K steps per split.
template <int WARPS, int UNROLL>
__global__ void __launch_bounds__(WARPS * 32) qo_nvfp4_gemv_rows(
    const u32* __restrict__ wq, const u16* __restrict__ sc, const u16* __restrict__ x,
    const float* __restrict__ gscale, const u16* __restrict__ bias, u16* __restrict__ out, float* ws,
    int* counters, int M, int N, int K, int chunk, int has_bias) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int t = blockIdx.x;
  const int steps = K >> 6;
  const int j0 = blockIdx.y * chunk;
  const int j1 = j0 + chunk < steps ? j0 + chunk : steps;
  const bool split = gridDim.y > 1;
  constexpr bool M16 = true;
  constexpr int ROWS_PER = 16;
  constexpr int NACC = 8;
  const float gs = gscale[0] * 256.f;
  for (int row0 = 0; row0 < M; row0 += ROWS_PER) {
    const int m = M - row0 < ROWS_PER ? M - row0 : ROWS_PER;
    float acc[8];
    if (qo_gemv_tile<WARPS, UNROLL, M16>(wq + (size_t)t * steps * 128, sc + (size_t)t * steps * 32,
                                         x + (size_t)row0 * K, m, K, j0, j1, acc)) {
#pragma unroll
      for (int q = 0; q < NACC; ++q) {
        const int row = t * 16 + g + 8 * ((q & 3) >> 1);
        const int tok = 8 * (q >> 2) + 2 * c + (q & 1);
        if (tok >= m) continue;
        const size_t at = (size_t)(row0 + tok) * N + row;
        if (split) {
          atomicAdd(ws + at, acc[q]);
        } else {
          float v = acc[q] * gs;
          if (has_bias) v += qo_bf16_lo((u32)bias[row]);
          out[at] = (u16)(qo_pack_bf16x2(v, 0.f) & 0xFFFFu);
        }
      }
    }
    if (WARPS > 1) __syncthreads();  // the reduction buffer is reused by the next chunk
  }
  if (!split || warp > 0) return;
  if (!qo_split_last(counters, t)) return;
  for (int row0 = 0; row0 < M; row0 += ROWS_PER) {
#pragma unroll
    for (int q = 0; q < NACC; ++q) {
      const int row = t * 16 + g + 8 * ((q & 3) >> 1);
      const int tok = row0 + 8 * (q >> 2) + 2 * c + (q & 1);
      if (tok >= M || tok - row0 >= ROWS_PER) continue;
      const size_t at = (size_t)tok * N + row;
      float v = atomicExch(ws + at, 0.f) * gs;
      if (has_bias) v += qo_bf16_lo((u32)bias[row]);
      out[at] = (u16)(qo_pack_bf16x2(v, 0.f) & 0xFFFFu);
    }
  }
  if (lane == 0) counters[t] = 0;
}

// ---------------------------------------------------------------------------------------------
// MoE experts on rows grouped by expert, with no host sync: block (t, y) works only if row y is
// the first row of its expert's group, and then runs that expert on all the group's rows, 8 (or
// 16, M16) at a time.  grid = (N / 16, R), block = WARPS * 32.
//   wq [E][N/16][K/64][32][4] u32   sc [E][N/16][K/64][32] u16   gscale [E][N] f32 (per row)
//   expert_of [R] int (sorted; >= E: a dropped slot)   offs [E + 1] int (group starts)
//   x [R][K] bf16   out [R][N] bf16 (rows of dropped slots are not written)
template <int WARPS, int UNROLL, bool M16>
__global__ void __launch_bounds__(WARPS * 32) qo_nvfp4_moe_gemv(
    const u32* __restrict__ wq, const u16* __restrict__ sc, const u16* __restrict__ x,
    const float* __restrict__ gscale, const int* __restrict__ expert_of, const int* __restrict__ offs,
    u16* __restrict__ out, int E, int N, int K) {
  const int y = blockIdx.y;
  const int expert = expert_of[y];
  if (expert >= E || (y > 0 && expert_of[y - 1] == expert)) return;  // uniform over the block
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3;
  const int t = blockIdx.x;
  const int steps = K >> 6;
  const int r1 = offs[expert + 1];
  const size_t tile = (size_t)expert * (size_t)(N >> 4) + t;
  constexpr int CHUNK = M16 ? 16 : 8;
  constexpr int NACC = M16 ? 8 : 4;
  for (int row0 = y; row0 < r1; row0 += CHUNK) {
    const int M = r1 - row0 < CHUNK ? r1 - row0 : CHUNK;
    float acc[8];
    if (qo_gemv_tile<WARPS, UNROLL, M16>(wq + tile * steps * 128, sc + tile * steps * 32, x + (size_t)row0 * K, M, K,
                                         0, steps, acc)) {
#pragma unroll
      for (int q = 0; q < NACC; ++q) {
        const int row = t * 16 + g + 8 * ((q & 3) >> 1);
        const int tok = 8 * (q >> 2) + 2 * c + (q & 1);
        if (tok >= M) continue;
        const float v = acc[q] * (gscale[(size_t)expert * N + row] * 256.f);
        out[(size_t)(row0 + tok) * N + row] = (u16)(qo_pack_bf16x2(v, 0.f) & 0xFFFFu);
      }
    }
    if (WARPS > 1) __syncthreads();  // the reduction buffer is reused by the next chunk
  }
}

// ---------------------------------------------------------------------------------------------
// Dequantize to bf16.  One thread per ITEMS (tile, step, lane) items, 256 apart: each is 16 packed
// bytes -> 2 rows x 16 bf16.  All loads are issued before any store.  A warp's 32 lanes are one
// (tile, step) item.  STAGED: stores go through shared memory.
// grid = ceil(N/16 * K/64 * 32 / (256 * ITEMS)), block = 256.  out [N][K] bf16.  gscale: one f32,
// or one per row (gs_per_row; stacked experts [E * N]).
template <int ITEMS, bool STAGED>
__global__ void __launch_bounds__(256) qo_nvfp4_dequant(
    const u32* __restrict__ wq, const u16* __restrict__ sc, const float* __restrict__ gscale,
    u16* __restrict__ out, int N, int K, int gs_per_row) {
  const int steps = K >> 6;
  const long long total = (long long)(N >> 4) * steps * 32;
  const long long first = (long long)blockIdx.x * 256 * ITEMS + threadIdx.x;
  u32 wv[ITEMS][4], sv[ITEMS];
  __shared__ __align__(16) u32 stage[STAGED ? 8 : 1][STAGED ? 16 * 36 : 4];  // 16 rows x (32 + 4 pad) words
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const long long idx = first + it * 256;
    if (idx < total) {
      qo_ld_nc_v4(wq + idx * 4, wv[it][0], wv[it][1], wv[it][2], wv[it][3]);
      sv[it] = qo_ld_nc_u16(sc + idx);
    }
  }
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const long long idx = first + it * 256;
    if (idx >= total) break;
    const int lane = (int)(idx & 31);
    const long long tj = idx >> 5;
    const int j = (int)(tj % steps);
    const long long t = tj / steps;
    const int g = lane >> 2, c = lane & 3;
    const float gs_lo = (gs_per_row ? gscale[t * 16 + g] : gscale[0]) * 256.f;
    const float gs_hi = (gs_per_row ? gscale[t * 16 + g + 8] : gscale[0]) * 256.f;
    const u32 s_lo = qo_scale_pair(sv[it], 0x4040u);
    const u32 s_hi = qo_scale_pair(sv[it], 0x4141u);
    u32 lo[8], hi[8];  // row g / row g + 8: 16 columns each, as bf16 pairs
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      qo_decode(wv[it][i], s_lo, s_hi, lo[2 * i], hi[2 * i], lo[2 * i + 1], hi[2 * i + 1]);
    }
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      lo[q] = qo_pack_bf16x2(qo_bf16_lo(lo[q]) * gs_lo, qo_bf16_hi(lo[q]) * gs_lo);
      hi[q] = qo_pack_bf16x2(qo_bf16_lo(hi[q]) * gs_hi, qo_bf16_hi(hi[q]) * gs_hi);
    }
    if (STAGED) {
      // through shared memory, so that each store instruction writes four whole 128-byte rows
      // (direct stores leave every 32-byte sector half-written by two instructions)
      const int warp = threadIdx.x >> 5;
      u32* tile = stage[warp];
      qo_st_shared_v4(tile + g * 36 + c * 8, lo[0], lo[1], lo[2], lo[3]);
      qo_st_shared_v4(tile + g * 36 + c * 8 + 4, lo[4], lo[5], lo[6], lo[7]);
      qo_st_shared_v4(tile + (g + 8) * 36 + c * 8, hi[0], hi[1], hi[2], hi[3]);
      qo_st_shared_v4(tile + (g + 8) * 36 + c * 8 + 4, hi[4], hi[5], hi[6], hi[7]);
      __syncwarp();
      // the warp's item: rows 16 t .. 16 t + 15, columns 64 j .. 64 j + 63
      u16* base = out + (size_t)(t * 16) * K + (size_t)j * 64;
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const int r = p * 4 + (lane >> 3), q = lane & 7;
        u32 a, b, cc, d;
        qo_ld_shared_v4(tile + r * 36 + q * 4, a, b, cc, d);
        qo_st_v4(base + (size_t)r * K + q * 8, a, b, cc, d);
      }
      __syncwarp();
    } else {
      u16* dst = out + (size_t)(t * 16 + g) * K + (size_t)j * 64 + c * 16;
      qo_st_v4(dst, lo[0], lo[1], lo[2], lo[3]);
      qo_st_v4(dst + 8, lo[4], lo[5], lo[6], lo[7]);
      dst += (size_t)8 * K;
      qo_st_v4(dst, hi[0], hi[1], hi[2], hi[3]);
      qo_st_v4(dst + 8, hi[4], hi[5], hi[6], hi[7]);
    }
  }
}
