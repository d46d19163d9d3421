/* The overlap-add loops of _kernels.c, written once against the type macros
 *   PF_SOURCE       the patch matrix's element type
 *   PF_ACC          the accumulator's element type
 *   PF_SUFFIX       the name suffix of this pair (fold_<suffix> is the exported entry point)
 * and included by _kernels.c once per pair (the numpy style of templating); the macros are
 * undefined again at the end of this file.
 *
 * fold_<suffix>(src, acc, dims): overlap-add of one item's patch matrix src into the accumulator
 * acc, which holds padded output rows [dims->row_lo, dims->row_hi) of dim 0: (C, hi-lo, *size[1:])
 * with rows of dim 0 packed and channels dims->channel_stride elements apart. 2-D:
 *   acc[c*cs + (r - lo)*W + kj*d1 + j*s1] += src[((c*K0 + ki)*K1 + kj)*a + (i*L1 + j)*b]
 *   for every channel c, kernel offset (ki, kj) and block (i, j) with r = ki*d0 + i*s0 in [lo, hi).
 * (a, b) = (L, 1) reads the ncl layout (N, C*K, L); (1, C*K) reads nlc (N, L, C*K).
 * Output rows are visited in bands so the accumulator stays in cache; with zero != 0 each band is
 * zeroed first (so threads touch fresh memory in parallel, while it is hot). In 3-D the same loop
 * runs over the planes of a volume.
 *
 * The caller (patchfold.engines.compiled) checks every extent below against the arrays before the
 * call; the asserts restate the preconditions for debug builds.
 */

#define PF_F(name) PF_JOIN(name, PF_SUFFIX)

/* out[k*step] += in[k] for k < n: a run of values onto evenly spaced output, the contiguous case
 * on its own so that it vectorises. */
static inline void PF_F(add_run)(PF_ACC *restrict out, const PF_SOURCE *restrict in, int64_t n, int64_t step) {
  if (step == 1) {
    for (int64_t k = 0; k < n; k++) out[k] += (PF_ACC)in[k];
  } else {
    for (int64_t k = 0; k < n; k++) out[k * step] += (PF_ACC)in[k];
  }
}

/* One kernel row (one channel, one offset in dim 0) of a run of n blocks:
 * row[kj*d1 + j*s1] += in[kj*a + j] for kj < K1, j < n (kernel columns a apart, blocks adjacent);
 * t, m the smallest with t*d1 = m*s1. Kernel columns r, r + t, r + 2t, ... land on the same output
 * columns, shifted by m blocks each: they are summed first, so each output column is touched once
 * per residue r instead of once per kernel column. */
static inline void PF_F(add_kernel_row)(PF_ACC *restrict row, const PF_SOURCE *restrict in, int64_t a, int64_t n,
                                        int64_t K1, int64_t s1, int64_t d1, int64_t t, int64_t m) {
  if (K1 <= t) { /* no two kernel columns meet */
    for (int64_t kj = 0; kj < K1; kj++) PF_F(add_run)(row + kj * d1, in + kj * a, n, s1);
    return;
  }
  for (int64_t r = 0; r < t; r++) {
    const int64_t count = (K1 - r + t - 1) / t, shift = (count - 1) * m;
    const PF_SOURCE *first = in + r * a;
    const int64_t step = t * a; /* from kernel column r + q*t to r + (q+1)*t */
    PF_ACC *out = row + r * d1;
    for (int64_t J = 0; J < n + shift; J++) {
      if (J == shift && count == 2) { /* the interior, where every column has a block */
        for (; J < n; J++) out[J * s1] += (PF_ACC)first[J] + (PF_ACC)first[step + J - m];
        if (J >= n + shift) break;
      } else if (J == shift && shift < n) {
        for (; J < n; J++) {
          PF_ACC sum = 0;
          for (int64_t q = 0; q < count; q++) sum += (PF_ACC)first[q * step + J - q * m];
          out[J * s1] += sum;
        }
        if (J >= n + shift) break;
      }
      /* head or tail: only columns q with 0 <= J - q*m < n */
      const int64_t qlo = J < n ? 0 : (J - n) / m + 1;
      const int64_t qhi = J / m < count - 1 ? J / m : count - 1;
      PF_ACC sum = 0;
      for (int64_t q = qlo; q <= qhi; q++) sum += (PF_ACC)first[q * step + J - q * m];
      out[J * s1] += sum;
    }
  }
}

/* Whether an nlc fold adds each kernel row's run straight from the patches (unweighted): runs of
 * at least 32 bytes read or 64 bytes of accumulator (8 uint8 values into int64), which fill a
 * vector where they land on contiguous output and still beat the tiles where dilation spreads them
 * (float32 k8 d2: 13.0 -> 11.6 ms). Shorter runs go through transposed tiles instead (A/B in one
 * process: 8 uint8 values 10.8 -> 9.4 ms straight, but 4 of them 2.3 -> 3.1 ms). */
