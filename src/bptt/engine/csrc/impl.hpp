/* The kernel's implementation, compiled once per instruction set.
 *
 * Included by each isa_*.cpp inside a namespace of its own and an unnamed namespace, after it
 * has defined VBYTES (the vector width in bytes: 64, 32 or 16) and NATIVE_BF16 (1 when the CPU
 * has AVX512-BF16: the bf16 products use vdpbf16ps; 0: the same products emulated in float32,
 * which gives the same numbers more slowly). Everything here has internal linkage and uses no
 * template of the standard library, so no function compiled for one instruction set can be
 * picked by the linker for another.
 *
 * Contents:
 *   vectors      GCC vector types of VBYTES bytes, loads and stores of n lanes, exp, tanh and
 *                sigmoid of float vectors (Cephes' polynomials, a few ulp), of double vectors
 *                lane by lane through libm (float64 serves the checks, not speed), bfloat16
 *                rounding (to nearest even)
 *   products     register-blocked micro-kernels (MR rows x NV vectors), float, double and
 *                bfloat16 pairs; weight packing into panels; the general product (gemm)
 *   cells        the forward and backward loops over time of the RNN, LSTM and GRU: each step
 *                one product per panel of units, its gates computed right after it (the
 *                epilogue), one barrier per step across the threads
 *   softmax      cross-entropy's loss and gradient in place on the logits
 *   ln.hpp       (included at the end) the layer-normalised LSTM and GRU's loops over time
 *
 * The equations are the Python cells' (engine/numpy/<cell>.py), labelled as there.
 */

typedef float vf __attribute__((vector_size(VBYTES)));
typedef double vd __attribute__((vector_size(VBYTES)));
typedef int32_t vi32 __attribute__((vector_size(VBYTES)));
typedef uint32_t vu32 __attribute__((vector_size(VBYTES)));
typedef uint16_t vh16 __attribute__((vector_size(VBYTES / 2)));

enum { LF = VBYTES / 4, LD = VBYTES / 8, NREG = VBYTES == 64 ? 32 : 16 };

template <class T> struct Vec;
template <> struct Vec<float> { typedef vf v; enum { L = LF }; };
template <> struct Vec<double> { typedef vd v; enum { L = LD }; };

static inline int imin(long a, long b) { return (int)(a < b ? a : b); }

// -- vectors ---------------------------------------------------------------------------------

template <class V, class T> static inline V load(const T *p) {
    V x;
    memcpy(&x, p, sizeof x);
    return x;
}

/* n lanes from p, the others zero */
template <class V, class T> static inline V load_n(const T *p, int n) {
    if (n * (int)sizeof(T) >= (int)sizeof(V)) return load<V>(p);
    V x = {};
    for (int i = 0; i < n; i++) x[i] = p[i];
    return x;
}

template <class V, class T> static inline void store_n(T *p, V x, int n) {
    if (n * (int)sizeof(T) >= (int)sizeof(V)) {
        memcpy(p, &x, sizeof x);
        return;
    }
    for (int i = 0; i < n; i++) p[i] = x[i];
}

static inline vf fsplat(float a) { return (vf){} + a; }
static inline vd dsplat(double a) { return (vd){} + a; }

/* exp(x), x clamped to [-87, 88] (exp(-87) is float's smallest normal); NaN stays NaN */
static inline vf vexp(vf x) {
    x = x > fsplat(88.0f) ? fsplat(88.0f) : x;
    x = x < fsplat(-87.0f) ? fsplat(-87.0f) : x;
    vf fx = x * 1.44269504088896341f;
    fx = fx + (fx >= fsplat(0.0f) ? fsplat(0.5f) : fsplat(-0.5f));
    vi32 n = __builtin_convertvector(fx, vi32);       // round half away from zero
    vf nf = __builtin_convertvector(n, vf);
    vf r = x - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;                      // x = n ln 2 + r, |r| <= ln 2 / 2
    vf y = 1.9875691500e-4f * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * (r * r) + r + 1.0f;
    vu32 scale = (vu32)(n + 127) << 23;                // 2^n
    return y * (vf)scale;
}

static inline vf vtanh(vf x) {
    vu32 bits = (vu32)x;
    vu32 sign = bits & 0x80000000u;
    vf ax = (vf)(bits & 0x7fffffffu);
    vf z = x * x;                                      // |x| < 0.625: an odd polynomial
    vf p = -5.70498872745e-3f * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    p = p * z * x + x;
    vf e = vexp(ax + ax);                              // else 1 - 2 / (exp(2|x|) + 1)
    vf t = 1.0f - 2.0f / (e + 1.0f);
    t = (vf)((vu32)t | sign);
    return ax < fsplat(0.625f) ? p : t;
}

static inline vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }

static inline vd vexp(vd x) {
    vd r;
    for (int i = 0; i < LD; i++) r[i] = exp(x[i]);
    return r;
}

static inline vd vtanh(vd x) {
    vd r;
    for (int i = 0; i < LD; i++) r[i] = tanh(x[i]);
    return r;
}

static inline vd vsigmoid(vd x) {
    vd r;
    for (int i = 0; i < LD; i++) r[i] = 1.0 / (1.0 + exp(-x[i]));
    return r;
}

template <class V> static inline V vrelu(V x) { return x < (V){} ? (V){} : x; }  // NaN stays

/* float -> bfloat16 bits (round to nearest even; NaN stays a quiet NaN), in the low half */
static inline vu32 bf16_bits(vf x) {
    vu32 u = (vu32)x;
    vu32 r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    vi32 nan = (vi32)((u & 0x7fffffffu) > 0x7f800000u);
    return nan ? ((u >> 16) | 0x40u) : r;
}

static inline void store_bf16_n(uint16_t *p, vf x, int n) {
    vh16 h = __builtin_convertvector(bf16_bits(x), vh16);
    store_n(p, h, n);
}

