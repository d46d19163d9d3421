/* The block-copy loops of _kernels.c, written once against the type macros
 *   PF_WORD   an unsigned integer type of the item size (elements move as opaque words, so one
 *             loop per item size serves every dtype)
 *   PF_BITS   its size in bits (unfold_<bits> is the exported entry point)
 * and included by _kernels.c once per item size (the numpy style of templating); the macros are
 * undefined again at the end of this file.
 *
 * unfold_<bits>(x, out, dims): copy block rows [dims->row_lo, dims->row_hi) of one item x
 * (C, *size), contiguous, into out, with zero padding applied on the fly (no padded copy of the
 * input). In 2-D (K = K0*K1, P = C*K0*K1, rs = dims->row_stride >= (hi-lo)*L1):
 *   ncl: out[((c*K0 + ki)*K1 + kj)*rs + (i - lo)*L1 + j]
 *   nlc: out[((i - lo)*L1 + j)*P + (c*K0 + ki)*K1 + kj]
 * value = x[c][ki*d0 + i*s0 - p0][kj*d1 + j*s1 - p1], or 0 outside the image.
 * Only kernel rows q = c*K0 + ki in [dims->q_lo, dims->q_hi) are written: for ncl these are
 * contiguous output rows, so threads given disjoint q ranges fill (and first touch) disjoint memory.
 *
 * The inner copies dispatch on the stride (ncl) or run length (nlc) so that common values are
 * compile-time constants: the compiler then vectorises the strided gather, or turns each run into
 * a few moves instead of a memcpy call; other values take the generic loop.
 *
 * The caller (patchfold.engines.compiled) checks every extent against the arrays before the call;
 * the asserts restate the preconditions for debug builds.
 */

#include "_kernels_transpose.h" /* transpose_<bits>, for the nlc loop that cuts ncl rows */
#include "_kernels_gather.h"    /* gather_cl_<bits>, apply's channels-last batches */

#define PF_U(name) PF_JOIN(name, PF_BITS)

/* dst[j] = src[j*step] for j < n; inlined into each case of the switch below, so there step is a
   compile-time constant */
static inline __attribute__((always_inline)) void PF_U(gather_step)(PF_WORD *restrict dst,
                                                                    const PF_WORD *restrict src,
                                                                    int64_t n, int64_t step) {
  for (int64_t j = 0; j < n; j++) dst[j] = src[j * step];
}

static inline void PF_U(gather)(PF_WORD *restrict dst, const PF_WORD *restrict src, int64_t n, int64_t step) {
  switch (step) {
    case 1: memcpy(dst, src, (size_t)n * sizeof(PF_WORD)); return;
    case 2: PF_U(gather_step)(dst, src, n, 2); return;
    case 3: PF_U(gather_step)(dst, src, n, 3); return;
    case 4: PF_U(gather_step)(dst, src, n, 4); return;
    case 6: PF_U(gather_step)(dst, src, n, 6); return;
    case 8: PF_U(gather_step)(dst, src, n, 8); return;
    case 16: PF_U(gather_step)(dst, src, n, 16); return;
    case 32: PF_U(gather_step)(dst, src, n, 32); return;
    default: PF_U(gather_step)(dst, src, n, step);
  }
}

/* split n groups of `step` consecutive values into `step` rows rs apart (row p gets value p of each
   group); inlined into the switch below with a constant step */
static inline __attribute__((always_inline)) void PF_U(deinterleave_step)(PF_WORD *restrict dst, int64_t rs,
                                                                          const PF_WORD *restrict src,
                                                                          int64_t n, int64_t step) {
  for (int64_t j = 0; j < n; j++)
    for (int64_t p = 0; p < step; p++) dst[p * rs + j] = src[j * step + p];
}

/* returns 0 for a step it has no vectorisable case for */
static inline int PF_U(deinterleave)(PF_WORD *restrict dst, int64_t rs, const PF_WORD *restrict src, int64_t n,
                                     int64_t step) {
  switch (step) {
    case 2: PF_U(deinterleave_step)(dst, rs, src, n, 2); return 1;
    case 4: PF_U(deinterleave_step)(dst, rs, src, n, 4); return 1;
    case 8: PF_U(deinterleave_step)(dst, rs, src, n, 8); return 1;
    default: return 0;
  }
}

