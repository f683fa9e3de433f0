"""Export a trained model as a file that runs without ``bptt``.

  torchscript  plain torch: ``torch.jit.load(path)`` (the ``torch`` extra)
  onnx         onnxruntime or any ONNX runtime (the ``export`` extra)

Modules:

  model        Exportable: the checkpoint's model, its parameters by layer, the description
               (``description.json``) stored in every file: inputs, outputs, vocabulary, text
  torchscript  the torch modules (torch.nn stack, or a scripted loop of a cell's steps)
  onnx_graph   the ONNX graph, written from the parameters with ONNX's RNN/LSTM/GRU operators
  write        export_model: checks, writes beside --out, runs the file against the NumPy
               engine, then renames it

Nothing here imports torch or onnx at module import.
"""

from __future__ import annotations

from .model import Exportable
from .write import FORMATS, SUFFIXES, TOLERANCE, ExportResult, export_model

__all__ = ["FORMATS", "SUFFIXES", "TOLERANCE", "ExportResult", "Exportable", "export_model"]
