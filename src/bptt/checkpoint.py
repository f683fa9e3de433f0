"""Checkpoints: one safetensors file holding the arrays, with everything else as JSON metadata.

Tensors: the parameters under torch's names (``weight_ih_l0``, ..., ``head.weight``,
``head.bias``), so ``safetensors.torch.load_file`` feeds plain ``torch.nn.RNN`` + ``Linear``;
the optimiser state under ``optim.<key>``; the carried hidden state under ``state.h`` /
``state.c`` when a run stopped inside an epoch.

Metadata key ``bptt`` (JSON): format, version, model spec, vocabulary, text settings, training
config, training position (epoch, batch, lr, optimiser step, ...) and the metrics so far.

Version 2 also keeps the SHA-256 of every tensor's bytes (metadata ``sha256``, by tensor
name); loading recomputes them, so a flipped byte is found and named. Version 1 files (before
the digests) still load, unverified. Either way a tensor holding NaN or infinity is refused,
by name: nothing can train on or sample from it.

Files are written to a temporary name in the same folder with the permissions of any new file
(the umask's), flushed to the disk (``fsync``), renamed over the old one, and the folder is
flushed too, so neither a crash nor a power loss leaves a half-written or vanished checkpoint:
the previous one stays until the new one is whole. A failed write (disk full, permission
denied) raises :class:`CheckpointWriteError` in one line. Loading never unpickles and rejects
truncated or mismatched files.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Vocab
from .model import ModelSpec, check_params

FORMAT, VERSION = "bptt.checkpoint", 2
READS = (1, 2)          # version 1: written before the tensors' digests; loads unverified


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupted or does not fit."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (disk full, permission denied); one line."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


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
    """Write ``ckpt`` atomically and durably to ``path`` (a ``.safetensors`` file)."""
    from safetensors.numpy import save as serialise

    path = Path(path)
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
        "sha256": {k: _digest(v) for k, v in tensors.items()},
    }
    data = serialise(tensors, metadata={"bptt": json.dumps(meta)})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, data)
    except OSError as e:
        kept = "; the previous checkpoint there is intact" if path.is_file() else ""
        raise CheckpointWriteError(e.errno, f"could not write checkpoint {path}: "
                                   f"{e.strerror or e}{kept}") from None
    return path


def _digest(a: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order), as hex."""
    a = np.ascontiguousarray(a)
    return hashlib.sha256(memoryview(a.reshape(-1)).cast("B") if a.size else b"").hexdigest()


def write_durably(path: Path, data: bytes) -> None:
    """``data`` into ``path``: a temporary file beside it (mode 0666 less the umask, as any new
    file), written and fsynced, renamed over ``path``, then the folder fsynced so the rename
    itself survives a power loss. On failure the temporary file is removed and ``path`` is
    untouched."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass                                              # some filesystems refuse: nothing lost
    finally:
        os.close(fd)


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
        version = meta.get("version")
        if isinstance(version, bool) or version not in READS:
            raise ValueError(f"version {version!r}, this bptt reads versions "
                             f"{', '.join(map(str, READS))}")
        digests = meta.get("sha256") if version >= 2 else None
        if version >= 2 and (not isinstance(digests, dict) or sorted(digests) != sorted(tensors)):
            raise ValueError(f"'sha256' naming every tensor ({sorted(tensors)}), got "
                             f"{sorted(digests) if isinstance(digests, dict) else digests!r}")
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
    verify_tensors(path, tensors, digests)
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


def verify_tensors(path: Path, tensors: dict[str, np.ndarray], digests: dict | None) -> None:
    """Refuse a tensor whose bytes differ from the digest saved with it (when there is one),
    or that holds NaN or infinity; the message names the tensor."""
    for name, a in tensors.items():
        if digests is not None and _digest(a) != digests[name]:
            raise CheckpointError(
                f"checkpoint {path} is damaged: expected the bytes of tensor {name!r} to have "
                f"SHA-256 {str(digests[name])[:16]}..., got {_digest(a)[:16]}...")
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = int(a.size - np.isfinite(a).sum())
            raise CheckpointError(
                f"checkpoint {path}: expected finite values, got {bad} NaN or infinite in "
                f"tensor {name!r} (a diverged or damaged model cannot be trained or sampled)")