static void PF_U(unfold2d)(const PF_WORD *x, PF_WORD *out, const pf_unfold2d g);

/* Bytes of ncl rows the nlc loop below cuts at a time (one block row, a few channels): in L1/L2. */
#define PF_NLC_TILE_BYTES 65536

/* nlc where a patch's runs are short (K1 values of under 32 bytes) or dilated and under
 * PF_NLC_PHASE_MIN_BYTES (longer dilated runs: unfold2d_nlc_by_phases): each block row is
 * cut as ncl rows (the vectorised gathers above) into a scratch tile, a few channels at a time, and
 * the tile is transposed into the patches. Returns 0 (nothing written) where that does not apply:
 * long runs, or undilated runs of 1- and 2-byte items (their 4 x 4 tiles are too small to pay:
 * copied directly, faster), kernel rows not whole channels, or no scratch memory. */
static int PF_U(unfold2d_nlc_by_rows)(const PF_WORD *x, PF_WORD *out, const pf_unfold2d g) {
  const int64_t K0 = g.K0, K1 = g.K1, L1 = g.L1, q0 = g.q0, q1 = g.q1, P = g.P;
  const int short_runs = K1 * (int64_t)sizeof(PF_WORD) < 32 && sizeof(PF_WORD) >= 4;
  if ((g.d1 == 1 && !short_runs) || q0 % K0 || q1 % K0 || L1 == 0 || q1 == q0) return 0;
  const int64_t channel_values = K0 * K1 * L1; /* one channel's ncl rows for one block row */
  int64_t chunk = PF_NLC_TILE_BYTES / (int64_t)sizeof(PF_WORD) / channel_values;
  if (chunk < 1) return 0; /* huge kernels: the direct loop */
  PF_WORD *tile = (PF_WORD *)malloc((size_t)(chunk * channel_values) * sizeof(PF_WORD));
  if (tile == NULL) return 0;
  const int64_t c0 = q0 / K0, c1 = q1 / K0;
  for (int64_t i = g.i0; i < g.i1; i++)
    for (int64_t ca = c0; ca < c1; ca += chunk) {
      const int64_t cb = ca + chunk < c1 ? ca + chunk : c1;
      pf_unfold2d rows = g; /* channels [ca, cb) of block row i as ncl rows L1 apart */
      rows.i0 = i, rows.i1 = i + 1, rows.q0 = 0, rows.q1 = (cb - ca) * K0, rows.nlc = 0, rows.rs = L1;
      PF_U(unfold2d)(x + ca * g.H * g.W, tile, rows);
      PF_U(transpose)(out + (i - g.i0) * L1 * P + ca * K0 * K1, P, tile, L1, (cb - ca) * K0 * K1, L1);
    }
  free(tile);
  return 1;
}

/* Bytes of a patch's run (K1 values) up to which the nlc loop below cuts patches block by block. */
#define PF_NLC_BLOCK_RUN_BYTES 28

/* blocks [j0, j1) of one block row, all K1 columns inside: block j's runs (one per kernel row q,
   from rows[q] at column j*s1 - p1, W values each) are written one after another, so the patch is
   one sequential write. Inlined into the switch below with constant sizes: a run of `bytes` is
   moved as `wide` bytes (the power of two above), one move each; the `wide - bytes` bytes it
   writes past its run are the next run's, written next. The patch's last run, and any run whose
   wide read would pass its row's end, is moved exactly, so nothing outside the patch or the row
   is touched (the next patch may be another thread's, or past the end of out). */
static inline __attribute__((always_inline)) void PF_U(patches_of)(PF_WORD *restrict out, int64_t P,
                                                                   const PF_WORD *const *rows, int64_t n,
                                                                   int64_t W, int64_t j0, int64_t j1,
                                                                   int64_t s1, int64_t p1, int64_t K1,
                                                                   size_t wide) {
  const size_t bytes = (size_t)K1 * sizeof(PF_WORD);
  const int64_t reach = (int64_t)(wide / sizeof(PF_WORD)); /* values a wide move reads */
  for (int64_t j = j0; j < j1; j++) {
    PF_WORD *restrict dst = out + j * P;
    const int64_t col = j * s1 - p1;
    int64_t q = 0;
    if (col + reach <= W)
      for (; q + 1 < n; q++) memcpy(dst + q * K1, rows[q] + col, wide);
    for (; q < n; q++) memcpy(dst + q * K1, rows[q] + col, bytes);
  }
}

