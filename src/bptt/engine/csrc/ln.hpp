/* The layer-normalised LSTM and GRU's loops over time (kernel.h, LnFwdArgs and LnBwdArgs),
 * compiled once per instruction set: included by impl.hpp, whose vectors, packed products and
 * schedule it uses.
 *
 * The equations are the Python cells' (engine/numpy/lnlstm.py, engine/numpy/lngru.py), labelled
 * as there. The recurrent weight is W~_hh, W_hh centred over its G*H rows, so that the step's
 * product v_t = h_{t-1} W~_hh^T is already centred and LN needs only its scale. A layer norm
 * reads a whole row of every gate's units, which the product's panels share among threads: a
 * step is two steps of the schedule, first the product (chunks: panels of units, v_t written
 * raw), then the rest (chunks: batch rows), each row's norms, gates and state at once.
 */

// -- forward ---------------------------------------------------------------------------------

template <class T> struct LnFwd {
    const Packed *w;    // first: the schedule's panels_of reads it
    const LnFwdArgs *a;
    uint16_t *hb[2];    // bf16: h_{t-1} for step t in hb[t & 1], h_t written into hb[(t+1) & 1]
    long ldb;
};

/* bf16: two (B, ldb) buffers of a step product's rows, buf[1] right after buf[0], with h0
 * (B, H) as bf16 in buf[0] when given; 0 on success */
template <class T>
static int ln_bf16_rows(uint16_t *buf[2], long B, long ldb, const T *h0, long H) {
    buf[0] = (uint16_t *)alloc64(2 * (size_t)B * ldb * 2);
    if (!buf[0]) return -1;
    buf[1] = buf[0] + (size_t)B * ldb;
    for (long b = 0; h0 && b < B; b++)
        for (long u = 0; u < H; u++) buf[0][b * ldb + u] = bf16_one((float)h0[b * H + u]);
    return 0;
}

template <class T> static inline T hsum(typename Vec<T>::v x) {
    T s = 0;
    for (int i = 0; i < Vec<T>::L; i++) s += x[i];
    return s;
}

/* sum of a[i] * b[i], i < n */
template <class T> static inline T ln_dot(const T *a, const T *b, long n) {
    typedef typename Vec<T>::v V;
    const int L = Vec<T>::L;
    V acc = (V){};
    for (long i = 0; i < n; i += L) {
        const int m = imin(L, n - i);
        acc += load_n<V>(a + i, m) * load_n<V>(b + i, m);
    }
    return hsum<T>(acc);
}

/* the product of rows [m0, m0 + mr) and panel q (scratch, gate after gate) into rows of out
 * (G*H wide, gate g's unit u at column g * H + u), each times fac[row] when fac is given */
template <class T>
static inline void ln_scatter(const Packed *w, int q, int mr, const T *S, T *out, long ld) {
    typedef typename Vec<T>::v V;
    const int L = Vec<T>::L, U = w->U;
    const long H = w->H;
    for (int r = 0; r < mr; r++)
        for (int g = 0; g < w->G; g++)
            for (int j = 0; j < U; j += L) {
                const long u = (long)q * U + j;
                const int n = imin(L, H - u);
                if (n <= 0) break;
                store_n(out + r * ld + g * H + u, load<V>(S + r * w->NR + g * U + j), n);
            }
}

/* step 2t: panel q of v_t = h_{t-1} W~_hh^T, every row, written raw into v[t] */
template <class T, int CELL> static void lnf_product(const LnFwd<T> *ctx, int t, int q) {
    constexpr int NV = CELL == CELL_LSTM ? 4 : 3;
    const LnFwdArgs *a = ctx->a;
    const Packed *w = a->w;
    const long B = a->B, H = a->H, GH = (long)w->G * H;
    const Rows rows((int)B, step_mr<T>(w, NV));
    alignas(64) T scratch[SCRATCH];
    const T *hp = t ? (const T *)a->hs + (long)(t - 1) * B * H : (const T *)a->h0;
    for (int i = 0; i < rows.nb; i++) {
        const int m0 = rows.start(i), mr = rows.size(i);
        const uint32_t *hb = w->bf16 ? (const uint32_t *)(ctx->hb[t & 1] + m0 * ctx->ldb) : 0;
        step_product<T, NV>(w, q, mr, hp + m0 * H, H, hb, ctx->ldb / 2, scratch);
        ln_scatter<T>(w, q, mr, scratch, (T *)a->v + ((long)t * B + m0) * GH, GH);
    }
}

