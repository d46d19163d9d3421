/* Compiled inner loops for patchfold's CPU engine, called through ctypes (which releases the GIL,
 * so Python threads split the work). C11 (and GCC/Clang's _Float16) with one tiny module stub so the
 * file also builds as a regular extension. If it fails to build, patchfold falls back to its numpy
 * loops.
 *
 * fold2d_<src>_<acc>: overlap-add of one 2-D patch matrix into padded output rows [lo, hi):
 *   acc[c*cs + (r - lo)*W + kj*d1 + j*s1] += src[((c*K0 + ki)*K1 + kj)*a + (i*L1 + j)*b]
 *   for every channel c, kernel offset (ki, kj) and block (i, j) with r = ki*d0 + i*s0 in [lo, hi).
 * (a, b) = (L, 1) reads the ncl layout (N, C*K, L); (1, C*K) reads nlc (N, L, C*K).
 * Output rows are visited in bands so the accumulator stays in cache; with zero != 0 each band is
 * zeroed first (so threads touch fresh memory in parallel, while it is hot). fold3d_<src>_<acc>
 * (below) runs the same loop over the planes of a volume.
 */
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Output rows per band: long enough that each patch row is read in runs of several blocks (the
 * prefetchers keep streaming), short enough that a band of one channel stays in L2. */
#define BAND 32

static inline int64_t gcd(int64_t a, int64_t b) {
  while (b) {
    const int64_t r = a % b;
    a = b;
    b = r;
  }
  return a;
}

static inline int64_t ceil_div(int64_t x, int64_t y) { return x >= 0 ? (x + y - 1) / y : -((-x) / y); }

#define FOLD2D(NAME, ST, AT)                                                                        \
  void NAME(const ST *src, AT *acc, int64_t C, int64_t K0, int64_t K1, int64_t L0, int64_t L1,      \
            int64_t s0, int64_t s1, int64_t d0, int64_t d1, int64_t W, int64_t lo, int64_t hi,      \
            int64_t a, int64_t b, int64_t cs, int64_t zero) {                                       \
    const int64_t g = gcd(d1, s1), t = s1 / g, m = d1 / g; /* t*d1 = m*s1, without overflow */     \
    for (int64_t top = lo; top < hi; top += BAND) {                                                 \
      const int64_t bottom = top + BAND < hi ? top + BAND : hi;                                     \
      if (zero)                                                                                     \
        for (int64_t c = 0; c < C; c++)                                                             \
          memset(acc + c * cs + (top - lo) * W, 0, (size_t)((bottom - top) * W) * sizeof(AT));      \
      for (int64_t c = 0; c < C; c++) {                                                             \
        for (int64_t ki = 0; ki < K0; ki++) {                                                       \
          const int64_t base = ki * d0;                                                             \
          int64_t i0 = ceil_div(top - base, s0), i1 = ceil_div(bottom - base, s0);                  \
          if (i0 < 0) i0 = 0;                                                                       \
          if (i1 > L0) i1 = L0;                                                                     \
          for (int64_t i = i0; i < i1; i++) {                                                       \
            AT *row = acc + c * cs + (base + i * s0 - lo) * W;                                  \
            if (a == 1) { /* nlc: one patch row's kernel offsets are contiguous */                 \
              const ST *in = src + (c * K0 + ki) * K1 + i * L1 * b;                                 \
              for (int64_t j = 0; j < L1; j++) {                                                    \
                AT *out = row + j * s1;                                                             \
                const ST *patch = in + j * b;                                                       \
                for (int64_t kj = 0; kj < K1; kj++) out[kj * d1] += (AT)patch[kj];                  \
              }                                                                                     \
              continue;                                                                             \
            }                                                                                       \
            if (b == 1 && K1 > t) {                                                                 \
              /* kernel columns r, r + t, r + 2t, ... land on the same output columns, shifted by  \
                 m blocks each: sum them first, touching each output column once per residue r */  \
              for (int64_t r = 0; r < t; r++) {                                                     \
                const int64_t n = (K1 - r + t - 1) / t, shift = (n - 1) * m;                        \
                const ST *in = src + ((c * K0 + ki) * K1 + r) * a + i * L1;                         \
                const int64_t step = t * a; /* from kernel column r + q*t to r + (q+1)*t */         \
                AT *out = row + r * d1;                                                             \
                for (int64_t J = 0; J < L1 + shift; J++) {                                          \
                  if (J == shift && n == 2) { /* the interior, where every column has a block */   \
                    for (; J < L1; J++) out[J * s1] += (AT)in[J] + (AT)in[step + J - m];            \
                    if (J >= L1 + shift) break;                                                     \
                  } else if (J == shift && shift < L1) {                                            \
                    for (; J < L1; J++) {                                                           \
                      AT sum = 0;                                                                   \
                      for (int64_t q = 0; q < n; q++) sum += (AT)in[q * step + J - q * m];          \
                      out[J * s1] += sum;                                                           \
                    }                                                                               \
                    if (J >= L1 + shift) break;                                                     \
                  }                                                                                 \
                  /* head or tail: only columns q with 0 <= J - q*m < L1 */                         \
                  const int64_t qlo = J < L1 ? 0 : (J - L1) / m + 1;                                \
                  const int64_t qhi = J / m < n - 1 ? J / m : n - 1;                                \
                  AT sum = 0;                                                                       \
                  for (int64_t q = qlo; q <= qhi; q++) sum += (AT)in[q * step + J - q * m];         \
                  out[J * s1] += sum;                                                               \
                }                                                                                   \
              }                                                                                     \
              continue;                                                                             \
            }                                                                                       \
            for (int64_t kj = 0; kj < K1; kj++) {                                                   \
              const ST *in = src + ((c * K0 + ki) * K1 + kj) * a + i * L1 * b;                      \
              AT *out = row + kj * d1;                                                              \
              if (s1 == 1 && b == 1) {                                                              \
                for (int64_t j = 0; j < L1; j++) out[j] += (AT)in[j];                               \
              } else {                                                                              \
                for (int64_t j = 0; j < L1; j++) out[j * s1] += (AT)in[j * b];                      \
              }                                                                                     \
            }                                                                                       \
          }                                                                                         \
        }                                                                                           \
      }                                                                                             \
    }                                                                                               \
  }