static inline void PF_U(patches)(PF_WORD *restrict out, int64_t P, const PF_WORD *const *rows, int64_t n,
                                 int64_t W, int64_t j0, int64_t j1, int64_t s1, int64_t p1, int64_t K1) {
#define PF_PATCHES(bytes, wide) PF_U(patches_of)(out, P, rows, n, W, j0, j1, s1, p1, (bytes) / sizeof(PF_WORD), wide)
  switch (K1 * (int64_t)sizeof(PF_WORD)) {
    case 1: PF_PATCHES(1, 1); return;
    case 2: PF_PATCHES(2, 2); return;
    case 3: PF_PATCHES(3, 4); return;
    case 4: PF_PATCHES(4, 4); return;
    case 5: PF_PATCHES(5, 8); return;
    case 6: PF_PATCHES(6, 8); return;
    case 7: PF_PATCHES(7, 8); return;
    case 8: PF_PATCHES(8, 8); return;
    case 10: PF_PATCHES(10, 16); return;
    case 12: PF_PATCHES(12, 16); return;
    case 14: PF_PATCHES(14, 16); return;
    case 16: PF_PATCHES(16, 16); return;
    case 20: PF_PATCHES(20, 32); return;
    case 24: PF_PATCHES(24, 32); return;
    case 28: PF_PATCHES(28, 32); return;
    default: PF_U(patches_of)(out, P, rows, n, W, j0, j1, s1, p1, K1, (size_t)K1 * sizeof(PF_WORD));
  }
#undef PF_PATCHES
}

/* nlc of short undilated runs (K1 values of at most PF_NLC_BLOCK_RUN_BYTES, the 3x3 convolution
 * case): block by block, each patch written whole (its C*K0 runs in turn, read from C*K0 source
 * rows that stay in cache along the block row) instead of run by run across the patches, which
 * writes every cache line of the output once per run. Kernel rows outside the image read a zero
 * row. Returns 0 (nothing written) where that does not apply, or without scratch memory. */
static int PF_U(unfold2d_nlc_by_blocks)(const PF_WORD *x, PF_WORD *out, const pf_unfold2d g) {
  const int64_t H = g.H, W = g.W, K0 = g.K0, K1 = g.K1, L1 = g.L1, s0 = g.s0, s1 = g.s1;
  const int64_t d0 = g.d0, p0 = g.p0, p1 = g.p1, i0 = g.i0, i1 = g.i1, q0 = g.q0, q1 = g.q1, P = g.P;
  if (g.d1 != 1 || K1 * (int64_t)sizeof(PF_WORD) > PF_NLC_BLOCK_RUN_BYTES || q1 == q0 || L1 == 0) return 0;
  const int64_t n = q1 - q0;
  const PF_WORD **rows = (const PF_WORD **)malloc((size_t)n * sizeof(PF_WORD *));
  PF_WORD *zeros = (PF_WORD *)calloc((size_t)(W > 0 ? W : 1), sizeof(PF_WORD));
  if (rows == NULL || zeros == NULL) {
    free(rows);
    free(zeros);
    return 0;
  }
  /* blocks j in [jf0, jf1) have all K1 columns j*s1 - p1 + kj inside [0, W) */
  int64_t jf0 = ceil_div(p1, s1), jf1 = ceil_div(W - (K1 - 1) + p1, s1);
  if (jf1 > L1) jf1 = L1;
  if (jf0 > jf1) jf0 = jf1;
  for (int64_t i = i0; i < i1; i++) {
    for (int64_t q = q0; q < q1; q++) {
      const int64_t c = q / K0, y = (q % K0) * d0 + i * s0 - p0;
      rows[q - q0] = (y >= 0 && y < H) ? x + (c * H + y) * W : zeros;
    }
    PF_WORD *block_row = out + (i - i0) * L1 * P + q0 * K1;
    PF_U(patches)(block_row, P, rows, n, W, jf0, jf1, s1, p1, K1);
    for (int64_t j = 0; j < L1; j++) { /* the blocks that reach into the left or right padding */
      if (j == jf0 && jf1 > jf0) j = jf1;
      if (j >= L1) break;
      PF_WORD *dst = block_row + j * P;
      for (int64_t q = 0; q < n; q++)
        for (int64_t kj = 0; kj < K1; kj++) {
          const int64_t col = j * s1 - p1 + kj;
          dst[q * K1 + kj] = (col >= 0 && col < W) ? rows[q][col] : 0;
        }
    }
  }
  free(rows);
  free(zeros);
  return 1;
}

