"""Train a language model: the book's ``train_ch8``, as a resumable, engine-agnostic loop.

``_train`` reads top to bottom in stages: settings -> data -> model -> resume -> epochs (batches
-> loss and BPTT -> clip -> step, from bptt/training.py) -> evaluation, metrics -> checkpoints
-> samples -> plots; what the stages share is one ``_Run``. Randomness is derived from (seed, epoch,
batch), so a run resumed from any checkpoint, even one written inside an epoch, continues
exactly as the uninterrupted run would have.

Launched by torchrun, each process is one data-parallel rank: the hooks ``dist.*`` (from
lm/distributed.py) give it its rows of every batch, average gradients and loss over the ranks,
agree on Ctrl-C, and leave all writing and printing to rank 0. In one process they do nothing.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint as ck
from .. import memory, optim, rundir, training
from .. import tensorboard as tb
from ..data import (
    DataError,
    Vocab,
    batches,
    check_batchable,
    corpus_name,
    line_range,
    load_corpus,
    resolve,
    resolve_normalization,
    sha1_of,
    split_tokens,
)
from ..engine import get_engine
from ..engine.threads import set_threads
from ..errors import Diverged, StopFlag
from ..jsonl import json_line
from ..model import DROPOUT_MODES, ModelSpec, init_params
from . import distributed
from .config import RANGES, TrainConfig
from .evaluate import evaluate_tokens
from .generate import LanguageModel, generate

# An epoch whose mean loss exceeds this many times ln V (the loss of guessing uniformly among V
# tokens) has diverged even when still finite: with tanh saturating, a huge learning rate drives
# the loss to millions of nats without ever producing a NaN.
DIVERGED_LOSS_FACTOR = 100.0


@dataclass
class TrainResult:
    out: Path
    epochs: int
    metrics: list = field(default_factory=list)
    sample: str = ""
    interrupted: bool = False

    @property
    def last(self) -> dict:
        return self.metrics[-1] if self.metrics else {}


def uses_eos(cfg: TrainConfig) -> bool:
    """Whether the run's tokens end every line with <eos> (word tokenisation, --eos)."""
    return cfg.eos and cfg.tokenization == "word"


def load_data(cfg: TrainConfig, vocab=None):
    """Token ids for training and validation, and the vocabulary (built from the training text;
    for words, from the training tokens alone: a word met only in validation is <unk>)."""
    eos = uses_eos(cfg)
    ids, vocab = load_corpus(resolve(cfg.data), cfg.normalization, cfg.tokenization,
                             cfg.max_tokens, vocab=vocab, min_freq=cfg.min_freq, eos=eos,
                             max_vocab=cfg.max_vocab, lines=line_range(cfg.data),
                             held_out=0.0 if cfg.val_data else cfg.val_frac)
    if cfg.val_data:
        val, _ = load_corpus(resolve(cfg.val_data), cfg.normalization, cfg.tokenization,
                             None, vocab=vocab, eos=eos, lines=line_range(cfg.val_data))
        train_ids = ids
    else:
        train_ids, val = split_tokens(ids, cfg.val_frac)
    check_batchable(train_ids.size, cfg.batch_size, cfg.num_steps)
    return train_ids, val, vocab


DATA_KEYS = ("data", "val_data")


def _absolute(data: str | None) -> str | None:
    """A file path as an absolute one (a resume may run from another folder); corpus names and
    None unchanged."""
    if data is None or corpus_name(data) is not None:
        return data
    return str(Path(data).expanduser().resolve())


def data_digests(cfg: TrainConfig) -> dict[str, str]:
    """SHA-1 of the training (and validation) text, kept in the checkpoint: a resume must read
    the bytes the run was trained on."""
    return {k: sha1_of(resolve(getattr(cfg, k))) for k in DATA_KEYS if getattr(cfg, k)}


def relocate_data(cfg: TrainConfig, saved: dict,
                  moved: dict) -> tuple[TrainConfig, dict[str, str]]:
    """On resume: the checkpoint's data files, or ``moved`` ({"data": path, ...}) in their
    place, each checked against the SHA-1 ``saved`` with the run (when it has one). Returns
    the config and the files' digests (as ``data_digests``)."""
    cfg = replace(cfg, **{k: _absolute(v) for k, v in moved.items() if k in DATA_KEYS})
    digests = {}
    for key in DATA_KEYS:
        value = getattr(cfg, key)
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        try:
            path = resolve(value)
        except DataError as e:
            raise DataError(f"{e}; the run was trained on it: give its new place with "
                            f"--resume {flag} PATH") from None
        digests[key] = got = sha1_of(path)
        want = saved.get(key)
        if want and got != want:
            raise ck.CheckpointError(
                f"expected {flag} to be the text this run was trained on (SHA-1 {want}), got "
                f"{path} with SHA-1 {got}; train a new run (another --out) on changed text")
    return cfg, digests


