r"""The LSTM and GRU layer as numba would give it: one ``@njit`` function per direction of time,
``np.dot`` for every product (numba hands it to SciPy's BLAS), the gate non-linearities as plain
loops over (B, H). A subject of ``benchmarks/kernel_choice.py``; numba is no dependency of bptt
(the script loads it from a folder given on its command line).

The equations are torch's (docs/bptt_lstm_gru.md), in the engines' row-vector orientation:

    LSTM  z_t = x_t W_ih^T + b + h_{t-1} W_hh^T = [z^i | z^f | z^g | z^o]
          c_t = f_t * c_{t-1} + i_t * g_t,   h_t = o_t * tanh(c_t)
    GRU   a_t = x_t W_ih^T + b_ih,  s_t = h_{t-1} W_hh^T + b_hh
          r_t = sigmoid(a^r_t + s^r_t),  u_t = sigmoid(a^z_t + s^z_t)
          n_t = tanh(a^n_t + r_t * s^n_t),  h_t = (1 - u_t) * n_t + u_t * h_{t-1}

and the backward labels of the engines' cells (engine/numpy/lstm.py, gru.py). Every array is
float32 and C-contiguous; weights are torch's (G*H, I) and (G*H, H) plus their transposes.
"""

from __future__ import annotations

import math

import numpy as np


def lstm_forward(x, w_ih_t, w_hh_t, b, h0, c0):
    """``(gates, hs, cs, tanh_cs)``: gates (T, B, 4H) after their activations."""
    T, B, I = x.shape
    G = w_hh_t.shape[1]
    H = G // 4
    gates = np.dot(x.reshape(T * B, I), w_ih_t).reshape(T, B, G)   # x_t W_ih^T, all t
    hs = np.empty((T, B, H), np.float32)
    cs = np.empty((T, B, H), np.float32)
    tcs = np.empty((T, B, H), np.float32)
    h = h0.copy()
    c = c0.copy()
    one = np.float32(1.0)
    for t in range(T):
        rec = np.dot(h, w_hh_t)                                     # h_{t-1} W_hh^T
        z = gates[t]
        for bb in range(B):
            for j in range(H):
                i = one / (one + math.exp(-(z[bb, j] + rec[bb, j] + b[j])))
                f = one / (one + math.exp(-(z[bb, H + j] + rec[bb, H + j] + b[H + j])))
                g = math.tanh(z[bb, 2 * H + j] + rec[bb, 2 * H + j] + b[2 * H + j])
                o = one / (one + math.exp(-(z[bb, 3 * H + j] + rec[bb, 3 * H + j]
                                             + b[3 * H + j])))
                z[bb, j], z[bb, H + j], z[bb, 2 * H + j], z[bb, 3 * H + j] = i, f, g, o
                cn = f * c[bb, j] + i * g                           # c_t
                tc = math.tanh(cn)
                c[bb, j] = cn
                h[bb, j] = o * tc                                   # h_t = o_t tanh(c_t)
                cs[t, bb, j] = cn
                tcs[t, bb, j] = tc
                hs[t, bb, j] = o * tc
    return gates, hs, cs, tcs


def lstm_backward(dhs, x, w_ih, w_hh, gates, hs, cs, tcs, h0, c0):
    """``(dx, dW_ih, dW_hh, db)`` from dL/dh_t for every t (dx for a layer below)."""
    T, B, G = gates.shape
    H = G // 4
    I = x.shape[2]
    dz = np.empty((T, B, G), np.float32)
    dh = np.zeros((B, H), np.float32)                               # dz_{t+1} W_hh
    dcn = np.zeros((B, H), np.float32)                              # dc_{t+1} f_{t+1}
    one = np.float32(1.0)
    for t in range(T - 1, -1, -1):
        for bb in range(B):
            for j in range(H):
                i, f = gates[t, bb, j], gates[t, bb, H + j]
                g, o = gates[t, bb, 2 * H + j], gates[t, bb, 3 * H + j]
                tc = tcs[t, bb, j]
                cp = cs[t - 1, bb, j] if t > 0 else c0[bb, j]
                dht = dhs[t, bb, j] + dh[bb, j]                     # dh_t           (1)
                dc = dcn[bb, j] + dht * o * (one - tc * tc)         # dc_t           (2)
                dz[t, bb, j] = dc * g * i * (one - i)               # dz^i_t         (3)
                dz[t, bb, H + j] = dc * cp * f * (one - f)          # dz^f_t         (4)
                dz[t, bb, 2 * H + j] = dc * i * (one - g * g)       # dz^g_t         (5)
                dz[t, bb, 3 * H + j] = dht * tc * o * (one - o)     # dz^o_t         (6)
                dcn[bb, j] = dc * f
        dh = np.dot(dz[t], w_hh)                                    # dz_t W_hh      (1)
    hprev = np.empty((T, B, H), np.float32)
    hprev[0] = h0
    hprev[1:] = hs[:-1]
    dz2 = dz.reshape(T * B, G)
    dw_hh = np.dot(dz2.T, hprev.reshape(T * B, H))                  # (7)
    dw_ih = np.dot(dz2.T, x.reshape(T * B, I))                      # (8)
    db = dz2.sum(axis=0)                                            # (9)
    dx = np.dot(dz2, w_ih).reshape(T, B, I)                         # (10)
    return dx, dw_ih, dw_hh, db


