/* The compiled kernel of bptt's engines: shared declarations.
 *
 * The kernel runs a recurrent layer's whole loop over time -- forward and backward, RNN, LSTM
 * and GRU -- with each step's product and gate non-linearities fused, on raw pointers handed
 * over from NumPy arrays and CPU torch tensors alike (module.cpp). It implements the same
 * labelled equations as the Python cells (engine/numpy/<cell>.py, engine/torch/<cell>.py) and
 * general products for the weight gradients and the head (gemm).
 *
 * impl.hpp holds the implementation, compiled once per instruction set (isa_*.cpp: AVX-512
 * with and without AVX512-BF16, AVX2, and the baseline of the target); module.cpp picks the
 * best one the CPU runs at import. Nothing here depends on an instruction set.
 */
#ifndef BPTT_KERNEL_H
#define BPTT_KERNEL_H

#include <stddef.h>
#include <stdint.h>

enum { DT_F32 = 0, DT_F64 = 1 };
enum { CELL_RNN = 0, CELL_LSTM = 1, CELL_GRU = 2 };
enum { DIR_FORWARD = 0, DIR_BACKWARD = 1 };

/* A recurrent weight W_hh (G*H, H), packed once per call into column panels for the step
 * products. DIR_FORWARD: the product h_{t-1} W_hh^T, N = G*H columns, K = H; a panel holds U
 * hidden units and, for each of the G gates, their U columns (so that a panel's epilogue has
 * every gate of its units). DIR_BACKWARD: the product dz_t W_hh, N = H columns (U units a
 * panel), K = G*H. With bf16 the panels hold bfloat16 pairs along K. */
typedef struct {
    int dtype, bf16, dir, G, H;
    int K, Kp;          /* K, and K padded to even (bf16 pairs) */
    int NV, NR, U;      /* vectors per panel row, columns per panel, units per panel */
    int npanels;
    size_t panel_elems; /* elements (float, double or bf16) per panel */
    void *data;         /* 64-byte aligned */
} Packed;

/* Arrays (T, B, C) are C-contiguous: element (t, b, c) at p[(t * B + b) * C + c], except
 * s_n, whose rows are s_ld apart. */
typedef struct {
    const Packed *w;    /* DIR_FORWARD */
    int T, B, H, relu;
    void *x;            /* (T, B, G*H) in: x_t W_ih^T + b; out: the gates after their activations
                           (rnn: the same buffer as hs) */
    const void *h0;     /* (B, H) */
    void *hs;           /* (T, B, H) out: h_t */
    const void *c0;     /* lstm (B, H) */
    void *cs, *tanh_cs; /* lstm (T, B, H) out: c_t, tanh(c_t) */
    const void *b_hh;   /* gru (3H) or NULL */
    void *s;            /* gru (T, B, 3H) out: s_t = h_{t-1} W_hh^T + b_hh */
} FwdArgs;

typedef struct {
    const Packed *w;    /* DIR_BACKWARD */
    int T, B, H, relu;
    const void *gates;  /* lstm, gru (T, B, G*H) after their activations */
    const void *h0, *hs;            /* h_{t-1} (gru) and h_t (rnn: f'(z_t)) */
    const void *c0, *cs, *tanh_cs;  /* lstm */
    const void *s_n; long s_ld;     /* gru: s^n_t, rows s_ld apart */
    const void *dhs;    /* (T, B, H) dL/dh_t, or NULL; may be dz itself (rnn) */
    void *dz;           /* (T, B, G*H) out: dz_t (gru: da_t) */
    void *ds;           /* gru (T, B, 3H) out: ds_t */
    void *carry_h;      /* (B, H) in: dL/dh_n; out: dL/dh_0 */
    void *carry_c;      /* lstm (B, H) in: dL/dc_n; out: dL/dc_0 */
} BwdArgs;