static inline uint16_t bf16_one(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* the bf16 copy of a float vector is only ever made from float data; double never runs bf16 */
static inline void store_bf16_n(uint16_t *, vd, int) {}

// -- products --------------------------------------------------------------------------------
//
// A micro-kernel computes an MR x NR block, NR = NV vectors: C (+)= A B with the rows of A
// read through strides (rsa between rows, csa between k) and B a packed panel, K rows of NR
// contiguous, aligned values. Registers: MR * NV accumulators, NV for B, one broadcast.

constexpr int mr_max(int nv) {
    int m = (NREG - nv - 1) / nv;
    return m > 12 ? 12 : m;
}

#if NATIVE_BF16
constexpr int mr_max_bf(int nv) { return mr_max(nv); }
#else
constexpr int mr_max_bf(int nv) {  // emulated: two more vectors per B vector
    int m = (NREG - 3 * nv - 2) / nv;
    return m < 1 ? 1 : (m > 12 ? 12 : m);
}
#endif

template <class T, int MR, int NV>
static inline void micro(long K, const T *__restrict A, long rsa, long csa,
                         const T *__restrict Bp, T *__restrict C, long ldc, int acc) {
    typedef typename Vec<T>::v V;
    const int L = Vec<T>::L;
    V c[MR][NV];
    for (int m = 0; m < MR; m++)
        for (int j = 0; j < NV; j++) c[m][j] = (V){};
    for (long k = 0; k < K; k++) {
        V b[NV];
        for (int j = 0; j < NV; j++) b[j] = *(const V *)(Bp + (k * NV + j) * L);
        const T *a = A + k * csa;
        for (int m = 0; m < MR; m++) {
            T am = a[m * rsa];
            for (int j = 0; j < NV; j++) c[m][j] += am * b[j];
        }
    }
    for (int m = 0; m < MR; m++)
        for (int j = 0; j < NV; j++) {
            T *p = C + m * ldc + j * L;
            V r = c[m][j];
            if (acc) r += load<V>(p);
            memcpy(p, &r, sizeof r);
        }
}

/* bfloat16 pairs: A's element (m, k2) is the pair (a[m][2 k2], a[m][2 k2 + 1]) as one uint32
 * (low half first), B's panel K2 rows of NR pairs; float accumulation. */
template <int MR, int NV>
static inline void micro_bf(long K2, const uint32_t *__restrict A, long rsa, long csa,
                            const uint16_t *__restrict Bp, float *__restrict C, long ldc,
                            int acc) {
#if NATIVE_BF16
    __m512 c[MR][NV];
    for (int m = 0; m < MR; m++)
        for (int j = 0; j < NV; j++) c[m][j] = _mm512_setzero_ps();
    for (long k = 0; k < K2; k++) {
        __m512bh b[NV];
        for (int j = 0; j < NV; j++)
            b[j] = (__m512bh)_mm512_load_si512((const void *)(Bp + (k * NV + j) * 32));
        const uint32_t *a = A + k * csa;
        for (int m = 0; m < MR; m++) {
            __m512bh am = (__m512bh)_mm512_set1_epi32((int)a[m * rsa]);
            for (int j = 0; j < NV; j++) c[m][j] = _mm512_dpbf16_ps(c[m][j], am, b[j]);
        }
    }
    for (int m = 0; m < MR; m++)
        for (int j = 0; j < NV; j++) {
            float *p = C + m * ldc + j * 16;
            __m512 r = c[m][j];
            if (acc) r = _mm512_add_ps(r, _mm512_loadu_ps(p));
            _mm512_storeu_ps(p, r);
        }
#else
    vf c[MR][NV];
    for (int m = 0; m < MR; m++)
        for (int j = 0; j < NV; j++) c[m][j] = (vf){};
    for (long k = 0; k < K2; k++) {
        vf lo[NV], hi[NV];
        for (int j = 0; j < NV; j++) {
            vu32 b = load<vu32>(Bp + (k * NV + j) * 2 * LF);
            lo[j] = (vf)(b << 16);
            hi[j] = (vf)(b & 0xffff0000u);
        }
        const uint32_t *a = A + k * csa;
        for (int m = 0; m < MR; m++) {
            uint32_t ap = a[m * rsa], l = ap << 16, h = ap & 0xffff0000u;
            float al, ah;
            memcpy(&al, &l, 4);
            memcpy(&ah, &h, 4);
            for (int j = 0; j < NV; j++) c[m][j] += al * lo[j] + ah * hi[j];
        }
    }
    for (int m = 0; m < MR; m++)
        for (int j = 0; j < NV; j++) {
            float *p = C + m * ldc + j * LF;
            vf r = c[m][j];
            if (acc) r += load<vf>(p);
            memcpy(p, &r, sizeof r);
        }
#endif
}

/* mr rows (1 <= mr <= mr_max(NV)): the micro-kernel instantiated for that many */
template <class T, int NV, int M = mr_max(NV)>
static inline void micro_rows(int mr, long K, const T *A, long rsa, long csa, const T *Bp, T *C,
                              long ldc, int acc) {
    if constexpr (M >= 1) {
        if (mr == M) {
            micro<T, M, NV>(K, A, rsa, csa, Bp, C, ldc, acc);
            return;
        }
        micro_rows<T, NV, M - 1>(mr, K, A, rsa, csa, Bp, C, ldc, acc);
    }
}

template <int NV, int M = mr_max_bf(NV)>
static inline void micro_rows_bf(int mr, long K2, const uint32_t *A, long rsa, long csa,
                                 const uint16_t *Bp, float *C, long ldc, int acc) {
    if constexpr (M >= 1) {
        if (mr == M) {
            micro_bf<M, NV>(K2, A, rsa, csa, Bp, C, ldc, acc);
            return;
        }
        micro_rows_bf<NV, M - 1>(mr, K2, A, rsa, csa, Bp, C, ldc, acc);
    }
}

/* Row blocks of a step product: M rows in nb blocks of near-equal size, each <= mr */
struct Rows {
    int nb, base, rem;
    Rows(int M, int mr) {
        nb = (M + mr - 1) / mr;
        base = M / nb;
        rem = M % nb;
    }
    int start(int i) const { return i * base + (i < rem ? i : rem); }
    int size(int i) const { return base + (i < rem ? 1 : 0); }
};

static void *alloc64(size_t bytes) {
    size_t n = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, n ? n : 64);
    if (p) memset(p, 0, n ? n : 64);
    return p;
}

// -- packing the recurrent weight ------------------------------------------------------------

#include "bf16_pack.hpp"

static int fwd_nv(int G) { return G == 1 ? 2 : G; }    // one vector of units per gate (rnn: 2)

template <class T>
static int pack_impl(Packed *p, const T *w) {
    const int G = p->G, H = p->H, L = p->bf16 ? (int)LF : (int)Vec<T>::L;
    int N;
    if (p->dir == DIR_FORWARD) {
        p->NV = fwd_nv(G);
        p->K = H;
        N = G * H;
    } else {
        p->NV = 2;
        p->K = G * H;
        N = H;
    }
    p->NR = p->NV * L;
    p->U = p->dir == DIR_FORWARD ? p->NR / G : p->NR;
    p->Kp = p->bf16 ? (p->K + 1) / 2 * 2 : p->K;
    p->npanels = (H + p->U - 1) / p->U;
    p->panel_elems = (size_t)p->Kp * p->NR;
    size_t isz = p->bf16 ? 2 : sizeof(T);
    p->data = alloc64(p->panel_elems * p->npanels * isz);
    if (!p->data) return -1;
    (void)N;
    const int U = p->U, NR = p->NR, K = p->K;
    if constexpr (sizeof(T) == 4) {
        if (p->bf16) {
            pack_w_bf16(p, (const float *)w);
            return 0;
        }
    }
    for (int q = 0; q < p->npanels; q++) {
        for (int col = 0; col < NR; col++) {
            // the weight element (k) feeding panel column col: forward (gate g, unit u) reads
            // row g*H + u of W_hh; backward (unit u) reads column u of W_hh
            int g = p->dir == DIR_FORWARD ? col / U : 0, u = q * U + col % U;
            if (u >= H) continue;                     // padding: zeros
            for (int k = 0; k < K; k++) {
                T v = p->dir == DIR_FORWARD ? w[(long)(g * H + u) * H + k] : w[(long)k * H + u];
                if (p->bf16) {
                    uint16_t *d = (uint16_t *)p->data + q * p->panel_elems;
                    d[((long)(k / 2) * NR + col) * 2 + k % 2] = bf16_one((float)v);
                } else {
                    T *d = (T *)p->data + q * p->panel_elems;
                    d[(long)k * NR + col] = v;
                }
            }
        }
    }
    return 0;
}

