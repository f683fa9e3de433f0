"""ONNX export: the model as an ONNX graph written from the parameters, no torch involved.

``onnxruntime.InferenceSession(path).run(None, {"tokens": ids, "h0": h0[, "c0": c0]})`` gives
``[logits, h_n(, c_n)]``; batch and time are free dimensions. The graph's metadata ``bptt``
holds the description (:mod:`bptt.export.model`).

Each layer is ONNX's own recurrent operator (``RNN``, ``LSTM``, ``GRU``, time-major), fed
torch-named weights in ONNX's layout:

  W  (D, G*H, In)  weight_ih per direction, gate blocks reordered: ONNX's LSTM is i, o, f, c
                   (torch i, f, g, o), its GRU z, r, h (torch r, z, n)
  R  (D, G*H, H)   weight_hh, reordered alike
  B  (D, 2*G*H)    [bias_ih, bias_hh] per direction
  GRU: linear_before_reset = 1, torch's n_t = tanh(x W_in^T + b_in + r (h W_hn^T + b_hn))

A cell with no operator in :data:`OPERATORS` is refused (TorchScript exports it through its
step loop instead).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .model import Exportable

OPSET = 17
# cell -> (ONNX operator, the torch gate block at each ONNX position)
OPERATORS: dict[str, tuple[str, tuple[int, ...]]] = {
    "rnn": ("RNN", (0,)),
    "lstm": ("LSTM", (0, 3, 1, 2)),      # i o f c  <-  torch i f g o
    "gru": ("GRU", (1, 0, 2)),           # z r h    <-  torch r z n
}


def check_cell(model: Exportable) -> None:
    if model.kind.name not in OPERATORS:
        raise ValueError(f"expected a cell with an ONNX operator ({', '.join(OPERATORS)}) for "
                         f"--format onnx, got cell {model.kind.name!r}; --format torchscript "
                         "exports it through its step loop")


class _Graph:
    """Nodes and initializers, with fresh names."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs):
        outs = ([self.name(op_type.lower()) for _ in range(outputs)]
                if isinstance(outputs, int) else outputs)
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if len(outs) == 1 else outs


def _gates(w: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """Rows of (G*H, ...) regrouped from torch's gate order into ONNX's."""
    blocks = np.split(w, len(order), axis=0)
    return np.concatenate([blocks[i] for i in order], axis=0)


def _layer(g: _Graph, model: Exportable, layer: int, x: str, states: list[str]) -> tuple:
    """One layer, every direction: x (T, B, In) -> (T, B, D*H), and its final state parts."""
    spec, D = model.spec, model.spec.directions
    op, order = OPERATORS[model.kind.name]
    per_dir = [model.layer_params(layer, d) for d in range(D)]
    W = g.const("W", np.stack([_gates(p["weight_ih"], order) for p in per_dir]))
    R = g.const("R", np.stack([_gates(p["weight_hh"], order) for p in per_dir]))
    B = ""
    if spec.bias:
        B = g.const("B", np.stack([np.concatenate([_gates(p["bias_ih"], order),
                                                   _gates(p["bias_hh"], order)])
                                   for p in per_dir]))
    lo, hi = g.const("lo", np.array([layer * D])), g.const("hi", np.array([(layer + 1) * D]))
    axis0 = g.const("axis", np.array([0]))
    initial = [g.op("Slice", [s, lo, hi, axis0]) for s in states]     # (D, B, H) each
    attrs = {"hidden_size": spec.hidden_size,
             "direction": "bidirectional" if D == 2 else "forward"}
    if op == "RNN":
        attrs["activations"] = [spec.nonlinearity.capitalize()] * D
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    outs = g.op(op, [x, W, R, B, "", *initial], 1 + len(states), **attrs)
    y, finals = outs[0], list(outs[1:])
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3])                      # (T, B, D, H)
    y = g.op("Reshape", [y, g.const("shape", np.array([0, 0, -1]))])   # (T, B, D*H)
    return y, finals


def build(model: Exportable) -> onnx.ModelProto:
    """The ONNX model: inputs, every layer, the head, outputs and the description."""
    check_cell(model)
    spec, g = model.spec, _Graph()
    H, N = spec.hidden_size, model.num_states
    if model.is_lm:
        x_in = helper.make_tensor_value_info(model.input_name, TensorProto.INT64,
                                             ["batch", "time"])
        if model.has_embedding:
            x = g.op("Gather", [g.const("embedding", model.params["embedding.weight"]),
                                model.input_name], axis=0)             # (B, T, E)
        else:
            x = g.op("OneHot", [model.input_name, g.const("depth", np.array(spec.input_size)),
                                g.const("values", np.array([0.0, 1.0], np.float32))], axis=-1)
    else:
        x_in = helper.make_tensor_value_info(model.input_name, TensorProto.FLOAT,
                                             ["batch", "time", spec.input_size])
        x = model.input_name
    x = g.op("Transpose", [x], perm=[1, 0, 2])                         # (T, B, In)
    finals: list[list[str]] = [[] for _ in model.state_inputs]
    for layer in range(spec.num_layers):
        x, ends = _layer(g, model, layer, x, model.state_inputs)
        for part, end in zip(finals, ends, strict=True):
            part.append(end)
    y = g.op("Transpose", [x], perm=[1, 0, 2])                         # (B, T, D*H)
    y = g.op("MatMul", [y, g.const("head_weight_t", model.head_weight().T)])
    g.op("Add", [y, g.const("head_bias", model.params["head.bias"])], [model.output_name])
    for name, parts in zip(model.state_outputs, finals, strict=True):
        g.op("Concat", parts, [name], axis=0)                          # (L*D, B, H)
    states = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [N, "batch", H])
              for n in model.state_inputs]
    outputs = [helper.make_tensor_value_info(model.output_name, TensorProto.FLOAT,
                                             ["batch", "time", spec.output_size])]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [N, "batch", H])
                for n in model.state_outputs]
    graph = helper.make_graph(g.nodes, f"bptt_{spec.cell}", [x_in, *states], outputs, g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="bptt")
    proto.ir_version = min(proto.ir_version, 8)   # readable by onnxruntime >= 1.14
    helper.set_model_props(proto, {"bptt": model.description_json()})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save(model: Exportable, path: str) -> None:
    onnx.save(build(model), path)


def run(path: str, x, state: list):
    """Run the file in onnxruntime: (output, state parts) as NumPy arrays."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    y, *out = session.run(None, dict(zip(names, [x, *state], strict=True)))
    return y, out