/* v *= rstd over n values; return rstd = 1 / sqrt(mean(v^2) + eps) (v centred) */
template <class T> static inline T ln_scale(T *v, long n, double eps) {
    typedef typename Vec<T>::v V;
    const int L = Vec<T>::L;
    const T rstd = (T)(1.0 / sqrt((double)ln_dot<T>(v, v, n) / (double)n + eps));
    for (long i = 0; i < n; i += L) {
        const int m = imin(L, n - i);
        store_n(v + i, load_n<V>(v + i, m) * rstd, m);
    }
    return rstd;
}

/* step 2t + 1: row b of step t, its norms, gates and state */
template <class T, int CELL> static void lnf_row(const LnFwd<T> *ctx, int t, int b) {
    typedef typename Vec<T>::v V;
    const int L = Vec<T>::L;
    const LnFwdArgs *a = ctx->a;
    const long B = a->B, H = a->H, row = (long)t * B + b;
    constexpr int G = CELL == CELL_LSTM ? 4 : 3;
    T *v = (T *)a->v + row * G * H;
    ((T *)a->v_rstd)[row] = ln_scale<T>(v, G * H, a->eps);  // v^_t = v_t rstd_v
    T *x = (T *)a->x + row * G * H;
    const T *gh = (const T *)a->g_hh;
    T *hs = (T *)a->hs + row * H;
    const T *hp = t ? hs - B * H : (const T *)a->h0 + b * H;
    uint16_t *hb = a->w->bf16 ? ctx->hb[(t + 1) & 1] + b * ctx->ldb : 0;
    if constexpr (CELL == CELL_LSTM) {
        const T *cp = t ? (const T *)a->cs + (row - B) * H : (const T *)a->c0 + b * H;
        T *c = (T *)a->cs + row * H;
        V csum = (V){};
        for (long u = 0; u < H; u += L) {
            const int n = imin(L, H - u);
            V zz[4];
            for (int g = 0; g < 4; g++)                // z_t = u^_t g_ih + b + v^_t g_hh
                zz[g] = load_n<V>(x + g * H + u, n) + load_n<V>(v + g * H + u, n)
                        * load_n<V>(gh + g * H + u, n);
            V i = vsigmoid(zz[0]), f = vsigmoid(zz[1]);  // i_t, f_t = sigmoid(z^i_t, z^f_t)
            V g = vtanh(zz[2]);                         // g_t = tanh(z^g_t)
            V o = vsigmoid(zz[3]);                      // o_t = sigmoid(z^o_t)
            V ct = f * load_n<V>(cp + u, n) + i * g;   // c_t = f_t * c_{t-1} + i_t * g_t
            store_n(x + u, i, n);
            store_n(x + H + u, f, n);
            store_n(x + 2 * H + u, g, n);
            store_n(x + 3 * H + u, o, n);
            store_n(c + u, ct, n);
            csum += ct;
        }
        // c^_t = LN(c_t): (c_t - mean(c_t)) rstd_c
        const T mean = hsum<T>(csum) / (T)H;
        T *ch = (T *)a->c_hat + row * H;
        for (long u = 0; u < H; u += L) {
            const int n = imin(L, H - u);
            store_n(ch + u, load_n<V>(c + u, n) - mean, n);
        }
        ((T *)a->c_rstd)[row] = ln_scale<T>(ch, H, a->eps);
        const T *gc = (const T *)a->g_c, *bc = (const T *)a->b_c;
        T *tk = (T *)a->tanh_k + row * H;
        for (long u = 0; u < H; u += L) {
            const int n = imin(L, H - u);
            V k = load_n<V>(ch + u, n) * load_n<V>(gc + u, n);  // k_t = c^_t g_c + b_c
            if (bc) k += load_n<V>(bc + u, n);
            V tkv = vtanh(k);
            V h = load_n<V>(x + 3 * H + u, n) * tkv;   // h_t = o_t * tanh(k_t)
            store_n(tk + u, tkv, n);
            store_n(hs + u, h, n);
            if (hb) store_bf16_n(hb + u, h, n);
        }
    } else {
        const T *bh = (const T *)a->b_hh;
        T *sn = (T *)a->s_n + row * H;
        for (long u = 0; u < H; u += L) {
            const int n = imin(L, H - u);
            V s[3];
            for (int g = 0; g < 3; g++) {              // s_t = v^_t g_hh + b_hh
                s[g] = load_n<V>(v + g * H + u, n) * load_n<V>(gh + g * H + u, n);
                if (bh) s[g] += load_n<V>(bh + g * H + u, n);
            }
            V r = vsigmoid(load_n<V>(x + u, n) + s[0]);      // r_t = sigmoid(a^r_t + s^r_t)
            V uu = vsigmoid(load_n<V>(x + H + u, n) + s[1]);  // u_t = sigmoid(a^z_t + s^z_t)
            V nn = vtanh(load_n<V>(x + 2 * H + u, n) + r * s[2]);  // n_t = tanh(a^n_t + r_t * s^n_t)
            V h = nn + uu * (load_n<V>(hp + u, n) - nn);  // h_t = n_t + u_t * (h_{t-1} - n_t)
            store_n(x + u, r, n);
            store_n(x + H + u, uu, n);
            store_n(x + 2 * H + u, nn, n);
            store_n(sn + u, s[2], n);
            store_n(hs + u, h, n);
            if (hb) store_bf16_n(hb + u, h, n);
        }
    }
}