/* Run bytes from which dilated nlc patches are cut from phase rows (below) rather than as ncl
 * rows transposed (unfold2d_nlc_by_rows). */
#define PF_NLC_PHASE_MIN_BYTES 16

/* Bytes of phase rows the dilated nlc loop below holds at a time (kernel rows in groups). */
#ifndef PF_NLC_PHASE_BYTES /* (a build may set it smaller, to test the groups) */
#define PF_NLC_PHASE_BYTES (1 << 20)
#endif

/* nlc, dilated (d1 > 1) runs of at least PF_NLC_PHASE_MIN_BYTES: each source row a block row reads
 * is first split into its d1 phases (phase r holds columns r, r + d1, r + 2*d1, ...: the
 * vectorised deinterleave for d1 = 2, 4, 8), so that every run of K1 columns d1 apart becomes K1
 * adjacent values of one phase; the patches' runs are then copied whole, one after another along
 * each patch (cutting ncl rows into a tile and transposing it writes every value twice). Kernel
 * rows go in groups whose phases take at most PF_NLC_PHASE_BYTES of scratch ((W + d1) values a
 * row). Returns 0 (nothing written) where that does not apply, or without scratch memory. */
static int PF_U(unfold2d_nlc_by_phases)(const PF_WORD *x, PF_WORD *out, const pf_unfold2d g) {
  const int64_t H = g.H, W = g.W, K0 = g.K0, K1 = g.K1, L1 = g.L1, s0 = g.s0, s1 = g.s1, d1 = g.d1;
  const int64_t d0 = g.d0, p0 = g.p0, p1 = g.p1, i0 = g.i0, i1 = g.i1, q0 = g.q0, q1 = g.q1, P = g.P;
  if (d1 == 1 || K1 * (int64_t)sizeof(PF_WORD) < PF_NLC_PHASE_MIN_BYTES || q1 == q0 || L1 == 0) return 0;
  const int64_t Wp = (W + d1 - 1) / d1, per_row = d1 * Wp; /* one source row's phases */
  int64_t group = PF_NLC_PHASE_BYTES / (int64_t)sizeof(PF_WORD) / per_row;
  if (group < 1) group = 1;
  if (group > q1 - q0) group = q1 - q0;
  PF_WORD *phases = (PF_WORD *)malloc((size_t)(group * per_row) * sizeof(PF_WORD));
  if (phases == NULL) return 0;
  /* blocks j in [jf0, jf1) have all K1 columns j*s1 - p1 + kj*d1 inside [0, W) */
  int64_t jf0 = ceil_div(p1, s1), jf1 = ceil_div(W - (K1 - 1) * d1 + p1, s1);
  if (jf1 > L1) jf1 = L1;
  if (jf0 > jf1) jf0 = jf1;
  const int64_t groups = W / d1; /* whole groups of d1 columns */
  for (int64_t i = i0; i < i1; i++)
    for (int64_t qa = q0; qa < q1; qa += group) {
      const int64_t qb = qa + group < q1 ? qa + group : q1, n = qb - qa;
      for (int64_t q = qa; q < qb; q++) {
        const int64_t c = q / K0, y = (q % K0) * d0 + i * s0 - p0;
        PF_WORD *split = phases + (q - qa) * per_row;
        if (y < 0 || y >= H) {
          memset(split, 0, (size_t)per_row * sizeof(PF_WORD));
          continue;
        }
        const PF_WORD *row = x + (c * H + y) * W;
        if (!PF_U(deinterleave)(split, Wp, row, groups, d1))
          for (int64_t j = 0; j < groups; j++)
            for (int64_t r = 0; r < d1; r++) split[r * Wp + j] = row[j * d1 + r];
        for (int64_t col = groups * d1; col < W; col++) split[(col % d1) * Wp + col / d1] = row[col];
      }
      PF_WORD *block_row = out + (i - i0) * L1 * P + qa * K1;
      for (int64_t j = jf0; j < jf1; j++) { /* inside: run q of block j is phase r of row q from o */
        const int64_t first = j * s1 - p1, r = first % d1, o = first / d1;
        assert(first >= 0 && o + K1 <= Wp);
        copy_runs((char *)(block_row + j * P), (const char *)(phases + r * Wp + o), n,
                  K1 * (int64_t)sizeof(PF_WORD), per_row * (int64_t)sizeof(PF_WORD), K1 * (int64_t)sizeof(PF_WORD));
      }
      for (int64_t j = 0; j < L1; j++) { /* the blocks that reach into the left or right padding */
        if (j == jf0 && jf1 > jf0) j = jf1;
        if (j >= L1) break;
        PF_WORD *dst = block_row + j * P;
        for (int64_t q = 0; q < n; q++)
          for (int64_t kj = 0; kj < K1; kj++) {
            const int64_t col = j * s1 - p1 + kj * d1;
            dst[q * K1 + kj] = (col >= 0 && col < W) ? phases[q * per_row + (col % d1) * Wp + col / d1] : 0;
          }
      }
    }
  free(phases);
  return 1;
}