static int pack(Packed *p, const void *w) {
    if (p->dtype == DT_F64) {
        if (p->bf16) return -1;
        return pack_impl<double>(p, (const double *)w);
    }
    return pack_impl<float>(p, (const float *)w);
}

/* One step product for rows [m0, m0 + mr) of A and panel q: scratch (mr, NR) = A W */
template <class T, int NV>
static inline void step_product(const Packed *w, int q, int mr, const T *A, long lda,
                                const uint32_t *Ab, long ldab, T *scratch) {
    if constexpr (sizeof(T) == 4) {
        if (w->bf16) {
            const uint16_t *panel = (const uint16_t *)w->data + q * w->panel_elems;
            micro_rows_bf<NV>(mr, w->Kp / 2, Ab, ldab, 1, panel, (float *)scratch, w->NR, 0);
            return;
        }
    }
    const T *panel = (const T *)w->data + q * w->panel_elems;
    micro_rows<T, NV>(mr, w->K, A, lda, 1, panel, scratch, w->NR, 0);
}


template <class T> static int step_mr(const Packed *w, int NV) {
    if (sizeof(T) == 4 && w->bf16) return NV == 2 ? mr_max_bf(2) : NV == 3 ? mr_max_bf(3)
                                                                            : mr_max_bf(4);
    return NV == 2 ? mr_max(2) : NV == 3 ? mr_max(3) : mr_max(4);
}

/* the panels [q0, q1) of thread tid among nth */
static inline void share(int P, int tid, int nth, int *q0, int *q1) {
    *q0 = (int)((long)P * tid / nth);
    *q1 = (int)((long)P * (tid + 1) / nth);
}

enum { SCRATCH = 12 * 4 * 16 };   // >= mr x NR of every micro-kernel

// -- the schedule: chunks of work, step after step, on the team -------------------------------
//
// A job is a sequence of steps (a layer's time steps; a product's packing, then its blocks),
// each cut into chunks (panels of units, blocks of rows). Step s + 1 starts when every chunk
// of step s is done. Each thread has a home range of every step's chunks, which it takes from
// the front, and when it runs out it takes from the back of the others' ranges: a thread
// keeps the same chunks (and their weights in its cache) step after step, and a thread that
// the operating system has preempted, or that joins late, has its chunks done by the others
// instead of stalling them. A thread with nothing left waits passively for the next step.

enum { MAXT = 64 };

struct Sched {
    uint64_t range[MAXT];     // per home: step tag (16 bits) | lo (24) | hi (24)
    uint32_t step;            // the step being handed out; nsteps when all are done
    int32_t sleepers;
    uint32_t done;            // chunks of this step finished
    int nth, nsteps;
    const TeamOps *team;
    int (*chunks)(void *ctx, int step);
    void (*work)(void *ctx, int step, int chunk, int tid);
    void *ctx;
};

static void sched_ranges(Sched *S, uint32_t step) {
    const long Q = S->chunks(S->ctx, (int)step);
    const uint64_t tag = (uint64_t)(step & 0xffffu) << 48;
    for (int i = 0; i < S->nth; i++) {
        const uint64_t lo = (uint64_t)(Q * i / S->nth), hi = (uint64_t)(Q * (i + 1) / S->nth);
        __atomic_store_n(&S->range[i], tag | lo << 24 | hi, __ATOMIC_SEQ_CST);
    }
}

/* a chunk of `step`: -1 when none is left, -2 when the step has moved on */
static long sched_claim(Sched *S, int tid, uint32_t step) {
    const uint64_t tag = (uint64_t)(step & 0xffffu) << 48, tags = 0xffffull << 48;
    for (int k = 0; k < S->nth; k++) {
        const int v = (tid + k) % S->nth;
        uint64_t r = __atomic_load_n(&S->range[v], __ATOMIC_ACQUIRE);
        for (;;) {
            if ((r & tags) != tag) return -2;
            const uint64_t lo = (r >> 24) & 0xffffffu, hi = r & 0xffffffu;
            if (lo >= hi) break;
            const uint64_t nr = k == 0 ? r + (1ull << 24) : r - 1;
            if (__atomic_compare_exchange_n(&S->range[v], &r, nr, false, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE))
                return (long)(k == 0 ? lo : hi - 1);
        }
    }
    return -1;
}

static void sched_task(void *vS, int tid, int) {
    Sched *S = (Sched *)vS;
    uint32_t st = __atomic_load_n(&S->step, __ATOMIC_SEQ_CST);
    while ((int)st < S->nsteps) {
        const long c = sched_claim(S, tid, st);
        if (c >= 0) {
            S->work(S->ctx, (int)st, (int)c, tid);
            const uint32_t n = __atomic_add_fetch(&S->done, 1, __ATOMIC_SEQ_CST);
            if ((long)n == S->chunks(S->ctx, (int)st)) {       // the step's last chunk
                __atomic_store_n(&S->done, 0, __ATOMIC_SEQ_CST);
                if ((int)st + 1 < S->nsteps) sched_ranges(S, st + 1);
                __atomic_store_n(&S->step, st + 1, __ATOMIC_SEQ_CST);
                S->team->wake(&S->step, &S->sleepers);
            }
        } else if (c == -1) {
            S->team->wait(&S->step, st, &S->sleepers);
        }
        st = __atomic_load_n(&S->step, __ATOMIC_SEQ_CST);
    }
}

/* every chunk of every step, on up to nth threads */
static void sched_run(int nth, int nsteps, int (*chunks)(void *, int),
                      void (*work)(void *, int, int, int), void *ctx, const TeamOps *team) {
    if (nsteps <= 0) return;
    Sched S;
    memset(&S, 0, sizeof S);
    S.nth = nth < 1 ? 1 : (nth > MAXT ? MAXT : nth);
    S.nsteps = nsteps;
    S.team = team;
    S.chunks = chunks;
    S.work = work;
    S.ctx = ctx;
    sched_ranges(&S, 0);
    team->run(S.nth, sched_task, &S);
}

// -- cells: forward --------------------------------------------------------------------------

