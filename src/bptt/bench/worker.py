"""The worker protocol: every subject runs in its own persistent process.

The parent starts ``python -m bptt.bench --worker`` (:class:`Worker`) and sends it JSON requests,
one a line on its stdin; :func:`worker_main` answers each with one JSON line on its stdout:

  {"op": "setup", "subject", "cell", "config", "seed", "warmup", "warmup_tiny"}
      -> {"ok": true, "step_s"}         build the subject (after ``warmup`` steps: one timed step)
  {"op": "train", "n"}                  -> {"seconds", "loss", "kernel", "products"}
  {"op": "generate", "n"}               -> {"seconds", "text"}
  {"op": "memory", "steps", "tracemalloc"}
      -> {"method", "peak_mb", "torch_imported"}
  {"op": "quit"}                        the worker exits

A failed request is answered ``{"error": "Type: message"}`` and the worker carries on; a worker
that died is reported the same way by :meth:`Worker.ask`. Library prints go to stderr, so they
cannot corrupt the replies.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

from ..engine.heap import keep_freed_memory
from ..engine.threads import child_environment, default_threads
from .memory import measure_memory
from .settings import THREADS_ENV, BenchConfig
from .subjects import make_subject


def _tiny(cfg: BenchConfig) -> BenchConfig:
    return replace(cfg, name=cfg.name + "-warmup", hidden=8, batch=2, steps=3,
                   embedding=8 if cfg.embedding else None)



def _library() -> dict:
    """The compiled kernel's state and the products chosen by measurement in this worker
    (``bptt.engine.products``), when the subject uses our engines."""
    products = sys.modules.get("bptt.engine.products")
    if products is None:
        return {}
    return {"kernel": products.kernel.status(), "products": products.chosen()}


def worker_main() -> int:
    """Serve JSON requests, one a line on stdin, one reply a line on the original stdout."""
    reply_to = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    keep_freed_memory()         # every subject, torch.nn's included: one allocator for all
    sys.stdout = sys.stderr                                  # library prints cannot corrupt replies
    subject = None
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg.get("op")
        try:
            if op == "quit":
                break
            if op == "setup":
                cfg = BenchConfig(**msg["config"])
                subject = None
                gc.collect()
                cell = msg.get("cell", "rnn")
                if msg.get("warmup_tiny"):                    # lazy library initialisation
                    make_subject(msg["subject"], _tiny(cfg), msg.get("seed", 0), cell).train(2)
                    gc.collect()
                subject = make_subject(msg["subject"], cfg, msg.get("seed", 0), cell)
                reply = {"ok": True}
                if msg.get("warmup", 0):
                    subject.train(msg["warmup"])
                    t0 = time.perf_counter()
                    subject.train(1)
                    reply["step_s"] = time.perf_counter() - t0
            elif op == "train":
                t0 = time.perf_counter()
                loss = subject.train(int(msg["n"]))
                reply = {"seconds": time.perf_counter() - t0, "loss": loss, **_library()}
            elif op == "generate":
                t0 = time.perf_counter()
                text = subject.generate(int(msg["n"]))
                reply = {"seconds": time.perf_counter() - t0, "text": text}
            elif op == "memory":
                reply = measure_memory(subject, int(msg["steps"]), bool(msg.get("tracemalloc")))
                reply["torch_imported"] = "torch" in sys.modules
            else:
                reply = {"error": f"expected op setup/train/generate/memory/quit, got {op!r}"}
        except Exception as e:  # noqa: BLE001 - reported to the parent, which carries on
            reply = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
        reply_to.write(json.dumps(reply) + "\n")
        reply_to.flush()
    return 0


class Worker:
    """A subject's process: ``python -m bptt.bench --worker``.

    ``threads``: the threads of every pool of the worker -- the kernel's, the BLAS's (OpenBLAS,
    MKL), OpenMP's and torch's -- set in its environment before it imports anything, with
    passive waiting (:func:`bptt.engine.threads.child_environment`); None: the engines' default
    (:func:`bptt.engine.threads.default_threads`: the cores other work leaves idle).
    """

    def __init__(self, threads: int | None = None) -> None:
        self._err = tempfile.TemporaryFile(mode="w+")
        n = threads or default_threads()
        env = {**os.environ, **child_environment(n), THREADS_ENV: str(n)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bptt.bench", "--worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._err, text=True, bufsize=1, env=env)

    def ask(self, **msg) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self._err.seek(0)
            tail = self._err.read().strip().splitlines()[-1:] or ["no message"]
            return {"error": f"worker exited ({tail[0]})"}
        return json.loads(line)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask(op="quit")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):   # else "unclosed file" warnings
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._err.close()