/* fold3d_<src>_<acc>: the 3-D overlap-add into padded depth rows [lo, hi) of acc (C, hi-lo, H, W),
 * H and W padded: every (channel c, depth offset A, depth block p) with A*d0 + p*s0 = z is a 2-D
 * fold of one plane of patches (one channel, kernel K1 x K2, blocks L1 x L2) into depth row z. */
#define FOLD3D(NAME, NAME2D, ST, AT)                                                                \
  void NAME(const ST *src, AT *acc, int64_t C, int64_t K0, int64_t K1, int64_t K2, int64_t L0,      \
            int64_t L1, int64_t L2, int64_t s0, int64_t s1, int64_t s2, int64_t d0, int64_t d1,     \
            int64_t d2, int64_t H, int64_t W, int64_t lo, int64_t hi, int64_t a, int64_t b,         \
            int64_t cs, int64_t zero) {                                                             \
    for (int64_t z = lo; z < hi; z++) {                                                             \
      AT *plane = acc + (z - lo) * H * W;                                                           \
      if (zero)                                                                                     \
        for (int64_t c = 0; c < C; c++) memset(plane + c * cs, 0, (size_t)(H * W) * sizeof(AT));    \
      for (int64_t A = 0; A < K0; A++) {                                                            \
        const int64_t rest = z - A * d0;                                                            \
        if (rest < 0 || rest % s0 || rest / s0 >= L0) continue;                                     \
        const int64_t p = rest / s0;                                                                \
        for (int64_t c = 0; c < C; c++)                                                             \
          NAME2D(src + (c * K0 + A) * K1 * K2 * a + p * L1 * L2 * b, plane + c * cs, 1, K1, K2, L1,  \
                 L2, s1, s2, d1, d2, W, 0, H, a, b, 0, 0);                                          \
      }                                                                                             \
    }                                                                                               \
  }

