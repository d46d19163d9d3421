/* The channels-last patch gather of _kernels.c, written once against the type macros
 *   PF_WORD   an unsigned integer type of the item size (values move as opaque words)
 *   PF_BITS   its size in bits (gather_cl_<bits> is the entry point)
 * and included at the top of _kernels_unfold.h, so each item size's instantiation there brings
 * its gather with it (that file undefines the macros at its end).
 *
 * gather_cl_<bits>(src, dst, dims): cut dims->count patches of dims->kernel points (dims->dilation
 * apart) out of src, an image (C, *size) with any element strides, each patch starting at its own
 * point dims->starts[b], into dst (count, *kernel, C), contiguous: the channels-last layout
 * (torch.channels_last) of the batch (count, C, *kernel), in one pass instead of a contiguous copy
 * and a transposition. In 2-D:
 *   dst[((b*K1 + ki)*K2 + kj)*C + c] = src[c*sc + (y0 + ki*d1)*s1 + (x0 + kj*d2)*s2]
 * (3-D: one more dim in front, 2-D runs as 3-D with one plane). The caller
 * (patchfold.engines.compiled) checks every start and extent against src before the call; the
 * asserts restate that for debug builds.
 */

#define PF_G(name) PF_JOIN(name, PF_BITS)

/* one run of K points of every channel, interleaved; inlined with a constant C in the switch below */
static inline __attribute__((always_inline)) void PF_G(interleave_c)(PF_WORD *restrict dst,
                                                                     const PF_WORD *restrict src, int64_t K,
                                                                     int64_t step, int64_t sc, int64_t C) {
  for (int64_t k = 0; k < K; k++)
    for (int64_t c = 0; c < C; c++) dst[k * C + c] = src[c * sc + k * step];
}

static void PF_G(interleave)(PF_WORD *restrict dst, const PF_WORD *restrict src, int64_t K, int64_t step,
                             int64_t sc, int64_t C) {
  switch (C) {
    case 1: PF_G(interleave_c)(dst, src, K, step, sc, 1); return;
    case 2: PF_G(interleave_c)(dst, src, K, step, sc, 2); return;
    case 3: PF_G(interleave_c)(dst, src, K, step, sc, 3); return;
    case 4: PF_G(interleave_c)(dst, src, K, step, sc, 4); return;
    default: PF_G(interleave_c)(dst, src, K, step, sc, C);
  }
}

void PF_G(gather_cl)(const PF_WORD *src, PF_WORD *dst, const pf_gather_dims *g) {
  assert(g->ndim == 2 || g->ndim == 3);
  const int64_t nd = g->ndim, C = g->channels, count = g->count, sc = g->src_strides[0];
  const int64_t K0 = nd == 3 ? g->kernel[0] : 1, K1 = g->kernel[nd - 2], K2 = g->kernel[nd - 1];
  const int64_t d0 = nd == 3 ? g->dilation[0] : 1, d1 = g->dilation[nd - 2], d2 = g->dilation[nd - 1];
  const int64_t s0 = nd == 3 ? g->src_strides[1] : 0, s1 = g->src_strides[nd - 1], s2 = g->src_strides[nd];
  assert(C >= 1 && K0 >= 1 && K1 >= 1 && K2 >= 1 && d0 >= 1 && d1 >= 1 && d2 >= 1);
  for (int64_t b = 0; b < count; b++) {
    const int64_t *start = g->starts + b * nd;
    const int64_t z0 = nd == 3 ? start[0] : 0, y0 = start[nd - 2], x0 = start[nd - 1];
    assert(z0 >= 0 && y0 >= 0 && x0 >= 0);
    PF_WORD *out = dst + b * K0 * K1 * K2 * C;
    for (int64_t a = 0; a < K0; a++)
      for (int64_t ki = 0; ki < K1; ki++, out += K2 * C)
        PF_G(interleave)(out, src + (z0 + a * d0) * s0 + (y0 + ki * d1) * s1 + x0 * s2, K2, d2 * s2, sc, C);
  }
}

#undef PF_G