/* One plane: block rows [g.i0, g.i1) of x (H, W) per channel, kernel rows [g.q0, g.q1) (see
   pf_unfold2d in _kernels.c). */
static void PF_U(unfold2d)(const PF_WORD *x, PF_WORD *out, const pf_unfold2d g) {
  /* locals, not struct fields: the compiler then knows no store into out changes them */
  const int64_t H = g.H, W = g.W, K0 = g.K0, K1 = g.K1, L1 = g.L1, s0 = g.s0, s1 = g.s1;
  const int64_t d0 = g.d0, d1 = g.d1, p0 = g.p0, p1 = g.p1, i0 = g.i0, i1 = g.i1, q0 = g.q0, q1 = g.q1;
  const int64_t rs = g.rs, P = g.P;
  assert(H >= 0 && W >= 0 && K0 >= 1 && K1 >= 1 && L1 >= 0);
  assert(s0 >= 1 && s1 >= 1 && d0 >= 1 && d1 >= 1 && p0 >= 0 && p1 >= 0);
  assert(0 <= i0 && i0 <= i1 && 0 <= q0 && q0 <= q1);
  assert(g.nlc ? P >= q1 * K1 : (q1 - q0) * K1 <= 1 || rs >= (i1 - i0) * L1); /* ncl rows apart */
  /* blocks j in [jf0, jf1) have all K1 columns xs + kj*d1 inside [0, W) */
  int64_t jf0 = ceil_div(p1, s1), jf1 = ceil_div(W - (K1 - 1) * d1 + p1, s1);
  if (jf1 > L1) jf1 = L1;
  if (jf0 > jf1) jf0 = jf1;
  if (g.nlc && PF_U(unfold2d_nlc_by_blocks)(x, out, g)) return;
  if (g.nlc && PF_U(unfold2d_nlc_by_phases)(x, out, g)) return;
  if (g.nlc && PF_U(unfold2d_nlc_by_rows)(x, out, g)) return;
  if (g.nlc) { /* patch by patch: each (c, ki) run of K1 values is one contiguous write */
    for (int64_t i = i0; i < i1; i++)
      for (int64_t q = q0; q < q1; q++) {
        const int64_t c = q / K0, ki = q % K0;
        const int64_t y = ki * d0 + i * s0 - p0;
        const int inside = y >= 0 && y < H;
        const PF_WORD *src = x + (c * H + (inside ? y : 0)) * W;
        PF_WORD *row = out + (i - i0) * L1 * P + q * K1;
        for (int64_t j = 0; j < L1; j++) {
          PF_WORD *dst = row + j * P;
          if (!inside) {
            memset(dst, 0, (size_t)K1 * sizeof(PF_WORD));
          } else if (j >= jf0 && j < jf1) {
            if (d1 == 1) { /* the whole run of full blocks at once */
              copy_runs((char *)dst, (const char *)(src + (j * s1 - p1)), jf1 - j, P * (int64_t)sizeof(PF_WORD),
                        s1 * (int64_t)sizeof(PF_WORD), K1 * (int64_t)sizeof(PF_WORD));
              j = jf1 - 1;
            } else {
              for (int64_t kj = 0; kj < K1; kj++) dst[kj] = src[j * s1 - p1 + kj * d1];
            }
          } else {
            for (int64_t kj = 0; kj < K1; kj++) {
              const int64_t col = j * s1 - p1 + kj * d1;
              dst[kj] = (col >= 0 && col < W) ? src[col] : 0;
            }
          }
        }
      }
    return;
  }
  /* ncl: one source row y serves the K1 output rows (c, ki, 0..K1-1) of block row i, so loop over
     it once while it is in cache. Columns repeat across kernel columns: kj and kj - t (t*d1 a
     multiple of s1) read the same source columns shifted by m = t*d1/s1 blocks, so output row kj
     is mostly a copy of row kj - t, just written and still in cache. */
  const int64_t gcd_ = gcd(d1, s1), t = s1 / gcd_, m = d1 / gcd_; /* t*d1 = m*s1, without overflow */
  for (int64_t q = q0; q < q1; q++) {
    const int64_t c = q / K0, ki = q % K0;
    for (int64_t i = i0; i < i1; i++) {
      const int64_t y = ki * d0 + i * s0 - p0;
      const int inside = y >= 0 && y < H;
      int64_t kj = 0;
      if (inside && d1 == 1 && K1 >= s1) {
        /* kernel columns 0..s1-1 take the s1 phases of the row: split it in one pass where all s1
           columns of a block are inside, then finish the edges column by column */
        int64_t J0 = ceil_div(p1, s1), J1 = ceil_div(W - s1 + 1 + p1, s1);
        if (J1 > L1) J1 = L1;
        if (J0 > J1) J0 = J1;
        PF_WORD *first = out + q * K1 * rs + (i - i0) * L1;
        const PF_WORD *row = x + (c * H + y) * W;
        if (J1 > J0 && PF_U(deinterleave)(first + J0, rs, row + (J0 * s1 - p1), J1 - J0, s1)) {
          for (; kj < s1; kj++) {
            PF_WORD *dst = first + kj * rs;
            for (int64_t j = 0; j < J0; j++) {
              const int64_t col = kj + j * s1 - p1;
              dst[j] = (col >= 0 && col < W) ? row[col] : 0;
            }
            for (int64_t j = J1; j < L1; j++) {
              const int64_t col = kj + j * s1 - p1;
              dst[j] = (col >= 0 && col < W) ? row[col] : 0;
            }
          }
        }
      }
      for (; kj < K1; kj++) {
        PF_WORD *dst = out + (q * K1 + kj) * rs + (i - i0) * L1;
        if (!inside) {
          memset(dst, 0, (size_t)L1 * sizeof(PF_WORD));
          continue;
        }
        if (kj >= t && m < L1) {
          memcpy(dst, dst - t * rs + m, (size_t)(L1 - m) * sizeof(PF_WORD));
          const PF_WORD *row = x + (c * H + y) * W;
          for (int64_t j = L1 - m; j < L1; j++) {
            const int64_t col = kj * d1 + j * s1 - p1;
            dst[j] = (col >= 0 && col < W) ? row[col] : 0;
          }
          continue;
        }
        /* blocks j whose column kj*d1 + j*s1 - p1 falls inside [0, W) */
        const int64_t base = kj * d1 - p1;
        int64_t j0 = ceil_div(-base, s1), j1 = ceil_div(W - base, s1);
        if (j0 < 0) j0 = 0;
        if (j1 > L1) j1 = L1;
        if (j0 > L1) j0 = L1; /* padding wider than the blocks reach */
        if (j1 < j0) j1 = j0;
        for (int64_t j = 0; j < j0; j++) dst[j] = 0;
        if (j1 > j0) PF_U(gather)(dst + j0, x + ((c * H + y) * W + base + j0 * s1), j1 - j0, s1);
        for (int64_t j = j1; j < L1; j++) dst[j] = 0;
      }
    }
  }
}