FOLD2D(fold2d_f32_f32, float, float)
FOLD3D(fold3d_f32_f32, fold2d_f32_f32, float, float)
FOLD2D(fold2d_f64_f64, double, double)
FOLD3D(fold3d_f64_f64, fold2d_f64_f64, double, double)
FOLD2D(fold2d_f32_f64, float, double)
FOLD3D(fold3d_f32_f64, fold2d_f32_f64, float, double)
FOLD2D(fold2d_f16_f64, _Float16, double)
FOLD3D(fold3d_f16_f64, fold2d_f16_f64, _Float16, double)
FOLD2D(fold2d_f16_f32, _Float16, float)
FOLD3D(fold3d_f16_f32, fold2d_f16_f32, _Float16, float)
FOLD2D(fold2d_u8_i64, uint8_t, int64_t)
FOLD3D(fold3d_u8_i64, fold2d_u8_i64, uint8_t, int64_t)
FOLD2D(fold2d_i8_i64, int8_t, int64_t)
FOLD3D(fold3d_i8_i64, fold2d_i8_i64, int8_t, int64_t)
FOLD2D(fold2d_u16_i64, uint16_t, int64_t)
FOLD3D(fold3d_u16_i64, fold2d_u16_i64, uint16_t, int64_t)
FOLD2D(fold2d_i16_i64, int16_t, int64_t)
FOLD3D(fold3d_i16_i64, fold2d_i16_i64, int16_t, int64_t)
FOLD2D(fold2d_u32_i64, uint32_t, int64_t)
FOLD3D(fold3d_u32_i64, fold2d_u32_i64, uint32_t, int64_t)
FOLD2D(fold2d_i32_i64, int32_t, int64_t)
FOLD3D(fold3d_i32_i64, fold2d_i32_i64, int32_t, int64_t)
FOLD2D(fold2d_i64_i64, int64_t, int64_t)
FOLD3D(fold3d_i64_i64, fold2d_i64_i64, int64_t, int64_t)
FOLD2D(fold2d_u64_u64, uint64_t, uint64_t)
FOLD3D(fold3d_u64_u64, fold2d_u64_u64, uint64_t, uint64_t)

/* unfold2d_<bits> (unfold3d_<bits> below): copy block rows [i0, i1) of one item x (C, H, W),
 * contiguous, into out, with zero padding (p0, p1) applied on the fly (no padded copy of the input).
 * Elements are moved as opaque words of the dtype's size, so one kernel per item size serves every
 * dtype.
 *   ncl: out[((c*K0 + ki)*K1 + kj)*rs + (i - i0)*L1 + j]      (rs: out row stride, >= (i1-i0)*L1)
 *   nlc: out[((i - i0)*L1 + j)*P + (c*K0 + ki)*K1 + kj]        (P = C*K0*K1)
 * value = x[c][ki*d0 + i*s0 - p0][kj*d1 + j*s1 - p1], or 0 outside the image.
 * Only kernel rows q = c*K0 + ki in [q0, q1) are written: for ncl these are contiguous output rows,
 * so threads given disjoint q ranges fill (and first touch) disjoint memory.
 *
 * The inner copies dispatch on the stride (ncl) or run length (nlc) so that common values are
 * compile-time constants: the compiler then vectorises the strided gather, or turns each run into
 * a few moves instead of a memcpy call; other values take the generic loop.
 */
#define GATHER_CASE(T, S)                                                                           \
  case S:                                                                                           \
    for (int64_t j = 0; j < n; j++) dst[j] = src[j * S];                                            \
    return;

#define DEINTERLEAVE_CASE(S)                                                                        \
  case S:                                                                                           \
    for (int64_t j = 0; j < n; j++)                                                                 \
      for (int64_t p = 0; p < S; p++) dst[p * rs + j] = src[j * S + p];                             \
    return 1;

