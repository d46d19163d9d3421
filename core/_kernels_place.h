/* The weighted blending loops of _kernels.c, written once against the type macros
 *   PF_SOURCE   the model outputs' element type (float or double)
 *   PF_SUFFIX   its name suffix (place_<suffix>, divide_<suffix>, blend_<suffix> are exported)
 * and included by _kernels.c once per type; the macros are undefined again at the end.
 *
 * place_<suffix>(outputs, band, dims): add each of dims->count output patches (C, *k) (at the element
 * strides dims->in_strides: C-contiguous or channels-last), weighted,
 * into the float64 band (C, *band_size) at its own start, for blocks at any positions (the
 * per-axis grid of patchfold.apply, whose last block per dim may sit closer than the stride):
 *   band[c][y0 + ki*d0 - row0][x0 + kj*d1] += (w0[b][ki] * w1[b][kj]) * outputs[b][c][ki][kj]
 * (in 3-D one more factor and dim, the product formed left to right), blocks in order, for
 * positions [row_lo, row_hi) of dim 0 only, which the band holds from row0 on (a patch may reach
 * beyond the band in dim 0; only its points inside [row_lo, row_hi) are touched). The caller
 * (patchfold.engines.compiled) checks every start and extent before the call; the asserts restate
 * that for debug builds.
 */

#define PF_P(name) PF_JOIN(name, PF_SUFFIX)

/* one row of a channels-last patch (K2 points of C interleaved values) into the C planes cs apart;
   inlined with a constant C in the switch below */
static inline __attribute__((always_inline)) void PF_P(add_interleaved_c)(double *out, int64_t cs,
                                                                          const PF_SOURCE *values,
                                                                          const double *cols, double row,
                                                                          int64_t K2, int64_t d2, int64_t C) {
  for (int64_t kj = 0; kj < K2; kj++) {
    const double weight = row * cols[kj];
    for (int64_t c = 0; c < C; c++) out[c * cs + kj * d2] += weight * (double)values[kj * C + c];
  }
}

static void PF_P(add_interleaved)(double *out, int64_t cs, const PF_SOURCE *values, const double *cols, double row,
                                  int64_t K2, int64_t d2, int64_t C) {
  if (d2 == 1) /* undilated: the points of a channel's row are adjacent, which vectorises */
    switch (C) {
      case 2: PF_P(add_interleaved_c)(out, cs, values, cols, row, K2, 1, 2); return;
      case 3: PF_P(add_interleaved_c)(out, cs, values, cols, row, K2, 1, 3); return;
      case 4: PF_P(add_interleaved_c)(out, cs, values, cols, row, K2, 1, 4); return;
      default: break;
    }
  switch (C) {
    case 1: PF_P(add_interleaved_c)(out, cs, values, cols, row, K2, d2, 1); return;
    case 2: PF_P(add_interleaved_c)(out, cs, values, cols, row, K2, d2, 2); return;
    case 3: PF_P(add_interleaved_c)(out, cs, values, cols, row, K2, d2, 3); return;
    case 4: PF_P(add_interleaved_c)(out, cs, values, cols, row, K2, d2, 4); return;
    default: PF_P(add_interleaved_c)(out, cs, values, cols, row, K2, d2, C);
  }
}

/* the first and end index k of points start + k * step (k < K) inside [lo, hi) */
static inline void PF_P(inside)(int64_t start, int64_t step, int64_t K, int64_t lo, int64_t hi, int64_t *first,
                                int64_t *end) {
  const int64_t a = start >= lo ? 0 : (lo - start + step - 1) / step;
  const int64_t b = start >= hi ? 0 : (hi - start + step - 1) / step;
  *first = a < K ? a : K;
  *end = b < K ? b : K;
}

