/* Compiled inner loops for patchfold's CPU engine, called through ctypes (which releases the GIL,
 * so Python threads split the work). C11 (and GCC/Clang's _Float16) with one tiny module stub so the
 * file also builds as a regular extension. If it fails to build, patchfold falls back to its numpy
 * loops.
 *
 * The loops are written once, in two template headers included here once per type:
 *   _kernels_fold.h    fold_<src>_<acc>(src, acc, const pf_fold_dims *): overlap-add;
 *                      foldx_<src>_<acc>(src, dst, dims, const pf_fold_extra *): the same with
 *                      window weights, or normalised in one pass into the patches' dtype
 *   _kernels_place.h   place_<src>(outputs, band, const pf_place_dims *): weighted patches added
 *                      at their own starts (apply's blending); divide_<src>(sums, out, const
 *                      pf_divide_dims *): finished rows divided by their total weight;
 *                      blend_<src>(chunk, out, const pf_blend_dims *): both, chunk by chunk
 *   _kernels_unfold.h  unfold_<bits>(x, out, const pf_unfold_dims *): block copy
 *   _kernels_transpose.h  transpose_<bits>: the 4 x 4-tiled transposition the nlc loops share
 *                      (included by _kernels_unfold.h, once per item size with it)
 *   _kernels_gather.h  gather_cl_<bits>(src, dst, const pf_gather_dims *): patches cut into a
 *                      channels-last batch (apply; included by _kernels_unfold.h likewise)
 * Dims, strides and ranges travel in the structs below (mirrored field for field by ctypes
 * Structures in patchfold/engines/compiled.py, whose checked wrappers are the only callers: they
 * verify dtypes, alignment, contiguity, writeability, overlap and every extent the loops touch
 * before calling). pf_fold_dims_size() and pf_unfold_dims_size() let the binding refuse a library
 * whose structs do not match its own.
 */
#include <Python.h>
#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Output rows per band: long enough that each patch row is read in runs of several blocks (the
 * prefetchers keep streaming), short enough that a band of one channel stays in L2. */
#define BAND 32

/* Spatial dims the structs have room for; 2-D loops leave entry 2 unused (zero). */
#define PF_MAX_DIMS 3

/* One call of fold_<src>_<acc>: one item's patch matrix into padded output rows [row_lo, row_hi)
 * of dim 0. All counts and steps in elements. */
typedef struct {
  int64_t ndim;                  /* spatial dims: 2 or 3 */
  int64_t channels;              /* C */
  int64_t kernel[PF_MAX_DIMS];   /* K per dim */
  int64_t blocks[PF_MAX_DIMS];   /* L per dim: blocks of the matrix */
  int64_t stride[PF_MAX_DIMS];
  int64_t dilation[PF_MAX_DIMS];
  int64_t size[PF_MAX_DIMS];     /* padded output size; size[0] unused (acc holds rows lo..hi) */
  int64_t row_lo, row_hi;        /* padded rows [lo, hi) of dim 0 held by acc */
  int64_t kernel_step;           /* a: between kernel rows of the matrix (ncl: L, nlc: 1) */
  int64_t block_step;            /* b: between blocks (ncl: 1, nlc: C*K) */
  int64_t channel_stride;        /* cs: between channels of acc (rows of dim 0 packed inside) */
  int64_t zero;                  /* nonzero: zero each band of acc before adding */
} pf_fold_dims;

/* One call of unfold_<bits>: block rows [row_lo, row_hi) and kernel rows [q_lo, q_hi) of one item
 * x (C, *size), contiguous, into the band of the matrix that holds those block rows. */
typedef struct {
  int64_t ndim;                  /* spatial dims: 2 or 3 */
  int64_t channels;              /* C */
  int64_t size[PF_MAX_DIMS];     /* x's spatial size (unpadded) */
  int64_t kernel[PF_MAX_DIMS];
  int64_t blocks[PF_MAX_DIMS];   /* L per dim (blocks[0] only bounds row_hi) */
  int64_t stride[PF_MAX_DIMS];
  int64_t dilation[PF_MAX_DIMS];
  int64_t padding[PF_MAX_DIMS];  /* zeros on both sides, applied on the fly */
  int64_t row_lo, row_hi;        /* block rows [lo, hi) of dim 0 */
  int64_t q_lo, q_hi;            /* kernel rows q = c*kernel[0] + offset in dim 0 */
  int64_t nlc;                   /* 0: ncl (N, C*K, L) band; 1: nlc (N, L, C*K) band */
  int64_t row_stride;            /* ncl: elements between rows of the band (>= its columns) */
} pf_unfold_dims;