#define DEFINE_GATHER(T)                                                                            \
  static inline void gather_##T(T *restrict dst, const T *restrict src, int64_t n, int64_t step) {  \
    switch (step) {                                                                                 \
      case 1:                                                                                       \
        memcpy(dst, src, (size_t)n * sizeof(T));                                                    \
        return;                                                                                     \
      GATHER_CASE(T, 2)                                                                             \
      GATHER_CASE(T, 3)                                                                             \
      GATHER_CASE(T, 4)                                                                             \
      GATHER_CASE(T, 6)                                                                             \
      GATHER_CASE(T, 8)                                                                             \
      GATHER_CASE(T, 16)                                                                            \
      GATHER_CASE(T, 32)                                                                            \
      default:                                                                                      \
        for (int64_t j = 0; j < n; j++) dst[j] = src[j * step];                                     \
    }                                                                                               \
  }                                                                                                 \
  /* split n groups of `step` consecutive values into `step` rows rs apart (row p gets value p of \
     each group); returns 0 for a step it has no vectorisable case for */                         \
  static inline int deinterleave_##T(T *restrict dst, int64_t rs, const T *restrict src, int64_t n, \
                                     int64_t step) {                                                \
    switch (step) {                                                                                 \
      DEINTERLEAVE_CASE(2)                                                                          \
      DEINTERLEAVE_CASE(4)                                                                          \
      DEINTERLEAVE_CASE(8)                                                                          \
      default:                                                                                      \
        return 0;                                                                                   \
    }                                                                                               \
  }

#define RUNS_CASE(BYTES)                                                                            \
  case BYTES:                                                                                       \
    for (int64_t j = 0; j < n; j++) memcpy(dst + j * dst_step, src + j * src_step, BYTES);          \
    return;

/* n runs of `bytes` bytes, run j from src + j*src_step to dst + j*dst_step (steps in bytes) */
static inline void copy_runs(char *restrict dst, const char *restrict src, int64_t n, int64_t dst_step,
                             int64_t src_step, int64_t bytes) {
  switch (bytes) {
    RUNS_CASE(2)
    RUNS_CASE(4)
    RUNS_CASE(8)
    RUNS_CASE(12)
    RUNS_CASE(16)
    RUNS_CASE(24)
    RUNS_CASE(32)
    RUNS_CASE(48)
    RUNS_CASE(64)
    RUNS_CASE(128)
    RUNS_CASE(256)
    default:
      for (int64_t j = 0; j < n; j++) memcpy(dst + j * dst_step, src + j * src_step, (size_t)bytes);
  }
}

