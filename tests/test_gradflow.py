"""Gradient flow: the Jacobians dh_T/dh_t measured with the hand-written backward, against
closed forms (linear RNN), the tanh product bound, torch autograd, and the demo's claims;
gradient clipping's guarantees (hypothesis); the gradient-norm plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bptt import checkpoint as ck
from bptt import gradflow as gf
from bptt import optim
from bptt.model import ModelSpec, init_params
from conftest import run_cli


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# -- a linear RNN through the real cell --------------------------------------------------------
def linear_rnn_case(a: float, H: int = 6, T: int = 25, B: int = 2, seed: int = 0):
    """A relu RNN with W_hh = a I whose every pre-activation is positive, so that on this
    trajectory relu is the identity and the cell's own backward uses f'(z) = [h > 0] = 1:
    the layer is exactly the linear RNN h_t = a h_{t-1} + W_ih x_t + b, and
    dh_T/dh_t = a^(T-t) I. Inputs, W_ih and the biases are positive to keep it that way."""
    rng = np.random.default_rng(seed)
    lp = {"weight_ih": rng.uniform(0.1, 1.0, (H, 3)), "weight_hh": a * np.eye(H),
          "bias_ih": rng.uniform(0.1, 0.5, H), "bias_hh": rng.uniform(0.1, 0.5, H)}
    x = rng.uniform(0.0, 1.0, (T, B, 3))
    states = gf.trajectory("rnn", lp, x, None, "relu")
    assert all((s > 0).all() for s in states[1:]), "the trajectory left the linear regime"
    return lp, x


@pytest.mark.parametrize("a", [0.5, 0.9, 1.1, 1.5])
def test_linear_rnn_jacobian_is_a_power_of_a(a):
    lp, x = linear_rnn_case(a)
    T, B = x.shape[:2]
    H = lp["weight_hh"].shape[0]
    J = gf.jacobians("rnn", lp, x, nonlinearity="relu")["h"]          # (T+1, B, H, H)
    k = np.arange(T + 1, dtype=float)
    expected = a ** k
    for b in range(B):
        assert rel(J[:, b], expected[:, None, None] * np.eye(H)) < 1e-10
    flow = gf.analyse("linear", "rnn", lp, x, nonlinearity="relu")
    assert np.abs(flow.spectral / expected - 1).max() < 1e-10
    assert np.abs(flow.frobenius / (np.sqrt(H) * expected) - 1).max() < 1e-10
    # grows for a > 1, shrinks for a < 1: the exploding / vanishing dichotomy in its purest form
    assert (np.diff(flow.typical()) > 0).all() == (a > 1)


def test_tanh_small_weights_decay_at_least_as_fast_as_the_product_bound():
    H, T, B = 8, 30, 3
    lp = gf.fresh_layer("rnn", 3, H, 1, radius=0.6)
    x = gf.random_inputs(3, T, B, 2)
    states = np.array(gf.trajectory("rnn", lp, x))                    # (T+1, B, H)
    J = gf.jacobians("rnn", lp, x)["h"]
    W = lp["weight_hh"]
    w_norm = np.linalg.norm(W, 2)
    assert w_norm < 1.0
    for b in range(B):
        bound, chain = 1.0, np.eye(H)
        for k in range(1, T + 1):
            h = states[T - k + 1, b]                                    # h_s, s = T - k + 1
            step = (1.0 - h * h)[:, None] * W                           # dh_s/dh_{s-1}
            chain = chain @ step                                        # the chain rule
            bound *= np.linalg.norm(step, 2)
            norm = np.linalg.norm(J[k, b], 2)
            assert rel(J[k, b], chain) < 1e-10                          # exact product
            assert norm <= bound * (1 + 1e-10) <= w_norm ** k * (1 + 1e-10) + 1e-300
    assert J[T].max() < 1e-4                                            # it did vanish


# -- against torch autograd ----------------------------------------------------------------------
def torch_cell(cell: str, lp: dict, nonlinearity: str):
    I, H = lp["weight_ih"].shape[1], lp["weight_hh"].shape[1]
    if cell == "rnn":
        m = torch.nn.RNNCell(I, H, nonlinearity=nonlinearity, dtype=torch.float64)
    elif cell == "lstm":
        m = torch.nn.LSTMCell(I, H, dtype=torch.float64)
    else:
        m = torch.nn.GRUCell(I, H, dtype=torch.float64)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.from_numpy(lp[name]))
    return m


@pytest.mark.parametrize("cell,nonlinearity", [("rnn", "tanh"), ("rnn", "relu"),
                                               ("lstm", "tanh"), ("gru", "tanh")])
def test_jacobian_equals_torch_autograd(cell, nonlinearity):
    T, B, I, H = 6, 2, 3, 5
    lp = gf.fresh_layer(cell, I, H, 3, nonlinearity=nonlinearity,
                        forget_bias=1.0 if cell == "lstm" else None)
    x = gf.random_inputs(I, T, B, 4)
    ours = gf.jacobians(cell, lp, x, nonlinearity=nonlinearity)
    m = torch_cell(cell, lp, nonlinearity)
    xt = torch.from_numpy(x)
    # torch's own trajectory from zeros, to get the states at every t
    h = torch.zeros(B, H, dtype=torch.float64)
    c = torch.zeros(B, H, dtype=torch.float64)
    hs, cs = [h], [c]
    with torch.no_grad():
        for s in range(T):
            if cell == "lstm":
                h, c = m(xt[s], (h, c))
            else:
                h = m(xt[s], h)
            hs.append(h)
            cs.append(c)
    for t in range(T):
        def run_from(h_t, c_t, t=t):
            h, c = h_t, c_t
            for s in range(t, T):
                if cell == "lstm":
                    h, c = m(xt[s], (h, c))
                else:
                    h = m(xt[s], h)
            return h

        jac_h = torch.autograd.functional.jacobian(lambda v, t=t: run_from(v, cs[t]), hs[t])
        jac_h = jac_h.numpy()                                            # (B, H, B, H)
        for b in range(B):
            assert rel(ours["h"][T - t, b], jac_h[b, :, b, :]) < 1e-10, (t, b)
            off = [jac_h[b, :, o, :] for o in range(B) if o != b]        # sequences independent
            assert all(np.abs(o).max() == 0 for o in off)
        if cell == "lstm":
            jac_c = torch.autograd.functional.jacobian(lambda v, t=t: run_from(hs[t], v),
                                                       cs[t]).numpy()
            for b in range(B):
                assert rel(ours["c"][T - t, b], jac_c[b, :, b, :]) < 1e-10, (t, b)


def test_lstm_whole_state_norm_covers_the_h_part():
    x = gf.random_inputs(2, 12, 2, 0)
    flow = gf.analyse("lstm", "lstm", gf.fresh_layer("lstm", 2, 6, 0, forget_bias=2.0), x)
    assert flow.state_spectral is not None
    assert (flow.state_spectral >= flow.spectral * (1 - 1e-12)).all()   # [A | B] >= A


# -- the demo, the comparison and a checkpoint through the command ------------------------------
def test_gradflow_demo_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "gradflow", "--demo", "--steps", "30", "--batch", "2",
                           "--hidden-size", "16", "--out", tmp_path)
    assert rc == 0, err
    assert (tmp_path / "gradflow.png").stat().st_size > 10_000
    for label, *_ in gf.DEMO:
        assert label in out
    assert "k=1" in out and "k=30" in out
    flows = {f["label"]: f for f in json.loads((tmp_path / "gradflow.json").read_text())}
    van = np.array(flows[gf.DEMO[0][0]]["spectral"])
    exp = np.array(flows[gf.DEMO[1][0]]["spectral"])
    lstm = np.array(flows[gf.DEMO[2][0]]["spectral"])
    assert (np.diff(van) < 0).all() and van[30] < 1e-8                  # vanishes
    assert (np.diff(exp[:26]) > 0).all() and exp[25] > 1e3               # explodes
    assert lstm[30] > 1e3 * van[30]                                      # LSTM decays slower
    # the printed table holds the same numbers
    row = next(line for line in out.splitlines() if line.startswith(gf.DEMO[1][0]))
    assert float(row.split()[-1]) == pytest.approx(exp[30], rel=1e-2)


def test_gradflow_fresh_cells_and_a_checkpoint(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "gradflow", "--steps", "12", "--hidden-size", "8",
                           "--out", tmp_path / "fresh")
    assert rc == 0, err
    assert all(name in out for name in ("tanh RNN", "relu RNN", "LSTM", "GRU"))
    assert (tmp_path / "fresh" / "gradflow.png").is_file()

    spec = ModelSpec(cell="gru", input_size=5, hidden_size=7, output_size=5, task="lm")
    params = init_params(spec, "torch", 0)
    ck.save(ck.Checkpoint(spec, params), tmp_path / "run" / "last.safetensors")
    rc, out, err = run_cli(capsys, "gradflow", tmp_path / "run", "--steps", "10",
                           "--batch", "2", "--out", tmp_path / "ck")
    assert rc == 0, err
    saved = json.loads((tmp_path / "ck" / "gradflow.json").read_text())[0]
    x = gf.random_inputs(5, 10, 2, np.random.default_rng([0, 1]), tokens=True)
    direct = gf.analyse("x", "gru", gf.layer_params(params), x)
    assert rel(saved["spectral"], direct.typical()) < 1e-12
    assert saved["weights"]["n"]["radius"] == pytest.approx(
        float(np.abs(np.linalg.eigvals(params["weight_hh_l0"][14:21])).max()))

    rc, _, err = run_cli(capsys, "gradflow", tmp_path / "nothing-here", "--out", tmp_path)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("bptt gradflow: error:")


# -- clipping ------------------------------------------------------------------------------------
def grads_strategy(dtype):
    arrays = hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=2, max_side=6),
                        elements=st.floats(-1e4, 1e4, width=32))
    return st.dictionaries(st.sampled_from(["w", "u", "b", "head"]), arrays, min_size=1)


@settings(max_examples=200, deadline=None)
@given(grads=grads_strategy(np.float64), theta=st.floats(1e-3, 1e3))
def test_clip_norm_never_exceeds_the_threshold(grads, theta):
    before = {k: v.copy() for k, v in grads.items()}
    norm = float(optim.clip_grad_norm_(grads, theta))
    assert norm == pytest.approx(float(optim.global_norm(before)))
    after = float(optim.global_norm(grads))
    assert after <= theta
    if norm + 1e-6 <= theta:                            # below (with torch's 1e-6): untouched
        for k in grads:
            np.testing.assert_array_equal(grads[k], before[k])
    else:                                               # above: one common factor, same direction
        assert after >= theta * norm / (norm + 1e-6) * (1 - 1e-9)   # not shrunk further
        for k in grads:
            np.testing.assert_allclose(grads[k], before[k] * (after / norm), rtol=1e-9, atol=0)


@settings(max_examples=100, deadline=None)
@given(grads=grads_strategy(np.float32), theta=st.floats(1e-3, 1e3))
def test_clip_norm_float32_stays_within_rounding_of_the_threshold(grads, theta):
    # float32 rounding can land the recomputed norm one ulp above theta (reported upstream);
    # the excess is never more than a few float32 ulps
    optim.clip_grad_norm_(grads, theta)
    assert float(optim.global_norm(grads)) <= theta * (1 + 4 * np.finfo(np.float32).eps)


@settings(max_examples=200, deadline=None)
@given(grads=st.one_of(grads_strategy(np.float64), grads_strategy(np.float32)),
       c=st.floats(0.0009765625, 1024.0, width=32))   # exact in float32 too
def test_clip_value_bounds_every_element(grads, c):
    before = {k: v.copy() for k, v in grads.items()}
    optim.clip_grad_value_(grads, c)
    for k, g in grads.items():
        assert np.abs(g).max() <= c
        inside = np.abs(before[k]) <= c
        np.testing.assert_array_equal(g[inside], before[k][inside])   # the rest untouched
        assert (np.sign(g) == np.sign(before[k])).all()


# -- the gradient-norm plot ------------------------------------------------------------------------
def test_plot_grad_norms_from_trainer_records(tmp_path):
    from bptt.plot import plot_grad_norms, read_step_records

    rng = np.random.default_rng(0)
    lines = []
    for epoch in (1, 2):
        lines.append({"kind": "epoch", "epoch": epoch, "loss": 1.0})
        for step in range(1, 41):
            g = float(10 ** rng.uniform(-1, 1))
            lines.append({"kind": "step", "epoch": epoch, "step": step, "grad_norm": g,
                          "grad_norm_clipped": min(g, 1.0), "clipped": g > 1.0})
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = read_step_records(path)
    assert len(records) == 80
    png = plot_grad_norms(records, tmp_path / "norms.png")
    assert png.stat().st_size > 10_000
    from bptt.plot import _infer_threshold

    assert _infer_threshold(records) == 1.0
    with pytest.raises(ValueError):
        plot_grad_norms([{"kind": "epoch"}], tmp_path / "none.png")