static inline int PF_F(adds_runs_directly)(const pf_fold2d g) {
  const int64_t read = g.K1 * (int64_t)sizeof(PF_SOURCE), added = g.K1 * (int64_t)sizeof(PF_ACC);
  return g.a == 1 && g.wc == NULL && (read >= 32 || added >= 64);
}

/* Whether an nlc fold sums overlapping patches chunk by chunk (see fold2d_nlc_chunk_band):
 * undilated, unweighted half-overlapping kernel rows (K1 = 2*s1, s1 = 2, 4, 8 or 16, chunks of at
 * least 8 bytes of sums and under 16 bytes of patch values), the common "stride half the block".
 * The first CPU measured (A/B in one process, one thread, fastest of 15, ms before -> after, ncl):
 * uint8 1024² k8 s4 7.2 -> 4.4 (4.7), k4 s2 6.9 -> 5.7 (3.1); float32 1024² k8 s4 11.3 -> 6.5
 * (5.5), k4 s2 9.6 -> 7.4 (3.4), 2048² k16 s8 37.0 -> 24.7 (24.7); float64 k8 s4 16.2 -> 12.9
 * (8.7). An AVX-512 Xeon (2026-12-04, medians of 15, straight runs -> chunks): uint8 k8 s4 8.8-9.1
 * -> 6.4-6.7, k4 s2 8.8-8.9 -> 5.7; float32 k4 s2 13.0 -> 12.9, but k8 s4 9.2-9.6 -> 11.9-12.3,
 * 2048² k16 s8 37.8-38.3 -> 76.2-76.5, float64 k8 s4 13.6-14.0 -> 34.9-35.6. So chunks of 16 bytes
 * of patch values or more take the straight runs: at most 1.7x slower on the first CPU, where they
 * were 1.3-2.6x faster on the second. Other overlaps (three or more patches on a chunk, or odd
 * strides) were slower this way (float32 k6 s2 20 -> 56) and keep the straight runs or the tiles. */
static inline int PF_F(adds_chunks)(const pf_fold2d g) {
  const int half = g.K1 == 2 * g.s1 && (g.s1 == 2 || g.s1 == 4 || g.s1 == 8 || g.s1 == 16);
  return half && g.a == 1 && g.wc == NULL && g.d1 == 1 && g.s1 * (int64_t)sizeof(PF_ACC) >= 8 &&
         g.s1 * (int64_t)sizeof(PF_SOURCE) < 16;
}

/* nlc, output rows [top, bottom) of a band, chunk by chunk: along a kernel row, output columns
 * [J*s1, (J+1)*s1) receive chunk q of patch J - q for q < R = K1/s1 (here 2), so each chunk of
 * output is read and written once per kernel row with the R chunks summed first, where adding
 * every patch's run would touch each output value R times. A block row's patches (L1*b values)
 * stay in cache meanwhile; the interior's constant trip counts let the compiler vectorise. */
static void PF_F(fold2d_nlc_chunk_band)(const PF_SOURCE *src, PF_ACC *acc, const pf_fold2d g, int64_t top,
                                        int64_t bottom) {
  const int64_t C = g.C, K0 = g.K0, K1 = g.K1, L0 = g.L0, L1 = g.L1, s0 = g.s0, s1 = g.s1;
  const int64_t d0 = g.d0, W = g.W, lo = g.lo, b = g.b, cs = g.cs, R = K1 / s1;
  assert(PF_F(adds_chunks)(g) && R == 2 && C * K0 * K1 <= b && (L1 - 1 + R) * s1 <= W);
  int64_t i0 = ceil_div(top - (K0 - 1) * d0, s0), i1 = ceil_div(bottom, s0);
  if (i0 < 0) i0 = 0;
  if (i1 > L0) i1 = L0;
  for (int64_t i = i0; i < i1; i++) {
    const PF_SOURCE *patches = src + i * L1 * b;
    for (int64_t c = 0; c < C; c++) {
      for (int64_t ki = 0; ki < K0; ki++) {
        const int64_t r = ki * d0 + i * s0;
        if (r < top || r >= bottom) continue;
        PF_ACC *row = acc + c * cs + (r - lo) * W;
        const PF_SOURCE *run = patches + (c * K0 + ki) * K1; /* patch j's run: run + j*b */
        for (int64_t J = 0; J < L1 - 1 + R; J++) {
          const int64_t qlo = J - (L1 - 1) > 0 ? J - (L1 - 1) : 0, qhi = J < R - 1 ? J : R - 1;
          PF_ACC *out = row + J * s1;
          if (qlo == 0 && qhi == R - 1) { /* the interior: both patches */
            const PF_SOURCE *p0 = run + J * b, *p1 = run + (J - 1) * b + s1;
            if (s1 == 2) { /* constant trip counts vectorise */
              for (int64_t u = 0; u < 2; u++) out[u] += (PF_ACC)p0[u] + (PF_ACC)p1[u];
            } else if (s1 == 4) {
              for (int64_t u = 0; u < 4; u++) out[u] += (PF_ACC)p0[u] + (PF_ACC)p1[u];
            } else if (s1 == 8) {
              for (int64_t u = 0; u < 8; u++) out[u] += (PF_ACC)p0[u] + (PF_ACC)p1[u];
            } else {
              assert(s1 == 16);
              for (int64_t u = 0; u < 16; u++) out[u] += (PF_ACC)p0[u] + (PF_ACC)p1[u];
            }
            continue;
          }
          for (int64_t q = qlo; q <= qhi; q++) {
            const PF_SOURCE *part = run + (J - q) * b + q * s1;
            for (int64_t u = 0; u < s1; u++) out[u] += (PF_ACC)part[u];
          }
        }
      }
    }
  }
}

