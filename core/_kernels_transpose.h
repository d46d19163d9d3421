/* The tile transposition of _kernels.c, written once against the type macros
 *   PF_WORD   an unsigned integer type of the item size (values move as opaque words)
 *   PF_BITS   its size in bits (transpose_<bits> is the entry point)
 * and included at the top of _kernels_unfold.h, so each item size's instantiation there brings
 * its transposition with it (that file undefines the macros at its end).
 *
 * transpose_<bits>(dst, ds, src, ss, rows, cols): dst[c*ds + r] = src[r*ss + c] for r < rows,
 * c < cols. The nlc layout's loops go through it: fold turns a tile of patches (rows of C*K
 * values) into C*K runs of blocks, unfold turns the ncl rows of a block row into patches. A plain
 * double loop stores one scalar per step with one side strided; here 4 x 4 tiles go through
 * vector registers (four loads, eight shuffles, four stores), about 3x faster on a tile that is in
 * cache. Compilers without __builtin_shufflevector take the plain loop.
 */

#define PF_T(name) PF_JOIN(name, PF_BITS)

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define PF_HAVE_SHUFFLE 1
#endif
#endif

#ifdef PF_HAVE_SHUFFLE
typedef PF_WORD PF_T(pf_vec4) __attribute__((vector_size(4 * sizeof(PF_WORD))));

static inline __attribute__((always_inline)) PF_T(pf_vec4) PF_T(load4)(const PF_WORD *p) {
  PF_T(pf_vec4) v;
  memcpy(&v, p, sizeof v); /* unaligned: rows start anywhere */
  return v;
}

static inline __attribute__((always_inline)) void PF_T(store4)(PF_WORD *p, PF_T(pf_vec4) v) { memcpy(p, &v, sizeof v); }

/* one 4 x 4 tile */
static inline __attribute__((always_inline)) void PF_T(tile4)(PF_WORD *restrict dst, int64_t ds,
                                                              const PF_WORD *restrict src, int64_t ss) {
  const PF_T(pf_vec4) a = PF_T(load4)(src), b = PF_T(load4)(src + ss);
  const PF_T(pf_vec4) c = PF_T(load4)(src + 2 * ss), d = PF_T(load4)(src + 3 * ss);
  const PF_T(pf_vec4) ab0 = __builtin_shufflevector(a, b, 0, 4, 1, 5), ab1 = __builtin_shufflevector(a, b, 2, 6, 3, 7);
  const PF_T(pf_vec4) cd0 = __builtin_shufflevector(c, d, 0, 4, 1, 5), cd1 = __builtin_shufflevector(c, d, 2, 6, 3, 7);
  PF_T(store4)(dst, __builtin_shufflevector(ab0, cd0, 0, 1, 4, 5));
  PF_T(store4)(dst + ds, __builtin_shufflevector(ab0, cd0, 2, 3, 6, 7));
  PF_T(store4)(dst + 2 * ds, __builtin_shufflevector(ab1, cd1, 0, 1, 4, 5));
  PF_T(store4)(dst + 3 * ds, __builtin_shufflevector(ab1, cd1, 2, 3, 6, 7));
}
#endif

static void PF_T(transpose)(PF_WORD *restrict dst, int64_t ds, const PF_WORD *restrict src, int64_t ss, int64_t rows,
                            int64_t cols) {
  assert(rows >= 0 && cols >= 0 && (rows <= 1 || ss >= cols) && (cols <= 1 || ds >= rows));
  int64_t r = 0;
#ifdef PF_HAVE_SHUFFLE
  for (; r + 4 <= rows; r += 4) {
    int64_t c = 0;
    for (; c + 4 <= cols; c += 4) PF_T(tile4)(dst + c * ds + r, ds, src + r * ss + c, ss);
    for (; c < cols; c++)
      for (int64_t k = 0; k < 4; k++) dst[c * ds + r + k] = src[(r + k) * ss + c];
  }
#endif
  for (; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) dst[c * ds + r] = src[r * ss + c];
}

#undef PF_HAVE_SHUFFLE
#undef PF_T