def gru_forward(x, w_ih_t, w_hh_t, b_ih, b_hh, h0):
    """``(gates, sn, hs)``: gates (T, B, 3H) = [r_t | u_t | n_t], sn (T, B, H) = s^n_t."""
    T, B, I = x.shape
    G = w_hh_t.shape[1]
    H = G // 3
    a = np.dot(x.reshape(T * B, I), w_ih_t).reshape(T, B, G)       # x_t W_ih^T, all t
    sn = np.empty((T, B, H), np.float32)
    hs = np.empty((T, B, H), np.float32)
    h = h0.copy()
    one = np.float32(1.0)
    for t in range(T):
        s = np.dot(h, w_hh_t)                                       # h_{t-1} W_hh^T
        z = a[t]
        for bb in range(B):
            for j in range(H):
                r = one / (one + math.exp(-(z[bb, j] + b_ih[j] + s[bb, j] + b_hh[j])))
                u = one / (one + math.exp(-(z[bb, H + j] + b_ih[H + j] + s[bb, H + j]
                                             + b_hh[H + j])))
                s_n = s[bb, 2 * H + j] + b_hh[2 * H + j]
                n = math.tanh(z[bb, 2 * H + j] + b_ih[2 * H + j] + r * s_n)
                z[bb, j], z[bb, H + j], z[bb, 2 * H + j] = r, u, n
                sn[t, bb, j] = s_n
                h[bb, j] = (one - u) * n + u * h[bb, j]             # h_t
                hs[t, bb, j] = h[bb, j]
    return a, sn, hs


def gru_backward(dhs, x, w_ih, w_hh, gates, sn, hs, h0):
    """``(dx, dW_ih, dW_hh, db_ih, db_hh)`` from dL/dh_t for every t."""
    T, B, G = gates.shape
    H = G // 3
    I = x.shape[2]
    da = np.empty((T, B, G), np.float32)
    ds = np.empty((T, B, G), np.float32)
    dh = np.zeros((B, H), np.float32)                # ds_{t+1} W_hh + dh_{t+1} * u_{t+1}
    direct = np.empty((B, H), np.float32)
    one = np.float32(1.0)
    for t in range(T - 1, -1, -1):
        for bb in range(B):
            for j in range(H):
                r, u, n = gates[t, bb, j], gates[t, bb, H + j], gates[t, bb, 2 * H + j]
                hp = hs[t - 1, bb, j] if t > 0 else h0[bb, j]
                dht = dhs[t, bb, j] + dh[bb, j]                     # dh_t
                dan = dht * (one - u) * (one - n * n)               # da^n_t
                daz = dht * (hp - n) * u * (one - u)                # da^z_t
                dar = dan * sn[t, bb, j] * r * (one - r)            # da^r_t
                da[t, bb, j], da[t, bb, H + j], da[t, bb, 2 * H + j] = dar, daz, dan
                ds[t, bb, j], ds[t, bb, H + j], ds[t, bb, 2 * H + j] = dar, daz, dan * r
                direct[bb, j] = dht * u
        dh = np.dot(ds[t], w_hh) + direct            # ds_t W_hh + dh_t * u_t
    hprev = np.empty((T, B, H), np.float32)
    hprev[0] = h0
    hprev[1:] = hs[:-1]
    da2, ds2 = da.reshape(T * B, G), ds.reshape(T * B, G)
    dw_hh = np.dot(ds2.T, hprev.reshape(T * B, H))                  # dW_hh = sum ds_t^T h_{t-1}
    dw_ih = np.dot(da2.T, x.reshape(T * B, I))                      # dW_ih = sum da_t^T x_t
    dx = np.dot(da2, w_ih).reshape(T, B, I)                         # dx_t = da_t W_ih
    return dx, dw_ih, dw_hh, da2.sum(axis=0), ds2.sum(axis=0)


def compiled(njit) -> dict:
    """The four functions compiled by ``njit`` (numba.njit), by name."""
    return {f.__name__: njit(cache=False)(f)
            for f in (lstm_forward, lstm_backward, gru_forward, gru_backward)}