def _trim_metrics(path: Path, epoch: int, metrics: list) -> None:
    """On resume: metrics.jsonl without the lines of epochs after the checkpoint's ``epoch``
    (a process killed between writing them and the checkpoint), or rebuilt from the
    checkpoint's epoch records when the file is gone."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else [
        json_line(m).rstrip("\n") for m in metrics]
    kept = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue                                  # a line cut short by the kill
        if isinstance(rec, dict) and int(rec.get("epoch", 0)) <= epoch:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(path)


def embedding_size(cfg: TrainConfig) -> int | None:
    """The run's embedding size: --embedding-size, or for --tie-weights alone the head's input
    size (the projection P, else the hidden size H), which a tied embedding must have; None:
    one-hot input."""
    if cfg.embedding_size is None and cfg.tie_weights:
        return cfg.proj_size or cfg.hidden_size
    return cfg.embedding_size


def build_spec(cfg: TrainConfig, vocab_size: int) -> ModelSpec:
    """The model of a run. Dropout goes where its input decides: with an embedding on every
    non-recurrent connection (Zaremba et al.: the embedding's output, between the layers and
    before the head), with the book's one-hot input between the layers only (torch.nn's)."""
    E = embedding_size(cfg)
    return ModelSpec(cell=cfg.cell, input_size=vocab_size, hidden_size=cfg.hidden_size,
                     output_size=vocab_size, num_layers=cfg.num_layers,
                     nonlinearity=cfg.nonlinearity, dropout=cfg.dropout, task="lm",
                     proj_size=cfg.proj_size, embedding_size=E, tie_weights=cfg.tie_weights,
                     dropout_placement="between-layers" if E is None else "non-recurrent",
                     dropout_mode=cfg.dropout_mode)


def _validate(cfg: TrainConfig) -> None:
    if cfg.partition not in ("sequential", "random"):
        raise ValueError(f"expected partition 'sequential' or 'random', got {cfg.partition!r}")
    if cfg.clip_mode not in ("norm", "value"):
        raise ValueError(f"expected clip mode 'norm' or 'value', got {cfg.clip_mode!r}")
    if cfg.dropout_mode not in DROPOUT_MODES:
        raise ValueError(f"expected dropout mode one of {', '.join(DROPOUT_MODES)}, got "
                         f"{cfg.dropout_mode!r}")
    for name, rng in RANGES.items():                 # finite and in range (NaN never is)
        rng.check(name, getattr(cfg, name))
    if cfg.proj_size:                                # a cell that projects, P < H: the spec's
        ModelSpec(cell=cfg.cell, hidden_size=cfg.hidden_size, proj_size=cfg.proj_size)
    E, head_in = embedding_size(cfg), cfg.proj_size or cfg.hidden_size
    if cfg.tie_weights and E != head_in:
        flag = "--proj-size" if cfg.proj_size else "--hidden-size"
        raise ValueError(f"expected --embedding-size equal to {flag} {head_in} with "
                         f"--tie-weights (the head reads the embedding's matrix), got {E}")
    if cfg.dropout > 0 and cfg.num_layers == 1 and E is None:   # as torch.nn.RNN warns
        warnings.warn(f"dropout {cfg.dropout:g} has no effect with num_layers 1 (dropout acts "
                      f"between stacked layers)", stacklevel=3)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _silent(msg: str) -> None:
    """The log of ranks other than 0."""


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          log: Callable[[str], None] = _log, dist_timeout: float = distributed.DEFAULT_TIMEOUT,
          moved: dict | None = None, tensorboard: str | Path | bool | None = None,
          lr: float | None = None) -> TrainResult:
    """Train per ``cfg``; with ``resume`` continue from ``cfg.out/last.safetensors``, reading
    the data files the run was trained on, or ``moved`` ({"data": path, "val_data": path}) when
    they have moved (the same bytes: SHA-1 checked), at the learning rate the checkpoint holds,
    or ``lr`` from now on when given (the schedule goes on from it).

    A new run refuses a folder that already holds one, unless ``overwrite``: then the earlier
    run is moved aside once this run's first step has run (bptt/rundir.py). The folder's lock
    is held for the whole run; every check happens before anything on disk changes.

    Under torchrun (WORLD_SIZE > 1) this process is one data-parallel rank of the run, and a
    collective waits at most ``dist_timeout`` seconds for its peers (see lm/distributed.py).

    ``tensorboard``: also write TensorBoard event files, to ``OUT/tensorboard`` (True) or to
    that folder (bptt/tensorboard.py; rank 0 alone).
    """
    _validate(cfg)
    if lr is not None:
        RANGES["lr"].check("lr", lr)
    cfg = replace(cfg, normalization=resolve_normalization(cfg.normalization, cfg.data))
    board = tb.open_log(cfg.out, tensorboard) if distributed.is_main() else None
    folder = rundir.RunFolder(cfg.out, verb="train", resume=resume, overwrite=overwrite,
                              writer=distributed.is_main(), log=log)
    with folder.locked(), distributed.session(cfg.engine, cfg.device, dist_timeout) as dist:
        try:
            return _train(cfg, resume, log if dist.is_main else _silent, dist, moved or {},
                          folder, board, lr)
        finally:
            if board is not None:
                board.close()


@dataclass
class _Run:
    """What the stages of one run share: its settings, model, optimiser and metrics so far."""

    cfg: TrainConfig
    dist: distributed.Single
    log: Callable[[str], None]
    spec: ModelSpec
    vocab: Vocab
    engine: Any
    opt: Any
    digests: dict[str, str]                         # SHA-1 of the data files (checkpoint)
    folder: rundir.RunFolder                        # --out: locked; created after step one
    params: dict = field(default_factory=dict)      # the engine's arrays
    metrics: list = field(default_factory=list)     # the epoch records so far
    bar: Any = None                                 # the tqdm bar of rank 0, or None
    board: tb.TensorBoardLog | None = None          # --tensorboard (rank 0), or None

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def last_path(self) -> Path:
        return self.out / "last.safetensors"

    @property
    def best_path(self) -> Path:
        return self.out / "best.safetensors"

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"


def _no_partial() -> dict:
    """The running sums of an epoch that has not started: nothing carried over."""
    return {"loss_sum": 0.0, "tokens": 0, "seconds": 0.0, "norms": []}


@dataclass
class _Start:
    """Where the epochs begin: an epoch, the batches of it done before a resume, the state
    they carried out and the epoch's running sums so far."""

    epoch: int = 0
    batch: int = 0
    carried: Any = None
    partial: dict = field(default_factory=_no_partial)


