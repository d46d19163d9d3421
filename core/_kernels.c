/* Compiled inner loops for patchfold's CPU engine, called through ctypes (which releases the GIL,
 * so Python threads split the work). Plain C99 with one tiny module stub so the file also builds as
 * a regular extension. If it fails to build, patchfold falls back to its numpy loops.
 *
 * fold2d_<src>_<acc>: overlap-add of one 2-D patch matrix into padded output rows [lo, hi):
 *   acc[c*cs + (r - lo)*W + kj*d1 + j*s1] += src[((c*K0 + ki)*K1 + kj)*a + (i*L1 + j)*b]
 *   for every channel c, kernel offset (ki, kj) and block (i, j) with r = ki*d0 + i*s0 in [lo, hi).
 * (a, b) = (L, 1) reads the ncl layout (N, C*K, L); (1, C*K) reads nlc (N, L, C*K).
 * Output rows are visited in small bands so the accumulator stays in cache; with zero != 0 each band
 * is zeroed first (so threads touch fresh memory in parallel, while it is hot).
 */
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BAND 8

static inline int64_t ceil_div(int64_t x, int64_t y) { return x >= 0 ? (x + y - 1) / y : -((-x) / y); }

#define FOLD2D(NAME, ST, AT)                                                                        \
  void NAME(const ST *src, AT *acc, int64_t C, int64_t K0, int64_t K1, int64_t L0, int64_t L1,      \
            int64_t s0, int64_t s1, int64_t d0, int64_t d1, int64_t W, int64_t lo, int64_t hi,      \
            int64_t a, int64_t b, int64_t cs, int64_t zero) {                                       \
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
            if (b == 1 && d1 == 1 && K1 == 2 * s1) {                                                \
              /* half-overlapping blocks: kernel columns r and r + s1 of neighbouring blocks land  \
                 on the same output column; add them together, touching the output once */         \
              for (int64_t r = 0; r < s1; r++) {                                                    \
                const ST *lo = src + ((c * K0 + ki) * K1 + r) * a + i * L1;                         \
                const ST *hi = lo + s1 * a;                                                         \
                AT *out = row + r;                                                                  \
                out[0] += (AT)lo[0];                                                                \
                for (int64_t m = 1; m < L1; m++) out[m * s1] += (AT)lo[m] + (AT)hi[m - 1];          \
                out[L1 * s1] += (AT)hi[L1 - 1];                                                     \
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

FOLD2D(fold2d_f32_f32, float, float)
FOLD2D(fold2d_f64_f64, double, double)
FOLD2D(fold2d_f32_f64, float, double)
FOLD2D(fold2d_f16_f64, _Float16, double)
FOLD2D(fold2d_f16_f32, _Float16, float)
FOLD2D(fold2d_u8_i64, uint8_t, int64_t)
FOLD2D(fold2d_i8_i64, int8_t, int64_t)
FOLD2D(fold2d_u16_i64, uint16_t, int64_t)
FOLD2D(fold2d_i16_i64, int16_t, int64_t)
FOLD2D(fold2d_u32_i64, uint32_t, int64_t)
FOLD2D(fold2d_i32_i64, int32_t, int64_t)
FOLD2D(fold2d_i64_i64, int64_t, int64_t)
FOLD2D(fold2d_u64_u64, uint64_t, uint64_t)

/* unfold2d_<bits>: copy block rows [i0, i1) of one item x (C, H, W), contiguous, into out, with
 * zero padding (p0, p1) applied on the fly (no padded copy of the input). Elements are moved as
 * opaque words of the dtype's size, so one kernel per item size serves every dtype.
 *   ncl: out[((c*K0 + ki)*K1 + kj)*rs + (i - i0)*L1 + j]      (rs: out row stride, >= (i1-i0)*L1)
 *   nlc: out[((i - i0)*L1 + j)*P + (c*K0 + ki)*K1 + kj]        (P = C*K0*K1)
 * value = x[c][ki*d0 + i*s0 - p0][kj*d1 + j*s1 - p1], or 0 outside the image.
 */
#define UNFOLD2D(NAME, T)                                                                           \
  void NAME(const T *x, T *out, int64_t C, int64_t H, int64_t W, int64_t K0, int64_t K1,            \
            int64_t L1, int64_t s0, int64_t s1, int64_t d0, int64_t d1, int64_t p0, int64_t p1,     \
            int64_t i0, int64_t i1, int64_t nlc, int64_t rs) {                                       \
    const int64_t P = C * K0 * K1;                                                                  \
    if (nlc) { /* patch by patch: each (c, ki) run of K1 values is one contiguous write */          \
      for (int64_t i = i0; i < i1; i++)                                                             \
        for (int64_t c = 0; c < C; c++)                                                             \
          for (int64_t ki = 0; ki < K0; ki++) {                                                     \
            const int64_t y = ki * d0 + i * s0 - p0;                                                \
            const int inside = y >= 0 && y < H;                                                     \
            const T *src = x + (c * H + (inside ? y : 0)) * W;                                      \
            T *dst = out + (i - i0) * L1 * P + (c * K0 + ki) * K1;                                  \
            for (int64_t j = 0; j < L1; j++, dst += P) {                                            \
              const int64_t xs = j * s1 - p1;                                                       \
              if (!inside) {                                                                        \
                memset(dst, 0, (size_t)K1 * sizeof(T));                                             \
              } else if (xs >= 0 && xs + (K1 - 1) * d1 < W) {                                       \
                if (d1 == 1) memcpy(dst, src + xs, (size_t)K1 * sizeof(T));                         \
                else for (int64_t kj = 0; kj < K1; kj++) dst[kj] = src[xs + kj * d1];               \
              } else {                                                                              \
                for (int64_t kj = 0; kj < K1; kj++) {                                               \
                  const int64_t col = xs + kj * d1;                                                 \
                  dst[kj] = (col >= 0 && col < W) ? src[col] : 0;                                   \
                }                                                                                   \
              }                                                                                     \
            }                                                                                       \
          }                                                                                         \
      return;                                                                                       \
    }                                                                                               \
    /* ncl: one source row y serves the K1 output rows (c, ki, 0..K1-1) of block row i, so loop  \
       over it once while it is in cache */                                                        \
    for (int64_t c = 0; c < C; c++) {                                                               \
      for (int64_t ki = 0; ki < K0; ki++) {                                                         \
        for (int64_t i = i0; i < i1; i++) {                                                         \
          const int64_t y = ki * d0 + i * s0 - p0;                                                  \
          const int inside = y >= 0 && y < H;                                                       \
          for (int64_t kj = 0; kj < K1; kj++) {                                                     \
            T *dst = out + ((c * K0 + ki) * K1 + kj) * rs + (i - i0) * L1;                          \
            if (!inside) {                                                                          \
              memset(dst, 0, (size_t)L1 * sizeof(T));                                               \
              continue;                                                                             \
            }                                                                                       \
            /* blocks j whose column kj*d1 + j*s1 - p1 falls inside [0, W) */                       \
            const int64_t base = kj * d1 - p1;                                                      \
            int64_t j0 = ceil_div(-base, s1), j1 = ceil_div(W - base, s1);                          \
            if (j0 < 0) j0 = 0;                                                                     \
            if (j1 > L1) j1 = L1;                                                                   \
            if (j1 < j0) j1 = j0;                                                                   \
            const T *src = x + (c * H + y) * W + base;                                              \
            for (int64_t j = 0; j < j0; j++) dst[j] = 0;                                            \
            if (s1 == 1) {                                                                          \
              memcpy(dst + j0, src + j0, (size_t)(j1 - j0) * sizeof(T));                            \
            } else {                                                                                \
              for (int64_t j = j0; j < j1; j++) dst[j] = src[j * s1];                               \
            }                                                                                       \
            for (int64_t j = j1; j < L1; j++) dst[j] = 0;                                           \
          }                                                                                         \
        }                                                                                           \
      }                                                                                             \
    }                                                                                               \
  }

UNFOLD2D(unfold2d_8, uint8_t)
UNFOLD2D(unfold2d_16, uint16_t)
UNFOLD2D(unfold2d_32, uint32_t)
UNFOLD2D(unfold2d_64, uint64_t)

static struct PyModuleDef kernels_module = {PyModuleDef_HEAD_INIT, "_kernels", "patchfold's C loops (used via ctypes)", -1, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