void PF_P(place)(const PF_SOURCE *outputs, double *band, const pf_place_dims *p) {
  assert(p->ndim == 2 || p->ndim == 3);
  const int64_t nd = p->ndim, C = p->channels, count = p->count;
  /* 2-D runs as 3-D with one plane of depth 1 */
  const int64_t K0 = nd == 3 ? p->kernel[0] : 1, K1 = p->kernel[nd - 2], K2 = p->kernel[nd - 1];
  const int64_t d0 = nd == 3 ? p->dilation[0] : 1, d1 = p->dilation[nd - 2], d2 = p->dilation[nd - 1];
  const int64_t S1 = p->band_size[nd - 2], S2 = p->band_size[nd - 1];
  const int64_t plane = S1 * S2, cs = (nd == 3 ? p->band_size[0] : 1) * plane;
  const double *wa = nd == 3 ? p->weights[0] : NULL, *wb = p->weights[nd - 2], *wc = p->weights[nd - 1];
  const int64_t lo = p->row_lo, hi = p->row_hi, row0 = p->row0;
  assert(row0 <= lo && lo <= hi && hi - row0 <= p->band_size[0]);
  /* the outputs' strides: C-contiguous, or channels-last as a model may give them */
  const int64_t sb = p->in_strides[0], sc = p->in_strides[1], sa = nd == 3 ? p->in_strides[2] : 0;
  const int64_t sk1 = p->in_strides[nd], sk2 = p->in_strides[nd + 1];
  const int interleaved = sc == 1 && sk2 == C && C > 1; /* channels-last: a point's C values together */
  for (int64_t b = 0; b < count; b++) {
    const int64_t *start = p->starts + b * nd;
    /* dim 0 (rows in 2-D, planes in 3-D) in the padded output's positions, the band from row0 */
    const int64_t z0 = nd == 3 ? start[0] - row0 : 0, y0 = start[nd - 2] - (nd == 2 ? row0 : 0), x0 = start[nd - 1];
    int64_t a_first = 0, a_end = K0, ki_first = 0, ki_end = K1;
    if (nd == 3)
      PF_P(inside)(start[0], d0, K0, lo, hi, &a_first, &a_end);
    else
      PF_P(inside)(start[0], d1, K1, lo, hi, &ki_first, &ki_end);
    assert(x0 >= 0 && x0 + (K2 - 1) * d2 < S2 && (nd == 2 || (y0 >= 0 && y0 + (K1 - 1) * d1 < S1)));
    const double *rows = wb + b * K1, *cols = wc + b * K2;
    for (int64_t a = a_first; a < a_end; a++) {
      const double depth = wa != NULL ? wa[b * K0 + a] : 1.0;
      for (int64_t ki = ki_first; ki < ki_end; ki++) {
        /* 2-D: w0*w1 exactly as numpy's product; 3-D: (w0*w1)*w2 */
        const double row = wa != NULL ? depth * rows[ki] : rows[ki];
        double *out = band + (z0 + a * d0) * plane + (y0 + ki * d1) * S2 + x0; /* channel 0's row */
        const PF_SOURCE *in = outputs + b * sb + a * sa + ki * sk1;
        if (interleaved) {
          PF_P(add_interleaved)(out, cs, in, cols, row, K2, d2, C);
          continue;
        }
        for (int64_t c = 0; c < C; c++) {
          double *target = out + c * cs;
          const PF_SOURCE *values = in + c * sc;
          if (d2 == 1 && sk2 == 1) { /* the vectorised case */
            for (int64_t kj = 0; kj < K2; kj++) target[kj] += (row * cols[kj]) * (double)values[kj];
          } else {
            for (int64_t kj = 0; kj < K2; kj++) target[kj * d2] += (row * cols[kj]) * (double)values[kj * sk2];
          }
        }
      }
    }
  }
}

/* divide_<suffix>(sums, out, dims): finished rows of the band divided by their total weight, the
 * outer product of the per-dim totals, into the output dtype:
 *   out[c][r][x] = (PF_SOURCE)(sums[c][r][x] / (t0[r] * t1[x]))   (3-D: (t0[r] * t1[y]) * t2[x])
 * exactly numpy's divide of sums by the outer product, one pass instead of three; a point no block
 * covers has total inf and comes out 0. Both arrays at any element strides (checked by the caller).
 * With dims->clear, each row of sums is zeroed once divided, while it is in cache (the band reuses
 * its finished rows, which must be zero: one pass over them instead of a second one). */