template <class T> struct Fwd {
    const Packed *w;    // first: the schedule's panels_of reads it
    const FwdArgs *a;
    uint16_t *hb[2];    // bf16: h_{t-1} for step t in hb[t & 1], h_t written into hb[(t+1) & 1]
    long ldb;           // bf16 values per row of hb (K padded to even)
};

/* After the product of rows [m0, m0 + mr) and panel q of step t (scratch S = h_{t-1} W_hh^T
 * for the panel's units, gate after gate): the cell's gates and state for those units. */
template <class T, int CELL>
static inline void epi_fwd(const Fwd<T> *ctx, int t, int m0, int mr, int q, const T *S) {
    typedef typename Vec<T>::v V;
    const int L = Vec<T>::L;
    const FwdArgs *a = ctx->a;
    const Packed *w = a->w;
    const long B = a->B, H = a->H;
    const int NR = w->NR, U = w->U;
    uint16_t *hb = w->bf16 ? ctx->hb[(t + 1) & 1] : 0;
    for (int r = 0; r < mr; r++) {
        const long b = m0 + r, row = t * B + b;
        const T *s = S + r * NR;
        const T *hp = (t ? (const T *)a->hs + (row - B) * H : (const T *)a->h0 + b * H);
        for (int j = 0; j < U; j += L) {
            const long u = (long)q * U + j;
            const int n = imin(L, H - u);
            if (n <= 0) break;
            V h;
            if constexpr (CELL == CELL_RNN) {
                T *z = (T *)a->x + row * H + u;
                // z_t = x_t W_ih^T + b + h_{t-1} W_hh^T
                V zt = load<V>(s + j) + load_n<V>(z, n);
                h = a->relu ? vrelu(zt) : vtanh(zt);           // h_t = f(z_t)
            } else if constexpr (CELL == CELL_LSTM) {
                T *z = (T *)a->x + row * 4 * H + u;             // x_t W_ih^T + b, by gate
                V i = vsigmoid(load<V>(s + j) + load_n<V>(z, n));  // i_t = sigmoid(z^i_t)
                V f = vsigmoid(load<V>(s + U + j) + load_n<V>(z + H, n));  // f_t
                V g = vtanh(load<V>(s + 2 * U + j) + load_n<V>(z + 2 * H, n));  // g_t
                V o = vsigmoid(load<V>(s + 3 * U + j) + load_n<V>(z + 3 * H, n));  // o_t
                const T *cp = (t ? (const T *)a->cs + (row - B) * H : (const T *)a->c0 + b * H);
                V c = f * load_n<V>(cp + u, n) + i * g;         // c_t = f_t * c_{t-1} + i_t * g_t
                V tc = vtanh(c);
                h = o * tc;                                     // h_t = o_t * tanh(c_t)
                store_n(z, i, n);
                store_n(z + H, f, n);
                store_n(z + 2 * H, g, n);
                store_n(z + 3 * H, o, n);
                store_n((T *)a->cs + row * H + u, c, n);
                store_n((T *)a->tanh_cs + row * H + u, tc, n);
            } else {
                T *x = (T *)a->x + row * 3 * H + u;             // a_t = x_t W_ih^T + b_ih
                V sr = load<V>(s + j), sz = load<V>(s + U + j), sn = load<V>(s + 2 * U + j);
                if (a->b_hh) {                                  // s_t = h_{t-1} W_hh^T + b_hh
                    const T *bh = (const T *)a->b_hh + u;
                    sr += load_n<V>(bh, n);
                    sz += load_n<V>(bh + H, n);
                    sn += load_n<V>(bh + 2 * H, n);
                }
                V rr = vsigmoid(load_n<V>(x, n) + sr);          // r_t = sigmoid(a^r_t + s^r_t)
                V uu = vsigmoid(load_n<V>(x + H, n) + sz);      // u_t = sigmoid(a^z_t + s^z_t)
                V nn = vtanh(load_n<V>(x + 2 * H, n) + rr * sn);  // n_t = tanh(a^n_t + r_t * s^n_t)
                h = nn + uu * (load_n<V>(hp + u, n) - nn);      // h_t = n_t + u_t * (h_{t-1} - n_t)
                store_n(x, rr, n);
                store_n(x + H, uu, n);
                store_n(x + 2 * H, nn, n);
                T *st = (T *)a->s + row * 3 * H + u;
                store_n(st, sr, n);
                store_n(st + H, sz, n);
                store_n(st + 2 * H, sn, n);
            }
            store_n((T *)a->hs + row * H + u, h, n);
            if (hb) store_bf16_n(hb + b * ctx->ldb + u, h, n);
        }
    }
}

/* chunk q of step t: panel q of units, every row */
template <class T, int CELL> static void fwd_work(void *vctx, int t, int q, int) {
    constexpr int G = CELL == CELL_LSTM ? 4 : CELL == CELL_GRU ? 3 : 1, NV = G == 1 ? 2 : G;
    const Fwd<T> *ctx = (const Fwd<T> *)vctx;
    const FwdArgs *a = ctx->a;
    const Packed *w = a->w;
    const long B = a->B, H = a->H;
    const Rows rows((int)B, step_mr<T>(w, NV));
    alignas(64) T scratch[SCRATCH];
    const T *hp = t ? (const T *)a->hs + (long)(t - 1) * B * H : (const T *)a->h0;
    for (int i = 0; i < rows.nb; i++) {
        const int m0 = rows.start(i), mr = rows.size(i);
        const uint32_t *hb = w->bf16 ? (const uint32_t *)(ctx->hb[t & 1] + m0 * ctx->ldb) : 0;
        step_product<T, NV>(w, q, mr, hp + m0 * H, H, hb, ctx->ldb / 2, scratch);
        epi_fwd<T, CELL>(ctx, t, m0, mr, q, scratch);
    }
}

static int panels_of(void *vctx, int) { return (*(const Packed *const *)vctx)->npanels; }

/* threads worth using for a loop whose step product is flops: about 2 MFLOP each */
static int useful_threads(int nth, double flops, int panels) {
    int n = (int)(flops / 2e6);
    n = n < 1 ? 1 : n;
    n = n < nth ? n : nth;
    return n < panels ? n : panels;
}

template <class T, int CELL> static void forward_t(const FwdArgs *a, int nth, const TeamOps *team) {
    Fwd<T> ctx;
    ctx.w = a->w;
    ctx.a = a;
    ctx.hb[0] = ctx.hb[1] = 0;
    ctx.ldb = a->w->Kp;
    const Packed *w = a->w;
    if (w->bf16) {
        ctx.hb[0] = (uint16_t *)alloc64(2 * (size_t)a->B * ctx.ldb * 2);
        if (!ctx.hb[0]) return;
        ctx.hb[1] = ctx.hb[0] + (size_t)a->B * ctx.ldb;
        for (long b = 0; b < a->B; b++)                 // h0 as bf16
            for (long u = 0; u < a->H; u++)
                ctx.hb[0][b * ctx.ldb + u] = bf16_one((float)((const T *)a->h0)[b * a->H + u]);
    }
    int n = useful_threads(nth, 2.0 * a->B * w->K * w->G * w->H, w->npanels);
    sched_run(n, a->T, panels_of, fwd_work<T, CELL>, &ctx, team);
    free(ctx.hb[0]);
}