#define UNFOLD(NAME, NAME3D, T)                                                                         \
  DEFINE_GATHER(T)                                                                                  \
  static void plane_##T(const T *x, T *out, int64_t H, int64_t W, int64_t K0, int64_t K1,           \
                        int64_t L1, int64_t s0, int64_t s1, int64_t d0, int64_t d1, int64_t p0,     \
                        int64_t p1, int64_t i0, int64_t i1, int64_t q0, int64_t q1, int64_t nlc,    \
                        int64_t rs, int64_t P);                                                     \
  void NAME(const T *x, T *out, int64_t C, int64_t H, int64_t W, int64_t K0, int64_t K1,            \
            int64_t L1, int64_t s0, int64_t s1, int64_t d0, int64_t d1, int64_t p0, int64_t p1,     \
            int64_t i0, int64_t i1, int64_t q0, int64_t q1, int64_t nlc, int64_t rs) {              \
    plane_##T(x, out, H, W, K0, K1, L1, s0, s1, d0, d1, p0, p1, i0, i1, q0, q1, nlc, rs,            \
              C * K0 * K1);                                                                         \
  }                                                                                                 \
  /* 3-D: every (channel c, depth offset a, depth block p) is a 2-D unfold of one plane of x (or  \
     of zeros, in the depth padding) into K1*K2 rows (ncl) or columns (nlc) of the matrix.        \
     Block rows [lo, hi) are depth blocks here; q = c*K0 + a. */                                   \
  void NAME3D(const T *x, T *out, int64_t C, int64_t D, int64_t H, int64_t W, int64_t K0,          \
                 int64_t K1, int64_t K2, int64_t L1, int64_t L2, int64_t s0, int64_t s1,            \
                 int64_t s2, int64_t d0, int64_t d1, int64_t d2, int64_t p0, int64_t p1,            \
                 int64_t p2, int64_t lo, int64_t hi, int64_t q0, int64_t q1, int64_t nlc,           \
                 int64_t rs) {                                                                      \
    const int64_t P = C * K0 * K1 * K2, plane = L1 * L2, patch = K1 * K2;                          \
    for (int64_t q = q0; q < q1; q++) {                                                             \
      const int64_t c = q / K0, a = q % K0;                                                         \
      for (int64_t p = lo; p < hi; p++) {                                                           \
        const int64_t z = a * d0 + p * s0 - p0;                                                     \
        T *base = nlc ? out + (p - lo) * plane * P + q * patch : out + q * patch * rs + (p - lo) * plane; \
        if (z >= 0 && z < D) {                                                                      \
          plane_##T(x + (c * D + z) * H * W, base, H, W, K1, K2, L2, s1, s2, d1, d2, p1, p2, 0, L1, \
                    0, K1, nlc, rs, P);                                                             \
        } else if (nlc) {                                                                           \
          for (int64_t j = 0; j < plane; j++) memset(base + j * P, 0, (size_t)patch * sizeof(T));   \
        } else {                                                                                    \
          for (int64_t r = 0; r < patch; r++) memset(base + r * rs, 0, (size_t)plane * sizeof(T));  \
        }                                                                                           \
      }                                                                                             \
    }                                                                                               \
  }                                                                                                 \
  static void plane_##T(const T *x, T *out, int64_t H, int64_t W, int64_t K0, int64_t K1,           \
                        int64_t L1, int64_t s0, int64_t s1, int64_t d0, int64_t d1, int64_t p0,     \
                        int64_t p1, int64_t i0, int64_t i1, int64_t q0, int64_t q1, int64_t nlc,    \
                        int64_t rs, int64_t P) {                                                    \
    /* blocks j in [jf0, jf1) have all K1 columns xs + kj*d1 inside [0, W) */                      \
    int64_t jf0 = ceil_div(p1, s1), jf1 = ceil_div(W - (K1 - 1) * d1 + p1, s1);                     \
    if (jf1 > L1) jf1 = L1;                                                                         \
    if (jf0 > jf1) jf0 = jf1;                                                                       \
    if (nlc) { /* patch by patch: each (c, ki) run of K1 values is one contiguous write */          \
      for (int64_t i = i0; i < i1; i++)                                                             \
        for (int64_t q = q0; q < q1; q++) {                                                         \
          const int64_t c = q / K0, ki = q % K0;                                                    \
          const int64_t y = ki * d0 + i * s0 - p0;                                                  \
          const int inside = y >= 0 && y < H;                                                       \
          const T *src = x + (c * H + (inside ? y : 0)) * W;                                        \
          T *row = out + (i - i0) * L1 * P + q * K1;                                                \
          for (int64_t j = 0; j < L1; j++) {                                                        \
            T *dst = row + j * P;                                                                   \
            if (!inside) {                                                                          \
              memset(dst, 0, (size_t)K1 * sizeof(T));                                               \
            } else if (j >= jf0 && j < jf1) {                                                       \
              if (d1 == 1) { /* the whole run of full blocks at once */                            \
                copy_runs((char *)dst, (const char *)(src + (j * s1 - p1)), jf1 - j, P * sizeof(T),  \
                          s1 * sizeof(T), K1 * sizeof(T));                                          \
                j = jf1 - 1;                                                                        \
              } else {                                                                              \
                for (int64_t kj = 0; kj < K1; kj++) dst[kj] = src[j * s1 - p1 + kj * d1];           \
              }                                                                                     \
            } else {                                                                                \
              for (int64_t kj = 0; kj < K1; kj++) {                                                 \
                const int64_t col = j * s1 - p1 + kj * d1;                                          \
                dst[kj] = (col >= 0 && col < W) ? src[col] : 0;                                     \
              }                                                                                     \
            }                                                                                       \
          }                                                                                         \
        }                                                                                           \
      return;                                                                                       \
    }                                                                                               \
    /* ncl: one source row y serves the K1 output rows (c, ki, 0..K1-1) of block row i, so loop  \
       over it once while it is in cache. Columns repeat across kernel columns: kj and kj - t     \
       (t*d1 a multiple of s1) read the same source columns shifted by m = t*d1/s1 blocks, so     \
       output row kj is mostly a copy of row kj - t, just written and still in cache. */         \
    const int64_t g = gcd(d1, s1), t = s1 / g, m = d1 / g; /* t*d1 = m*s1, without overflow */     \
    for (int64_t q = q0; q < q1; q++) {                                                             \
      const int64_t c = q / K0, ki = q % K0;                                                        \
      for (int64_t i = i0; i < i1; i++) {                                                           \
        const int64_t y = ki * d0 + i * s0 - p0;                                                    \
        const int inside = y >= 0 && y < H;                                                         \
        int64_t kj = 0;                                                                             \
        if (inside && d1 == 1 && K1 >= s1) {                                                        \
          /* kernel columns 0..s1-1 take the s1 phases of the row: split it in one pass where all  \
             s1 columns of a block are inside, then finish the edges column by column */          \
          int64_t J0 = ceil_div(p1, s1), J1 = ceil_div(W - s1 + 1 + p1, s1);                        \
          if (J1 > L1) J1 = L1;                                                                     \
          if (J0 > J1) J0 = J1;                                                                     \
          T *first = out + q * K1 * rs + (i - i0) * L1;                                             \
          const T *row = x + (c * H + y) * W;                                                       \
          if (J1 > J0 && deinterleave_##T(first + J0, rs, row + (J0 * s1 - p1), J1 - J0, s1)) {     \
            for (; kj < s1; kj++) {                                                                 \
              T *dst = first + kj * rs;                                                             \
              for (int64_t j = 0; j < J0; j++) {                                                    \
                const int64_t col = kj + j * s1 - p1;                                               \
                dst[j] = (col >= 0 && col < W) ? row[col] : 0;                                      \
              }                                                                                     \
              for (int64_t j = J1; j < L1; j++) {                                                   \
                const int64_t col = kj + j * s1 - p1;                                               \
                dst[j] = (col >= 0 && col < W) ? row[col] : 0;                                      \
              }                                                                                     \
            }                                                                                       \
          }                                                                                         \
        }                                                                                           \
        for (; kj < K1; kj++) {                                                                     \
          T *dst = out + (q * K1 + kj) * rs + (i - i0) * L1;                                        \
          if (!inside) {                                                                            \
            memset(dst, 0, (size_t)L1 * sizeof(T));                                                 \
            continue;                                                                               \
          }                                                                                         \
          if (kj >= t && m < L1) {                                                                  \
            memcpy(dst, dst - t * rs + m, (size_t)(L1 - m) * sizeof(T));                            \
            const T *row = x + (c * H + y) * W;                                                     \
            for (int64_t j = L1 - m; j < L1; j++) {                                                 \
              const int64_t col = kj * d1 + j * s1 - p1;                                            \
              dst[j] = (col >= 0 && col < W) ? row[col] : 0;                                        \
            }                                                                                       \
            continue;                                                                               \
          }                                                                                         \
          /* blocks j whose column kj*d1 + j*s1 - p1 falls inside [0, W) */                         \
          const int64_t base = kj * d1 - p1;                                                        \
          int64_t j0 = ceil_div(-base, s1), j1 = ceil_div(W - base, s1);                            \
          if (j0 < 0) j0 = 0;                                                                       \
          if (j1 > L1) j1 = L1;                                                                     \
          if (j0 > L1) j0 = L1; /* padding wider than the blocks reach */                          \
          if (j1 < j0) j1 = j0;                                                                     \
          for (int64_t j = 0; j < j0; j++) dst[j] = 0;                                              \
          if (j1 > j0) gather_##T(dst + j0, x + ((c * H + y) * W + base + j0 * s1), j1 - j0, s1);    \
          for (int64_t j = j1; j < L1; j++) dst[j] = 0;                                             \
        }                                                                                           \
      }                                                                                             \
    }                                                                                               \
  }

UNFOLD(unfold2d_8, unfold3d_8, uint8_t)
UNFOLD(unfold2d_16, unfold3d_16, uint16_t)
UNFOLD(unfold2d_32, unfold3d_32, uint32_t)
UNFOLD(unfold2d_64, unfold3d_64, uint64_t)

static struct PyModuleDef kernels_module = {PyModuleDef_HEAD_INIT, "_kernels", "patchfold's C loops (used via ctypes)", -1, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
