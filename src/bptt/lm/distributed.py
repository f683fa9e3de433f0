"""Data-parallel training on ``torch.distributed``, for runs launched by ``torchrun``.

One process is one rank. Every rank builds the same global batch (the same random numbers) and
keeps its own contiguous block of rows, so a carried hidden state never leaves its rank; after
each backward pass the gradients and the loss are averaged over the ranks in one all-reduce,
before clipping, so every rank clips with the same global norm, takes the same step and keeps
the same parameters. Rank 0 alone writes checkpoints, metrics and plots and prints.

A run without torchrun (``WORLD_SIZE`` unset or 1) gets :data:`SINGLE`, whose hooks change
nothing, and never imports ``torch.distributed`` (nor torch at all, for the NumPy engine).
See docs/distributed.md.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

# Engines that can run data-parallel: the torch ones (collectives act on torch tensors).
ENGINES = ("torch", "torch-autograd", "torch-builtin")
# Seconds a collective may wait for a peer before the run ends with PeerError.
DEFAULT_TIMEOUT = 120.0


class ConfigError(ValueError):
    """A launch that cannot work; raised identically on every rank (rank 0 reports it)."""


class PeerError(RuntimeError):
    """A collective failed: a peer process died, or did not answer within the timeout."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ConfigError(f"expected an integer {name} in the environment, got {value!r}") \
            from None


def world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def restart_count() -> int:
    """How many times torchrun has restarted the worker group (``--max-restarts``): 0 for the
    first attempt and without torchrun. A restarted run resumes from its last checkpoint."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0)


def is_main() -> bool:
    """Whether this process reports (rank 0, or the only process)."""
    return world_size() <= 1 or _env_int("RANK", 0) == 0


# How long a silent rank waits before exiting on an error that every rank sees alike: torchrun
# stops the whole group as soon as one worker exits with an error, so a silent rank leaving at
# once can stop rank 0 before it has printed the one line that explains the failure
REPORTER_GRACE_S = 30.0


def let_the_reporter_speak() -> None:
    """On an error every rank sees alike, a rank other than 0 started by torchrun waits (at
    most :data:`REPORTER_GRACE_S`) so that rank 0 prints its line first; torchrun ends the
    wait by stopping this rank once rank 0 has exited. Without torchrun, returns at once."""
    if is_main() or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import time

    time.sleep(REPORTER_GRACE_S)


class Single:
    """One process: every hook hands its input back unchanged."""

    rank, world_size, device, active = 0, 1, None, False
    is_main = True
    rng_key: tuple = ()

    def describe(self) -> str:
        return ""

    def check_batch(self, batch_size: int) -> None:
        pass

    def rows(self, a, axis: int = 0):
        return a

    def average(self, grads: dict, loss):
        return loss

    def agree_stop(self, stop: bool) -> bool:
        return bool(stop)

    def gather_rows(self, state):
        return state

    def barrier(self) -> None:
        pass

    def state_rows(self, state):
        return state

    def from_main(self, values: list[float]) -> list[float]:
        return values


SINGLE = Single()


class Group(Single):
    """This process's place in a process group of ``world_size`` ranks."""

    active = True

    def __init__(self, rank: int, world_size: int, device, timeout: float) -> None:
        self.rank, self.world_size, self.device, self.timeout = rank, world_size, device, timeout
        self.is_main = rank == 0
        self.rng_key = (rank,)  # dropout masks differ between ranks, as between rows

    def describe(self) -> str:
        return f", {self.world_size} processes (rank {self.rank})"

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise ConfigError(
                f"expected --batch-size divisible by the number of processes {self.world_size} "
                f"(each takes batch-size / processes rows), got {batch_size}"
            )

    def rows(self, a, axis: int = 0):
        """This rank's contiguous block of ``a`` along ``axis`` (the batch rows)."""
        per = a.shape[axis] // self.world_size
        index = [slice(None)] * a.ndim
        index[axis] = slice(self.rank * per, (self.rank + 1) * per)
        return a[tuple(index)]

    def average(self, grads: dict, loss):
        """Average the gradients (in place) and the loss over the ranks: one all-reduce of
        one flat buffer. Returns the global mean loss (a 0-d tensor)."""
        import torch

        parts = list(grads.values())
        flat = torch.cat([g.reshape(-1) for g in parts] + [loss.reshape(1).to(parts[0].dtype)])
        self._all_reduce(flat, "sum")
        flat /= self.world_size
        for g, piece in zip(parts, flat[:-1].split([g.numel() for g in parts]), strict=True):
            g.copy_(piece.view_as(g))
        return flat[-1].to(loss.dtype)

    def agree_stop(self, stop: bool) -> bool:
        """True on every rank when any rank was asked to stop (Ctrl-C), so all stop together."""
        import torch

        flag = torch.tensor([1 if stop else 0], dtype=torch.int32)  # host: no device sync
        self._all_reduce(flag, "max")
        return bool(flag.item())

    def barrier(self) -> None:
        """Wait until every rank gets here (a one-element all-reduce on the host)."""
        import torch

        self._all_reduce(torch.zeros(1), "sum")

    def gather_rows(self, state):
        """The global (L*D, B, H) state (a pair for an LSTM) from every rank's rows."""
        if state is None:
            return None
        if isinstance(state, tuple | list):
            return tuple(self.gather_rows(s) for s in state)
        import torch
        import torch.distributed as dist

        pieces = [torch.empty_like(state) for _ in range(self.world_size)]
        self._run("gather the hidden state", dist.all_gather, pieces, state.contiguous())
        return torch.cat(pieces, dim=1)

    def state_rows(self, state):
        """This rank's rows of a saved global state, (h,) or (h, c) NumPy arrays, or None."""
        if state is None:
            return None
        import numpy as np

        return tuple(np.ascontiguousarray(self.rows(s, axis=1)) for s in state)

    def from_main(self, values: list[float]) -> list[float]:
        """Rank 0's values on every rank (so decisions taken from them agree exactly)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)  # host: gloo, also beside nccl
        self._run("share rank 0's values", dist.broadcast, t, 0)
        return t.tolist()

    # -- collectives, their failures made one clear error -----------------------------------

    def _all_reduce(self, t, op: str) -> None:
        import torch.distributed as dist

        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        self._run("all-reduce", dist.all_reduce, t, op=reduce_op)

    def _run(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:  # DistBackendError, gloo/nccl errors, timeouts
            detail = _first_line(e)
            raise PeerError(
                f"rank {self.rank}: {what} failed: a peer process died or did not answer "
                f"within --dist-timeout {self.timeout:g} s ({detail})"
            ) from None


def _first_line(e: BaseException) -> str:
    """An error's first line, without the C++ source location gloo puts in front."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    if line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    return line if len(line) <= 160 else line[:157] + "..."