/* the schedule's steps alternate: panels of the product, then rows */
template <class T, int CELL> static void lnf_work(void *vctx, int step, int chunk, int) {
    const LnFwd<T> *ctx = (const LnFwd<T> *)vctx;
    if (step % 2 == 0) lnf_product<T, CELL>(ctx, step / 2, chunk);
    else lnf_row<T, CELL>(ctx, step / 2, chunk);
}

template <class T> static int lnf_chunks(void *vctx, int step) {
    const LnFwd<T> *ctx = (const LnFwd<T> *)vctx;
    return step % 2 == 0 ? ctx->w->npanels : ctx->a->B;
}

template <class T, int CELL>
static void ln_forward_t(const LnFwdArgs *a, int nth, const TeamOps *team) {
    LnFwd<T> ctx = {a->w, a, {0, 0}, a->w->Kp};
    const Packed *w = a->w;
    if (w->bf16 && ln_bf16_rows<T>(ctx.hb, a->B, ctx.ldb, (const T *)a->h0, a->H)) return;
    int n = useful_threads(nth, 2.0 * a->B * w->K * w->G * w->H, w->npanels);
    sched_run(n, 2 * a->T, lnf_chunks<T>, lnf_work<T, CELL>, &ctx, team);
    free(ctx.hb[0]);
}

static void ln_forward(int cell, const LnFwdArgs *a, int nth, const TeamOps *team) {
    const bool dbl = a->w->dtype == DT_F64;
    if (cell == CELL_LSTM) dbl ? ln_forward_t<double, CELL_LSTM>(a, nth, team)
                               : ln_forward_t<float, CELL_LSTM>(a, nth, team);
    else dbl ? ln_forward_t<double, CELL_GRU>(a, nth, team)
             : ln_forward_t<float, CELL_GRU>(a, nth, team);
}

// -- backward --------------------------------------------------------------------------------

template <class T> struct LnBwd {
    const Packed *w;    // first
    const LnBwdArgs *a;
    uint16_t *db[2];    // bf16: dv_t / rstd_v of step t in db[t & 1]
    long ldb;
};

/* step 2i (t = T - 1 - i; i = T: t = -1): panel q of the product dv_{t+1} W~_hh (the rows of
 * out hold dv_{t+1} / rstd_v, or dv_{t+1} when dv_scaled), into carry_h:
 * dh_t = dv_{t+1} W~_hh + carry_h + dL/dh_t */
template <class T, int CELL> static void lnb_product(const LnBwd<T> *ctx, int t, int q) {
    constexpr int NV = 2;
    typedef typename Vec<T>::v V;
    const int L = Vec<T>::L;
    const LnBwdArgs *a = ctx->a;
    const Packed *w = a->w;
    const long B = a->B, H = a->H, GH = (long)w->G * H, W = a->out_ld;
    const Rows rows((int)B, step_mr<T>(w, NV));
    alignas(64) T scratch[SCRATCH];
    for (int k = 0; k < rows.nb; k++) {
        const int m0 = rows.start(k), mr = rows.size(k);
        const bool prod = t + 1 < a->T;
        if (prod) {
            const uint32_t *db = w->bf16
                ? (const uint32_t *)(ctx->db[(t + 1) & 1] + m0 * ctx->ldb) : 0;
            step_product<T, NV>(w, q, mr, (const T *)a->out + ((long)(t + 1) * B + m0) * W + GH,
                                W, db, ctx->ldb / 2, scratch);
        }
        for (int r = 0; r < mr; r++) {
            const long b = m0 + r;
            const T rs = !prod ? (T)0 : a->dv_scaled ? (T)1 : ((const T *)a->v_rstd)[(t + 1) * B + b];
            for (int j = 0; j < w->U; j += L) {
                const long u = (long)q * w->U + j;
                const int n = imin(L, H - u);
                if (n <= 0) break;
                T *ch = (T *)a->carry_h + b * H + u;
                V dh = load_n<V>(ch, n);
                if (prod) dh += rs * load<V>(scratch + r * w->NR + j);  // dh_{t} = dv_{t+1} W~_hh
                if (t >= 0 && a->dhs) dh += load_n<V>((const T *)a->dhs + (t * B + b) * H + u, n);
                store_n(ch, dh, n);
            }
        }
    }
}