int64_t pf_fold_dims_size(void) { return (int64_t)sizeof(pf_fold_dims); }
int64_t pf_unfold_dims_size(void) { return (int64_t)sizeof(pf_unfold_dims); }

/* The 2-D fold loop's own arguments (the 3-D loop calls it per plane with other values). */
typedef struct {
  int64_t C, K0, K1, L0, L1, s0, s1, d0, d1, W, lo, hi, a, b, cs, zero;
  /* a windowed sum: block (i, j) at kernel offset (ki, kj) is weighted by
     (wp * wr[i*K0 + ki]) * wc[kj*L1 + j]; wc == NULL: unweighted */
  const double *wr, *wc;
  double wp;
} pf_fold2d;

/* What foldx_<src>_<acc> adds to a pf_fold_dims call: window weights, and for a normalised fold
 * the divisor and the output it writes instead of an accumulator. */
typedef struct {
  const double *weights[PF_MAX_DIMS]; /* per dim (L_d x K_d) row-major, or weights[0] NULL: unweighted */
  const double *divisor[PF_MAX_DIMS]; /* per dim, over the output (out_size[d] values), or divisor[0]
                                         NULL: write the (weighted) sums into an accumulator as fold_ */
  int64_t out_size[PF_MAX_DIMS];      /* the output's spatial size (unpadded) */
  int64_t offset[PF_MAX_DIMS];        /* zero padding: padded position = output position + offset */
  int64_t out_channel_stride;         /* between channels of out, in elements (rows packed inside) */
  int64_t scratch_bytes;              /* at most this much accumulator per call (one band) */
} pf_fold_extra;

int64_t pf_fold_extra_size(void) { return (int64_t)sizeof(pf_fold_extra); }

/* One call of place_<src>: a batch of weighted output patches added into a float64 band at their
 * own starts (patchfold.apply's blending). The band holds positions [row0, row0 + band_size[0]) of
 * dim 0 (a chunk of the padded output's rows); the patches' starts are positions of the padded
 * output, and only their points in dim-0 positions [row_lo, row_hi) (inside the band) are added. */
typedef struct {
  int64_t ndim;                      /* spatial dims: 2 or 3 */
  int64_t count;                     /* patches in the batch */
  int64_t channels;                  /* C of each output patch */
  int64_t kernel[PF_MAX_DIMS];       /* output patch size per dim */
  int64_t dilation[PF_MAX_DIMS];
  int64_t band_size[PF_MAX_DIMS];    /* the band's extent per dim (channels are packed planes) */
  const int64_t *starts;             /* count x ndim: each patch's first band position per dim */
  const double *weights[PF_MAX_DIMS]; /* per dim: count x kernel[d], each patch's weights */
  int64_t row_lo, row_hi;            /* only positions [lo, hi) of dim 0 are added */
  int64_t row0;                      /* the dim-0 position of the band's first row */
  int64_t in_strides[2 + PF_MAX_DIMS]; /* the outputs' element strides: patch, channel, each dim
                                          (C-contiguous or channels-last, as the model gave them) */
} pf_place_dims;

int64_t pf_place_dims_size(void) { return (int64_t)sizeof(pf_place_dims); }

/* One call of divide_<dst>: finished band rows divided by the outer product of per-dim totals
 * (patchfold.apply's normalisation). */
typedef struct {
  int64_t ndim;                          /* spatial dims: 2 or 3 (rows are dim 0) */
  int64_t channels;
  int64_t size[PF_MAX_DIMS];             /* rows, then the extent of each other dim */
  int64_t sums_strides[1 + PF_MAX_DIMS]; /* element strides: channel, then each spatial dim */
  int64_t out_strides[1 + PF_MAX_DIMS];
  const double *totals[PF_MAX_DIMS];     /* per dim: size[d] total weights (inf: uncovered) */
  int64_t clear;                         /* nonzero: each sum read is set to 0 (the band's rows reused) */
} pf_divide_dims;

int64_t pf_divide_dims_size(void) { return (int64_t)sizeof(pf_divide_dims); }

/* One call of blend_<src>: the padded output rows [row_lo, row_hi) of dim 0 finished from the
 * batches that reach them, chunk by chunk: each batch's points in the chunk's rows added into the
 * float64 chunk (zeroed first, then place_<src>), then the chunk divided into out (divide_<src>).
 * The chunk is small enough to stay in cache, so the sums never travel to memory. */
