"""``bptt bench``: how fast every engine trains and generates, and how much memory it takes.

Subjects (rows of the table), all the book's language model (one tanh RNN layer, a linear head,
softmax cross-entropy, SGD with the gradient norm clipped at 1):

  numpy           our NumPy engine (hand-written BPTT; its worker never imports torch)
  torch           our torch engine (the same BPTT as an autograd.Function)
  torch-bf16      the torch engine with ``precision="bf16"`` (bfloat16 products, float32 rest)
  torch-autograd  our torch engine differentiating the book's unrolled loop
  torch-builtin   our engine around torch.nn.RNN + torch.nn.Linear
  torch.nn.RNN    reference written here, independent of our engines: torch.nn.RNN +
                  torch.nn.Linear on one-hot inputs, torch.optim.SGD and
                  torch.nn.utils.clip_grad_norm_; generation steps one character at a time under
                  torch.no_grad()
  book            reference written here as the book has it (d2l 8.5): the unrolled loop over
                  one-hot inputs with torch.mm and the output layer inside the loop, autograd,
                  the book's grad_clipping and sgd; generation is its predict_ch8 loop

Measurements, per configuration (``CONFIGS``; ``--quick`` shrinks every one of them):

  train     tokens/s of whole training steps (forward, BPTT, clipping, SGD step; the state is
            carried and detached between batches as ``bptt train`` does) on fixed random token
            batches. Every subject runs in its own persistent worker process (its own imports,
            thread pools and allocator), warmed up first; then ``repeats`` rounds, each round
            giving every subject one timed block of about ``seconds`` in a rotating order, with
            a short pause between blocks so that one worker's spinning BLAS/OpenMP threads have
            gone to sleep before the next starts. Reported: the median over the rounds, and
            the ratio to torch.nn.RNN's median. Torch uses as many threads as this process may
            use cores; NumPy its BLAS's own threads (as many, by default).
  generate  characters/s of single-stream greedy generation (batch 1, argmax and one token fed
            back per character); our engines through ``bptt.lm.generate.generate``, which
            includes the warm-up on a 15-character prefix. Same workers, same rounds.
  memory    peak resident memory growth of a few training steps in a fresh process: after
            setup (imports, parameters, data, and a warm-up of the same code on a tiny batch so
            lazy library initialisation is not counted), ``/proc/self/clear_refs`` resets the
            high-water mark and the peak is VmHWM - VmRSS(before). The NumPy engine is also
            measured with tracemalloc (NumPy's own array allocations, in its own fresh process).

The NumPy engine's worker never imports torch; the parent process imports neither.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ENGINE_SUBJECTS = ("numpy", "torch", "torch-autograd", "torch-builtin")
REFERENCE = "torch.nn.RNN"
BOOK = "book"
SUBJECTS = ("numpy", "torch", "torch-bf16", "torch-autograd", "torch-builtin", REFERENCE, BOOK)
PARTS = ("train", "generate", "memory")
ALPHABET = "abcdefghijklmnopqrstuvwxyz "            # with <unk>: the book's 28 characters
PREFIX = "time traveller "


@dataclass(frozen=True)
class BenchConfig:
    """One workload: vocabulary V, hidden size H, batch B, steps T per batch."""

    name: str
    vocab: int
    hidden: int
    batch: int
    steps: int
    note: str = ""

    @property
    def tokens(self) -> int:
        return self.batch * self.steps


CONFIGS = {
    "book": BenchConfig("book", 28, 512, 32, 35, "the book's model (d2l 8.5)"),
    "small": BenchConfig("small", 28, 256, 32, 35, "H = 256"),
    "large": BenchConfig("large", 28, 1024, 128, 35, "H = 1024, B = 128"),
    "long": BenchConfig("long", 28, 256, 16, 1000, "T = 1000 (B and H smaller to stay bounded)"),
}
QUICK_CONFIGS = {
    "book": BenchConfig("book", 28, 48, 4, 12, "quick"),
    "small": BenchConfig("small", 28, 32, 4, 12, "quick"),
    "large": BenchConfig("large", 28, 64, 8, 12, "quick"),
    "long": BenchConfig("long", 28, 32, 2, 120, "quick"),
}


@dataclass
class BenchSettings:
    configs: tuple[str, ...] = tuple(CONFIGS)
    subjects: tuple[str, ...] = SUBJECTS
    parts: tuple[str, ...] = PARTS
    quick: bool = False
    repeats: int = 7                 # rounds of timed blocks per configuration
    seconds: float = 0.4             # the length of one timed training block
    gen_chars: int = 300             # characters per generation block
    gen_repeats: int = 5
    memory_steps: int = 2
    pause: float = 0.15              # between two workers' blocks (spinning threads settle)
    seed: int = 0
    memory_configs: tuple[str, ...] | None = None   # None: every configuration
    threads: int | None = None       # torch and BLAS threads per worker; None: every core

    @classmethod
    def quick_settings(cls, **kw) -> BenchSettings:
        # one thread: a smoke test of tiny sizes must not depend on a busy machine's scheduling
        base = dict(quick=True, repeats=3, seconds=0.02, gen_chars=20, gen_repeats=2,
                    memory_steps=1, pause=0.0, memory_configs=("long",), threads=1)
        base.update(kw)
        return cls(**base)

    def config(self, name: str) -> BenchConfig:
        table = QUICK_CONFIGS if self.quick else CONFIGS
        if name not in table:
            raise ValueError(f"expected a configuration among {', '.join(table)}, got {name!r}")
        return table[name]


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


THREADS_ENV = "BPTT_BENCH_THREADS"


def threads() -> int:
    """Threads for torch and the BLAS in a worker: ``$BPTT_BENCH_THREADS``, else every core."""
    value = os.environ.get(THREADS_ENV)
    return int(value) if value else cores()


# -- the subjects ---------------------------------------------------------------------------------

def _data(cfg: BenchConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random batch of token ids X and its targets Y, (B, T) each."""
    rng = np.random.default_rng([seed, cfg.hidden, cfg.batch, cfg.steps])
    X = rng.integers(0, cfg.vocab, (cfg.batch, cfg.steps))
    Y = np.concatenate([X[:, 1:], rng.integers(0, cfg.vocab, (cfg.batch, 1))], axis=1)
    return X, Y