/* nlc, output rows [top, bottom) of a band, by runs (see adds_runs_directly): each patch read once,
 * in order, its runs added into the band's rows (in cache). */
static void PF_F(fold2d_nlc_direct_band)(const PF_SOURCE *src, PF_ACC *acc, const pf_fold2d g, int64_t top,
                                         int64_t bottom) {
  const int64_t C = g.C, K0 = g.K0, K1 = g.K1, L0 = g.L0, L1 = g.L1, s0 = g.s0, s1 = g.s1;
  const int64_t d0 = g.d0, d1 = g.d1, W = g.W, lo = g.lo, b = g.b, cs = g.cs;
  assert(PF_F(adds_runs_directly)(g) && C * K0 * K1 <= b);
  int64_t i0 = ceil_div(top - (K0 - 1) * d0, s0), i1 = ceil_div(bottom, s0);
  if (i0 < 0) i0 = 0;
  if (i1 > L0) i1 = L0;
  for (int64_t i = i0; i < i1; i++) {
    int64_t k_lo = 0, k_hi = K0; /* the kernel rows of this block row inside [top, bottom) */
    while (k_lo < K0 && k_lo * d0 + i * s0 < top) k_lo++;
    while (k_hi > k_lo && (k_hi - 1) * d0 + i * s0 >= bottom) k_hi--;
    for (int64_t j = 0; j < L1; j++) {
      const PF_SOURCE *patch = src + (i * L1 + j) * b;
      for (int64_t c = 0; c < C; c++) {
        for (int64_t ki = k_lo; ki < k_hi; ki++) {
          PF_F(add_run)(acc + c * cs + (ki * d0 + i * s0 - lo) * W + j * s1, patch + (c * K0 + ki) * K1, K1, d1);
        }
      }
    }
  }
}

/* nlc, output rows [top, bottom) of a band: block row by block row, a tile of up to JT patches
 * (rows of C*K contiguous values) is first transposed into buf (C*K rows of JT, in cache), then
 * added as in ncl, a contiguous (vectorised) run of blocks per kernel offset: for runs too short
 * (or too strided) to add straight from the patches, which would then take a scalar loop of K1
 * steps per kernel row of every patch. A patch's values for this call are the first Q = C*K0*K1 of each row of b (in 3-D,
 * one depth offset of one channel of longer rows). buf holds Q*JT values. */
static void PF_F(fold2d_nlc_band)(const PF_SOURCE *src, PF_ACC *acc, const pf_fold2d g, int64_t top, int64_t bottom,
                                  PF_SOURCE *buf, int64_t JT) {
  const int64_t C = g.C, K0 = g.K0, K1 = g.K1, L0 = g.L0, L1 = g.L1, s0 = g.s0, s1 = g.s1;
  const int64_t d0 = g.d0, d1 = g.d1, W = g.W, lo = g.lo, b = g.b, cs = g.cs, Q = C * K0 * K1;
  assert(g.a == 1 && Q <= b && JT >= 1);
  int64_t i0 = ceil_div(top - (K0 - 1) * d0, s0), i1 = ceil_div(bottom, s0);
  if (i0 < 0) i0 = 0;
  if (i1 > L0) i1 = L0;
  for (int64_t i = i0; i < i1; i++) {
    for (int64_t j0 = 0; j0 < L1; j0 += JT) {
      const int64_t n = L1 - j0 < JT ? L1 - j0 : JT;
      const PF_SOURCE *patches = src + (i * L1 + j0) * b;
      int any = 0;
      for (int64_t ki = 0; ki < K0 && !any; ki++) any = ki * d0 + i * s0 >= top && ki * d0 + i * s0 < bottom;
      if (!any) continue;
      transpose_items(buf, n, patches, b, n, Q, sizeof(PF_SOURCE));
      for (int64_t c = 0; c < C; c++) {
        for (int64_t ki = 0; ki < K0; ki++) {
          const int64_t r = ki * d0 + i * s0;
          if (r < top || r >= bottom) continue;
          PF_ACC *row = acc + c * cs + (r - lo) * W + j0 * s1;
          for (int64_t kj = 0; kj < K1; kj++) {
            const PF_SOURCE *in = buf + ((c * K0 + ki) * K1 + kj) * n;
            PF_ACC *out = row + kj * d1;
            if (g.wc != NULL) {
              const double rw = g.wp * g.wr[i * K0 + ki], *wc = g.wc + kj * L1 + j0;
              for (int64_t j = 0; j < n; j++) out[j * s1] += (PF_ACC)((double)in[j] * (rw * wc[j]));
            } else if (s1 == 1) {
              for (int64_t j = 0; j < n; j++) out[j] += (PF_ACC)in[j];
            } else {
              for (int64_t j = 0; j < n; j++) out[j * s1] += (PF_ACC)in[j];
            }
          }
        }
      }
    }
  }
}

