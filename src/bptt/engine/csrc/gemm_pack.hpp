/* The general product's bf16 packing, vectorised (included by impl.hpp after Gemm and kc_len).
 *
 * pack_a and pack_b copy an operand block into the micro-kernel's layout; with bf16 they also
 * round every float32 element to bfloat16. Done one element at a time through the operand's
 * strides, that cost as much as the product itself on the word model's head (its operands are
 * 10,000 x 200 and 400 x 10,000 floats, rounded on every call). Here the two layouts an operand
 * comes in -- its rows contiguous (a plain matrix) or its columns contiguous (a transposed
 * view) -- are read and rounded a vector at a time (bf16_bits: the same rounding to nearest
 * even as bf16_one, so the packed values are the same, bit for bit); float operands and any
 * other strides return false and take the element-wise loops.
 *
 * Layouts (impl.hpp): A's slabs: uint32 Ap[s][k2][r], the pair (a[m][2 k2], a[m][2 k2 + 1]),
 * low half first; B's panels: uint32 Bp[p][k2][c], the pair (b[2 k2][n], b[2 k2 + 1][n]).
 */

/* bf16: A's rows contiguous (csa == 1) or its columns (rsa == 1): rows [m0, m0 + mm), K block
 * kb */
template <class T>
static bool pack_a_fast(const Gemm<T> *g, long m0, long mm, long kb, void *out) {
    const GemmArgs *a = g->a;
    if constexpr (sizeof(T) != 4) {
        return false;
    } else {
        const long kc = kb * g->KC, kk = kc_len(g, kb), MR = g->MR;
        const long nslab = (mm + MR - 1) / MR;
        const float *A = (const float *)a->A;
        if (a->csa == 1 && g->bf) {                     // rows contiguous: pairs along k
            const long kk2 = (kk + 1) / 2;
            uint32_t tmp[LF / 2];
            for (long s = 0; s < nslab; s++)
                for (long r = 0; r < MR; r++) {
                    const long m = s * MR + r;
                    uint32_t *d = (uint32_t *)out + s * kk2 * MR + r;
                    if (m >= mm) {
                        for (long k = 0; k < kk2; k++) d[k * MR] = 0;
                        continue;
                    }
                    const float *p = A + (m0 + m) * a->rsa + kc;
                    for (long k2 = 0; k2 < kk2; k2 += LF / 2) {
                        const int n2 = imin(LF / 2, kk2 - k2);
                        bf16_run(p + 2 * k2, kk - 2 * k2, tmp, n2);
                        for (int i = 0; i < n2; i++) d[(k2 + i) * MR] = tmp[i];
                    }
                }
            return true;
        }
        if (a->rsa != 1 || !g->bf) return false;
        // columns contiguous (a transposed view): a slab's MR rows of one k lie side by side
        for (long s = 0; s < nslab; s++) {
            const long rows = mm - s * MR < MR ? mm - s * MR : MR;
            const float *col = A + m0 + s * MR + kc * a->csa;  // (m0 + s MR, kc)
            for (long r = 0; r < MR; r += LF) {
                const int n = imin(LF, rows - r), w = imin(LF, MR - r);
                // a whole vector is readable when its lanes lie inside A's M rows
                const bool whole = m0 + s * MR + r + LF <= a->M;
                const long kk2 = (kk + 1) / 2;
                uint32_t *d = (uint32_t *)out + s * kk2 * MR + r;
                for (long k2 = 0; k2 < kk2; k2++) {
                    const float *lo = col + 2 * k2 * a->csa + r;
                    vf vlo = n > 0 ? load_lanes(lo, n, whole) : (vf){};
                    vf vhi = n > 0 && 2 * k2 + 1 < kk ? load_lanes(lo + a->csa, n, whole)
                                                      : (vf){};
                    vu32 v = keep_lanes(bf16_pairs(vlo, vhi), n);
                    memcpy(d + k2 * MR, &v, (size_t)w * 4);
                }
            }
        }
        return true;
    }
}

/* bf16: B's rows contiguous (csb == 1) or its columns (rsb == 1): columns [n0, n0 + nn), K
 * block kb */
template <class T>
static bool pack_b_fast(const Gemm<T> *g, long n0, long nn, long kb, void *out) {
    const GemmArgs *a = g->a;
    if (!g->bf || (a->csb != 1 && a->rsb != 1)) return false;
    const long kc = kb * g->KC, kk = kc_len(g, kb), kk2 = (kk + 1) / 2, NR = g->NR;
    const long npan = (nn + NR - 1) / NR;
    for (long p = 0; p < npan; p++) {
        const long c0 = n0 + p * NR, ncol = nn - p * NR < NR ? nn - p * NR : NR;
        uint32_t *d = (uint32_t *)out + p * kk2 * NR;
        const float *B = (const float *)a->B + kc * a->rsb + c0 * a->csb;
        if (a->csb == 1) bf16_panel_rows(B, a->rsb, kk, ncol, a->N - c0, NR, d);
        else bf16_panel_cols(B, a->csb, kk, ncol, NR, NR, d);
    }
    return true;
}

/* MC, the rows of a block when the product is cut into blocks of rows: 8 slabs of MR, or, when
 * that leaves fewer than 4 blocks a thread, as many blocks as a multiple of the nth threads,
 * so that no thread waits for another's last block (400 rows of 12 on 2 threads: 6 blocks of
 * 72 rows rather than 4 of 96 and one of 16) */
static long block_rows(long M, int MR, int nth) {
    const long slabs = (M + MR - 1) / MR;
    long nb = (slabs + 7) / 8;
    if (nb >= 4L * nth) return 8L * MR;
    nb = (nb + nth - 1) / nth * nth;
    return (slabs + nb - 1) / nb * MR;
}

/* Whether the general product runs one K block a step: when there are several, the shared
 * operand's K block (block_bytes) fits in a core's L2 and so does C (c_bytes), which each step
 * then reads and writes again. Step by step, each block of C reads the shared K block from L2;
 * all K blocks in one step, each block of C reads the whole shared operand again from memory
 * (the word model's dh = dy W: the 10,000 x 200 weight, 4.5 MB of bfloat16, once per block of
 * rows, for a C of 400 x 200). A large C (the weight gradients of the character models) keeps
 * the one step: its blocks stay in cache across their K blocks. */
static int kb_steps_of(long nkc, size_t block_bytes, size_t c_bytes) {
    return nkc > 1 && block_bytes <= ((size_t)512 << 10) && c_bytes <= ((size_t)512 << 10);
}

/* KC for K in nkc blocks of near-equal depth, a multiple of 8 (bf16 pairs stay aligned): the
 * LSTM's weight gradient over T B = 1,120 rows in blocks of 376, 376 and 368 rather than 512,
 * 512 and a short 96 */
static long even_kc(long K, long nkc) {
    const long kc = (K + nkc - 1) / nkc;
    return (kc + 7) / 8 * 8;
}