def _vocab():
    from .data import Vocab

    return Vocab(list(ALPHABET))


def _set_torch_threads() -> None:
    import torch

    torch.set_num_threads(threads())


class EngineSubject:
    """One of our engines, trained and sampled through the library code ``bptt train`` uses."""

    def __init__(self, engine: str, cfg: BenchConfig, seed: int = 0, precision: str = "fp32"):
        from . import optim
        from .engine import get_engine
        from .model import ModelSpec, init_params

        if engine != "numpy":
            _set_torch_threads()
        self.name, self.cfg = engine, cfg
        self.spec = ModelSpec(cell="rnn", input_size=cfg.vocab, hidden_size=cfg.hidden,
                              output_size=cfg.vocab, task="lm")
        self.engine = get_engine(engine, self.spec, device="cpu", precision=precision)
        self.params = self.engine.from_numpy(init_params(self.spec, "torch", rng=seed))
        self.opt = optim.SGD(lr=1.0)
        self.optim = optim
        self.X, self.Y = _data(cfg, seed)
        self.state = self.engine.begin_state(cfg.batch)

    def train(self, n: int) -> float:
        eng, loss = self.engine, 0.0
        for _ in range(n):
            loss, grads, state = eng.loss_and_grads(self.params, self.X, self.Y, self.state,
                                                    training=True)
            self.optim.clip_grad_norm_(grads, 1.0)
            self.opt.step(self.params, grads)
            self.state = eng.detach_state(state)
        return eng.scalar(loss)

    def generate(self, n: int) -> str:
        from .lm.generate import LanguageModel, generate

        model = LanguageModel(self.spec, self.engine.to_numpy(self.params), _vocab())
        return generate(model, PREFIX, n, engine=self.name, device="cpu")