typedef struct {
  int64_t count;                     /* batches */
  const void *const *outputs;        /* per batch: its outputs (B, C, *k) */
  const pf_place_dims *places;       /* per batch: its placement; band_size is the chunk's */
  int64_t chunk_rows;                /* the chunk (C, chunk_rows, *band_size[1:]) float64 */
  int64_t row_lo, row_hi;            /* padded output positions of dim 0 to finish */
  int64_t sums_offset;               /* element of the chunk where each row's image points start */
  pf_divide_dims divide;             /* the division of rows [row_lo, row_hi): totals[0] is row_lo's,
                                        size[0] and the pointers are set chunk by chunk */
} pf_blend_dims;

int64_t pf_blend_dims_size(void) { return (int64_t)sizeof(pf_blend_dims); }

/* One call of gather_cl_<bits>: a batch of patches cut from an image of any strides into a
 * channels-last batch (patchfold.apply's batches for torch models). */
typedef struct {
  int64_t ndim;                          /* spatial dims: 2 or 3 */
  int64_t count;                         /* patches */
  int64_t channels;                      /* C */
  int64_t kernel[PF_MAX_DIMS];           /* points per patch per dim */
  int64_t dilation[PF_MAX_DIMS];
  int64_t src_strides[1 + PF_MAX_DIMS];  /* src's element strides: channel, then each spatial dim */
  const int64_t *starts;                 /* count x ndim: each patch's first point in src */
} pf_gather_dims;

int64_t pf_gather_dims_size(void) { return (int64_t)sizeof(pf_gather_dims); }

/* The 2-D unfold loop's own arguments: plane (H, W), block rows [i0, i1), kernel rows [q0, q1),
 * rs the ncl row stride, P = the matrix's row length in nlc. */
typedef struct {
  int64_t H, W, K0, K1, L1, s0, s1, d0, d1, p0, p1, i0, i1, q0, q1, nlc, rs, P;
} pf_unfold2d;

static inline int64_t gcd(int64_t a, int64_t b) {
  while (b) {
    const int64_t r = a % b;
    a = b;
    b = r;
  }
  return a;
}

static inline int64_t ceil_div(int64_t x, int64_t y) { return x >= 0 ? (x + y - 1) / y : -((-x) / y); }

/* n runs of `bytes` bytes, run j from src + j*src_step to dst + j*dst_step (steps in bytes);
   inlined into each case below, so a run of a constant size becomes a few moves */
static inline __attribute__((always_inline)) void copy_runs_of(char *restrict dst, const char *restrict src,
                                                               int64_t n, int64_t dst_step, int64_t src_step,
                                                               int64_t bytes) {
  for (int64_t j = 0; j < n; j++) memcpy(dst + j * dst_step, src + j * src_step, (size_t)bytes);
}

static inline void copy_runs(char *restrict dst, const char *restrict src, int64_t n, int64_t dst_step,
                             int64_t src_step, int64_t bytes) {
  switch (bytes) {
    case 2: copy_runs_of(dst, src, n, dst_step, src_step, 2); return;
    case 4: copy_runs_of(dst, src, n, dst_step, src_step, 4); return;
    case 8: copy_runs_of(dst, src, n, dst_step, src_step, 8); return;
    case 12: copy_runs_of(dst, src, n, dst_step, src_step, 12); return;
    case 16: copy_runs_of(dst, src, n, dst_step, src_step, 16); return;
    case 24: copy_runs_of(dst, src, n, dst_step, src_step, 24); return;
    case 32: copy_runs_of(dst, src, n, dst_step, src_step, 32); return;
    case 48: copy_runs_of(dst, src, n, dst_step, src_step, 48); return;
    case 64: copy_runs_of(dst, src, n, dst_step, src_step, 64); return;
    case 128: copy_runs_of(dst, src, n, dst_step, src_step, 128); return;
    case 256: copy_runs_of(dst, src, n, dst_step, src_step, 256); return;
    default: copy_runs_of(dst, src, n, dst_step, src_step, bytes);
  }
}

/* PF_AVX2_CLONES on a loop: compiled twice, for AVX2 and for the baseline x86-64, the one the CPU
 * runs chosen once when the library loads (GCC/clang target_clones, through glibc's ifunc: not on
 * musl or other systems, where the baseline build alone is made). Only where it was measured to
 * pay: the normalised fold's float64 band sums and divisions (1x64x128^2 k3 p1: 11.9 -> 8.8 ms),
 * while the plain sums ran slower as AVX2 (a whole-library AVX2 build: 10.5 -> 12 ms). */
#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define PF_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef PF_AVX2_CLONES
#define PF_AVX2_CLONES
#endif

/* Template instantiation: name##_##suffix, after expanding the suffix macro */
#define PF_JOIN_(name, suffix) name##_##suffix
#define PF_JOIN(name, suffix) PF_JOIN_(name, suffix)

