"""The NumPy LSTM and GRU (hand-written BPTT) against torch autograd and finite differences.

Every gradient check uses a loss with random upstream gradients on every output and on the
final state(s): ``L = sum(out * dout) + sum(h_n * dh_n) [+ sum(c_n * dc_n)]``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bptt.engine.numpy import gru, lstm, stack

TORCH_CELLS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
NUMPY_CELLS = {"lstm": lstm, "gru": gru}
TOL = 1e-9


def rel(a, b) -> float:
    """max|a - b| / max(max|b|, 1e-300)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def numpy_params(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.named_parameters()}


def t64(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def compare_with_torch(
    cell: str, *, T: int, B: int, I: int, H: int, L: int, bidirectional: bool,
    with_state: bool, batch_first: bool = False, bias: bool = True, seed: int = 0,
    token_ids: bool = False, on_outputs: bool = True, on_states: bool = True,
) -> dict[str, float]:
    """Run both engines on one random case; return the relative error of every quantity."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    D = 2 if bidirectional else 1
    module = TORCH_CELLS[cell](I, H, num_layers=L, bidirectional=bidirectional, bias=bias,
                               batch_first=batch_first, dtype=torch.float64)
    params = numpy_params(module)

    if token_ids:
        x = rng.integers(0, I, size=(T, B))
        x_torch = torch.nn.functional.one_hot(torch.tensor(x), I).to(torch.float64)
        x_torch.requires_grad_(True)
    else:
        x = rng.standard_normal((T, B, I))
        x_torch = t64(x, grad=True)
    x_in = x_torch.transpose(0, 1) if batch_first else x_torch  # torch: (B, T, I)

    states = [rng.standard_normal((L * D, B, H)) for _ in range(2 if cell == "lstm" else 1)]
    states_torch = [t64(s, grad=True) for s in states]
    hx_torch = hx = None
    if with_state:
        hx_torch = tuple(states_torch) if cell == "lstm" else states_torch[0]
        hx = tuple(states) if cell == "lstm" else states[0]

    out_torch, hn_torch = module(x_in, hx_torch)
    if batch_first:
        out_torch = out_torch.transpose(0, 1)                 # back to time-major
    hn_torch = list(hn_torch) if cell == "lstm" else [hn_torch]

    dout = rng.standard_normal((T, B, D * H)) if on_outputs else None
    dhn = [rng.standard_normal((L * D, B, H)) for _ in hn_torch] if on_states else None
    loss = out_torch.sum() * 0.0
    if on_outputs:
        loss = loss + (out_torch * t64(dout)).sum()
    if on_states:
        for s, ds in zip(hn_torch, dhn, strict=True):
            loss = loss + (s * t64(ds)).sum()
    loss.backward()

    out, hn, cache = stack.forward(cell, params, x, hx, num_layers=L, bidirectional=bidirectional)
    dstate_n = None
    if on_states:
        dstate_n = tuple(dhn) if cell == "lstm" else dhn[0]
    dx, dhx, grads = stack.backward(dout, dstate_n, cache)
    hn = list(hn) if cell == "lstm" else [hn]
    dhx = list(dhx) if cell == "lstm" else [dhx]

    errors = {"out": rel(out, out_torch.detach().numpy())}
    for j, (a, b) in enumerate(zip(hn, hn_torch, strict=True)):
        errors[f"state_n[{j}]"] = rel(a, b.detach().numpy())
    if token_ids:
        assert dx is None
    else:
        errors["dx"] = rel(dx, x_torch.grad.numpy())
    if with_state:
        for j, (a, b) in enumerate(zip(dhx, states_torch, strict=True)):
            errors[f"dstate0[{j}]"] = rel(a, b.grad.numpy())
    assert set(grads) == set(params)
    for name, p in module.named_parameters():
        errors[name] = rel(grads[name], p.grad.numpy())
    return errors


def assert_all_close(errors: dict[str, float], tol: float = TOL) -> None:
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"


# --- hand gradients vs torch autograd, every combination -------------------------------------

@pytest.mark.parametrize(
    "cell, L, bidirectional, with_state, batch_first",
    list(itertools.product(("lstm", "gru"), (1, 2, 3), (False, True), (False, True),
                           (False, True))),
)
def test_stack_matches_torch(cell, L, bidirectional, with_state, batch_first):
    errors = compare_with_torch(cell, T=5, B=3, I=4, H=5, L=L, bidirectional=bidirectional,
                                with_state=with_state, batch_first=batch_first, seed=L)
    # Everything torch has must have been compared.
    n_states = 2 if cell == "lstm" else 1
    D = 2 if bidirectional else 1
    assert len(errors) == 2 + n_states + (n_states if with_state else 0) + 4 * L * D
    assert_all_close(errors)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("L, bidirectional", [(1, False), (2, True)])
def test_no_bias_matches_torch(cell, L, bidirectional):
    errors = compare_with_torch(cell, T=4, B=2, I=3, H=4, L=L, bidirectional=bidirectional,
                                with_state=True, bias=False, seed=7)
    assert not any(k.startswith("bias") for k in errors)
    assert_all_close(errors)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("on_outputs, on_states", [(True, False), (False, True)])
def test_upstream_on_outputs_or_states_only(cell, on_outputs, on_states):
    errors = compare_with_torch(cell, T=4, B=2, I=3, H=4, L=2, bidirectional=True,
                                with_state=True, seed=3, on_outputs=on_outputs,
                                on_states=on_states)
    assert_all_close(errors)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("L, bidirectional", [(1, False), (2, True)])
def test_token_ids_match_torch_one_hot(cell, L, bidirectional):
    errors = compare_with_torch(cell, T=6, B=3, I=7, H=4, L=L, bidirectional=bidirectional,
                                with_state=True, token_ids=True, seed=11)
    assert "weight_ih_l0" in errors
    assert_all_close(errors)


# --- truncated BPTT vs a torch reference that detaches the state k + 1 steps back -------------

def torch_truncated_grads(cell, module, x, state0, dhs, dstate_n, k):
    """Autograd of sum_t L_t where L_t restarts from the state at t-k-1, detached.

    L_t = out_t * dout_t (plus the final-state terms at t = T-1). When t-k-1 == -1 the initial
    state is detached; when t-k-1 < -1 the run starts from the initial state with gradient.
    """
    T = x.shape[0]
    x_t = t64(x, grad=True)
    s0 = [t64(s[None], grad=True) for s in state0]           # (1, B, H) for torch
    hx0 = tuple(s0) if cell == "lstm" else s0[0]

    def detach(hx):
        return tuple(s.detach() for s in hx) if cell == "lstm" else hx.detach()

    total = x_t.sum() * 0.0
    for t in range(T):
        start = t - k - 1
        if start >= 0:
            _, hx = module(x_t[:start + 1], hx0)
            hx = detach(hx)
        elif start == -1:
            hx = detach(hx0)
        else:
            hx = hx0
        out, hn = module(x_t[max(start + 1, 0):t + 1], hx)
        total = total + (out[-1] * t64(dhs[t])).sum()
        if t == T - 1:
            finals = hn if cell == "lstm" else (hn,)
            for s, ds in zip(finals, dstate_n, strict=True):
                total = total + (s[0] * t64(ds)).sum()
    total.backward()
    # With k = 0 no loss term reaches the initial state: torch leaves its grad None.
    ds0 = [np.zeros(s.shape[1:]) if s.grad is None else s.grad[0].numpy() for s in s0]
    return (x_t.grad.numpy(), ds0,
            {n.removesuffix("_l0"): p.grad.numpy() for n, p in module.named_parameters()})


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("k", [0, 1, 3, 6, 9])
def test_truncation_matches_detached_torch_reference(cell, k):
    T, B, I, H = 6, 2, 3, 4
    rng = np.random.default_rng(100 + k)
    torch.manual_seed(k)
    module = TORCH_CELLS[cell](I, H, dtype=torch.float64)
    params = {n.removesuffix("_l0"): v for n, v in numpy_params(module).items()}
    n_states = 2 if cell == "lstm" else 1
    x = rng.standard_normal((T, B, I))
    state0 = [rng.standard_normal((B, H)) for _ in range(n_states)]
    dhs = rng.standard_normal((T, B, H))
    dstate_n = [rng.standard_normal((B, H)) for _ in range(n_states)]

    mod = NUMPY_CELLS[cell]
    _, _, cache = mod.forward(x, tuple(state0), **params)
    dx, ds0, grads = mod.backward(dhs, tuple(dstate_n), cache, truncate=k)
    ds0 = list(ds0)

    ref_dx, ref_ds0, ref_grads = torch_truncated_grads(cell, module, x, state0, dhs,
                                                       dstate_n, k)
    errors = {"dx": rel(dx, ref_dx)}
    for j in range(n_states):
        errors[f"dstate0[{j}]"] = rel(ds0[j], ref_ds0[j])
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        errors[name] = rel(grads[name], ref_grads[name])
    assert_all_close(errors)

    # The truncation must matter where it should: k < T - 1 differs from full BPTT.
    dx_full, _, _ = mod.backward(dhs, tuple(dstate_n), cache)
    if k >= T - 1:
        assert rel(dx, dx_full) <= TOL
    else:
        assert rel(dx, dx_full) > 1e-6


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_negative_truncation_is_rejected(cell):
    mod = NUMPY_CELLS[cell]
    G, H = mod.GATES, 2
    rng = np.random.default_rng(0)
    _, _, cache = mod.forward(rng.standard_normal((3, 1, 2)), None,
                              rng.standard_normal((G * H, 2)), rng.standard_normal((G * H, H)))
    with pytest.raises(ValueError, match="bptt_truncate"):
        mod.backward(None, None, cache, truncate=-1)


# --- central finite differences --------------------------------------------------------------

def _fd_case(cell: str):
    T, B, I, H = 3, 2, 3, 4
    G = NUMPY_CELLS[cell].GATES
    rng = np.random.default_rng(42)
    arrays = {
        "weight_ih": rng.standard_normal((G * H, I)) * 0.7,
        "weight_hh": rng.standard_normal((G * H, H)) * 0.7,
        "bias_ih": rng.standard_normal(G * H) * 0.5,
        "bias_hh": rng.standard_normal(G * H) * 0.5,
        "x": rng.standard_normal((T, B, I)),
        "h0": rng.standard_normal((B, H)),
    }
    if cell == "lstm":
        arrays["c0"] = rng.standard_normal((B, H))
    upstream = {
        "dhs": rng.standard_normal((T, B, H)),
        "dh_n": rng.standard_normal((B, H)),
        "dc_n": rng.standard_normal((B, H)),
    }
    return arrays, upstream


def _fd_loss_and_grads(cell: str, a: dict, up: dict, want_grads: bool):
    params = {k: a[k] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    mod = NUMPY_CELLS[cell]
    if cell == "lstm":
        hs, (h_n, c_n), cache = mod.forward(a["x"], (a["h0"], a["c0"]), **params)
        loss = (hs * up["dhs"]).sum() + (h_n * up["dh_n"]).sum() + (c_n * up["dc_n"]).sum()
    else:
        hs, (h_n,), cache = mod.forward(a["x"], (a["h0"],), **params)
        loss = (hs * up["dhs"]).sum() + (h_n * up["dh_n"]).sum()
    if not want_grads:
        return loss, None
    if cell == "lstm":
        dx, (dh0, dc0), grads = mod.backward(up["dhs"], (up["dh_n"], up["dc_n"]), cache)
        grads["c0"] = dc0
    else:
        dx, (dh0,), grads = mod.backward(up["dhs"], (up["dh_n"],), cache)
    grads["x"], grads["h0"] = dx, dh0
    return loss, grads


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_central_finite_differences(cell):
    arrays, upstream = _fd_case(cell)
    _, grads = _fd_loss_and_grads(cell, arrays, upstream, want_grads=True)
    eps = 1e-6
    assert set(grads) == set(arrays)
    for name, arr in arrays.items():
        fd = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            keep = arr[idx]
            arr[idx] = keep + eps
            plus, _ = _fd_loss_and_grads(cell, arrays, upstream, want_grads=False)
            arr[idx] = keep - eps
            minus, _ = _fd_loss_and_grads(cell, arrays, upstream, want_grads=False)
            arr[idx] = keep
            fd[idx] = (plus - minus) / (2 * eps)
        assert rel(grads[name], fd) < 1e-6, name


# --- dtypes and input validation -------------------------------------------------------------

@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("token_ids", [False, True])
def test_float32_in_float32_out(cell, token_ids):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    module = TORCH_CELLS[cell](5, 4, num_layers=2, bidirectional=True)
    params32 = numpy_params(module)
    assert all(v.dtype == np.float32 for v in params32.values())
    if token_ids:
        x = rng.integers(0, 5, size=(6, 3))
    else:
        x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    h0 = rng.standard_normal((4, 3, 4)).astype(np.float32)
    hx = (h0, h0.copy()) if cell == "lstm" else h0
    out, hn, cache = stack.forward(cell, params32, x, hx, num_layers=2, bidirectional=True)
    dout = np.ones_like(out)
    dx, dhx, grads = stack.backward(dout, None, cache)
    flat = [out, dout, *(hn if cell == "lstm" else [hn]), *(dhx if cell == "lstm" else [dhx]),
            *grads.values()]
    if not token_ids:
        flat.append(dx)
    for arr in flat:
        assert arr.dtype == np.float32

    # Same numbers as float64, to float32 precision.
    params64 = {k: v.astype(np.float64) for k, v in params32.items()}
    x64 = x if token_ids else x.astype(np.float64)
    hx64 = tuple(s.astype(np.float64) for s in hx) if cell == "lstm" else h0.astype(np.float64)
    out64, _, cache64 = stack.forward(cell, params64, x64, hx64, num_layers=2,
                                      bidirectional=True)
    _, _, grads64 = stack.backward(np.ones_like(out64), None, cache64)
    assert rel(out, out64) < 1e-5
    for k in grads:
        assert rel(grads[k], grads64[k]) < 1e-4, k


def _weights(cell: str, I: int = 4, H: int = 6):
    G = NUMPY_CELLS[cell].GATES
    rng = np.random.default_rng(1)
    return {"weight_ih": rng.standard_normal((G * H, I)),
            "weight_hh": rng.standard_normal((G * H, H)),
            "bias_ih": np.zeros(G * H), "bias_hh": np.zeros(G * H)}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bad_input_rank_and_size(cell):
    mod, w = NUMPY_CELLS[cell], _weights(cell)
    with pytest.raises(ValueError,
                       match=r"expected input of shape \(T, B, 4\), got shape \(5, 3\)"):
        mod.forward(np.zeros((5, 3)), None, **w)
    with pytest.raises(ValueError,
                       match=r"expected input of shape \(T, B, 4\), got shape \(5, 3, 2, 4\)"):
        mod.forward(np.zeros((5, 3, 2, 4)), None, **w)
    with pytest.raises(ValueError,
                       match=r"expected input of shape \(T, B, 4\), got shape \(5, 3, 7\)"):
        mod.forward(np.zeros((5, 3, 7)), None, **w)
    with pytest.raises(ValueError, match=r"expected input token ids in \[0, 4\), got"):
        mod.forward(np.full((5, 3), 4), None, **w)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bad_weight_shapes(cell):
    mod, w = NUMPY_CELLS[cell], _weights(cell)
    G = mod.GATES
    with pytest.raises(ValueError, match=rf"expected weight_hh of shape \({G}H, H\), got \(6, 6\)"):
        mod.forward(np.zeros((5, 3, 4)), None, **{**w, "weight_hh": np.zeros((6, 6))})
    with pytest.raises(ValueError,
                       match=rf"expected weight_ih of shape \({G * 6}, I\), got \(6, 4\)"):
        mod.forward(np.zeros((5, 3, 4)), None, **{**w, "weight_ih": np.zeros((6, 4))})
    with pytest.raises(ValueError, match=rf"expected bias_hh of shape \({G * 6},\), got \(6,\)"):
        mod.forward(np.zeros((5, 3, 4)), None, **{**w, "bias_hh": np.zeros(6)})


def test_lstm_bad_state():
    w, x = _weights("lstm"), np.zeros((5, 3, 4))
    good = np.zeros((3, 6))
    with pytest.raises(ValueError, match=r"expected h0 of shape \(3, 6\), got \(2, 6\)"):
        lstm.forward(x, (np.zeros((2, 6)), good), **w)
    with pytest.raises(ValueError, match=r"expected c0 of shape \(3, 6\), got \(3, 7\)"):
        lstm.forward(x, (good, np.zeros((3, 7))), **w)
    with pytest.raises(ValueError, match=r"expected the LSTM state as a pair \(h0, c0\) of "
                                         r"\(3, 6\) arrays, got a single array of shape \(3, 6\)"):
        lstm.forward(x, good, **w)
    with pytest.raises(ValueError, match=r"pair \(h0, c0\).*got tuple of length 3"):
        lstm.forward(x, (good, good, good), **w)


def test_gru_bad_state():
    w, x = _weights("gru"), np.zeros((5, 3, 4))
    with pytest.raises(ValueError, match=r"expected h0 of shape \(3, 6\), got \(2, 3, 6\)"):
        gru.forward(x, (np.zeros((2, 3, 6)),), **w)


# --- property test: random small shapes ------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(
    cell=st.sampled_from(["lstm", "gru"]),
    T=st.integers(1, 5), B=st.integers(1, 3), I=st.integers(1, 4), H=st.integers(1, 4),
    L=st.integers(1, 2), bidirectional=st.booleans(), with_state=st.booleans(),
    bias=st.booleans(), seed=st.integers(0, 2**16),
)
def test_property_random_shapes_match_torch(cell, T, B, I, H, L, bidirectional, with_state,
                                            bias, seed):
    errors = compare_with_torch(cell, T=T, B=B, I=I, H=H, L=L, bidirectional=bidirectional,
                                with_state=with_state, bias=bias, seed=seed)
    assert_all_close(errors)