/* 3-D: every (channel c, depth offset a, depth block p) is a 2-D unfold of one plane of x (or of
   zeros, in the depth padding) into K1*K2 rows (ncl) or columns (nlc) of the matrix. Block rows
   [lo, hi) are depth blocks here; q = c*K0 + a. */
static void PF_U(unfold3d)(const PF_WORD *x, PF_WORD *out, const pf_unfold_dims *dims) {
  const int64_t C = dims->channels, D = dims->size[0], H = dims->size[1], W = dims->size[2];
  const int64_t K0 = dims->kernel[0], K1 = dims->kernel[1], K2 = dims->kernel[2];
  const int64_t L1 = dims->blocks[1], L2 = dims->blocks[2];
  const int64_t s0 = dims->stride[0], d0 = dims->dilation[0], p0 = dims->padding[0];
  const int64_t lo = dims->row_lo, hi = dims->row_hi, q0 = dims->q_lo, q1 = dims->q_hi;
  const int64_t nlc = dims->nlc, rs = dims->row_stride;
  const int64_t P = C * K0 * K1 * K2, plane = L1 * L2, patch = K1 * K2;
  assert(C >= 0 && D >= 0 && K0 >= 1 && s0 >= 1 && d0 >= 1 && p0 >= 0);
  assert(0 <= lo && lo <= hi && 0 <= q0 && q0 <= q1 && q1 <= C * K0);
  assert(nlc ? P >= q1 * patch : (q1 - q0) * patch <= 1 || rs >= (hi - lo) * plane); /* ncl rows apart */
  pf_unfold2d g = {.H = H, .W = W, .K0 = K1, .K1 = K2, .L1 = L2,
                   .s0 = dims->stride[1], .s1 = dims->stride[2],
                   .d0 = dims->dilation[1], .d1 = dims->dilation[2],
                   .p0 = dims->padding[1], .p1 = dims->padding[2],
                   .i0 = 0, .i1 = L1, .q0 = 0, .q1 = K1, .nlc = nlc, .rs = rs, .P = P};
  /* nlc: depth block by depth block, so each block's patches (plane * P values) are written whole
     while they are in cache, where the order of ncl (offsets outer) would write a sliver of every
     patch of the volume per depth offset */
  const int64_t outer = nlc ? hi - lo : q1 - q0, inner = nlc ? q1 - q0 : hi - lo;
  for (int64_t o = 0; o < outer; o++)
    for (int64_t n = 0; n < inner; n++) {
      const int64_t q = nlc ? q0 + n : q0 + o, p = nlc ? lo + o : lo + n;
      const int64_t c = q / K0, a = q % K0;
      const int64_t z = a * d0 + p * s0 - p0;
      PF_WORD *base = nlc ? out + (p - lo) * plane * P + q * patch : out + q * patch * rs + (p - lo) * plane;
      if (z >= 0 && z < D) {
        PF_U(unfold2d)(x + (c * D + z) * H * W, base, g);
      } else if (nlc) {
        for (int64_t j = 0; j < plane; j++) memset(base + j * P, 0, (size_t)patch * sizeof(PF_WORD));
      } else {
        for (int64_t r = 0; r < patch; r++) memset(base + r * rs, 0, (size_t)plane * sizeof(PF_WORD));
      }
    }
}