def _train(cfg: TrainConfig, resume: bool, log: Callable[[str], None], dist: distributed.Single,
           moved: dict, folder: rundir.RunFolder, board: tb.TensorBoardLog | None,
           lr: float | None) -> TrainResult:
    """The run, stage by stage; ``dist`` is this process's share of it (lm/distributed.py)."""
    folder.check()                    # --out: a file, or an earlier run not to be replaced
    out = Path(cfg.out)

    # -- settings: the given ones; on resume the checkpoint's own, with the new epoch count -----
    ckpt = _resumable(out / "last.safetensors") if resume else None
    if ckpt is not None:
        cfg, digests = relocate_data(_resumed_config(cfg, ckpt, lr),
                                     ckpt.train.get("data_sha1", {}), moved)
    else:
        cfg = replace(cfg, **{k: _absolute(getattr(cfg, k)) for k in DATA_KEYS})
    dist.check_batch(cfg.batch_size)  # each rank takes batch_size / world_size rows

    # -- data ---------------------------------------------------------------------------------
    train_ids, val_ids, vocab = load_data(cfg, vocab=ckpt.vocab if ckpt else None)
    if ckpt is None:                  # a resume has them from relocate_data
        digests = data_digests(cfg)
    spec = build_spec(cfg, len(vocab))

    # -- model, engine, optimiser -------------------------------------------------------------
    engine = _engine(cfg, spec, dist)
    memory.require(memory.estimate(spec, batch_size=cfg.batch_size // dist.world_size,
                                   num_steps=cfg.num_steps, optimizer=cfg.optimizer,
                                   dtype=cfg.dtype), engine.device,
                   hint="lower --hidden-size, --num-layers, --batch-size or --num-steps")
    run = _Run(cfg, dist, log, spec, vocab, engine, optim.make_optimizer(cfg.optimizer, cfg.lr),
               digests, folder, board=board)

    # -- resume: parameters, optimiser, position and metrics; or a fresh run folder -----------
    start = _restore(run, ckpt, lr) if ckpt is not None else _fresh(run)
    if start.epoch >= cfg.epochs:
        log(f"already trained {start.epoch} epochs (asked for {cfg.epochs}); nothing to do")
        return TrainResult(out, start.epoch, run.metrics)
    best = min((m.get("val_perplexity") or m["perplexity"] for m in run.metrics),
               default=math.inf)
    max_loss = DIVERGED_LOSS_FACTOR * math.log(max(len(vocab), 2))
    run.bar = _progress(cfg, start.epoch) if dist.is_main else None
    result = TrainResult(out, start.epoch, run.metrics)

    # -- epochs (the flag is up before the first line is logged: from then on Ctrl-C saves) ---
    with StopFlag() as flag:
        log(f"training {spec.cell} H={spec.hidden_size} L={spec.num_layers} on "
            f"{train_ids.size:,} tokens (vocab {len(vocab)}), engine {engine.name} on "
            f"{engine.device}{dist.describe()}, epochs {start.epoch + 1}..{cfg.epochs}")
        for epoch in range(start.epoch, cfg.epochs):
            ep = _epoch(run, train_ids, epoch, start, flag)

            # -- a diverged loss: keep the epoch's starting point, stop loudly ---------------
            if not training.sound(ep.loss_sum / max(ep.tokens, 1), max_loss, run.params):
                raise _diverged(run, epoch, ep, max_loss)
            if dist.agree_stop(flag.stop):
                _interrupted(run, epoch, ep)
                result.interrupted = True
                break

            # -- evaluation, metrics --------------------------------------------------------
            record = _evaluate(run, epoch, ep, val_ids)

            # -- checkpoints ----------------------------------------------------------------
            _save(run, run.last_path, epoch + 1, 0)
            score = record.get("val_perplexity", record["perplexity"])
            if score < best:
                best = score
                _save(run, run.best_path, epoch + 1, 0)
            result.epochs = epoch + 1

            # -- progress, samples (and the plots so far) -----------------------------------
            _report(run, epoch, record, start.epoch, result)

    # -- plots --------------------------------------------------------------------------------
    if run.bar is not None:
        run.bar.close()
    if run.metrics and dist.is_main:
        _plot(run.metrics, out, cfg)
    result.metrics = run.metrics
    return result


