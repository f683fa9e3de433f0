"""Train a language model: the book's ``train_ch8``, as a resumable, engine-agnostic loop.

Read top to bottom: data -> model -> resume -> epochs (batches -> loss and BPTT -> clip -> step)
-> evaluation, metrics, checkpoints, samples, plot. Randomness is derived from (seed, epoch,
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import memory, optim, rundir
from ..data import (
    CORPORA,
    DataError,
    batches,
    check_batchable,
    load_corpus,
    resolve,
    resolve_normalization,
    sha1_of,
    split_tokens,
)
from ..engine import copy_arrays, get_engine
from ..errors import Diverged, StopFlag
from ..jsonl import json_line
from ..model import ModelSpec, init_params
from . import checkpoint as ck
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


def load_data(cfg: TrainConfig, vocab=None):
    """Token ids for training and validation, and the vocabulary (built from the training text)."""
    path = resolve(cfg.data)
    ids, vocab = load_corpus(path, cfg.normalization, cfg.tokenization, cfg.max_tokens,
                             vocab=vocab, min_freq=cfg.min_freq)
    if cfg.val_data:
        val, _ = load_corpus(resolve(cfg.val_data), cfg.normalization, cfg.tokenization,
                             None, vocab=vocab)
        train_ids = ids
    else:
        train_ids, val = split_tokens(ids, cfg.val_frac)
    check_batchable(train_ids.size, cfg.batch_size, cfg.num_steps)
    return train_ids, val, vocab


DATA_KEYS = ("data", "val_data")


def _absolute(data: str | None) -> str | None:
    """A file path as an absolute one (a resume may run from another folder); corpus names and
    None unchanged."""
    if data is None or data in CORPORA:
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


def build_spec(cfg: TrainConfig, vocab_size: int) -> ModelSpec:
    return ModelSpec(cell=cfg.cell, input_size=vocab_size, hidden_size=cfg.hidden_size,
                     output_size=vocab_size, num_layers=cfg.num_layers,
                     nonlinearity=cfg.nonlinearity, dropout=cfg.dropout, task="lm")


def _validate(cfg: TrainConfig) -> None:
    if cfg.partition not in ("sequential", "random"):
        raise ValueError(f"expected partition 'sequential' or 'random', got {cfg.partition!r}")
    if cfg.clip_mode not in ("norm", "value"):
        raise ValueError(f"expected clip mode 'norm' or 'value', got {cfg.clip_mode!r}")
    for name, rng in RANGES.items():                 # finite and in range (NaN never is)
        rng.check(name, getattr(cfg, name))
    if cfg.dropout > 0 and cfg.num_layers == 1:      # as torch.nn.RNN warns
        warnings.warn(f"dropout {cfg.dropout:g} has no effect with num_layers 1 (dropout acts "
                      f"between stacked layers)", stacklevel=3)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _silent(msg: str) -> None:
    """The log of ranks other than 0."""


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, log=_log,
          dist_timeout: float = distributed.DEFAULT_TIMEOUT,
          moved: dict | None = None) -> TrainResult:
    """Train per ``cfg``; with ``resume`` continue from ``cfg.out/last.safetensors``, reading
    the data files the run was trained on, or ``moved`` ({"data": path, "val_data": path}) when
    they have moved (the same bytes: SHA-1 checked).

    A new run refuses a folder that already holds one, unless ``overwrite``: then the earlier
    run is moved aside once this run's first step has run (bptt/rundir.py). The folder's lock
    is held for the whole run; every check happens before anything on disk changes.

    Under torchrun (WORLD_SIZE > 1) this process is one data-parallel rank of the run, and a
    collective waits at most ``dist_timeout`` seconds for its peers (see lm/distributed.py).
    """
    _validate(cfg)
    cfg = replace(cfg, normalization=resolve_normalization(cfg.normalization, cfg.data))
    folder = rundir.RunFolder(cfg.out, verb="train", resume=resume, overwrite=overwrite,
                              writer=distributed.is_main(), log=log)
    with folder.locked(), distributed.session(cfg.engine, cfg.device, dist_timeout) as dist:
        return _train(cfg, resume, log if dist.is_main else _silent, dist, moved or {}, folder)


def _train(cfg: TrainConfig, resume: bool, log, dist: distributed.Single,
           moved: dict, folder: rundir.RunFolder) -> TrainResult:
    folder.check()                    # --out: a file, or an earlier run not to be replaced
    out = Path(cfg.out)
    last_path, best_path, metrics_path = (out / "last.safetensors", out / "best.safetensors",
                                          out / "metrics.jsonl")

    # -- resume: the checkpoint's own config and vocabulary, the new epoch count -----------
    ckpt = None
    if resume:
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
        epochs = cfg.epochs
        cfg = TrainConfig.from_dict({**ckpt.config, "epochs": epochs, "out": str(out),
                                     "progress": cfg.progress, "device": cfg.device,
                                     "engine": cfg.engine})
        cfg, digests = relocate_data(cfg, ckpt.train.get("data_sha1", {}), moved)
    else:
        cfg = replace(cfg, **{k: _absolute(getattr(cfg, k)) for k in DATA_KEYS})

    dist.check_batch(cfg.batch_size)  # each rank takes batch_size / world_size rows

    # -- data -------------------------------------------------------------------------------
    train_ids, val_ids, vocab = load_data(cfg, vocab=ckpt.vocab if ckpt else None)
    if ckpt is None:                  # a resume has them from relocate_data
        digests = data_digests(cfg)
    spec = build_spec(cfg, len(vocab))

    # -- model, engine, optimiser -----------------------------------------------------------
    engine = get_engine(cfg.engine, spec, device=dist.device or cfg.device, dtype=cfg.dtype,
                        precision=cfg.precision)
    memory.require(memory.estimate(spec, batch_size=cfg.batch_size // dist.world_size,
                                   num_steps=cfg.num_steps, optimizer=cfg.optimizer,
                                   dtype=cfg.dtype), engine.device,
                   hint="lower --hidden-size, --num-layers, --batch-size or --num-steps")
    opt = optim.make_optimizer(cfg.optimizer, cfg.lr)
    start_epoch, start_batch, carried, metrics = 0, 0, None, []
    partial = _no_partial()
    if ckpt is not None:
        if ckpt.spec != spec:
            raise ck.CheckpointError(f"checkpoint model {ckpt.spec} does not match {spec}")
        params = engine.from_numpy(ckpt.params)
        t = ckpt.train
        start_epoch, start_batch = int(t["epoch"]), int(t.get("batch", 0))
        opt.lr = float(t.get("lr", cfg.lr))
        # plain array conversions (from_numpy would check the arrays are the model's params)
        opt.state = {k: engine.state_from_numpy(v) for k, v in ckpt.optim.items()}
        opt.state.update(t.get("optim_scalars", {}))
        partial = t.get("partial", partial)
        saved = dist.state_rows(ckpt.state)   # the global state, this rank's rows of it
        carried = engine.state_from_numpy(
            saved if saved is None or spec.cell == "lstm" else saved[0])
        metrics = list(ckpt.metrics)
        if dist.is_main:
            _trim_metrics(metrics_path, start_epoch, metrics)
        if start_epoch >= cfg.epochs:
            log(f"already trained {start_epoch} epochs (asked for {cfg.epochs}); nothing to do")
            return TrainResult(out, start_epoch, metrics)
    else:
        params = engine.from_numpy(init_params(spec, cfg.init, np.random.default_rng([cfg.seed, 0]),
                                               dtype=cfg.dtype))
    lm_numpy = lambda: LanguageModel(spec, engine.to_numpy(params), vocab,  # noqa: E731
                                     cfg.normalization, cfg.tokenization)

    def save(path: Path, epoch: int, batch: int, state=None, part=None) -> None:
        state = dist.gather_rows(state)   # every rank takes part; rank 0 alone writes,
        if dist.is_main:
            write(path, epoch, batch, state, part)
        dist.barrier()                    # and no rank exits before it has written

    def write(path: Path, epoch: int, batch: int, state, part) -> None:
        st = None
        if state is not None:
            st = engine.state_to_numpy(state)
            st = tuple(st) if isinstance(st, tuple) else (st,)
        arrays = {k: v for k, v in opt.state.items() if not isinstance(v, int | float)}
        scalars = {k: v for k, v in opt.state.items() if isinstance(v, int | float)}
        ck.save(ck.Checkpoint(
            spec=spec, params=engine.to_numpy(params), vocab=vocab,
            text={"normalization": cfg.normalization, "tokenization": cfg.tokenization},
            config=cfg.to_dict(),
            train={"epoch": epoch, "batch": batch, "lr": opt.lr, "optim_scalars": scalars,
                   "seed": cfg.seed, "partial": part or _no_partial(), "data_sha1": digests},
            optim=engine.to_numpy(arrays), state=st, metrics=metrics), path)

    best = min((m.get("val_perplexity") or m["perplexity"] for m in metrics), default=math.inf)
    max_loss = DIVERGED_LOSS_FACTOR * math.log(max(len(vocab), 2))
    bar = _progress(cfg, start_epoch) if dist.is_main else None
    result = TrainResult(out, start_epoch, metrics)

    # the flag is up before the first line is logged: from then on Ctrl-C saves a checkpoint
    with StopFlag() as flag:
        log(f"training {spec.cell} H={spec.hidden_size} L={spec.num_layers} on "
            f"{train_ids.size:,} tokens (vocab {len(vocab)}), engine {engine.name} on "
            f"{engine.device}{dist.describe()}, epochs {start_epoch + 1}..{cfg.epochs}")
        for epoch in range(start_epoch, cfg.epochs):
            # -- one epoch: the book's train_epoch_ch8 ------------------------------------
            batch_rng = np.random.default_rng([cfg.seed, 1, epoch])
            skip = start_batch if epoch == start_epoch else 0
            state = carried if skip else None
            part = partial if skip else _no_partial()
            loss_sum, n_tok, seconds = part["loss_sum"], part["tokens"], part["seconds"]
            norms = [(b, a) for b, a in part.get("norms", [])]   # steps before an interruption
            snapshot = (copy_arrays(params), copy_arrays(opt.state), state, part)
            t0 = time.perf_counter()
            i = -1
            for i, (X, Y) in enumerate(batches(train_ids, cfg.batch_size, cfg.num_steps,
                                               cfg.partition, batch_rng)):
                if i < skip:
                    continue
                X, Y = dist.rows(X), dist.rows(Y)                # this rank's rows
                if state is None or cfg.partition == "random":
                    state = engine.begin_state(X.shape[0])       # fresh state (B, H)
                else:
                    state = engine.detach_state(state)            # carried, gradient stopped
                loss, grads, state = engine.loss_and_grads(
                    params, X, Y, state, truncate=cfg.truncate, training=True,
                    rng=np.random.default_rng([cfg.seed, 2, epoch, i, *dist.rng_key]))
                loss = dist.average(grads, loss)                  # global means, before clipping
                if cfg.clip is not None:                          # clip, then step
                    if cfg.clip_mode == "norm":
                        norm = optim.clip_grad_norm_(grads, cfg.clip)
                        after = None
                    else:
                        norm = optim.global_norm(grads)
                        optim.clip_grad_value_(grads, cfg.clip)
                        after = optim.global_norm(grads)
                else:
                    norm, after = optim.global_norm(grads), None
                norms.append((norm, after))
                opt.step(params, grads)
                if folder.create():                               # the first step ran: the
                    metrics_path.write_text("")                   # new run's folder, now
                tokens = X.size * dist.world_size                 # the global batch's
                loss_sum = loss_sum + loss * tokens               # on the device: no sync
                n_tok += tokens
                if bar is not None:
                    bar.set_postfix_str(f"batch {i + 1}", refresh=False)
                if dist.agree_stop(flag.stop):                    # all ranks stop together
                    break
            seconds += time.perf_counter() - t0
            loss_sum = engine.scalar(loss_sum)

            # -- a diverged loss: keep the epoch's starting point, stop loudly -------------
            mean_loss = loss_sum / max(n_tok, 1)
            if not (mean_loss <= max_loss and _finite(engine.to_numpy(params))):
                params.update(snapshot[0])
                opt.state = snapshot[1]
                save(last_path, epoch, skip, snapshot[2], snapshot[3] if skip else None)
                where = f"start of epoch {epoch + 1}" + (f", batch {skip}" if skip else "")
                raise Diverged(
                    f"loss became {mean_loss:.4g} in epoch {epoch + 1} (diverged: expected a "
                    f"finite loss below {max_loss:.4g} = {DIVERGED_LOSS_FACTOR:g} x ln V); the "
                    f"last sound parameters ({where}) are in {last_path}; lower --lr or set --clip"
                )
            if dist.agree_stop(flag.stop):
                save(last_path, epoch, i + 1, state,
                     {"loss_sum": loss_sum, "tokens": n_tok, "seconds": seconds,
                      "norms": _host_norms(norms, engine)})
                result.interrupted = True
                log(f"interrupted in epoch {epoch + 1} after batch {i + 1}; saved {last_path} "
                    f"(continue with --resume)")
                break

            # -- evaluation, metrics, checkpoints --------------------------------------------
            record = _epoch_record(epoch, loss_sum, n_tok, seconds, opt.lr, cfg, norms)
            if dist.is_main:
                _write_steps(metrics_path, epoch, _host_norms(norms, engine), cfg)
            if val_ids.size >= 2:  # every rank evaluates the whole stream; rank 0's numbers rule
                val = evaluate_tokens(engine, params, val_ids, cfg.batch_size, cfg.num_steps)
                record["val_loss"], record["val_perplexity"] = dist.from_main(
                    [val["loss"], val["perplexity"]])
            metrics.append(record)
            if dist.is_main:
                with metrics_path.open("a") as f:
                    f.write(json_line(record))
            monitored = record.get("val_loss", record["loss"])
            if cfg.lr_halving and len(metrics) > 1:
                prev = metrics[-2].get("val_loss", metrics[-2]["loss"])
                if monitored > prev:
                    opt.lr *= 0.5
                    log(f"loss rose ({prev:.4f} -> {monitored:.4f}): lr halved to {opt.lr:g}")
            save(last_path, epoch + 1, 0)
            score = record.get("val_perplexity", record["perplexity"])
            if score < best:
                best = score
                save(best_path, epoch + 1, 0)
            result.epochs = epoch + 1

            # -- report: progress, samples, plot --------------------------------------------
            sample_now = cfg.sample_every and ((epoch + 1) % cfg.sample_every == 0
                                               or epoch + 1 == cfg.epochs)
            line = (f"epoch {epoch + 1}/{cfg.epochs}  perplexity {record['perplexity']:.2f}"
                    + (f"  val {record['val_perplexity']:.2f}" if "val_perplexity" in record
                       else "")
                    + f"  {record['tokens_per_s']:,.0f} tokens/s")
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(line.split("  ", 1)[1], refresh=True)
            elif sample_now or epoch == start_epoch or epoch + 1 == cfg.epochs:
                log(line)
            if sample_now and dist.is_main:
                result.sample = _sample(lm_numpy(), cfg, engine.name)
                (bar.write if bar is not None else log)(f"  {result.sample}")
                _plot(metrics, out, cfg)
    if bar is not None:
        bar.close()
    if metrics and dist.is_main:
        _plot(metrics, out, cfg)
    result.metrics = metrics
    return result


def _no_partial() -> dict:
    """The running sums of an epoch that has not started: nothing carried over."""
    return {"loss_sum": 0.0, "tokens": 0, "seconds": 0.0, "norms": []}


def _finite(params: dict) -> bool:
    return all(np.isfinite(v).all() for v in params.values())


def _host_norms(norms: list, engine) -> list:
    """The (before, after-or-None) gradient norms as Python floats (one host sync, here)."""
    return [(engine.scalar(b), None if a is None else engine.scalar(a)) for b, a in norms]


def _epoch_record(epoch, loss_sum, n_tok, seconds, lr, cfg, norms) -> dict:
    loss = loss_sum / n_tok
    return {"kind": "epoch", "epoch": epoch + 1, "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)), "tokens_per_s": n_tok / max(seconds, 1e-9),
            "seconds": seconds, "lr": lr, "steps": len(norms)}


def _write_steps(path: Path, epoch: int, norms: list, cfg: TrainConfig) -> None:
    """Per-step gradient norms (host floats) before/after clipping."""
    with path.open("a") as f:
        for j, (b, after) in enumerate(norms):
            if cfg.clip is None:
                a, fired = b, False
            elif cfg.clip_mode == "norm":
                a, fired = min(b, cfg.clip), b > cfg.clip
            else:
                a, fired = after, after < b
            f.write(json_line({"kind": "step", "epoch": epoch + 1, "step": j + 1,
                                "grad_norm": b, "grad_norm_clipped": a,
                                "clipped": bool(fired)}))


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
    from ..plot import plot_perplexity
    from ..series.plots import plot_grad_norms, read_step_records

    plot_perplexity(metrics, out / "perplexity.png")
    steps = read_step_records(out / "metrics.jsonl")
    if steps:
        threshold = cfg.clip if cfg.clip_mode == "norm" else None
        plot_grad_norms(steps, out / "grad_norms.png", threshold=threshold)