/* unfold_<bits> and transpose_<bits> for every item size (the unfold header includes the
   transposition's), then the transposition's dispatch on the item size for the fold loops */
#define PF_WORD uint8_t
#define PF_BITS 8
#include "_kernels_unfold.h"

#define PF_WORD uint16_t
#define PF_BITS 16
#include "_kernels_unfold.h"

#define PF_WORD uint32_t
#define PF_BITS 32
#include "_kernels_unfold.h"

#define PF_WORD uint64_t
#define PF_BITS 64
#include "_kernels_unfold.h"

/* dst[c*ds + r] = src[r*ss + c] for r < rows, c < cols, items of `itemsize` bytes (steps in items) */
static inline void transpose_items(void *restrict dst, int64_t ds, const void *restrict src, int64_t ss, int64_t rows,
                                   int64_t cols, size_t itemsize) {
  switch (itemsize) {
    case 1: transpose_8((uint8_t *)dst, ds, (const uint8_t *)src, ss, rows, cols); return;
    case 2: transpose_16((uint16_t *)dst, ds, (const uint16_t *)src, ss, rows, cols); return;
    case 4: transpose_32((uint32_t *)dst, ds, (const uint32_t *)src, ss, rows, cols); return;
    default: assert(itemsize == 8); transpose_64((uint64_t *)dst, ds, (const uint64_t *)src, ss, rows, cols);
  }
}

/* Whether every divisor of a row is 0 or a power of two (no mantissa bits): then scale[x] = 1/d
 * (0 where d is 0) is exact, so a sum times it is the quotient itself, rounded as the quotient
 * is; and so is a product of such reciprocals (the divisor's per-dim factors). The common
 * overlaps give such counts (stride k/2: 1 and 2 per dim). Inlined into the foldx clones. */
static inline __attribute__((always_inline)) int pf_exact_reciprocals(const double *restrict divisor,
                                                                      double *restrict scale, int64_t n) {
  uint64_t mantissas = 0;
  for (int64_t x = 0; x < n; x++) {
    uint64_t bits;
    memcpy(&bits, &divisor[x], sizeof bits);
    mantissas |= bits & UINT64_C(0x000FFFFFFFFFFFFF);
  }
  if (mantissas != 0) return 0;
  for (int64_t x = 0; x < n; x++) {
    const int covered = divisor[x] > 0; /* 0 or positive, as for finish_row */
    scale[x] = (double)covered / (divisor[x] + (double)!covered);
  }
  return 1;
}

/* fold_<src>_<acc> for every (patch dtype, accumulator dtype) pair patchfold folds in */
#define PF_SOURCE float
#define PF_ACC float
#define PF_SUFFIX f32_f32
#include "_kernels_fold.h"

#define PF_SOURCE double
#define PF_ACC double
#define PF_SUFFIX f64_f64
#include "_kernels_fold.h"

#define PF_SOURCE float
#define PF_ACC double
#define PF_SUFFIX f32_f64
#include "_kernels_fold.h"

#define PF_SOURCE _Float16
#define PF_ACC double
#define PF_SUFFIX f16_f64
#include "_kernels_fold.h"

#define PF_SOURCE _Float16
#define PF_ACC float
#define PF_SUFFIX f16_f32
#include "_kernels_fold.h"

#define PF_INTEGER 1
#define PF_SOURCE uint8_t
#define PF_ACC int64_t
#define PF_SUFFIX u8_i64
#include "_kernels_fold.h"

#define PF_INTEGER 1
#define PF_SOURCE int8_t
#define PF_ACC int64_t
#define PF_SUFFIX i8_i64
#include "_kernels_fold.h"

#define PF_INTEGER 1
#define PF_SOURCE uint16_t
#define PF_ACC int64_t
#define PF_SUFFIX u16_i64
#include "_kernels_fold.h"

#define PF_INTEGER 1
#define PF_SOURCE int16_t
#define PF_ACC int64_t
#define PF_SUFFIX i16_i64
#include "_kernels_fold.h"

#define PF_INTEGER 1
#define PF_SOURCE uint32_t
#define PF_ACC int64_t
#define PF_SUFFIX u32_i64
#include "_kernels_fold.h"

#define PF_INTEGER 1
#define PF_SOURCE int32_t
#define PF_ACC int64_t
#define PF_SUFFIX i32_i64
#include "_kernels_fold.h"

#define PF_INTEGER 1
#define PF_SOURCE int64_t
#define PF_ACC int64_t
#define PF_SUFFIX i64_i64
#include "_kernels_fold.h"

#define PF_INTEGER 1
#define PF_SOURCE uint64_t
#define PF_ACC uint64_t
#define PF_SUFFIX u64_u64
#include "_kernels_fold.h"