def _engine(cfg: TrainConfig, spec: ModelSpec, dist):
    """The run's engine, and every thread pool at ``cfg.threads`` (torch's too, imported by
    the engine)."""
    engine = get_engine(cfg.engine, spec, device=dist.device or cfg.device, dtype=cfg.dtype,
                        precision=cfg.precision)
    set_threads(cfg.threads)
    return engine


# -- settings and resume ------------------------------------------------------------------------
def _resumable(last_path: Path) -> ck.Checkpoint:
    """The checkpoint a resume continues: a language-model training checkpoint, or an error."""
    if not last_path.is_file():
        raise ck.CheckpointError(
            f"expected {last_path} to resume from, found none (train without --resume "
            f"first, or pass the run's --out)"
        )
    ckpt = ck.load(last_path, prefer="last")
    missing = [what for what, ok in (("a vocabulary", ckpt.vocab is not None),
                                     ("a training position", "epoch" in ckpt.train),
                                     ("a training config", bool(ckpt.config))) if not ok]
    if ckpt.spec.task != "lm" or missing:
        raise ck.CheckpointError(
            f"expected a language-model training checkpoint in {last_path}, got task "
            f"{ckpt.spec.task!r}" + (f" without {', '.join(missing)}" if missing else "")
        )
    return ckpt


def _resumed_config(cfg: TrainConfig, ckpt: ck.Checkpoint, lr: float | None) -> TrainConfig:
    """The checkpoint's config, with the epochs, folder, progress, device, engine and threads
    asked for now (and the learning rate, when one is given)."""
    now = {"epochs": cfg.epochs, "out": str(Path(cfg.out)), "progress": cfg.progress,
           "device": cfg.device, "engine": cfg.engine, "threads": cfg.threads,
           **({} if lr is None else {"lr": lr})}
    return TrainConfig.from_dict({**ckpt.config, **now})