/* dy - y mean(dy y) over n values, in dy (the backward of ln_scale but for its factor rstd) */
template <class T> static inline void ln_scale_back(T *dy, const T *y, long n) {
    typedef typename Vec<T>::v V;
    const int L = Vec<T>::L;
    const T m = ln_dot<T>(dy, y, n) / (T)n;
    for (long i = 0; i < n; i += L) {
        const int k = imin(L, n - i);
        store_n(dy + i, load_n<V>(dy + i, k) - load_n<V>(y + i, k) * m, k);
    }
}

/* step 2i + 1: row b of step t = T - 1 - i. carry_h holds dh_t and leaves as what reaches
 * h_{t-1} besides the next product (the GRU's dh_t * u_t); carry_c: dc_{t+1} f_{t+1} -> dc_t f_t */
template <class T, int CELL> static void lnb_row(const LnBwd<T> *ctx, int t, int b) {
    typedef typename Vec<T>::v V;
    const int L = Vec<T>::L;
    const LnBwdArgs *a = ctx->a;
    const long B = a->B, H = a->H, row = (long)t * B + b;
    constexpr int G = CELL == CELL_LSTM ? 4 : 3;
    const long GH = G * H;
    T *out = (T *)a->out + row * a->out_ld;
    T *dz = out, *dv = out + GH;
    const T *gates = (const T *)a->gates + row * GH, *gh = (const T *)a->g_hh;
    const T *vh = (const T *)a->v + row * GH;
    T *ch = (T *)a->carry_h + b * H;
    if constexpr (CELL == CELL_LSTM) {
        T *dk = out + 2 * GH;
        const T *tk = (const T *)a->tanh_k + row * H, *chat = (const T *)a->c_hat + row * H;
        const T *gc = (const T *)a->g_c;
        V s1 = (V){}, s2 = (V){};
        for (long u = 0; u < H; u += L) {
            const int n = imin(L, H - u);
            V o = load_n<V>(gates + 3 * H + u, n), tkv = load_n<V>(tk + u, n);
            V dkv = load_n<V>(ch + u, n) * o * ((T)1 - tkv * tkv);  // dk_t = dh_t * o_t (1 - tanh(k_t)^2)
            store_n(dk + u, dkv, n);
            V dch = dkv * load_n<V>(gc + u, n);         // dc^ = dk_t g_c
            s1 += dch;
            s2 += dch * load_n<V>(chat + u, n);
        }
        const T m1 = hsum<T>(s1) / (T)H, m2 = hsum<T>(s2) / (T)H;  // mean(dc^), mean(dc^ c^_t)
        const T rc = ((const T *)a->c_rstd)[row];
        const T *cp = t ? (const T *)a->cs + (row - B) * H : (const T *)a->c0 + b * H;
        T *cc = (T *)a->carry_c + b * H;
        for (long u = 0; u < H; u += L) {
            const int n = imin(L, H - u);
            V dch = load_n<V>(dk + u, n) * load_n<V>(gc + u, n);
            // dc_t = dc_{t+1} f_{t+1} + rstd_c (dc^ - mean(dc^) - c^_t mean(dc^ c^_t))
            V dc = load_n<V>(cc + u, n) + rc * (dch - m1 - load_n<V>(chat + u, n) * m2);
            V i = load_n<V>(gates + u, n), f = load_n<V>(gates + H + u, n);
            V g = load_n<V>(gates + 2 * H + u, n), o = load_n<V>(gates + 3 * H + u, n);
            V dh = load_n<V>(ch + u, n);
            // dz^i_t = dc_t g_t i_t (1 - i_t), dz^f_t = dc_t c_{t-1} f_t (1 - f_t),
            // dz^g_t = dc_t i_t (1 - g_t^2),   dz^o_t = dh_t tanh(k_t) o_t (1 - o_t)
            store_n(dz + u, dc * g * i * ((T)1 - i), n);
            store_n(dz + H + u, dc * load_n<V>(cp + u, n) * f * ((T)1 - f), n);
            store_n(dz + 2 * H + u, dc * i * ((T)1 - g * g), n);
            store_n(dz + 3 * H + u, dh * load_n<V>(tk + u, n) * o * ((T)1 - o), n);
            store_n(cc + u, dc * f, n);                 // dc_{t-1} = dc_t f_t
            store_n(ch + u, (V){}, n);
        }
        for (long u = 0; u < GH; u += L) {             // dv^ = dz_t g_hh
            const int n = imin(L, GH - u);
            store_n(dv + u, load_n<V>(dz + u, n) * load_n<V>(gh + u, n), n);
        }
    } else {
        const T *hp = t ? (const T *)a->hs + (row - B) * H : (const T *)a->h0 + b * H;
        const T *sn = (const T *)a->s_n + row * H;
        for (long u = 0; u < H; u += L) {
            const int n = imin(L, H - u);
            V r = load_n<V>(gates + u, n), uu = load_n<V>(gates + H + u, n);
            V nn = load_n<V>(gates + 2 * H + u, n), dh = load_n<V>(ch + u, n);
            V dan = dh * ((T)1 - uu) * ((T)1 - nn * nn);  // da^n_t = dh_t (1 - u_t)(1 - n_t^2)
            // da^z_t = dh_t (h_{t-1} - n_t) u_t (1 - u_t)
            V daz = dh * (load_n<V>(hp + u, n) - nn) * uu * ((T)1 - uu);
            V dar = dan * load_n<V>(sn + u, n) * r * ((T)1 - r);  // da^r_t = da^n_t s^n_t r_t (1 - r_t)
            store_n(dz + u, dar, n);
            store_n(dz + H + u, daz, n);
            store_n(dz + 2 * H + u, dan, n);
            // dv^ = ds_t g_hh,  ds_t = [da^r_t | da^z_t | da^n_t r_t]
            store_n(dv + u, dar * load_n<V>(gh + u, n), n);
            store_n(dv + H + u, daz * load_n<V>(gh + H + u, n), n);
            store_n(dv + 2 * H + u, dan * r * load_n<V>(gh + 2 * H + u, n), n);
            store_n(ch + u, dh * uu, n);                // dh_{t-1} = dv_t W~_hh + dh_t * u_t
        }
    }
    // dv_t = rstd_v (dv^ - v^_t mean(dv^ v^_t))  (kept without rstd_v, unless dv_scaled)
    ln_scale_back<T>(dv, vh, GH);
    if (a->dv_scaled) {
        const T rv = ((const T *)a->v_rstd)[row];
        for (long u = 0; u < GH; u += L) {
            const int n = imin(L, GH - u);
            store_n(dv + u, load_n<V>(dv + u, n) * rv, n);
        }
    }
    if (a->w->bf16) {
        uint16_t *d = ctx->db[t & 1] + b * ctx->ldb;
        for (long u = 0; u < GH; u += L) store_bf16_n(d + u, load_n<V>(dv + u, imin(L, GH - u)),
                                                      imin(L, GH - u));
    }
}

