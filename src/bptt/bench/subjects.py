"""The subjects of ``bptt bench``, all the language model of a configuration: its cell and layers
over one-hot characters, or over an embedding for a word model; a linear head, softmax
cross-entropy, SGD with the gradient norm clipped at 1 (our engines may run another cell of the
registry in the book's configurations: ``--cell``):

  EngineSubject    one of our engines, through the library code ``bptt train`` uses (float32,
                   or bf16 products: numpy-bf16, torch-bf16)
  ModuleSubject    a recurrent torch.nn.Module (torch.nn.Embedding in front of a word model,
                   one-hot inputs otherwise) + torch.nn.Linear, torch.optim.SGD,
                   clip_grad_norm_: torch.nn.RNN/LSTM/GRU (the reference, written here
                   independently of our engines) or bptt.nn's drop-in module of the same name
  BookSubject      the book's from-scratch RNN loop (d2l 8.5), its grad_clipping, sgd,
                   predict_ch8 (the book's one-layer character configurations only)

Each has ``train(n)`` (n whole training steps on a fixed batch, the state carried and detached
between them; returns the last loss) and ``generate(n)`` (n characters of greedy generation at
batch 1). torch is imported by the torch subjects only.
"""

from __future__ import annotations

import numpy as np

from .settings import (
    BF16_SUBJECTS,
    BOOK,
    ENGINE_SUBJECTS,
    MODULE_SUBJECTS,
    SUBJECTS,
    BenchConfig,
    threads,
)

ALPHABET = "abcdefghijklmnopqrstuvwxyz "            # with <unk>: the book's 28 characters
PREFIX = "time traveller "


def _data(cfg: BenchConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random batch of token ids X and its targets Y, (B, T) each."""
    rng = np.random.default_rng([seed, cfg.hidden, cfg.batch, cfg.steps])
    X = rng.integers(0, cfg.vocab, (cfg.batch, cfg.steps))
    Y = np.concatenate([X[:, 1:], rng.integers(0, cfg.vocab, (cfg.batch, 1))], axis=1)
    return X, Y


def _vocab():
    from ..data import Vocab

    return Vocab(list(ALPHABET))


def set_torch_threads() -> None:
    """Every pool of this worker (torch's, the BLAS's, the kernel's) at :func:`threads`."""
    import torch  # noqa: F401 (imported first: set_threads sets its pool too)

    from ..engine.threads import set_threads

    set_threads(threads())


class EngineSubject:
    """One of our engines, trained and sampled through the library code ``bptt train`` uses."""

    def __init__(self, engine: str, cfg: BenchConfig, seed: int = 0, precision: str = "fp32",
                 cell: str = "rnn"):
        from .. import optim
        from ..engine import get_engine
        from ..engine.threads import set_threads
        from ..model import ModelSpec, init_params

        if engine != "numpy":
            set_torch_threads()
        else:
            set_threads(threads())
        self.name, self.cfg = engine, cfg
        self.spec = ModelSpec(cell=cell, input_size=cfg.vocab, hidden_size=cfg.hidden,
                              output_size=cfg.vocab, num_layers=cfg.layers,
                              embedding_size=cfg.embedding, task="lm")
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
        from ..lm.generate import LanguageModel, generate

        model = LanguageModel(self.spec, self.engine.to_numpy(self.params), _vocab())
        return generate(model, PREFIX, n, engine=self.name, device="cpu")


class ModuleSubject:
    """A recurrent nn.Module (torch.nn's, or bptt.nn's of the same name: ``package``) behind
    torch.nn.Embedding (a word model) or on one-hot inputs, + torch.nn.Linear,
    torch.optim.SGD, clip_grad_norm_; the state carried and detached between batches. Both
    packages draw the same initial parameters from one seed."""

    def __init__(self, cfg: BenchConfig, package: str = "torch.nn", seed: int = 0):
        import importlib

        import torch

        set_torch_threads()
        self.torch, self.cfg = torch, cfg
        nn = importlib.import_module(package)
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(cfg.vocab, cfg.embedding) if cfg.embedding else None
        self.rnn = getattr(nn, cfg.module)(cfg.embedding or cfg.vocab, cfg.hidden, cfg.layers)
        self.head = torch.nn.Linear(cfg.hidden, cfg.vocab)
        self.params = [*self.rnn.parameters(), *self.head.parameters()]
        if self.embed is not None:
            self.params += list(self.embed.parameters())
        self.opt = torch.optim.SGD(self.params, lr=1.0)
        X, Y = _data(cfg, seed)
        self.X, self.Y = torch.as_tensor(X), torch.as_tensor(Y)
        self.state = self.zeros(cfg.batch)

    def zeros(self, batch: int):
        """The zero state: (L, B, H), the LSTM's pair of them."""
        h = self.torch.zeros(self.cfg.layers, batch, self.cfg.hidden)
        return (h, h.clone()) if self.cfg.module == "LSTM" else h

    @staticmethod
    def detach(state):
        return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()

    def inputs(self, ids):
        """(T, B) ids as the module's input: embedded rows, or one-hot vectors."""
        if self.embed is not None:
            return self.embed(ids)
        return self.torch.nn.functional.one_hot(ids, self.cfg.vocab).float()

    def train(self, n: int) -> float:
        torch, F, H = self.torch, self.torch.nn.functional, self.cfg.hidden
        loss = None
        for _ in range(n):
            out, state = self.rnn(self.inputs(self.X.T), self.state)  # (T, B, H)
            logits = self.head(out.reshape(-1, H))
            loss = F.cross_entropy(logits, self.Y.T.reshape(-1))
            self.opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.state = self.detach(state)
        return float(loss.detach()) if loss is not None else 0.0

    def generate(self, n: int) -> str:
        torch = self.torch
        vocab = _vocab()
        with torch.no_grad():
            ids = torch.as_tensor(vocab.encode(list(PREFIX)))
            out, state = self.rnn(self.inputs(ids[:, None]), self.zeros(1))
            nxt = int(self.head(out[-1]).argmax())
            chosen = []
            for _ in range(n):                                       # one character at a time
                chosen.append(nxt)
                out, state = self.rnn(self.inputs(torch.tensor([[nxt]])), state)
                nxt = int(self.head(out[0]).argmax())
        return PREFIX + "".join(vocab.idx_to_token[i] for i in chosen)


class BookSubject:
    """The book's from-scratch model (d2l 8.5), its grad_clipping and sgd, and predict_ch8."""

    def __init__(self, cfg: BenchConfig, seed: int = 0):
        import torch

        set_torch_threads()
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


def make_subject(name: str, cfg: BenchConfig, seed: int = 0, cell: str = "rnn"):
    """A subject by name; ``cell`` is the cell our engines run (a module runs its own)."""
    if name in ENGINE_SUBJECTS:
        return EngineSubject(name, cfg, seed, cell=cell)
    if name in BF16_SUBJECTS:
        return EngineSubject(BF16_SUBJECTS[name], cfg, seed, precision="bf16", cell=cell)
    if name in MODULE_SUBJECTS:
        return ModuleSubject(cfg, name.rsplit(".", 1)[0], seed)
    if name == BOOK:
        if not cfg.takes(BOOK):
            raise ValueError(f"expected a one-layer character RNN for the book's model, got "
                             f"configuration {cfg.name!r} ({cfg.cell}, {cfg.layers} layers)")
        return BookSubject(cfg, seed)
    raise ValueError(f"expected a subject among {', '.join(SUBJECTS)}, got {name!r}")