def _restore(run: _Run, ckpt: ck.Checkpoint, lr: float | None = None) -> _Start:
    """The checkpoint's parameters, optimiser, carried state (this rank's rows) and metrics
    into ``run``; metrics.jsonl trimmed to them. Returns where the epochs continue. The
    learning rate is the checkpoint's, or ``lr`` when given."""
    if ckpt.spec != run.spec:
        raise ck.CheckpointError(f"checkpoint model {ckpt.spec} does not match {run.spec}")
    run.params = run.engine.from_numpy(ckpt.params)
    t = ckpt.train
    run.opt.lr = float(t.get("lr", run.cfg.lr)) if lr is None else lr
    if lr is not None:
        run.log(f"lr {lr:g} from now on (the checkpoint's was {float(t.get('lr', lr)):g})")
    training.restore_optimizer(run.engine, run.opt, ckpt)
    saved = run.dist.state_rows(ckpt.state)   # the global state, this rank's rows of it
    start = _Start(int(t["epoch"]), int(t.get("batch", 0)),
                   training.state_from_parts(run.engine, run.spec.cell, saved),
                   t.get("partial", _no_partial()))
    run.metrics = list(ckpt.metrics)
    if run.dist.is_main:
        _trim_metrics(run.metrics_path, start.epoch, run.metrics)
    if run.board is not None:         # TensorBoard drops the events past the checkpoint
        run.board.purge_step = sum(m["steps"] for m in run.metrics) + 1
    return start


def _fresh(run: _Run) -> _Start:
    """Parameters drawn from the seed; the run folder is made after the first step
    (:meth:`bptt.rundir.RunFolder.create`), so nothing on disk changes before it."""
    cfg = run.cfg
    run.params = run.engine.from_numpy(init_params(run.spec, cfg.init,
                                                   np.random.default_rng([cfg.seed, 0]),
                                                   dtype=cfg.dtype, scale=cfg.init_scale))
    return _Start()


# -- one epoch: the book's train_epoch_ch8 ------------------------------------------------------
@dataclass
class _Epoch:
    """What one epoch leaves: its running sums (continued from ``partial`` when it resumed
    after ``skip`` batches), the state it ended in and its starting point."""

    skip: int                      # batches done before this process began the epoch
    partial: dict                  # the running sums as they were then
    begun: training.Snapshot       # parameters, optimiser and state at that point
    loss_sum: Any = 0.0            # on the device until the epoch ends
    tokens: int = 0
    seconds: float = 0.0
    norms: list = field(default_factory=list)   # (before, after-or-None) per step, on device
    state: Any = None
    batches: int = 0               # batches done when the epoch stopped (its index + 1)


def _epoch(run: _Run, ids: np.ndarray, epoch: int, start: _Start, flag: StopFlag) -> _Epoch:
    """Batches -> loss and BPTT -> clip -> step, over one epoch (the batches a resumed run
    had done skipped, its carried state and sums taken up). Stops early after the batch in
    which the ranks agree on Ctrl-C."""
    cfg, dist, engine = run.cfg, run.dist, run.engine
    batch_rng = np.random.default_rng([cfg.seed, 1, epoch])
    skip = start.batch if epoch == start.epoch else 0
    state = start.carried if skip else None
    part = start.partial if skip else _no_partial()
    loss_sum, n_tok = part["loss_sum"], part["tokens"]
    norms = [(b, a) for b, a in part.get("norms", [])]   # steps before an interruption
    begun = training.Snapshot.take(run.params, run.opt, state)
    t0 = time.perf_counter()
    i = -1
    for i, (X, Y) in enumerate(batches(ids, cfg.batch_size, cfg.num_steps, cfg.partition,
                                       batch_rng)):
        if i < skip:
            continue
        X, Y = dist.rows(X), dist.rows(Y)                # this rank's rows
        if state is None or cfg.partition == "random":
            state = engine.begin_state(X.shape[0])       # fresh state (B, H)
        else:
            state = engine.detach_state(state)            # carried, gradient stopped
        loss, grads, state = engine.loss_and_grads(
            run.params, X, Y, state, truncate=cfg.truncate, training=True,
            rng=np.random.default_rng([cfg.seed, 2, epoch, i, *dist.rng_key]))
        loss = dist.average(grads, loss)                  # global means, before clipping
        if run.board is not None:
            run.board.collect(grads)                      # per-parameter norms, unclipped
        norms.append(training.clip_and_step(run.opt, run.params, grads, cfg.clip,
                                            cfg.clip_mode))
        if run.folder.create():                           # the first step ran: the new
            run.metrics_path.write_text("")               # run's folder, now
        tokens = X.size * dist.world_size                 # the global batch's
        loss_sum = loss_sum + loss * tokens               # on the device: no sync
        n_tok += tokens
        if run.bar is not None:
            run.bar.set_postfix_str(f"batch {i + 1}", refresh=False)
        if dist.agree_stop(flag.stop):                    # all ranks stop together
            break
    seconds = part["seconds"] + (time.perf_counter() - t0)
    return _Epoch(skip, part, begun, engine.scalar(loss_sum), n_tok, seconds, norms, state,
                  i + 1)


