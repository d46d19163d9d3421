/* The weighted placement loop of _kernels.c, written once against the type macros
 *   PF_SOURCE   the model outputs' element type (float or double)
 *   PF_SUFFIX   its name suffix (place_<suffix> is the exported entry point)
 * and included by _kernels.c once per type; the macros are undefined again at the end.
 *
 * place_<suffix>(outputs, band, dims): add each of dims->count output patches (C, *k), weighted,
 * into the float64 band (C, *band_size) at its own start, for blocks at any positions (the
 * per-axis grid of patchfold.apply, whose last block per dim may sit closer than the stride):
 *   band[c][y0 + ki*d0][x0 + kj*d1] += (w0[b][ki] * w1[b][kj]) * outputs[b][c][ki][kj]
 * (in 3-D one more factor and dim, the product formed left to right), blocks in order, for band
 * positions [row_lo, row_hi) of dim 0 only (threads given disjoint ranges add in parallel). The caller
 * (patchfold.engines.compiled) checks every start and extent against the band before the call; the
 * asserts restate that for debug builds.
 */

#define PF_P(name) PF_JOIN(name, PF_SUFFIX)

void PF_P(place)(const PF_SOURCE *outputs, double *band, const pf_place_dims *p) {
  assert(p->ndim == 2 || p->ndim == 3);
  const int64_t nd = p->ndim, C = p->channels, count = p->count;
  /* 2-D runs as 3-D with one plane of depth 1 */
  const int64_t K0 = nd == 3 ? p->kernel[0] : 1, K1 = p->kernel[nd - 2], K2 = p->kernel[nd - 1];
  const int64_t d0 = nd == 3 ? p->dilation[0] : 1, d1 = p->dilation[nd - 2], d2 = p->dilation[nd - 1];
  const int64_t S1 = p->band_size[nd - 2], S2 = p->band_size[nd - 1];
  const int64_t plane = S1 * S2, cs = (nd == 3 ? p->band_size[0] : 1) * plane, patch = K0 * K1 * K2;
  const double *wa = nd == 3 ? p->weights[0] : NULL, *wb = p->weights[nd - 2], *wc = p->weights[nd - 1];
  const int64_t lo = p->row_lo, hi = p->row_hi;
  for (int64_t b = 0; b < count; b++) {
    const int64_t *start = p->starts + b * nd;
    const int64_t z0 = nd == 3 ? start[0] : 0, y0 = start[nd - 2], x0 = start[nd - 1];
    assert(z0 >= 0 && y0 >= 0 && x0 >= 0 && y0 + (K1 - 1) * d1 < S1 && x0 + (K2 - 1) * d2 < S2);
    const double *rows = wb + b * K1, *cols = wc + b * K2;
    for (int64_t c = 0; c < C; c++) {
      const PF_SOURCE *in = outputs + (b * C + c) * patch;
      for (int64_t a = 0; a < K0; a++) {
        if (nd == 3 && (z0 + a * d0 < lo || z0 + a * d0 >= hi)) continue;
        const double depth = wa != NULL ? wa[b * K0 + a] : 1.0;
        double *target = band + c * cs + (z0 + a * d0) * plane + y0 * S2 + x0;
        for (int64_t ki = 0; ki < K1; ki++) {
          if (nd == 2 && (y0 + ki * d1 < lo || y0 + ki * d1 >= hi)) continue;
          /* 2-D: w0*w1 exactly as numpy's product; 3-D: (w0*w1)*w2 */
          const double row = wa != NULL ? depth * rows[ki] : rows[ki];
          double *out = target + ki * d1 * S2;
          const PF_SOURCE *values = in + (a * K1 + ki) * K2;
          if (d2 == 1) {
            for (int64_t kj = 0; kj < K2; kj++) out[kj] += (row * cols[kj]) * (double)values[kj];
          } else {
            for (int64_t kj = 0; kj < K2; kj++) out[kj * d2] += (row * cols[kj]) * (double)values[kj];
          }
        }
      }
    }
  }
}

#undef PF_P
#undef PF_SOURCE
#undef PF_SUFFIX