/* The 2-D loop over output rows [g.lo, g.hi) (see pf_fold2d in _kernels.c). */
static void PF_F(fold2d)(const PF_SOURCE *src, PF_ACC *acc, const pf_fold2d g) {
  /* locals, not struct fields: the compiler then knows no store into acc changes them */
  const int64_t C = g.C, K0 = g.K0, K1 = g.K1, L0 = g.L0, L1 = g.L1, s0 = g.s0, s1 = g.s1;
  const int64_t d0 = g.d0, d1 = g.d1, W = g.W, lo = g.lo, hi = g.hi, a = g.a, b = g.b, cs = g.cs;
  assert(C >= 0 && K0 >= 1 && K1 >= 1 && L0 >= 0 && L1 >= 0);
  assert(s0 >= 1 && s1 >= 1 && d0 >= 1 && d1 >= 1 && a >= 1 && b >= 1);
  assert(0 <= lo && lo <= hi);
  assert(L1 == 0 || (K1 - 1) * d1 + (L1 - 1) * s1 < W); /* every column lands inside the row */
  const int64_t gcd_ = gcd(d1, s1), t = s1 / gcd_, m = d1 / gcd_; /* t*d1 = m*s1, without overflow */
  /* nlc: a transposition tile of about 16K values (at least 8 patches) */
  PF_SOURCE *buf = NULL;
  int64_t JT = 0;
  const int chunks = a == 1 && L1 > 0 && C > 0 && PF_F(adds_chunks)(g);
  const int direct = a == 1 && L1 > 0 && C > 0 && !chunks && PF_F(adds_runs_directly)(g);
  if (a == 1 && L1 > 0 && C > 0 && !direct && !chunks) {
    const int64_t Q = C * K0 * K1; /* the values of a patch this call adds */
    JT = (16384 / Q) < 8 ? 8 : 16384 / Q;
    if (JT > L1) JT = L1;
    buf = (PF_SOURCE *)malloc((size_t)(Q * JT) * sizeof(PF_SOURCE));
  }
  for (int64_t top = lo; top < hi; top += BAND) {
    const int64_t bottom = top + BAND < hi ? top + BAND : hi;
    if (g.zero)
      for (int64_t c = 0; c < C; c++)
        memset(acc + c * cs + (top - lo) * W, 0, (size_t)((bottom - top) * W) * sizeof(PF_ACC));
    if (chunks) {
      PF_F(fold2d_nlc_chunk_band)(src, acc, g, top, bottom);
      continue;
    }
    if (direct) {
      PF_F(fold2d_nlc_direct_band)(src, acc, g, top, bottom);
      continue;
    }
    if (buf != NULL) { /* nlc: the patches of a block row are read once, while they are in cache */
      PF_F(fold2d_nlc_band)(src, acc, g, top, bottom, buf, JT);
      continue;
    }
    for (int64_t c = 0; c < C; c++) {
      for (int64_t ki = 0; ki < K0; ki++) {
        const int64_t base = ki * d0;
        int64_t i0 = ceil_div(top - base, s0), i1 = ceil_div(bottom - base, s0);
        if (i0 < 0) i0 = 0;
        if (i1 > L0) i1 = L0;
        for (int64_t i = i0; i < i1; i++) {
          PF_ACC *row = acc + c * cs + (base + i * s0 - lo) * W;
          if (g.wc != NULL) { /* windowed: each value times its block's weight at this offset */
            const double rw = g.wp * g.wr[i * K0 + ki];
            for (int64_t kj = 0; kj < K1; kj++) {
              const PF_SOURCE *in = src + ((c * K0 + ki) * K1 + kj) * a + i * L1 * b;
              const double *wc = g.wc + kj * L1;
              PF_ACC *out = row + kj * d1;
              for (int64_t j = 0; j < L1; j++) out[j * s1] += (PF_ACC)((double)in[j * b] * (rw * wc[j]));
            }
            continue;
          }
          if (b == 1) {
            PF_F(add_kernel_row)(row, src + (c * K0 + ki) * K1 * a + i * L1, a, L1, K1, s1, d1, t, m);
            continue;
          }
          for (int64_t kj = 0; kj < K1; kj++) {
            const PF_SOURCE *in = src + ((c * K0 + ki) * K1 + kj) * a + i * L1 * b;
            PF_ACC *out = row + kj * d1;
            for (int64_t j = 0; j < L1; j++) out[j * s1] += (PF_ACC)in[j * b];
          }
        }
      }
    }
  }
  free(buf);
}