static void forward(int cell, const FwdArgs *a, int nth, const TeamOps *team) {
    const bool dbl = a->w->dtype == DT_F64;
    if (cell == CELL_RNN) dbl ? forward_t<double, CELL_RNN>(a, nth, team)
                              : forward_t<float, CELL_RNN>(a, nth, team);
    else if (cell == CELL_LSTM) dbl ? forward_t<double, CELL_LSTM>(a, nth, team)
                                    : forward_t<float, CELL_LSTM>(a, nth, team);
    else dbl ? forward_t<double, CELL_GRU>(a, nth, team) : forward_t<float, CELL_GRU>(a, nth, team);
}

// -- cells: backward -------------------------------------------------------------------------

template <class T> struct Bwd {
    const Packed *w;    // first: the schedule's panels_of reads it
    const BwdArgs *a;
    uint16_t *db[2];    // bf16: the product's rows of step t in db[t & 1]
    long ldb;
};

/* After the product of rows [m0, m0 + mr) and panel q at step t (S = dz_{t+1} W_hh for the
 * panel's units; zero at the last step): the gradients of step t for those units. carry_h
 * holds what else reaches h_t (dL/dh_n at the last step; the GRU's dh_{t+1} * u_{t+1}), and
 * is left as what reaches h_{t-1} besides the next product. */
template <class T, int CELL>
static inline void epi_bwd(const Bwd<T> *ctx, int t, int m0, int mr, int q, const T *S) {
    typedef typename Vec<T>::v V;
    const int L = Vec<T>::L;
    const BwdArgs *a = ctx->a;
    const Packed *w = a->w;
    const long B = a->B, H = a->H;
    const int NR = w->NR, U = w->U;
    uint16_t *db = w->bf16 ? ctx->db[t & 1] : 0;
    for (int r = 0; r < mr; r++) {
        const long b = m0 + r, row = t * B + b;
        for (int j = 0; j < U; j += L) {
            const long u = (long)q * U + j;
            const int n = imin(L, H - u);
            if (n <= 0) break;
            T *ch = (T *)a->carry_h + b * H + u;
            V dh = load<V>(S + r * NR + j) + load_n<V>(ch, n);  // dh_t = dL/dh_t + dz_{t+1} W_hh
            if (a->dhs) dh += load_n<V>((const T *)a->dhs + row * H + u, n);
            if constexpr (CELL == CELL_RNN) {
                V h = load_n<V>((const T *)a->hs + row * H + u, n);
                V fp = a->relu ? (h > (V){} ? (V){} + (T)1 : (V){}) : (T)1 - h * h;
                V dz = dh * fp;                                 // dz_t = dh_t * f'(z_t)
                store_n((T *)a->dz + row * H + u, dz, n);
                store_n(ch, (V){}, n);
                if (db) store_bf16_n(db + b * ctx->ldb + u, dz, n);
            } else if constexpr (CELL == CELL_LSTM) {
                const T *g4 = (const T *)a->gates + row * 4 * H + u;
                V i = load_n<V>(g4, n), f = load_n<V>(g4 + H, n);
                V g = load_n<V>(g4 + 2 * H, n), o = load_n<V>(g4 + 3 * H, n);
                V tc = load_n<V>((const T *)a->tanh_cs + row * H + u, n);
                const T *cp = (t ? (const T *)a->cs + (row - B) * H : (const T *)a->c0 + b * H);
                T *cc = (T *)a->carry_c + b * H + u;
                // dc_t = dc_{t+1} * f_{t+1} + dh_t * o_t * (1 - tanh(c_t)^2)
                V dc = load_n<V>(cc, n) + dh * o * ((T)1 - tc * tc);
                V dzi = dc * g * i * ((T)1 - i);            // dz^i_t = dc_t * g_t * i_t (1 - i_t)
                // dz^f_t = dc_t * c_{t-1} * f_t (1 - f_t)
                V dzf = dc * load_n<V>(cp + u, n) * f * ((T)1 - f);
                V dzg = dc * i * ((T)1 - g * g);            // dz^g_t = dc_t * i_t * (1 - g_t^2)
                V dzo = dh * tc * o * ((T)1 - o);           // dz^o_t = dh_t * tanh(c_t) * o_t (1 - o_t)
                T *dz = (T *)a->dz + row * 4 * H + u;
                store_n(dz, dzi, n);
                store_n(dz + H, dzf, n);
                store_n(dz + 2 * H, dzg, n);
                store_n(dz + 3 * H, dzo, n);
                if (db) {
                    uint16_t *d = db + b * ctx->ldb + u;
                    store_bf16_n(d, dzi, n);
                    store_bf16_n(d + H, dzf, n);
                    store_bf16_n(d + 2 * H, dzg, n);
                    store_bf16_n(d + 3 * H, dzo, n);
                }
                store_n(cc, dc * f, n);                     // dc0 = dc_0 * f_0 (each step's)
                store_n(ch, (V){}, n);
            } else {
                const T *g3 = (const T *)a->gates + row * 3 * H + u;
                V rr = load_n<V>(g3, n), uu = load_n<V>(g3 + H, n), nn = load_n<V>(g3 + 2 * H, n);
                const T *hp = (t ? (const T *)a->hs + (row - B) * H : (const T *)a->h0 + b * H);
                V sn = load_n<V>((const T *)a->s_n + row * a->s_ld + u, n);
                V dan = dh * ((T)1 - uu) * ((T)1 - nn * nn);  // da^n_t = dh_t * (1 - u_t) * (1 - n_t^2)
                // da^z_t = dh_t * (h_{t-1} - n_t) * u_t (1 - u_t)
                V daz = dh * (load_n<V>(hp + u, n) - nn) * uu * ((T)1 - uu);
                V dar = dan * sn * rr * ((T)1 - rr);          // da^r_t = da^n_t * s^n_t * r_t (1 - r_t)
                V dsn = dan * rr;                             // ds_t = [da^r_t | da^z_t | da^n_t * r_t]
                T *da = (T *)a->dz + row * 3 * H + u, *ds = (T *)a->ds + row * 3 * H + u;
                store_n(da, dar, n);
                store_n(da + H, daz, n);
                store_n(da + 2 * H, dan, n);
                store_n(ds, dar, n);
                store_n(ds + H, daz, n);
                store_n(ds + 2 * H, dsn, n);
                if (db) {
                    uint16_t *d = db + b * ctx->ldb + u;
                    store_bf16_n(d, dar, n);
                    store_bf16_n(d + H, daz, n);
                    store_bf16_n(d + 2 * H, dsn, n);
                }
                store_n(ch, dh * uu, n);                      // dh_{t-1} = ds_t W_hh + dh_t * u_t
            }
        }
    }
}