class TorchRNNSubject:
    """The reference: torch.nn.RNN + torch.nn.Linear, torch.optim.SGD, clip_grad_norm_."""

    def __init__(self, cfg: BenchConfig, seed: int = 0):
        import torch

        _set_torch_threads()
        self.torch, self.cfg = torch, cfg
        torch.manual_seed(seed)
        self.rnn = torch.nn.RNN(cfg.vocab, cfg.hidden)
        self.head = torch.nn.Linear(cfg.hidden, cfg.vocab)
        self.params = [*self.rnn.parameters(), *self.head.parameters()]
        self.opt = torch.optim.SGD(self.params, lr=1.0)
        X, Y = _data(cfg, seed)
        self.X, self.Y = torch.as_tensor(X), torch.as_tensor(Y)
        self.h = torch.zeros(1, cfg.batch, cfg.hidden)

    def train(self, n: int) -> float:
        torch, F, V, H = self.torch, self.torch.nn.functional, self.cfg.vocab, self.cfg.hidden
        loss = None
        for _ in range(n):
            x = F.one_hot(self.X.T, V).float()                       # (T, B, V)
            out, h = self.rnn(x, self.h)
            logits = self.head(out.reshape(-1, H))
            loss = F.cross_entropy(logits, self.Y.T.reshape(-1))
            self.opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.h = h.detach()
        return float(loss.detach()) if loss is not None else 0.0

    def generate(self, n: int) -> str:
        torch, F, V = self.torch, self.torch.nn.functional, self.cfg.vocab
        vocab = _vocab()
        with torch.no_grad():
            ids = torch.as_tensor(vocab.encode(list(PREFIX)))
            out, h = self.rnn(F.one_hot(ids[:, None], V).float(),
                              torch.zeros(1, 1, self.cfg.hidden))
            nxt = int(self.head(out[-1]).argmax())
            chosen = []
            for _ in range(n):                                       # one character at a time
                chosen.append(nxt)
                out, h = self.rnn(F.one_hot(torch.tensor([[nxt]]), V).float(), h)
                nxt = int(self.head(out[0]).argmax())
        return PREFIX + "".join(vocab.idx_to_token[i] for i in chosen)


class BookSubject:
    """The book's from-scratch model (d2l 8.5), its grad_clipping and sgd, and predict_ch8."""

    def __init__(self, cfg: BenchConfig, seed: int = 0):
        import torch

        _set_torch_threads()
        self.torch, self.cfg = torch, cfg
        torch.manual_seed(seed)
        V, H = cfg.vocab, cfg.hidden

        def small(*shape):                                   # N(0, 0.01^2)
            return torch.randn(*shape) * 0.01

        self.params = [small(V, H), small(H, H), torch.zeros(H), small(H, V), torch.zeros(V)]
        for p in self.params:
            p.requires_grad_(True)
        self.lr = 1.0
        self.loss = torch.nn.CrossEntropyLoss()
        X, Y = _data(cfg, seed)
        self.X, self.Y = torch.as_tensor(X), torch.as_tensor(Y)
        self.state = None

    def begin_state(self, batch: int):
        return (self.torch.zeros(batch, self.cfg.hidden),)

    def net(self, X, state):
        """One-hot time-major inputs, then the loop; the output layer runs inside the loop."""
        torch = self.torch
        inputs = torch.nn.functional.one_hot(X.T, self.cfg.vocab).type(torch.float32)
        W_xh, W_hh, b_h, W_hq, b_q = self.params
        (h,) = state
        outputs = []
        for x in inputs:
            h = torch.tanh(torch.mm(x, W_xh) + torch.mm(h, W_hh) + b_h)
            outputs.append(torch.mm(h, W_hq) + b_q)
        return torch.cat(outputs, dim=0), (h,)

    def grad_clipping(self, theta: float) -> None:
        torch = self.torch
        norm = torch.sqrt(sum(torch.sum(p.grad ** 2) for p in self.params))
        if norm > theta:
            for p in self.params:
                p.grad[:] *= theta / norm

    def sgd(self, batch_size: int) -> None:
        with self.torch.no_grad():
            for p in self.params:
                p -= self.lr * p.grad / batch_size
                p.grad.zero_()

    def train(self, n: int) -> float:
        loss = None
        for _ in range(n):
            if self.state is None:
                self.state = self.begin_state(self.cfg.batch)
            else:
                for s in self.state:
                    s.detach_()
            y = self.Y.T.reshape(-1)
            y_hat, self.state = self.net(self.X, self.state)
            loss = self.loss(y_hat, y.long()).mean()
            loss.backward()
            self.grad_clipping(1.0)
            self.sgd(batch_size=1)
        return float(loss.detach()) if loss is not None else 0.0

    def generate(self, n: int) -> str:
        """predict_ch8: warm up on the prefix one character at a time, then argmax per step."""
        torch, vocab = self.torch, _vocab()
        state = self.begin_state(1)
        outputs = [vocab.token_to_idx[PREFIX[0]]]

        def last():
            return torch.tensor([outputs[-1]]).reshape((1, 1))

        for ch in PREFIX[1:]:
            _, state = self.net(last(), state)
            outputs.append(vocab.token_to_idx[ch])
        for _ in range(n):
            y, state = self.net(last(), state)
            outputs.append(int(y.argmax(dim=1).reshape(1)))
        return "".join(vocab.idx_to_token[i] for i in outputs)