def check_engine(engine: str) -> None:
    """Refuse a multi-process launch of an engine that cannot run data-parallel."""
    n = world_size()
    if n > 1 and engine not in ENGINES:
        raise ConfigError(
            f"the {engine} engine trains in one process only, but {n} processes were started "
            f"(WORLD_SIZE={n}); data-parallel training needs --engine "
            f"{', '.join(ENGINES[:-1])} or {ENGINES[-1]}"
        )


@contextmanager
def session(engine: str, device: str | None, timeout: float = DEFAULT_TIMEOUT):
    """:data:`SINGLE` in one process; under torchrun, join the process group (gloo on the
    CPU; on CUDA, device cuda:LOCAL_RANK with nccl for tensors and gloo for host flags),
    yield this rank's :class:`Group`, and leave the group at the end."""
    n = world_size()
    if n <= 1:
        yield SINGLE
        return
    check_engine(engine)
    if timeout <= 0:
        raise ConfigError(f"expected --dist-timeout > 0 seconds, got {timeout:g}")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < n:
        raise ConfigError(f"expected RANK in [0, {n}), got {rank}")
    import datetime

    import torch
    import torch.distributed as dist

    from ..engine.torch.model import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    owned = not dist.is_initialized()
    if owned:
        wait = datetime.timedelta(seconds=timeout)
        try:
            # torchrun's store (MASTER_ADDR:MASTER_PORT), under a prefix of its own per attempt:
            # after a restart (--max-restarts) the store still holds the last attempt's keys,
            # dead workers' addresses among them, which a new rank could otherwise read
            store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=n, timeout=wait))
            store = dist.PrefixStore(f"bptt/attempt{restart_count()}/", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=n,
                                    timeout=wait)
        except (RuntimeError, ValueError) as e:
            raise PeerError(f"rank {rank}: could not join the process group of {n} within "
                            f"--dist-timeout {timeout:g} s ({_first_line(e)})") from None
    try:
        yield Group(rank, n, dev, timeout)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()