/* 3-D nlc with runs added straight (see adds_runs_directly): each patch of every depth block that
 * reaches depth rows [lo, hi) read once, in order, all its runs added there. The plane-by-plane
 * loop below would read each patch once per channel and depth offset instead. */
static void PF_F(fold3d_nlc_direct)(const PF_SOURCE *src, PF_ACC *acc, const pf_fold_dims *dims) {
  const int64_t C = dims->channels, K0 = dims->kernel[0], K1 = dims->kernel[1], K2 = dims->kernel[2];
  const int64_t L0 = dims->blocks[0], L1 = dims->blocks[1], L2 = dims->blocks[2];
  const int64_t s0 = dims->stride[0], s1 = dims->stride[1], s2 = dims->stride[2];
  const int64_t d0 = dims->dilation[0], d1 = dims->dilation[1], d2 = dims->dilation[2];
  const int64_t H = dims->size[1], W = dims->size[2], lo = dims->row_lo, hi = dims->row_hi;
  const int64_t b = dims->block_step, cs = dims->channel_stride;
  assert(dims->kernel_step == 1 && C * K0 * K1 * K2 <= b);
  if (dims->zero)
    for (int64_t c = 0; c < C; c++) memset(acc + c * cs, 0, (size_t)((hi - lo) * H * W) * sizeof(PF_ACC));
  int64_t p0 = ceil_div(lo - (K0 - 1) * d0, s0), p1 = ceil_div(hi, s0);
  if (p0 < 0) p0 = 0;
  if (p1 > L0) p1 = L0;
  for (int64_t p = p0; p < p1; p++) {
    for (int64_t i = 0; i < L1; i++) {
      for (int64_t j = 0; j < L2; j++) {
        const PF_SOURCE *patch = src + ((p * L1 + i) * L2 + j) * b;
        for (int64_t c = 0; c < C; c++) {
          for (int64_t A = 0; A < K0; A++) {
            const int64_t z = A * d0 + p * s0;
            if (z < lo || z >= hi) continue;
            PF_ACC *plane = acc + c * cs + (z - lo) * H * W + i * s1 * W + j * s2;
            for (int64_t ki = 0; ki < K1; ki++) {
              PF_F(add_run)(plane + ki * d1 * W, patch + ((c * K0 + A) * K1 + ki) * K2, K2, d2);
            }
          }
        }
      }
    }
  }
}

/* 3-D: depth rows [lo, hi) of acc (C, hi-lo, H, W). Every (channel c, depth offset A, depth block
 * p) with A*d0 + p*s0 = z is a 2-D fold of one plane of patches (one channel, kernel K1 x K2,
 * blocks L1 x L2) into depth row z. */