/* chunk q of step i: panel q of units at t = T - 1 - i; at i = T, dh0 = dz_0 W_hh (+ the
 * GRU's dh_0 * u_0 in carry_h) */
template <class T, int CELL> static void bwd_work(void *vctx, int i, int q, int) {
    constexpr int NV = 2;
    typedef typename Vec<T>::v V;
    const int L = Vec<T>::L;
    const Bwd<T> *ctx = (const Bwd<T> *)vctx;
    const BwdArgs *a = ctx->a;
    const Packed *w = a->w;
    const long B = a->B, H = a->H, GH = (long)w->G * H;
    const int t = a->T - 1 - i;
    const T *rows_of = (const T *)(CELL == CELL_GRU ? a->ds : a->dz);  // the products' operand
    const Rows rows((int)B, step_mr<T>(w, NV));
    alignas(64) T scratch[SCRATCH];
    for (int k = 0; k < rows.nb; k++) {
        const int m0 = rows.start(k), mr = rows.size(k);
        if (t + 1 < a->T) {                              // dz_{t+1} W_hh
            const uint32_t *db = w->bf16
                ? (const uint32_t *)(ctx->db[(t + 1) & 1] + m0 * ctx->ldb) : 0;
            step_product<T, NV>(w, q, mr, rows_of + ((long)(t + 1) * B + m0) * GH, GH, db,
                                ctx->ldb / 2, scratch);
        } else {
            memset(scratch, 0, sizeof(T) * mr * w->NR);
        }
        if (t >= 0) {
            epi_bwd<T, CELL>(ctx, t, m0, mr, q, scratch);
            continue;
        }
        for (int r = 0; r < mr; r++)                     // dh0 = dz_0 W_hh (+ dh_0 * u_0)
            for (int j = 0; j < w->U; j += L) {
                const long u = (long)q * w->U + j;
                const int n = imin(L, H - u);
                if (n <= 0) break;
                T *ch = (T *)a->carry_h + (m0 + r) * H + u;
                store_n(ch, load_n<V>(ch, n) + load<V>(scratch + r * w->NR + j), n);
            }
    }
}

template <class T, int CELL>
static void backward_t(const BwdArgs *a, int nth, const TeamOps *team) {
    Bwd<T> ctx;
    ctx.w = a->w;
    ctx.a = a;
    ctx.db[0] = ctx.db[1] = 0;
    ctx.ldb = a->w->Kp;
    if (a->w->bf16) {
        ctx.db[0] = (uint16_t *)alloc64(2 * (size_t)a->B * ctx.ldb * 2);
        if (!ctx.db[0]) return;
        ctx.db[1] = ctx.db[0] + (size_t)a->B * ctx.ldb;
    }
    const Packed *w = a->w;
    int n = useful_threads(nth, 2.0 * a->B * w->K * w->H, w->npanels);
    sched_run(n, a->T + 1, panels_of, bwd_work<T, CELL>, &ctx, team);
    free(ctx.db[0]);
}

static void backward(int cell, const BwdArgs *a, int nth, const TeamOps *team) {
    const bool dbl = a->w->dtype == DT_F64;
    if (cell == CELL_RNN) dbl ? backward_t<double, CELL_RNN>(a, nth, team)
                              : backward_t<float, CELL_RNN>(a, nth, team);
    else if (cell == CELL_LSTM) dbl ? backward_t<double, CELL_LSTM>(a, nth, team)
                                    : backward_t<float, CELL_LSTM>(a, nth, team);
    else dbl ? backward_t<double, CELL_GRU>(a, nth, team)
             : backward_t<float, CELL_GRU>(a, nth, team);
}

// -- the general product ---------------------------------------------------------------------
//
// Goto's blocking. C is cut along its longer side into blocks (MC rows or NC columns); the
// operand shared by every block (B when cutting rows, A when cutting columns) is packed once,
// all of it, by every thread in a first step (panels of NR columns, slabs of MR rows, KC deep);
// in the second step each block packs its own part of the other operand, KC deep at a time,
// and runs the micro-kernel over (panel, slab) pairs, a panel (KC x NR) staying in L1.

enum { PACK_GROUP = 8 };       // panels or slabs packed per chunk

template <class T> struct Gemm {
    const GemmArgs *a;
    int bf, MR, NR;
    long KC, MC, NC, nkc;
    int split_m;               // blocks of rows (B shared) or of columns (A shared)
    int kb_steps;              // a step per K block (kb_steps_of) rather than all in one
    long nshared;              // panels (split_m) or slabs of the shared operand per KC block
    long nblocks;
    void *shared;              // the shared operand, packed: KC block after KC block
    void *own[MAXT];           // per thread: its block of the other operand
};

static size_t esz_of(int bf, size_t tsize) { return bf ? 2 : tsize; }

template <class T> static long kc_len(const Gemm<T> *g, long kb) {
    const long kc = kb * g->KC;
    return kc + g->KC < g->a->K ? g->KC : g->a->K - kc;
}

#include "gemm_pack.hpp"

/* rows [m0, m0 + mm) x K block kb of A, as slabs of MR rows (bf16: pairs along k) */
template <class T> static void pack_a(const Gemm<T> *g, long m0, long mm, long kb, void *out) {
    const GemmArgs *a = g->a;
    if (pack_a_fast(g, m0, mm, kb, out)) return;
    const long kc = kb * g->KC, kk = kc_len(g, kb), MR = g->MR;
    const long nslab = (mm + MR - 1) / MR;
    if (g->bf) {
        const float *A = (const float *)a->A;
        const long kk2 = (kk + 1) / 2;
        uint32_t *Ap = (uint32_t *)out;
        for (long s = 0; s < nslab; s++)
            for (long r = 0; r < MR; r++) {
                const long m = s * MR + r;
                uint32_t *d = Ap + s * kk2 * MR + r;
                if (m >= mm) {
                    for (long k = 0; k < kk2; k++) d[k * MR] = 0;
                    continue;
                }
                const float *p = A + (m0 + m) * a->rsa + kc * a->csa;
                for (long k = 0; k < kk2; k++) {
                    const uint32_t lo = bf16_one(p[2 * k * a->csa]);
                    const uint32_t hi = 2 * k + 1 < kk ? bf16_one(p[(2 * k + 1) * a->csa]) : 0;
                    d[k * MR] = lo | hi << 16;
                }
            }
        return;
    }
    const T *A = (const T *)a->A;
    T *Ap = (T *)out;
    for (long s = 0; s < nslab; s++)
        for (long r = 0; r < MR; r++) {
            const long m = s * MR + r;
            T *d = Ap + s * kk * MR + r;
            if (m >= mm) {
                for (long k = 0; k < kk; k++) d[k * MR] = 0;
                continue;
            }
            const T *p = A + (m0 + m) * a->rsa + kc * a->csa;
            for (long k = 0; k < kk; k++) d[k * MR] = p[k * a->csa];
        }
}