template <class T> static int lnb_chunks(void *vctx, int step) {
    const LnBwd<T> *ctx = (const LnBwd<T> *)vctx;
    return step % 2 == 0 ? ctx->w->npanels : ctx->a->B;
}

template <class T, int CELL> static void lnb_work(void *vctx, int step, int chunk, int) {
    const LnBwd<T> *ctx = (const LnBwd<T> *)vctx;
    const int t = ctx->a->T - 1 - step / 2;
    if (step % 2 == 0) lnb_product<T, CELL>(ctx, t, chunk);
    else lnb_row<T, CELL>(ctx, t, chunk);
}

template <class T, int CELL>
static void ln_backward_t(const LnBwdArgs *a, int nth, const TeamOps *team) {
    LnBwd<T> ctx = {a->w, a, {0, 0}, a->w->Kp};
    const Packed *w = a->w;
    if (w->bf16 && ln_bf16_rows<T>(ctx.db, a->B, ctx.ldb, (const T *)nullptr, a->H)) return;
    int n = useful_threads(nth, 2.0 * a->B * w->K * w->H, w->npanels);
    sched_run(n, 2 * a->T + 1, lnb_chunks<T>, lnb_work<T, CELL>, &ctx, team);
    free(ctx.db[0]);
}

static void ln_backward(int cell, const LnBwdArgs *a, int nth, const TeamOps *team) {
    const bool dbl = a->w->dtype == DT_F64;
    if (cell == CELL_LSTM) dbl ? ln_backward_t<double, CELL_LSTM>(a, nth, team)
                               : ln_backward_t<float, CELL_LSTM>(a, nth, team);
    else dbl ? ln_backward_t<double, CELL_GRU>(a, nth, team)
             : ln_backward_t<float, CELL_GRU>(a, nth, team);
}