/* windowed folds of integer patches: summed in float64, rounded and clipped to the dtype */
#define PF_INTEGER 1
#define PF_FLOAT_ACC 1
#define PF_SOURCE uint8_t
#define PF_ACC double
#define PF_SUFFIX u8_f64
#define PF_LOW 0.0
#define PF_HIGH 255.0
#include "_kernels_fold.h"

#define PF_INTEGER 1
#define PF_FLOAT_ACC 1
#define PF_SOURCE int8_t
#define PF_ACC double
#define PF_SUFFIX i8_f64
#define PF_LOW -128.0
#define PF_HIGH 127.0
#include "_kernels_fold.h"

#define PF_INTEGER 1
#define PF_FLOAT_ACC 1
#define PF_SOURCE uint16_t
#define PF_ACC double
#define PF_SUFFIX u16_f64
#define PF_LOW 0.0
#define PF_HIGH 65535.0
#include "_kernels_fold.h"

#define PF_INTEGER 1
#define PF_FLOAT_ACC 1
#define PF_SOURCE int16_t
#define PF_ACC double
#define PF_SUFFIX i16_f64
#define PF_LOW -32768.0
#define PF_HIGH 32767.0
#include "_kernels_fold.h"

#define PF_INTEGER 1
#define PF_FLOAT_ACC 1
#define PF_SOURCE uint32_t
#define PF_ACC double
#define PF_SUFFIX u32_f64
#define PF_LOW 0.0
#define PF_HIGH 4294967295.0
#include "_kernels_fold.h"

#define PF_INTEGER 1
#define PF_FLOAT_ACC 1
#define PF_SOURCE int32_t
#define PF_ACC double
#define PF_SUFFIX i32_f64
#define PF_LOW -2147483648.0
#define PF_HIGH 2147483647.0
#include "_kernels_fold.h"

/* place_<src>, divide_<src> and blend_<src> for the output dtypes patchfold.apply blends */
#define PF_SOURCE float
#define PF_SUFFIX f32
#include "_kernels_place.h"

#define PF_SOURCE double
#define PF_SUFFIX f64
#include "_kernels_place.h"

/* ----- a batch of loop calls on a caller-given OpenMP team --------------------------------------
 * The checked Python wrappers can record their calls (function, two data pointers, the dims struct)
 * instead of making them; pf_run_batch then runs the recorded pieces: each piece's calls in order,
 * the pieces spread over the threads that call run_pieces, each thread taking the next piece not
 * yet taken (so a late thread never holds the others up). With `parallel`, the address of
 * libgomp's GOMP_parallel (the OpenMP runtime torch already runs its own ops on), the pieces go to
 * that team; without it, the calling thread runs them all. No call is made twice or skipped. */
typedef struct {
  void *function;   /* void f(void *, void *, const void *): unfold_<bits> or fold_<src>_<acc> */
  void *first;
  void *second;
  const void *dims;
} pf_call;

typedef struct {
  const pf_call *calls;
  const int64_t *piece_ends;  /* piece p holds calls [piece_ends[p - 1], piece_ends[p]) */
  int64_t pieces;
  int64_t next;               /* the next piece to take (atomic) */
} pf_batch;

typedef void (*pf_loop_fn)(void *, void *, const void *);
typedef void (*pf_gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);

static void run_pieces(void *argument) {
  pf_batch *batch = argument;
  for (;;) {
    int64_t piece = __atomic_fetch_add(&batch->next, 1, __ATOMIC_RELAXED);
    if (piece >= batch->pieces) return;
    int64_t lo = piece ? batch->piece_ends[piece - 1] : 0, hi = batch->piece_ends[piece];
    for (int64_t i = lo; i < hi; i++) {
      const pf_call *call = &batch->calls[i];
      ((pf_loop_fn)call->function)(call->first, call->second, call->dims);
    }
  }
}

int64_t pf_batch_size(void) { return (int64_t)sizeof(pf_batch); }

void pf_run_batch(pf_batch *batch, void *parallel, int64_t threads) {
  assert(batch->pieces >= 0 && batch->next == 0);
  if (parallel != NULL && threads > 1 && batch->pieces > 1) {
    unsigned team = (unsigned)(threads < batch->pieces ? threads : batch->pieces);
    ((pf_gomp_parallel_fn)parallel)(run_pieces, batch, team, 0);
  } else {
    run_pieces(batch);
  }
}

static struct PyModuleDef kernels_module = {PyModuleDef_HEAD_INIT, "_kernels", "patchfold's C loops (used via ctypes)", -1, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