static void PF_F(fold3d)(const PF_SOURCE *src, PF_ACC *acc, const pf_fold_dims *dims, const double *w0,
                         const double *w1, const double *w2t) {
  const int64_t C = dims->channels, K0 = dims->kernel[0], K1 = dims->kernel[1], K2 = dims->kernel[2];
  const int64_t L0 = dims->blocks[0], L1 = dims->blocks[1], L2 = dims->blocks[2];
  const int64_t s0 = dims->stride[0], d0 = dims->dilation[0], H = dims->size[1], W = dims->size[2];
  const int64_t lo = dims->row_lo, hi = dims->row_hi, a = dims->kernel_step, b = dims->block_step;
  const int64_t cs = dims->channel_stride, zero = dims->zero;
  assert(C >= 0 && K0 >= 1 && L0 >= 0 && s0 >= 1 && d0 >= 1 && H >= 0 && W >= 0);
  assert(0 <= lo && lo <= hi);
  /* one plane of patches: rows [0, H) of one depth row of one channel */
  const pf_fold2d plane = {.C = 1, .K0 = K1, .K1 = K2, .L0 = L1, .L1 = L2,
                           .s0 = dims->stride[1], .s1 = dims->stride[2],
                           .d0 = dims->dilation[1], .d1 = dims->dilation[2],
                           .W = W, .lo = 0, .hi = H, .a = a, .b = b, .cs = 0, .zero = 0,
                           .wr = w1, .wc = w2t, .wp = 1.0};
  if (w0 == NULL && PF_F(adds_runs_directly)(plane)) {
    PF_F(fold3d_nlc_direct)(src, acc, dims);
    return;
  }
  for (int64_t z = lo; z < hi; z++) {
    PF_ACC *depth_row = acc + (z - lo) * H * W;
    if (zero)
      for (int64_t c = 0; c < C; c++) memset(depth_row + c * cs, 0, (size_t)(H * W) * sizeof(PF_ACC));
    for (int64_t A = 0; A < K0; A++) {
      const int64_t rest = z - A * d0;
      if (rest < 0 || rest % s0 || rest / s0 >= L0) continue;
      const int64_t p = rest / s0;
      pf_fold2d this_plane = plane;
      if (w0 != NULL) this_plane.wp = w0[p * K0 + A];
      for (int64_t c = 0; c < C; c++)
        PF_F(fold2d)(src + (c * K0 + A) * K1 * K2 * a + p * L1 * L2 * b, depth_row + c * cs, this_plane);
    }
  }
}

/* The 2-D loop's arguments for a pf_fold_dims call (unweighted). */
static pf_fold2d PF_F(plane_args)(const pf_fold_dims *dims) {
  const pf_fold2d g = {.C = dims->channels, .K0 = dims->kernel[0], .K1 = dims->kernel[1],
                       .L0 = dims->blocks[0], .L1 = dims->blocks[1],
                       .s0 = dims->stride[0], .s1 = dims->stride[1],
                       .d0 = dims->dilation[0], .d1 = dims->dilation[1],
                       .W = dims->size[1], .lo = dims->row_lo, .hi = dims->row_hi,
                       .a = dims->kernel_step, .b = dims->block_step,
                       .cs = dims->channel_stride, .zero = dims->zero,
                       .wr = NULL, .wc = NULL, .wp = 1.0};
  return g;
}

void PF_F(fold)(const PF_SOURCE *src, PF_ACC *acc, const pf_fold_dims *dims) {
  assert(dims->ndim == 2 || dims->ndim == 3);
  if (dims->ndim == 3) {
    PF_F(fold3d)(src, acc, dims, NULL, NULL, NULL);
    return;
  }
  PF_F(fold2d)(src, acc, PF_F(plane_args)(dims));
}

/* One output row of a normalised fold: out[x] = sums[x] / d[x] in the accumulator's precision,
 * d[x] = factor * vl[x] the divisor (0 where nothing covers the pixel, and then out[x] = 0),
 * rounded once to the patches' dtype. Integers: the quotient rounded half to even, exactly (a
 * double quotient guesses it, the integer remainder corrects it). Returns how many sums were not
 * finite (the caller then sums again with headroom).
 * With inv_vl (see pf_exact_reciprocals: factor and every vl[x] 0 or a power of two), the quotient
 * is the sum times inv_factor * inv_vl[x] = 1/d[x], exact, which rounds as the quotient does.
 * Inlined into foldx's clones and written so that each loop vectorises there: one select per
 * pixel, and the divisor made safe by arithmetic (d + !covered is d where covered and 1 where not,
 * as a divisor is 0 or positive: window weights are checked positive and finite). GCC keeps a
 * branch, and so a scalar divide per pixel, for two selects on one condition or a select of a
 * quotient (which may trap); that divide took 37 % of a float32 normalised fold, 45 % of uint8. */