void PF_U(unfold)(const PF_WORD *x, PF_WORD *out, const pf_unfold_dims *dims) {
  assert(dims->ndim == 2 || dims->ndim == 3);
  if (dims->ndim == 3) {
    PF_U(unfold3d)(x, out, dims);
    return;
  }
  const int64_t C = dims->channels, K0 = dims->kernel[0], K1 = dims->kernel[1];
  const pf_unfold2d g = {.H = dims->size[0], .W = dims->size[1], .K0 = K0, .K1 = K1, .L1 = dims->blocks[1],
                         .s0 = dims->stride[0], .s1 = dims->stride[1],
                         .d0 = dims->dilation[0], .d1 = dims->dilation[1],
                         .p0 = dims->padding[0], .p1 = dims->padding[1],
                         .i0 = dims->row_lo, .i1 = dims->row_hi, .q0 = dims->q_lo, .q1 = dims->q_hi,
                         .nlc = dims->nlc, .rs = dims->row_stride, .P = C * K0 * K1};
  assert(dims->q_hi <= C * K0);
  PF_U(unfold2d)(x, out, g);
}

#undef PF_NLC_TILE_BYTES
#undef PF_NLC_BLOCK_RUN_BYTES
#undef PF_U
#undef PF_WORD
#undef PF_BITS