/* The layer-normalised LSTM and GRU (ln.hpp; engine/numpy/lnlstm.py, lngru.py): w packs
 * W~_hh, W_hh centred over its G*H rows. Arrays as above; v_rstd and c_rstd (T, B). */
typedef struct {
    const Packed *w;    /* DIR_FORWARD */
    int T, B, H;
    double eps;
    void *x;            /* (T, B, G*H) in: u^_t g_ih + b (lstm: b_ih + b_hh; gru: a_t); out:
                           the gates after their activations */
    const void *h0;     /* (B, H) */
    void *hs;           /* (T, B, H) out: h_t */
    void *v, *v_rstd;   /* (T, B, G*H), (T, B) out: v^_t = LN(h_{t-1} W_hh^T), its rstd_v */
    const void *g_hh;   /* (G*H) */
    const void *c0;     /* lstm (B, H) */
    void *cs, *c_hat, *c_rstd, *tanh_k;  /* lstm out: c_t, c^_t = LN(c_t), rstd_c, tanh(k_t) */
    const void *g_c, *b_c;               /* lstm (H), b_c or NULL */
    const void *b_hh;   /* gru (3H) or NULL */
    void *s_n;          /* gru (T, B, H) out: s^n_t */
} LnFwdArgs;

typedef struct {
    const Packed *w;    /* DIR_BACKWARD */
    int T, B, H;
    const void *gates, *v, *v_rstd, *g_hh;  /* the forward's */
    const void *h0, *hs, *s_n;              /* gru */
    const void *c0, *cs, *c_hat, *c_rstd, *tanh_k, *g_c;  /* lstm */
    const void *dhs;    /* (T, B, H) dL/dh_t, or NULL */
    void *out;          /* (T, B, out_ld) out: lstm [dz_t | dv_t / rstd_v | dk_t] (9H),
                           gru [da_t | dv_t / rstd_v] (6H); dv_t itself when dv_scaled */
    long out_ld;
    int dv_scaled;
    void *carry_h;      /* (B, H) in: dL/dh_n; out: dL/dh_0 */
    void *carry_c;      /* lstm (B, H) in: dL/dc_n; out: dL/dc_0 */
} LnBwdArgs;

/* C (M, N) = A (M, K) B (K, N) [+ C]: element (m, k) of A at A[m * rsa + k * csa], (k, n) of
 * B at B[k * rsb + n * csb], (m, n) of C at C[m * ldc + n]. */
typedef struct {
    int dtype, bf16, accumulate;
    long M, N, K;
    const void *A; long rsa, csa;
    const void *B; long rsb, csb;
    void *C; long ldc;
} GemmArgs;

/* The thread team module.cpp lends a call: run fn on nth threads (tid 0 is the caller; a
 * thread may join late, when it wakes), and passive waiting: wait until *word != seen (a short
 * spin, then sleep; *sleepers counts the sleepers) and wake whoever sleeps on word. */
typedef void (*TaskFn)(void *ctx, int tid, int nth);
typedef struct {
    void (*run)(int nth, TaskFn fn, void *ctx);
    void (*wait)(uint32_t *word, uint32_t seen, int32_t *sleepers);
    void (*wake)(uint32_t *word, int32_t *sleepers);
} TeamOps;

typedef struct {
    const char *name;
    int native_bf16;
    int (*pack)(Packed *p, const void *w);    /* p's dtype, bf16, dir, G, H set; 0 on success */
    void (*forward)(int cell, const FwdArgs *a, int nth, const TeamOps *team);
    void (*backward)(int cell, const BwdArgs *a, int nth, const TeamOps *team);
    void (*gemm)(const GemmArgs *a, int nth, const TeamOps *team);
    double (*softmax_xent)(int dtype, void *logits, long N, long V, const int64_t *targets,
                           int nth, const TeamOps *team);
    void (*ln_forward)(int cell, const LnFwdArgs *a, int nth, const TeamOps *team);
    void (*ln_backward)(int cell, const LnBwdArgs *a, int nth, const TeamOps *team);
} Impl;

#endif