def _diverged(run: _Run, epoch: int, ep: _Epoch, max_loss: float) -> Diverged:
    """The epoch's starting point back in place and saved as last.safetensors; the error."""
    state = ep.begun.restore(run.params, run.opt)
    _save(run, run.last_path, epoch, ep.skip, state, ep.partial if ep.skip else None)
    where = f"start of epoch {epoch + 1}" + (f", batch {ep.skip}" if ep.skip else "")
    return Diverged(
        f"loss became {ep.loss_sum / max(ep.tokens, 1):.4g} in epoch {epoch + 1} (diverged: "
        f"expected a finite loss below {max_loss:.4g} = {DIVERGED_LOSS_FACTOR:g} x ln V); the "
        f"last sound parameters ({where}) are in {run.last_path}; lower --lr or set --clip"
    )


def _interrupted(run: _Run, epoch: int, ep: _Epoch) -> None:
    """Ctrl-C: the position inside the epoch, its carried state and sums saved."""
    _save(run, run.last_path, epoch, ep.batches, ep.state,
          {"loss_sum": ep.loss_sum, "tokens": ep.tokens, "seconds": ep.seconds,
           "norms": training.host_norms(run.engine, ep.norms)})
    run.log(f"interrupted in epoch {epoch + 1} after batch {ep.batches}; saved "
            f"{run.last_path} (continue with --resume)")


# -- evaluation, metrics ------------------------------------------------------------------------
def _evaluate(run: _Run, epoch: int, ep: _Epoch, val_ids: np.ndarray) -> dict:
    """The epoch's record (training loss, validation when there is a held-out stream), written
    to metrics.jsonl after its step lines; then the seed's lr halving when asked for."""
    cfg, dist = run.cfg, run.dist
    loss = ep.loss_sum / ep.tokens
    record = {"kind": "epoch", "epoch": epoch + 1, "loss": loss,
              "perplexity": math.exp(min(loss, 700.0)),
              "tokens_per_s": ep.tokens / max(ep.seconds, 1e-9), "seconds": ep.seconds,
              "lr": run.opt.lr, "steps": len(ep.norms)}
    steps = [training.norm_record(b, a, cfg.clip, cfg.clip_mode)
             for b, a in training.host_norms(run.engine, ep.norms)] if dist.is_main else []
    if dist.is_main:
        _write_steps(run.metrics_path, epoch, steps)
    if val_ids.size >= 2:  # every rank evaluates the whole stream; rank 0's numbers rule
        val = evaluate_tokens(run.engine, run.params, val_ids, cfg.batch_size, cfg.num_steps)
        record["val_loss"], record["val_perplexity"] = dist.from_main(
            [val["loss"], val["perplexity"]])
    run.metrics.append(record)
    if dist.is_main:
        with run.metrics_path.open("a") as f:
            f.write(json_line(record))
    if run.board is not None:
        first = sum(m["steps"] for m in run.metrics[:-1]) + 1
        run.board.epoch(record, steps, first, run.engine.scalar)
    _schedule(run, epoch)
    return record


def _schedule(run: _Run, epoch: int) -> None:
    """The learning rate of the next epoch: the seed's halving when the monitored loss rose
    (--lr-halving), and Zaremba's decay, lr times F after every epoch from epoch N on
    (--lr-decay F --lr-decay-start N: epochs 1..N at the lr, epoch N + k at lr * F^k)."""
    cfg = run.cfg
    monitored = run.metrics[-1].get("val_loss", run.metrics[-1]["loss"])
    if cfg.lr_halving and len(run.metrics) > 1:
        prev = run.metrics[-2].get("val_loss", run.metrics[-2]["loss"])
        if monitored > prev:
            run.opt.lr *= 0.5
            run.log(f"loss rose ({prev:.4f} -> {monitored:.4f}): lr halved to {run.opt.lr:g}")
    if cfg.lr_decay is not None and epoch + 1 >= cfg.lr_decay_start:
        run.opt.lr *= cfg.lr_decay