/* columns [n0, n0 + nn) x K block kb of B, as panels of NR columns (bf16: pairs along k) */
template <class T> static void pack_b(const Gemm<T> *g, long n0, long nn, long kb, void *out) {
    const GemmArgs *a = g->a;
    if (pack_b_fast(g, n0, nn, kb, out)) return;
    const long kc = kb * g->KC, kk = kc_len(g, kb), NR = g->NR;
    const long npan = (nn + NR - 1) / NR;
    if (g->bf) {
        const float *Bm = (const float *)a->B;
        const long kk2 = (kk + 1) / 2;
        uint16_t *Bp = (uint16_t *)out;
        for (long p = 0; p < npan; p++)
            for (long k = 0; k < 2 * kk2; k++) {
                uint16_t *d = Bp + ((p * kk2 + k / 2) * NR) * 2 + k % 2;
                const float *src = Bm + (kc + k) * a->rsb + (n0 + p * NR) * a->csb;
                const long ncol = nn - p * NR < NR ? nn - p * NR : NR;
                for (long c = 0; c < NR; c++)
                    d[2 * c] = k < kk && c < ncol ? bf16_one(src[c * a->csb]) : 0;
            }
        return;
    }
    const T *Bm = (const T *)a->B;
    T *Bp = (T *)out;
    for (long p = 0; p < npan; p++) {
        const long ncol = nn - p * NR < NR ? nn - p * NR : NR;
        for (long k = 0; k < kk; k++) {
            const T *src = Bm + (kc + k) * a->rsb + (n0 + p * NR) * a->csb;
            T *d = Bp + (p * kk + k) * NR;
            long c = 0;
            if (a->csb == 1)
                for (; c < ncol; c++) d[c] = src[c];
            else
                for (; c < ncol; c++) d[c] = src[c * a->csb];
            for (; c < NR; c++) d[c] = 0;
        }
    }
}

/* where K block kb of the shared operand starts (elements of T, or of bf16) */
template <class T> static size_t shared_offset(const Gemm<T> *g, long kb) {
    const long span = g->nshared * (g->split_m ? g->NR : g->MR);  // padded N or M
    return (size_t)kb * g->KC * span;
}

/* C's rows [mc, mc + mm) x columns [nc, nc + nn) += the packed slabs x panels of K block kb */
template <class T>
static void gemm_tiles(const Gemm<T> *g, const void *Ap, const void *Bp, long mc, long mm,
                       long nc, long nn, long kb) {
    const GemmArgs *a = g->a;
    const long kk = kc_len(g, kb), kk2 = (kk + 1) / 2, MR = g->MR, NR = g->NR;
    const int acc = kb > 0 || a->accumulate;
    alignas(64) T tmp[SCRATCH];
    T *C = (T *)a->C;
    for (long p = 0; p * NR < nn; p++) {
        const int ncols = imin(NR, nn - p * NR);
        for (long s = 0; s * MR < mm; s++) {
            const int mr = imin(MR, mm - s * MR);
            T *c = C + (mc + s * MR) * a->ldc + nc + p * NR;
            T *dst = ncols == NR ? c : tmp;
            const long ldd = ncols == NR ? a->ldc : NR;
            const int ac = ncols == NR ? acc : 0;
            if constexpr (sizeof(T) == 4) {
                if (g->bf) {
                    micro_rows_bf<2>(mr, kk2, (const uint32_t *)Ap + s * kk2 * MR, 1, MR,
                                     (const uint16_t *)Bp + p * kk2 * NR * 2, (float *)dst, ldd,
                                     ac);
                } else {
                    micro_rows<T, 2>(mr, kk, (const T *)Ap + s * kk * MR, 1, MR,
                                     (const T *)Bp + p * kk * NR, dst, ldd, ac);
                }
            } else {
                micro_rows<T, 2>(mr, kk, (const T *)Ap + s * kk * MR, 1, MR,
                                 (const T *)Bp + p * kk * NR, dst, ldd, ac);
            }
            if (ncols < NR)
                for (int r = 0; r < mr; r++)
                    for (int col = 0; col < ncols; col++)
                        c[r * a->ldc + col] = (acc ? c[r * a->ldc + col] : 0) + tmp[r * NR + col];
        }
    }
}

template <class T> static int gemm_chunks(void *vctx, int step) {
    const Gemm<T> *g = (const Gemm<T> *)vctx;
    if (step == 0) return (int)(g->nkc * ((g->nshared + PACK_GROUP - 1) / PACK_GROUP));
    return (int)g->nblocks;
}

template <class T> static void gemm_work(void *vctx, int step, int chunk, int tid) {
    Gemm<T> *g = (Gemm<T> *)vctx;
    const GemmArgs *a = g->a;
    const size_t esz = esz_of(g->bf, sizeof(T));
    if (step == 0) {                                     // pack a group of the shared operand
        const long groups = (g->nshared + PACK_GROUP - 1) / PACK_GROUP;
        const long kb = chunk / groups, first = chunk % groups * PACK_GROUP;
        const long unit = g->split_m ? g->NR : g->MR, total = g->split_m ? a->N : a->M;
        const long start = first * unit;
        long len = PACK_GROUP * unit;
        len = start + len < total ? len : total - start;
        const long kk = kc_len(g, kb), depth = g->bf ? (kk + 1) / 2 * 2 : kk;
        char *out = (char *)g->shared + (shared_offset(g, kb) + first * unit * depth) * esz;
        if (g->split_m) pack_b(g, start, len, kb, out);
        else pack_a(g, start, len, kb, out);
        return;
    }
    if (!g->own[tid]) {
        const long span = g->split_m ? g->MC + g->MR : g->NC + g->NR;
        g->own[tid] = alloc64((size_t)g->KC * span * esz);
        if (!g->own[tid]) return;                        // out of memory: C stays unfinished
    }
    // one K block a step (the shared operand's block stays in cache across the blocks of C;
    // a block's C adds K block kb after kb - 1), or every K block in step 1
    const long kb0 = g->kb_steps ? step - 1 : 0, kb1 = g->kb_steps ? step : g->nkc;
    for (long kb = kb0; kb < kb1; kb++) {
        const char *sh = (const char *)g->shared + shared_offset(g, kb) * esz;
        if (g->split_m) {
            const long mc = (long)chunk * g->MC, mm = mc + g->MC < a->M ? g->MC : a->M - mc;
            pack_a(g, mc, mm, kb, g->own[tid]);
            gemm_tiles(g, g->own[tid], sh, mc, mm, 0, a->N, kb);
        } else {
            const long nc = (long)chunk * g->NC, nn = nc + g->NC < a->N ? g->NC : a->N - nc;
            pack_b(g, nc, nn, kb, g->own[tid]);
            gemm_tiles(g, sh, g->own[tid], 0, a->M, nc, nn, kb);
        }
    }
}