def make_subject(name: str, cfg: BenchConfig, seed: int = 0):
    if name in ENGINE_SUBJECTS:
        return EngineSubject(name, cfg, seed)
    if name == "torch-bf16":
        return EngineSubject("torch", cfg, seed, precision="bf16")
    if name == REFERENCE:
        return TorchRNNSubject(cfg, seed)
    if name == BOOK:
        return BookSubject(cfg, seed)
    raise ValueError(f"expected a subject among {', '.join(SUBJECTS)}, got {name!r}")


# -- memory --------------------------------------------------------------------------------------

def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_memory(subject, steps: int, use_tracemalloc: bool = False) -> dict:
    """Peak memory growth of ``steps`` training steps of a set-up subject, in MiB."""
    gc.collect()
    if use_tracemalloc:
        import tracemalloc

        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        subject.train(steps)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return {"method": "tracemalloc", "peak_mb": (peak - base) / 2**20}
    before = _proc_status_mb("VmRSS")
    if before is not None and _reset_peak():
        subject.train(steps)
        return {"method": "rss", "peak_mb": _proc_status_mb("VmHWM") - before}
    import resource  # fallback: ru_maxrss growth

    scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    subject.train(steps)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return {"method": "maxrss", "peak_mb": after - before}


def _tiny(cfg: BenchConfig) -> BenchConfig:
    return BenchConfig(cfg.name + "-warmup", cfg.vocab, 8, 2, 3)


# -- the worker process --------------------------------------------------------------------------