static inline __attribute__((always_inline)) int64_t PF_F(finish_row)(const PF_ACC *restrict sums,
                                                                      PF_SOURCE *restrict out, double factor,
                                                                      const double *restrict vl, double inv_factor,
                                                                      const double *restrict inv_vl, int64_t n) {
  const int scaled = inv_vl != NULL; /* a loop each way (GCC unswitches the loops on it) */
  if (!scaled) inv_vl = vl;          /* never read then */
  int64_t nonfinite = 0;
#if defined(PF_INTEGER) && defined(PF_FLOAT_ACC)
  /* windowed integers: the float64 quotient rounded half to even and clipped to the dtype */
  for (int64_t x = 0; x < n; x++) {
    const double d = factor * vl[x], scale = inv_factor * inv_vl[x];
    const int covered = (scaled ? scale : d) > 0;
    const double kept = covered ? sums[x] : 0.0;
    double q = rint(scaled ? kept * scale : kept / (d + (double)!covered));
    q = q < PF_LOW ? PF_LOW : (q > PF_HIGH ? PF_HIGH : q);
    out[x] = (PF_SOURCE)q;
  }
#elif defined(PF_INTEGER)
  /* Where every |s| < 2**51 (any sum of fewer than 2**19 blocks of 32-bit values): s is exact as a
     double and the correctly rounded quotient lies within |s|·2**-53 < 1/(2·count) of the exact
     one, so it cannot cross or reach a half unless the exact quotient is one: rounding it half to
     even gives the exactly rounded integer quotient. Both conversions go through the bits of
     1.5·2**52 + v, whose low 52 bits hold the integer v for |v| < 2**51 (no vector instruction
     converts int64 to double before AVX-512). */
  const int64_t magic_bits = INT64_C(0x4338000000000000);
  const double magic = 6755399441055744.0; /* 1.5·2**52 */
  int small = (PF_ACC)-1 < 0;              /* signed sums only: uint64 takes the loop below */
  for (int64_t x = 0; x < n && small; x += 64) {
    const int64_t end = x + 64 < n ? x + 64 : n;
    uint64_t wide = 0;
    for (int64_t i = x; i < end; i++) wide |= (uint64_t)((int64_t)sums[i] + (INT64_C(1) << 51)) >> 52;
    small = wide == 0;
  }
  if (small) {
    for (int64_t x = 0; x < n; x++) {
      const double d = factor * vl[x], scale = inv_factor * inv_vl[x];
      const int covered = (scaled ? scale : d) > 0;
      const int64_t sum_bits = (int64_t)sums[x] + magic_bits;
      double guess;
      memcpy(&guess, &sum_bits, sizeof guess);
      const double sum = guess - magic; /* rounded half to even as magic is added back: */
      const double rounded = (scaled ? sum * scale : sum / (d + (double)!covered)) + magic;
      int64_t q_bits;
      memcpy(&q_bits, &rounded, sizeof q_bits);
      out[x] = (PF_SOURCE)((q_bits - magic_bits) & -(int64_t)covered);
    }
    return 0;
  }
  for (int64_t x = 0; x < n; x++) {
    const PF_ACC s = sums[x];
    const double d = factor * vl[x];
    if (!(d > 0)) {
      out[x] = 0;
      continue;
    }
    const double guess = (double)s;
    if (fabs(guess) < 2251799813685248.0) { /* as above, one sum at a time */
      const double q = guess / d;
      out[x] = (PF_SOURCE)(int64_t)((q + magic) - magic);
      continue;
    }
    const PF_ACC count = (PF_ACC)d;
    PF_ACC q = s / count, r = s % count; /* floor division in the accumulator's own integers */
    if (s < 0 && r != 0) q--, r += count; /* C truncates toward zero; never true for unsigned */
    const PF_ACC twice = 2 * r; /* r < count, a block count: no overflow */
    q += (twice > count) || (twice == count && (q & 1));
    out[x] = (PF_SOURCE)q;
  }
#else
  for (int64_t x = 0; x < n; x++) {
    const PF_ACC s = sums[x];
    const double d = factor * vl[x], scale = inv_factor * inv_vl[x];
    const int covered = (scaled ? scale : d) > 0;
    const PF_ACC kept = covered ? s : (PF_ACC)0;
    out[x] = (PF_SOURCE)(scaled ? kept * (PF_ACC)scale : kept / (PF_ACC)(d + (double)!covered));
    nonfinite += !(s - s == 0); /* inf - inf and NaN - NaN are NaN */
  }
#endif
  return nonfinite;
}

/* weights (L x K) row-major as K rows of L (a run of blocks per kernel offset), malloc'ed */
static double *PF_F(transposed)(const double *w, int64_t L, int64_t K) {
  if (w == NULL) return NULL;
  double *t = (double *)malloc((size_t)(L * K > 0 ? L * K : 1) * sizeof(double));
  if (t == NULL) return NULL;
  for (int64_t l = 0; l < L; l++)
    for (int64_t k = 0; k < K; k++) t[k * L + l] = w[l * K + k];
  return t;
}

/* foldx_<suffix>(src, dst, dims, extra): fold_<suffix> with window weights (extra->weights) and,
 * with extra->divisor, normalised: dst is then the output (C, *out_size) of the patches' dtype,
 * channels extra->out_channel_stride apart, and padded rows [row_lo, row_hi) of dim 0, which must
 * lie inside the output (offset[0] <= row_lo, row_hi <= offset[0] + out_size[0]), are summed
 * band by band into a scratch accumulator of at most extra->scratch_bytes and divided into their
 * output rows while in cache. Without extra->divisor, dst is the accumulator as for fold_.
 * Returns the count of non-finite sums (float sums that overflowed, or inf and NaN patches), or -1
 * when the scratch could not be allocated. */
