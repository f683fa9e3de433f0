"""Checkpoints: one safetensors file holding the arrays, with everything else as JSON metadata.

Tensors: the parameters under torch's names (``weight_ih_l0``, ..., ``head.weight``,
``head.bias``), so ``safetensors.torch.load_file`` feeds plain ``torch.nn.RNN`` + ``Linear``;
the optimiser state under ``optim.<key>``; the carried hidden state under ``state.h`` /
``state.c`` when a run stopped inside an epoch.

Metadata key ``bptt`` (JSON): format, version, model spec, vocabulary, text settings, training
config, training position (epoch, batch, lr, optimiser step, ...) and the metrics so far.

Files are written to a temporary name in the same folder and renamed, so a crash never leaves
a half-written checkpoint; loading never unpickles and rejects truncated or mismatched files.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Vocab
from .model import ModelSpec, check_params

FORMAT, VERSION = "bptt.checkpoint", 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupted or does not fit."""


@dataclass
class Checkpoint:
    spec: ModelSpec
    params: dict[str, np.ndarray]
    vocab: Vocab | None = None
    text: dict = field(default_factory=dict)       # normalization, tokenization
    config: dict = field(default_factory=dict)     # the training config that produced it
    train: dict = field(default_factory=dict)      # epoch, batch, lr, optimiser scalars, ...
    optim: dict[str, np.ndarray] = field(default_factory=dict)
    state: tuple[np.ndarray, ...] | None = None    # carried hidden state (h,) or (h, c)
    metrics: list = field(default_factory=list)


def save(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write ``ckpt`` atomically to ``path`` (a ``.safetensors`` file)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_params(ckpt.spec, ckpt.params)
    tensors = {k: np.ascontiguousarray(v) for k, v in ckpt.params.items()}
    tensors.update({f"optim.{k}": np.ascontiguousarray(v) for k, v in ckpt.optim.items()})
    if ckpt.state is not None:
        for name, s in zip("hc", ckpt.state, strict=False):
            tensors[f"state.{name}"] = np.ascontiguousarray(s)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "spec": ckpt.spec.to_dict(),
        "vocab": ckpt.vocab.to_dict() if ckpt.vocab is not None else None,
        "text": ckpt.text,
        "config": ckpt.config,
        "train": ckpt.train,
        "metrics": ckpt.metrics,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"bptt": json.dumps(meta)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve_path(path: str | Path, prefer: str = "best") -> Path:
    """A checkpoint file, or a run folder (``best.safetensors`` or ``last.safetensors`` in it)."""
    path = Path(path)
    if path.is_dir():
        order = ["best", "last"] if prefer == "best" else ["last", "best"]
        for name in order:
            if (path / f"{name}.safetensors").is_file():
                return path / f"{name}.safetensors"
        raise CheckpointError(
            f"expected best.safetensors or last.safetensors in run folder {path}, found neither"
        )
    if not path.is_file():
        raise CheckpointError(
            f"expected a checkpoint file or run folder, got {path} (no such file)"
        )
    return path


def load(path: str | Path, prefer: str = "best") -> Checkpoint:
    """Read a checkpoint written by :func:`save`; never unpickles."""
    from safetensors import safe_open

    path = resolve_path(path, prefer)
    try:
        with safe_open(str(path), framework="np") as f:
            meta_raw = (f.metadata() or {}).get("bptt")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad headers/sizes
        raise CheckpointError(
            f"expected a bptt checkpoint (safetensors), but {path} is unreadable: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if meta_raw is None:
        raise CheckpointError(
            f"expected bptt metadata in {path}, found none (not a bptt checkpoint)"
        )
    try:
        meta = json.loads(meta_raw)
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__} instead of an object")
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        if meta.get("version") != VERSION:
            raise ValueError(f"version {meta.get('version')!r}, this bptt reads {VERSION}")
        for key, kind in (("text", dict), ("config", dict), ("train", dict), ("metrics", list)):
            if not isinstance(meta.get(key, kind()), kind):
                raise ValueError(f"{key!r} a {type(meta[key]).__name__}, not a {kind.__name__}")
        spec = ModelSpec.from_dict(meta["spec"])
        vocab = Vocab.from_dict(meta["vocab"]) if meta.get("vocab") is not None else None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"expected valid bptt metadata in {path}, got {e}") from None
    params = {k: v for k, v in tensors.items() if not k.startswith(("optim.", "state."))}
    try:
        check_params(spec, params)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} does not fit its own model spec: {e}") from None
    if vocab is not None and spec.task == "lm" and len(vocab) != spec.input_size:
        raise CheckpointError(
            f"checkpoint {path}: expected a vocabulary of {spec.input_size} tokens, "
            f"got {len(vocab)}"
        )
    state = None
    if "state.h" in tensors:
        state = (tensors["state.h"],) + ((tensors["state.c"],) if "state.c" in tensors else ())
    return Checkpoint(
        spec=spec,
        params=params,
        vocab=vocab,
        text=meta.get("text", {}),
        config=meta.get("config", {}),
        train=meta.get("train", {}),
        optim={k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")},
        state=state,
        metrics=meta.get("metrics", []),
    )
