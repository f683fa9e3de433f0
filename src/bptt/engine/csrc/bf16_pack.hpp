/* Packing float32 into bfloat16 pairs a vector at a time (included by impl.hpp after the
 * bf16 rounding): the panels of the recurrent weight (pack) and, through gemm_pack.hpp, of
 * the general product's operands.
 *
 * A panel is kk2 = ceil(kk / 2) rows of uint32 pairs, ld apart: the pair (b[2 k2][c],
 * b[2 k2 + 1][c]) of a column c, low half first, zero past kk and past the columns given.
 * Rounded by bf16_bits, the same rounding to nearest even as bf16_one: bit for bit the values
 * the element-wise loops write.
 */

/* lanes [0, n) of p: a whole vector when `whole` (the memory is there), else lane by lane */
static inline vf load_lanes(const float *p, int n, bool whole) {
    if (whole || n >= LF) return load<vf>(p);
    return load_n<vf>(p, n);
}

/* lanes at or past n set to zero */
static inline vu32 keep_lanes(vu32 x, int n) {
    if (n >= LF) return x;
    vi32 lane;
    for (int i = 0; i < LF; i++) lane[i] = i;
    return (vi32)(lane < n) ? x : (vu32){};
}

/* pairs of bfloat16 bits: lane i = bits(lo[i]) | bits(hi[i]) << 16 */
static inline vu32 bf16_pairs(vf lo, vf hi) { return bf16_bits(lo) | bf16_bits(hi) << 16; }

/* n2 (<= LF / 2) consecutive pairs of a contiguous run of floats (a zero past n floats), as
 * uint32 pairs into out */
static inline void bf16_run(const float *p, long n, uint32_t *out, int n2) {
    const int nf = imin(2L * n2, n);
    vh16 h = __builtin_convertvector(bf16_bits(load_lanes(p, nf, false)), vh16);
    memcpy(out, &h, (size_t)n2 * 4);
}

/* A panel of NR (a multiple of LF) columns from b's rows, contiguous: element (k, c) at
 * b[k * rsb + c]; ncol columns are real, avail (>= ncol) readable, the rest zero */
static void bf16_panel_rows(const float *b, long rsb, long kk, long ncol, long avail, long NR,
                            uint32_t *d) {
    const long kk2 = (kk + 1) / 2;
    for (long k2 = 0; k2 < kk2; k2++) {
        const float *lo = b + 2 * k2 * rsb;
        for (long c = 0; c < NR; c += LF) {
            const int n = imin(LF, ncol - c);
            const bool whole = c + LF <= avail;
            vf vlo = n > 0 ? load_lanes(lo + c, n, whole) : (vf){};
            vf vhi = n > 0 && 2 * k2 + 1 < kk ? load_lanes(lo + rsb + c, n, whole) : (vf){};
            vu32 v = keep_lanes(bf16_pairs(vlo, vhi), n);
            memcpy(d + k2 * NR + c, &v, sizeof v);
        }
    }
}

/* width columns of a panel (rows ld apart) from b's columns, contiguous: element (k, c) at
 * b[c * csb + k]; ncol columns are real, the rest zero */
static void bf16_panel_cols(const float *b, long csb, long kk, long ncol, long width, long ld,
                            uint32_t *d) {
    const long kk2 = (kk + 1) / 2;
    uint32_t tmp[LF / 2];
    for (long c = 0; c < width; c++) {
        if (c >= ncol) {
            for (long k2 = 0; k2 < kk2; k2++) d[k2 * ld + c] = 0;
            continue;
        }
        const float *src = b + c * csb;
        for (long k2 = 0; k2 < kk2; k2 += LF / 2) {
            const int n2 = imin(LF / 2, kk2 - k2);
            bf16_run(src + 2 * k2, kk - 2 * k2, tmp, n2);
            for (int i = 0; i < n2; i++) d[(k2 + i) * ld + c] = tmp[i];
        }
    }
}

/* the recurrent weight's panels in bf16 (p laid out by pack_impl): forward, panel q's gate g
 * holds the U rows g H + q U + j of w (pairs along their k); backward, its NR columns q U + c
 * of w's G H rows */
static void pack_w_bf16(const Packed *p, const float *w) {
    const long H = p->H, U = p->U, NR = p->NR, kk2 = p->Kp / 2;
    for (int q = 0; q < p->npanels; q++) {
        uint32_t *d = (uint32_t *)p->data + (size_t)q * kk2 * NR;
        const long u0 = (long)q * U, ncol = H - u0 < U ? H - u0 : U;
        if (p->dir == DIR_BACKWARD) {
            bf16_panel_rows(w + u0, H, p->K, ncol, H - u0, NR, d);
            continue;
        }
        for (int g = 0; g < p->G; g++)
            bf16_panel_cols(w + (g * H + u0) * H, H, p->K, ncol, U, NR, d + g * U);
    }
}