def worker_main() -> int:
    """Serve JSON requests, one a line on stdin, one reply a line on the original stdout."""
    reply_to = os.fdopen(os.dup(sys.stdout.fileno()), "w")
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
                if msg.get("warmup_tiny"):                    # lazy library initialisation
                    make_subject(msg["subject"], _tiny(cfg), msg.get("seed", 0)).train(2)
                    gc.collect()
                subject = make_subject(msg["subject"], cfg, msg.get("seed", 0))
                reply = {"ok": True}
                if msg.get("warmup", 0):
                    subject.train(msg["warmup"])
                    t0 = time.perf_counter()
                    subject.train(1)
                    reply["step_s"] = time.perf_counter() - t0
            elif op == "train":
                t0 = time.perf_counter()
                loss = subject.train(int(msg["n"]))
                reply = {"seconds": time.perf_counter() - t0, "loss": loss}
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

    ``threads``: torch's threads (``torch.set_num_threads``) and the BLAS's (OpenBLAS, MKL and
    OpenMP environment variables, read when NumPy loads); None leaves every core to both.
    """

    def __init__(self, threads: int | None = None) -> None:
        self._err = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ)
        if threads is not None:
            env[THREADS_ENV] = str(threads)
            for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
                env[var] = str(threads)
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
        self._err.close()


# -- the run --------------------------------------------------------------------------------------

@dataclass
class Measurement:
    samples: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return float(np.median(self.samples)) if self.samples else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0.0) else None


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cores": cores(), "numpy": np.__version__}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["torch"] = version("torch")
    with contextlib.suppress(Exception):
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    return info


def _loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages: how busy the (shared) machine was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(settings: BenchSettings, log=_log) -> dict:
    """Every requested measurement; returns the JSON-ready result (see :func:`format_table`)."""
    for s in settings.subjects:
        if s not in SUBJECTS:
            raise ValueError(f"expected subjects among {', '.join(SUBJECTS)}, got {s!r}")
    for p in settings.parts:
        if p not in PARTS:
            raise ValueError(f"expected parts among {', '.join(PARTS)}, got {p!r}")
    configs = [settings.config(n) for n in settings.configs]
    results: dict[str, dict[str, dict]] = {c.name: {s: {} for s in settings.subjects}
                                           for c in configs}
    t_start = time.perf_counter()
    load_before = _loadavg()
    if "train" in settings.parts or "generate" in settings.parts:
        workers = {s: Worker(settings.threads) for s in settings.subjects}
        try:
            for cfg in configs:
                _timed_parts(cfg, settings, workers, results[cfg.name], log)
        finally:
            for w in workers.values():
                w.close()
    if "memory" in settings.parts:
        names = settings.memory_configs or settings.configs
        for cfg in configs:
            if cfg.name in names:
                _memory_part(cfg, settings, results[cfg.name], log)
    out = {
        "machine": {**machine_info(), "loadavg_before": load_before, "loadavg_after": _loadavg()},
        "settings": {**asdict(settings), "worker_threads": settings.threads or cores()},
        "configs": {c.name: asdict(c) for c in configs},
        "results": results,
        "seconds": time.perf_counter() - t_start,
    }
    out["targets"] = evaluate_targets(out)
    return out


def _timed_parts(cfg: BenchConfig, st: BenchSettings, workers: dict, res: dict, log) -> None:
    subjects = list(workers)
    log(f"[{cfg.name}] V={cfg.vocab} H={cfg.hidden} B={cfg.batch} T={cfg.steps}: setting up")
    n_steps, train, gen = {}, {}, {}
    for s, w in workers.items():
        r = w.ask(op="setup", subject=s, config=asdict(cfg), seed=st.seed, warmup=1)
        train[s], gen[s] = Measurement(error=r.get("error")), Measurement(error=r.get("error"))
        if "error" not in r:
            n_steps[s] = max(1, round(st.seconds / max(r["step_s"], 1e-6)))
    if "train" in st.parts:
        for rep in range(st.repeats):
            order = subjects[rep % len(subjects):] + subjects[:rep % len(subjects)]
            for s in order:
                if train[s].error:
                    continue
                r = workers[s].ask(op="train", n=n_steps[s])
                if "error" in r:
                    train[s].error = r["error"]
                else:
                    train[s].samples.append(n_steps[s] * cfg.tokens / r["seconds"])
                time.sleep(st.pause)
            log(f"[{cfg.name}] train round {rep + 1}/{st.repeats}")
    if "generate" in st.parts:
        for rep in range(st.gen_repeats):
            order = subjects[rep % len(subjects):] + subjects[:rep % len(subjects)]
            for s in order:
                if gen[s].error:
                    continue
                r = workers[s].ask(op="generate", n=st.gen_chars)
                if "error" in r:
                    gen[s].error = r["error"]
                else:
                    gen[s].samples.append(st.gen_chars / r["seconds"])
                time.sleep(st.pause)
        log(f"[{cfg.name}] generation done")
    for s in subjects:
        if "train" in st.parts:
            res[s]["train"] = {"tokens_per_s": train[s].median, "samples": train[s].samples,
                               "steps_per_block": n_steps.get(s), "error": train[s].error}
        if "generate" in st.parts:
            res[s]["generate"] = {"chars_per_s": gen[s].median, "samples": gen[s].samples,
                                  "chars_per_block": st.gen_chars, "error": gen[s].error}
    ref_t = res.get(REFERENCE, {}).get("train", {}).get("tokens_per_s")
    ref_g = res.get(REFERENCE, {}).get("generate", {}).get("chars_per_s")
    book_g = res.get(BOOK, {}).get("generate", {}).get("chars_per_s")
    ref_samples = res.get(REFERENCE, {}).get("train", {}).get("samples", [])
    for s in subjects:
        if "train" in res[s]:
            t = res[s]["train"]
            t["ratio_to_reference"] = _ratio(t["tokens_per_s"], ref_t)
            # the same ratio from each round's pair (both measured within seconds of each
            # other), then the median: less sensitive to a busy round than medians' ratio
            pairs = [a / b for a, b in zip(t["samples"], ref_samples, strict=False) if b]
            t["paired_ratio_median"] = float(np.median(pairs)) if pairs else None
        if "generate" in res[s]:
            g = res[s]["generate"]
            g["ratio_to_reference"] = _ratio(g["chars_per_s"], ref_g)
            g["ratio_to_book"] = _ratio(g["chars_per_s"], book_g)


def _memory_part(cfg: BenchConfig, st: BenchSettings, res: dict, log) -> None:
    """One fresh process per (subject, method); two at a time (memory is not timing)."""
    from concurrent.futures import ThreadPoolExecutor

    log(f"[{cfg.name}] memory: one fresh process per subject")
    jobs = [(s, "memory", False) for s in st.subjects]
    jobs += [("numpy", "memory_tracemalloc", True)] if "numpy" in st.subjects else []

    def measure(job) -> dict:
        subject, _, traced = job
        w = Worker(st.threads)
        try:
            r = w.ask(op="setup", subject=subject, config=asdict(cfg), seed=st.seed,
                      warmup_tiny=True)
            if "error" not in r:
                r = w.ask(op="memory", steps=st.memory_steps, tracemalloc=traced)
        finally:
            w.close()
        return r

    with ThreadPoolExecutor(max_workers=2) as pool:
        replies = list(pool.map(measure, jobs))
    for (subject, key, _), r in zip(jobs, replies, strict=True):
        res[subject][key] = {"peak_mb": r.get("peak_mb"), "method": r.get("method"),
                             "steps": st.memory_steps, "error": r.get("error"),
                             "torch_imported": r.get("torch_imported")}
    ref = res.get(REFERENCE, {}).get("memory", {}).get("peak_mb")
    book = res.get(BOOK, {}).get("memory", {}).get("peak_mb")
    for s in st.subjects:
        m = res[s].get("memory")
        if m is not None:
            m["ratio_to_reference"] = _ratio(m["peak_mb"], ref)
            m["ratio_to_book"] = _ratio(m["peak_mb"], book)


# -- targets and the table -------------------------------------------------------------------------

TARGETS = (
    # (config, subject, part, key, comparison, threshold, description)
    ("book", "numpy", "train", "ratio_to_reference", ">=", 1.25,
     "book fp32: numpy tokens/s >= 1.25x torch.nn.RNN"),
    ("book", "torch", "train", "ratio_to_reference", ">=", 1.25,
     "book fp32: torch tokens/s >= 1.25x torch.nn.RNN"),
    ("book", "torch-bf16", "train", "ratio_to_reference", ">=", 2.5,
     "book bf16: torch-bf16 tokens/s >= 2.5x torch.nn.RNN (float32)"),
    ("large", "numpy", "train", "ratio_to_reference", ">=", 1.1,
     "large: numpy tokens/s >= 1.1x torch.nn.RNN"),
    ("large", "torch", "train", "ratio_to_reference", ">=", 1.1,
     "large: torch tokens/s >= 1.1x torch.nn.RNN"),
    ("book", "numpy", "generate", "ratio_to_reference", ">=", 2.0,
     "generation: numpy chars/s >= 2x torch.nn.RNN stepping (no_grad)"),
    ("book", "numpy", "generate", "ratio_to_book", ">=", 10.0,
     "generation: numpy chars/s >= 10x the book's predict_ch8"),
    ("book", "torch", "generate", "ratio_to_reference", ">=", 2.0,
     "generation: torch chars/s >= 2x torch.nn.RNN stepping (no_grad)"),
    ("book", "torch", "generate", "ratio_to_book", ">=", 10.0,
     "generation: torch chars/s >= 10x the book's predict_ch8"),
    ("long", "numpy", "memory", "ratio_to_book", "<=", 1 / 3,
     "long: numpy peak memory <= 1/3 of the book's autograd model"),
)


def evaluate_targets(out: dict) -> list[dict]:
    rows = []
    for cfg, subject, part, key, cmp, threshold, text in TARGETS:
        value = out["results"].get(cfg, {}).get(subject, {}).get(part, {}).get(key)
        met = None if value is None else (value >= threshold if cmp == ">=" else
                                          value <= threshold)
        rows.append({"target": text, "config": cfg, "subject": subject, "part": part,
                     "value": value, "threshold": threshold, "comparison": cmp, "met": met})
    return rows


def _fmt(x: float | None, spec: str = ",.0f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def format_table(out: dict) -> str:
    """The results as a text table per configuration, then the targets."""
    lines = []
    m = out["machine"]
    lines.append(f"bptt bench on {m.get('cpu', '?')} ({m['cores']} cores), numpy {m['numpy']} "
                 f"({m.get('numpy_blas', '?')}), torch {m.get('torch', '-')}; "
                 f"{'quick; ' if out['settings']['quick'] else ''}"
                 f"{out['settings']['worker_threads']} thread(s) per worker; "
                 f"medians of {out['settings']['repeats']} interleaved rounds; load average "
                 f"{m.get('loadavg_before')} before, {m.get('loadavg_after')} after")
    head = (f"{'subject':<15} {'train tok/s':>12} {'x nn.RNN':>9} {'gen char/s':>11} "
            f"{'x nn.RNN':>9} {'x book':>7} {'peak MiB':>9} {'x book':>7}")
    for name, cfg in out["configs"].items():
        lines.append("")
        lines.append(f"{name}: V={cfg['vocab']} H={cfg['hidden']} B={cfg['batch']} "
                     f"T={cfg['steps']}  {cfg['note']}")
        lines.append(head)
        for s, r in out["results"][name].items():
            t, g, mem = r.get("train", {}), r.get("generate", {}), r.get("memory", {})
            peak = _fmt(mem.get("peak_mb"), ".1f")
            if "memory_tracemalloc" in r and r["memory_tracemalloc"].get("peak_mb") is not None:
                peak += f" ({r['memory_tracemalloc']['peak_mb']:.1f}t)"
            lines.append(
                f"{s:<15} {_fmt(t.get('tokens_per_s')):>12} "
                f"{_fmt(t.get('ratio_to_reference'), '.2f'):>9} "
                f"{_fmt(g.get('chars_per_s')):>11} {_fmt(g.get('ratio_to_reference'), '.2f'):>9} "
                f"{_fmt(g.get('ratio_to_book'), '.1f'):>7} {peak:>9} "
                f"{_fmt(mem.get('ratio_to_book'), '.2f'):>7}")
            errors = {p: r[p]["error"] for p in ("train", "generate", "memory")
                      if r.get(p, {}).get("error")}
            for p, e in errors.items():
                lines.append(f"{'':<15} {p}: {e}")
    lines.append("")
    lines.append("peak MiB: resident growth over the post-setup baseline (fresh process); "
                 "(..t): NumPy's tracemalloc peak")
    lines.append("targets:")
    for t in out.get("targets", []):
        state = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        lines.append(f"  {t['target']:<66} {_fmt(t['value'], '.2f'):>6}  {state}")
    return "\n".join(lines)


# -- profiles and matrix-product rates (benchmarks/, docs/performance.md) -------------------------

def profile_step(subject: str, cfg: BenchConfig, steps: int = 5, top: int = 12) -> str:
    """cProfile of ``steps`` training steps of one subject (after one warm-up step)."""
    import cProfile
    import io
    import pstats

    sub = make_subject(subject, cfg)
    sub.train(1)
    prof = cProfile.Profile()
    prof.enable()
    sub.train(steps)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def torch_profile_step(subject: str, cfg: BenchConfig, steps: int = 3, top: int = 12) -> str:
    """torch.profiler's operator summary of ``steps`` training steps of a torch subject."""
    from torch.profiler import ProfilerActivity, profile

    sub = make_subject(subject, cfg)
    sub.train(1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sub.train(steps)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def _rate(fn, flop: float, min_seconds: float = 0.2) -> float:
    fn()
    n, elapsed = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return flop * n / elapsed / 1e9
        n *= 2


def gemm_shapes(cfg: BenchConfig) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the products one training step of the book's model is made of."""
    H, B, T, V = cfg.hidden, cfg.batch, cfg.steps, cfg.vocab
    return {
        "step (B,H)x(H,H)": (B, H, H),
        "weight grad (H,TB)x(TB,H)": (H, T * B, H),
        "head (TB,H)x(H,V)": (T * B, H, V),
        "generation (1,H)x(H,H)": (1, H, H),
    }


def gemm_rates(cfg: BenchConfig, with_torch: bool = True, min_seconds: float = 0.2) -> dict:
    """GFLOP/s of each product of :func:`gemm_shapes`, ``a (m, k) @ b (k, n)``.

    ``numpy_fp32``: NumPy's matmul (its BLAS). ``torch_fp32``: torch.mm (torch's CPU BLAS,
    MKL), what torch.nn.RNN uses. ``onednn_fp32``: torch's oneDNN linear, what the torch
    engine uses for float32 on the CPU; ``onednn_fp32_packed``: the same with the weight
    reordered once (the per-step products). ``torch_bf16``: torch.mm on bfloat16 operands;
    ``onednn_bf16_packed``: oneDNN with a reordered bfloat16 weight (the bf16 engine's steps).
    """
    rng = np.random.default_rng(0)
    rates = {}
    if with_torch:
        import torch

        from .engine.torch.common import linear, pack

        _set_torch_threads()
    for name, (m, k, n) in gemm_shapes(cfg).items():
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        flop = 2.0 * m * k * n
        row = {"shape": [m, k, n],
               "numpy_fp32": _rate(lambda a=a, b=b, c=c: np.matmul(a, b, out=c), flop,
                                   min_seconds)}
        if with_torch:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            tc = torch.empty(m, n)
            w = tb.t().contiguous()                      # (n, k): a linear's weight
            row["torch_fp32"] = _rate(lambda ta=ta, tb=tb, tc=tc: torch.mm(ta, tb, out=tc),
                                      flop, min_seconds)
            row["onednn_fp32"] = _rate(lambda ta=ta, w=w: linear(ta, w), flop, min_seconds)
            wp = pack(w, m)
            row["onednn_fp32_packed"] = _rate(lambda ta=ta, wp=wp: linear(ta, wp), flop,
                                              min_seconds)
            ha, hb = ta.bfloat16(), tb.bfloat16()
            row["torch_bf16"] = _rate(lambda ha=ha, hb=hb: torch.mm(ha, hb), flop, min_seconds)
            hp = pack(w.bfloat16(), m)
            row["onednn_bf16_packed"] = _rate(lambda ha=ha, hp=hp: linear(ha, hp), flop,
                                              min_seconds)
        rates[name] = row
    return rates


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        sys.exit(worker_main())
    from .cli import main as _cli_main

    sys.exit(_cli_main(["bench", *sys.argv[1:]]))
