"""``bptt export``: a trained model as a TorchScript or ONNX file that runs without bptt."""

from __future__ import annotations

import argparse

from .argtypes import RawHelpFormatter

EPILOG = """\
the file:
  inputs   tokens (B, T) int64 (a regression model: inputs (B, T, I) float32), and the
           initial state h0 (L*D, B, H) (the LSTM: h0 and c0)
  outputs  logits (B, T, V) (regression: outputs (B, T, O)), and the final state h_n (c_n)
  description.json, stored in the file: vocabulary, text settings, model spec, inputs, outputs

  torchscript  m = torch.jit.load(FILE); logits, state = m(tokens, m.begin_state(B))
               (state: a list [h] or [h, c]; the description: torch.jit.load(FILE,
               _extra_files={"description.json": ""}))
  onnx         onnxruntime.InferenceSession(FILE).run(None, {"tokens": ..., "h0": ...})
               (the description: the model's metadata "bptt")

Before the file is kept it is loaded back (plain torch, or onnxruntime) and run on a probe;
its outputs must match the NumPy engine's within 1e-4 (relative), or nothing is written.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="write a trained model as a TorchScript or ONNX file",
        description="Export a run's model (input, recurrent stack, head) as a file that plain "
        "torch (TorchScript) or onnxruntime (ONNX) runs with no bptt installed.",
        epilog=EPILOG, formatter_class=RawHelpFormatter)
    p.add_argument("checkpoint", help="a run folder (best, else last) or a .safetensors file")
    p.add_argument("--format", required=True, choices=["torchscript", "onnx"],
                   help="torchscript (needs bptt[torch]) or onnx (needs bptt[export])")
    p.add_argument("--out", required=True, help="the file to write (.pt, .onnx)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--via", choices=["torch.nn", "loop"], default=None,
                   help="TorchScript only: the stack as torch.nn.RNN/LSTM/GRU (default when "
                   "torch has the cell) or as a scripted loop of the cell's steps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_model

    result = export_model(args.checkpoint, args.format, args.out, overwrite=args.overwrite,
                          via=args.via)
    print(f"wrote {result.path} ({result.format}, stack via {result.via}); matches the model "
          f"within {result.error:.1e} on a probe")
    return 0