PF_AVX2_CLONES
int64_t PF_F(foldx)(const PF_SOURCE *src, void *dst, const pf_fold_dims *dims, const pf_fold_extra *extra) {
  assert(dims->ndim == 2 || dims->ndim == 3);
  const int64_t nd = dims->ndim, C = dims->channels, last = nd - 1;
  const int64_t Llast = dims->blocks[last], Klast = dims->kernel[last];
  double *wc = PF_F(transposed)(extra->weights[0] != NULL ? extra->weights[last] : NULL, Llast, Klast);
  if (extra->weights[0] != NULL && wc == NULL) return -1;
  const double *w0 = extra->weights[0], *w1 = extra->weights[1];
  if (extra->divisor[0] == NULL) { /* (weighted) sums into the caller's accumulator */
    if (nd == 3) {
      PF_F(fold3d)(src, (PF_ACC *)dst, dims, w0, w1, wc);
    } else {
      pf_fold2d g = PF_F(plane_args)(dims);
      g.wr = w0, g.wc = wc;
      PF_F(fold2d)(src, (PF_ACC *)dst, g);
    }
    free(wc);
    return 0;
  }
  PF_SOURCE *out = (PF_SOURCE *)dst;
  const int64_t lo = dims->row_lo, hi = dims->row_hi, ocs = extra->out_channel_stride;
  const int64_t W = extra->out_size[last], plane = nd == 3 ? dims->size[1] * dims->size[2] : dims->size[1];
  assert(extra->offset[0] <= lo && hi <= extra->offset[0] + extra->out_size[0]);
  /* rows of dim 0 per band: up to BAND, fewer where C channels of them would pass the scratch budget */
  int64_t rows = extra->scratch_bytes / (int64_t)sizeof(PF_ACC) / (C > 0 ? C * plane : 1);
  if (rows > BAND) rows = BAND;
  if (rows < 1) rows = 1;
  if (nd == 3) rows = 1; /* a volume: one depth row (C planes) at a time */
  PF_ACC *scratch = (PF_ACC *)malloc((size_t)(C * rows * plane > 0 ? C * rows * plane : 1) * sizeof(PF_ACC));
  double *inv_vl = (double *)malloc((size_t)(W > 0 ? W : 1) * sizeof(double));
  if (scratch == NULL || inv_vl == NULL) {
    free(scratch), free(inv_vl), free(wc);
    return -1;
  }
  const double *v0 = extra->divisor[0], *v1 = extra->divisor[1], *vl = extra->divisor[last];
  const int vl_exact = pf_exact_reciprocals(vl, inv_vl, W);
  int64_t nonfinite = 0;
  for (int64_t top = lo; top < hi; top += rows) {
    const int64_t bottom = top + rows < hi ? top + rows : hi;
    pf_fold_dims band = *dims;
    band.row_lo = top, band.row_hi = bottom, band.zero = 1, band.channel_stride = rows * plane;
    if (nd == 3) {
      PF_F(fold3d)(src, scratch, &band, w0, w1, wc);
    } else {
      pf_fold2d g = PF_F(plane_args)(&band);
      g.wr = w0, g.wc = wc;
      PF_F(fold2d)(src, scratch, g);
    }
    for (int64_t r = top; r < bottom; r++) {
      const int64_t z = r - extra->offset[0]; /* output row (2-D) or depth row (3-D) */
      const int64_t inner_rows = nd == 3 ? extra->out_size[1] : 1;
      for (int64_t y = 0; y < inner_rows; y++) {
        /* the divisor's row as the outer product of the per-dim vectors forms it */
        const double factor = nd == 3 ? v0[z] * v1[y] : v0[z];
        double inv_factor = 0;
        const int exact = vl_exact && pf_exact_reciprocals(&factor, &inv_factor, 1);
        const int64_t in_row = nd == 3 ? (y + extra->offset[1]) * dims->size[2] : 0;
        const int64_t out_row = nd == 3 ? (z * extra->out_size[1] + y) * W : z * W;
        if (!(factor > 0)) { /* a row no block reaches (every other one, dilated by 2): zeros */
          for (int64_t c = 0; c < C; c++) memset(out + c * ocs + out_row, 0, (size_t)W * sizeof(PF_SOURCE));
          continue;
        }
        for (int64_t c = 0; c < C; c++) {
          const PF_ACC *sums = scratch + c * rows * plane + (r - top) * plane + in_row + extra->offset[last];
          nonfinite += PF_F(finish_row)(sums, out + c * ocs + out_row, factor, vl, inv_factor, exact ? inv_vl : NULL, W);
        }
      }
    }
  }
  free(scratch), free(inv_vl), free(wc);
  return nonfinite;
}

#undef PF_F
#undef PF_SOURCE
#undef PF_ACC
#undef PF_SUFFIX
#undef PF_INTEGER
#undef PF_FLOAT_ACC
#undef PF_LOW
#undef PF_HIGH