def _write_steps(path: Path, epoch: int, steps: list[dict]) -> None:
    """Per-step gradient norms before/after clipping (records of training.norm_record)."""
    with path.open("a") as f:
        for j, record in enumerate(steps):
            f.write(json_line({"kind": "step", "epoch": epoch + 1, "step": j + 1, **record}))


# -- checkpoints --------------------------------------------------------------------------------
def _save(run: _Run, path: Path, epoch: int, batch: int, state: Any = None,
          part: dict | None = None) -> None:
    """A checkpoint at (epoch, batch). Every rank takes part (the carried state is gathered
    from all of them); rank 0 alone writes, and no rank goes on before it has written."""
    state = run.dist.gather_rows(state)
    if run.dist.is_main:
        cfg = run.cfg
        ck.save(training.to_checkpoint(
            run.spec, run.engine, run.params, run.opt, state, vocab=run.vocab,
            text={"normalization": cfg.normalization, "tokenization": cfg.tokenization,
                  "eos": uses_eos(cfg)},
            config=cfg.to_dict(),
            train={"epoch": epoch, "batch": batch, "lr": run.opt.lr, "seed": cfg.seed,
                   "partial": part or _no_partial(), "data_sha1": run.digests},
            metrics=run.metrics), path)
    run.dist.barrier()


# -- progress, samples, plots -------------------------------------------------------------------
def _report(run: _Run, epoch: int, record: dict, first_epoch: int, result: TrainResult) -> None:
    """The epoch's line (on the bar, or logged now and then); every ``sample_every`` epochs a
    greedy sample and the plots so far."""
    cfg, bar = run.cfg, run.bar
    sample_now = cfg.sample_every and ((epoch + 1) % cfg.sample_every == 0
                                       or epoch + 1 == cfg.epochs)
    line = (f"epoch {epoch + 1}/{cfg.epochs}  perplexity {record['perplexity']:.2f}"
            + (f"  val {record['val_perplexity']:.2f}" if "val_perplexity" in record else "")
            + f"  {record['tokens_per_s']:,.0f} tokens/s")
    if bar is not None:
        bar.update(1)
        bar.set_postfix_str(line.split("  ", 1)[1], refresh=True)
    elif sample_now or epoch == first_epoch or epoch + 1 == cfg.epochs:
        run.log(line)
    if sample_now and run.dist.is_main:
        model = LanguageModel(run.spec, run.engine.to_numpy(run.params), run.vocab,
                              cfg.normalization, cfg.tokenization, uses_eos(cfg))
        result.sample = _sample(model, cfg, run.engine.name)
        (bar.write if bar is not None else run.log)(f"  {result.sample}")
        if run.board is not None:
            run.board.text("sample", result.sample, run.board.step)
        _plot(run.metrics, run.out, cfg)


def _sample(model: LanguageModel, cfg: TrainConfig, engine: str) -> str:
    """A greedy continuation of the sample prefix (unknown prefix tokens read as <unk>)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a prefix outside the vocabulary: sample anyway
            return generate(model, cfg.sample_prefix, cfg.sample_length, engine=engine,
                            device=cfg.device)
    except (ValueError, DataError) as e:
        return f"(no sample: {e})"


def _progress(cfg: TrainConfig, start: int):
    use_bar = cfg.progress == "bar" or (cfg.progress == "auto" and sys.stderr.isatty())
    if not use_bar:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.epochs, initial=start, unit="epoch", dynamic_ncols=True)


def _plot(metrics: list, out: Path, cfg: TrainConfig) -> None:
    """perplexity.png, and grad_norms.png: every step's norm before and after clipping."""
    from ..plot import plot_grad_norms, plot_perplexity, read_step_records

    plot_perplexity(metrics, out / "perplexity.png")
    steps = read_step_records(out / "metrics.jsonl")
    if steps:
        plot_grad_norms(steps, out / "grad_norms.png",
                        threshold=training.norm_threshold(cfg.clip, cfg.clip_mode))