void PF_P(divide)(double *sums, PF_SOURCE *out, const pf_divide_dims *p) {
  assert(p->ndim == 2 || p->ndim == 3);
  const int64_t nd = p->ndim, C = p->channels, R = p->size[0];
  const int64_t Y = nd == 3 ? p->size[1] : 1, X = p->size[nd - 1];
  const double *t0 = p->totals[0], *ty = nd == 3 ? p->totals[1] : NULL, *tx = p->totals[nd - 1];
  const int64_t ic = p->sums_strides[0], ir = p->sums_strides[1], iy = nd == 3 ? p->sums_strides[2] : 0;
  const int64_t ix = p->sums_strides[nd], oc = p->out_strides[0], orow = p->out_strides[1];
  const int64_t oy = nd == 3 ? p->out_strides[2] : 0, ox = p->out_strides[nd];
  for (int64_t c = 0; c < C; c++)
    for (int64_t r = 0; r < R; r++)
      for (int64_t y = 0; y < Y; y++) {
        const double row = ty != NULL ? t0[r] * ty[y] : t0[r];
        double *in = sums + c * ic + r * ir + y * iy;
        PF_SOURCE *dst = out + c * oc + r * orow + y * oy;
        if (ix == 1 && ox == 1) { /* the vectorised case */
          for (int64_t x = 0; x < X; x++) dst[x] = (PF_SOURCE)(in[x] / (row * tx[x]));
          if (p->clear) memset(in, 0, (size_t)X * sizeof(double));
        } else {
          for (int64_t x = 0; x < X; x++) dst[x * ox] = (PF_SOURCE)(in[x * ix] / (row * tx[x]));
          if (p->clear)
            for (int64_t x = 0; x < X; x++) in[x * ix] = 0.0;
        }
      }
}

/* blend_<suffix>(chunk, out, dims): the rows [row_lo, row_hi) chunk by chunk: the chunk's rows
 * zeroed, every batch's points in them added in batch order (each point's sum in the order of the
 * blocks, as one band would give it), then divided into out (row_lo's first point). */
void PF_P(blend)(double *chunk, PF_SOURCE *out, const pf_blend_dims *p) {
  const int64_t rows = p->chunk_rows, C = p->divide.channels, nd = p->divide.ndim;
  assert(rows > 0 && p->row_lo <= p->row_hi && (nd == 2 || nd == 3));
  const int64_t row_elements = p->divide.sums_strides[1]; /* one row (2-D) or plane (3-D) of the chunk */
  for (int64_t r0 = p->row_lo; r0 < p->row_hi; r0 += rows) {
    const int64_t r1 = r0 + rows < p->row_hi ? r0 + rows : p->row_hi;
    for (int64_t c = 0; c < C; c++) /* in cache: the sums start from zero whatever the chunk held */
      memset(chunk + c * p->divide.sums_strides[0], 0, (size_t)((r1 - r0) * row_elements) * sizeof(double));
    for (int64_t i = 0; i < p->count; i++) {
      pf_place_dims piece = p->places[i];
      assert(piece.band_size[0] == rows);
      piece.row_lo = r0;
      piece.row_hi = r1;
      piece.row0 = r0;
      PF_P(place)((const PF_SOURCE *)p->outputs[i], chunk, &piece);
    }
    pf_divide_dims divide = p->divide;
    divide.size[0] = r1 - r0;
    divide.totals[0] = p->divide.totals[0] + (r0 - p->row_lo);
    PF_P(divide)(chunk + p->sums_offset, out + (r0 - p->row_lo) * p->divide.out_strides[1], &divide);
  }
}

#undef PF_P
#undef PF_SOURCE
#undef PF_SUFFIX