template <class T> static void gemm_t(const GemmArgs *a, int nth, const TeamOps *team) {
    Gemm<T> g;
    memset(&g, 0, sizeof g);
    g.a = a;
    g.bf = sizeof(T) == 4 && a->bf16;
    g.NR = 2 * Vec<T>::L;
    g.MR = g.bf ? mr_max_bf(2) : mr_max(2);
    g.KC = g.bf ? 512 : 256;
    g.MC = (long)g.MR * 8;
    g.NC = (long)g.NR * 32;
    g.nkc = (a->K + g.KC - 1) / g.KC;
    if (g.bf) {                // the bf16 blocking (gemm_pack.hpp); float keeps the one it had
        g.KC = even_kc(a->K, g.nkc);
        g.nkc = (a->K + g.KC - 1) / g.KC;
    }
    g.split_m = a->M >= a->N;
    g.nshared = g.split_m ? (a->N + g.NR - 1) / g.NR : (a->M + g.MR - 1) / g.MR;
    double flops = 2.0 * a->M * a->N * a->K;
    int n = (int)(flops / 4e6);
    n = n < 1 ? 1 : (n < nth ? n : nth);
    if (g.split_m && g.bf) g.MC = block_rows(a->M, g.MR, n);
    g.nblocks = g.split_m ? (a->M + g.MC - 1) / g.MC : (a->N + g.NC - 1) / g.NC;
    const long span = g.nshared * (g.split_m ? g.NR : g.MR);
    g.shared = alloc64((size_t)g.nkc * g.KC * span * esz_of(g.bf, sizeof(T)));
    if (!g.shared) return;
    n = n < g.nblocks ? n : (int)g.nblocks;
    g.kb_steps = g.bf && kb_steps_of(g.nkc, (size_t)span * g.KC * 2,
                                     (size_t)a->M * a->N * sizeof(T));
    sched_run(n, g.kb_steps ? 1 + (int)g.nkc : 2, gemm_chunks<T>, gemm_work<T>, &g, team);
    for (int i = 0; i < MAXT; i++) free(g.own[i]);
    free(g.shared);
}

static void gemm(const GemmArgs *a, int nth, const TeamOps *team) {
    if (a->M <= 0 || a->N <= 0) return;
    if (a->K <= 0) {                                   // an empty sum
        if (!a->accumulate) {
            const size_t esz = a->dtype == DT_F64 ? 8 : 4;
            for (long m = 0; m < a->M; m++)
                memset((char *)a->C + m * a->ldc * esz, 0, a->N * esz);
        }
        return;
    }
    if (a->dtype == DT_F64) gemm_t<double>(a, nth, team);
    else gemm_t<float>(a, nth, team);
}

// -- softmax cross-entropy -------------------------------------------------------------------

enum { XENT_ROWS = 16 };

template <class T> struct Xent {
    T *s;
    long N, V;
    const int64_t *y;
    double *part;          // per chunk of XENT_ROWS rows: its loss
};

template <class T> static int xent_chunks(void *vctx, int) {
    const Xent<T> *x = (const Xent<T> *)vctx;
    return (int)((x->N + XENT_ROWS - 1) / XENT_ROWS);
}

/* the largest of s[0..V), a vector of lanes at a time (a NaN among them: the row's loss and
 * gradient are NaN either way) */
template <class T> static inline T row_max(const T *s, long V) {
    typedef typename Vec<T>::v Vv;
    const int L = Vec<T>::L;
    T mx = s[0];
    long v = 1;
    if (V >= 2 * L) {
        Vv m = load<Vv>(s);
        for (v = L; v + L <= V; v += L) {
            Vv x = load<Vv>(s + v);
            m = x > m ? x : m;
        }
        mx = m[0];
        for (int i = 1; i < L; i++) mx = m[i] > mx ? m[i] : mx;
    }
    for (; v < V; v++) mx = s[v] > mx ? s[v] : mx;
    return mx;
}

/* rows of one chunk: p = softmax(s), loss -= log p[y]; s becomes dL/ds = (p - onehot(y)) / N */
template <class T> static void xent_work(void *vctx, int, int chunk, int) {
    typedef typename Vec<T>::v Vv;
    const int L = Vec<T>::L;
    const Xent<T> *ctx = (const Xent<T> *)vctx;
    const long N = ctx->N, V = ctx->V;
    const long r0 = (long)chunk * XENT_ROWS, r1 = r0 + XENT_ROWS < N ? r0 + XENT_ROWS : N;
    double loss = 0;
    for (long r = r0; r < r1; r++) {
        T *s = ctx->s + r * V;
        const T mx = row_max(s, V);                     // s - max: exp never overflows
        const T sy = s[ctx->y[r]] - mx;
        Vv acc = (Vv){};
        long v = 0;
        for (; v + L <= V; v += L) {
            Vv e = vexp(load<Vv>(s + v) - mx);
            store_n(s + v, e, L);
            acc += e;
        }
        T sum = 0;
        for (int i = 0; i < L; i++) sum += acc[i];
        for (; v < V; v++) {
            Vv e = vexp(load_n<Vv>(s + v, 1) - mx);
            s[v] = e[0];
            sum += e[0];
        }
        // log p[y] = (s[y] - max) - log(sum exp(s - max))
        loss -= (double)sy - log((double)sum);
        const T scale = (T)1 / (sum * (T)N);
        for (long k = 0; k < V; k++) s[k] *= scale;     // p / N
        s[ctx->y[r]] -= (T)1 / (T)N;                    // dL/ds = (p - onehot(y)) / N
    }
    ctx->part[chunk] = loss;
}

template <class T>
static double xent_t(T *logits, long N, long V, const int64_t *y, int nth, const TeamOps *team) {
    Xent<T> ctx = {logits, N, V, y, nullptr};
    const int chunks = xent_chunks<T>(&ctx, 0);
    ctx.part = (double *)calloc(chunks ? chunks : 1, sizeof(double));
    if (!ctx.part) return NAN;
    int n = (int)((double)N * V / 2e5);
    n = n < 1 ? 1 : (n < nth ? n : nth);
    sched_run(n, 1, xent_chunks<T>, xent_work<T>, &ctx, team);
    double total = 0;
    for (int i = 0; i < chunks; i++) total += ctx.part[i];
    free(ctx.part);
    return total / (double)N;
}

static double softmax_xent(int dtype, void *logits, long N, long V, const int64_t *y, int nth,
                           const TeamOps *team) {
    if (N <= 0) return NAN;
    if (dtype == DT_F64) return xent_t((double *)logits, N, V, y, nth, team);
    return xent_t((float *)logits, N, V, y, nth, team);
}

#include "ln.hpp"

static const Impl IMPL = {ISA_NAME, NATIVE_BF16, pack, forward, backward, gemm, softmax_xent,
                         ln_forward, ln_backward};
