"""The language-model job as a library: learning, checkpoints, exact resume, generation,
evaluation, metrics and divergence. Small models and corpora: every test runs in seconds."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from bptt import checkpoint as ck
from bptt.data import DataError, Vocab
from bptt.engine.numpy.model import NumpyEngine
from bptt.lm import train as train_mod
from bptt.lm.evaluate import evaluate_tokens
from bptt.lm.generate import LanguageModel, generate
from bptt.lm.train import Diverged, train
from bptt.model import ModelSpec, init_params
from conftest import HELLO, StopAfter, quiet, tiny_config

pytestmark = pytest.mark.usefixtures("no_network")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Text with more structure than "hello world": used where the run must not be trivial.
PROSE = ("the time traveller for so it will be convenient to speak of him was expounding a "
         "recondite matter to us his grey eyes shone and twinkled and his usually pale face "
         "was flushed and animated ") * 6


def load_model(path: Path | str) -> LanguageModel:
    return LanguageModel.from_checkpoint(ck.load(path))


def assert_same_arrays(a: dict, b: dict, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


# -- learning -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_repeated_text_is_learned_to_perplexity_near_one(hello_corpus, tmp_path, cell):
    result = train(tiny_config(hello_corpus, tmp_path / "run", cell=cell, hidden_size=32,
                               epochs=20), log=quiet)
    assert result.epochs == 20 and not result.interrupted
    assert result.last["perplexity"] < 1.1, [m["perplexity"] for m in result.metrics]
    assert result.metrics[0]["perplexity"] > 1.5  # it did have something to learn


# -- checkpoints -----------------------------------------------------------------------------


def make_checkpoint(cell: str = "lstm", num_layers: int = 2) -> ck.Checkpoint:
    vocab = Vocab(list("abcab c"))
    spec = ModelSpec(cell=cell, input_size=len(vocab), hidden_size=6, output_size=len(vocab),
                     num_layers=num_layers)
    rng = np.random.default_rng(0)
    params = init_params(spec, "torch", rng)
    optim = {f"exp_avg.{k}": rng.normal(size=v.shape).astype(np.float32)
             for k, v in params.items()}
    shape = (num_layers, 3, 6)
    state = tuple(rng.normal(size=shape).astype(np.float32)
                  for _ in range(2 if cell == "lstm" else 1))
    return ck.Checkpoint(
        spec=spec, params=params, vocab=vocab,
        text={"normalization": "none", "tokenization": "char"},
        config=tiny_config("x.txt", "out").to_dict(),
        train={"epoch": 3, "batch": 7, "lr": 0.25, "optim_scalars": {"step": 11}},
        optim=optim, state=state,
        metrics=[{"kind": "epoch", "epoch": 1, "loss": 1.5, "perplexity": math.exp(1.5)}],
    )


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_checkpoint_round_trip_keeps_everything(tmp_path, cell):
    saved = make_checkpoint(cell)
    ck.save(saved, tmp_path / "c.safetensors")
    loaded = ck.load(tmp_path / "c.safetensors")
    assert loaded.spec == saved.spec
    assert loaded.vocab == saved.vocab
    assert loaded.text == saved.text and loaded.config == saved.config
    assert loaded.train == saved.train and loaded.metrics == saved.metrics
    for got, want in ((loaded.params, saved.params), (loaded.optim, saved.optim)):
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
            assert got[k].dtype == want[k].dtype
    assert len(loaded.state) == len(saved.state)
    for got, want in zip(loaded.state, saved.state, strict=True):
        np.testing.assert_array_equal(got, want)
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary left


def test_trained_checkpoint_holds_the_optimiser_state(hello_run):
    last = ck.load(hello_run / "run" / "last.safetensors")
    names = set(last.params)
    assert {k[len("exp_avg."):] for k in last.optim if k.startswith("exp_avg.")} == names
    assert {k[len("exp_avg_sq."):] for k in last.optim if k.startswith("exp_avg_sq.")} == names
    assert last.train["optim_scalars"]["step"] == sum(m["steps"] for m in last.metrics)
    assert last.train["epoch"] == 20 and last.train["batch"] == 0
    assert last.state is None  # saved between epochs: no carried state
    assert last.config["hidden_size"] == 32 and last.text["normalization"] == "d2l"


def test_run_folder_resolves_to_best_then_last(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(ck.CheckpointError, match="found neither"):
        ck.load(folder)
    last, best = make_checkpoint(), make_checkpoint()
    last.train = {**last.train, "which": "last"}
    best.train = {**best.train, "which": "best"}
    ck.save(last, folder / "last.safetensors")
    assert ck.load(folder).train["which"] == "last"
    ck.save(best, folder / "best.safetensors")
    assert ck.load(folder).train["which"] == "best"
    assert ck.load(folder, prefer="last").train["which"] == "last"
    with pytest.raises(ck.CheckpointError, match="no such file"):
        ck.load(tmp_path / "missing.safetensors")


def _truncated(path: Path) -> None:
    ck.save(make_checkpoint(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _no_metadata(path: Path) -> None:
    save_file({"weight_ih_l0": np.zeros((4, 3), np.float32)}, str(path))


def _foreign_metadata(path: Path) -> None:
    save_file({"w": np.zeros(3, np.float32)}, str(path), metadata={"format": "pt"})


def _bad_json(path: Path) -> None:
    save_file({"w": np.zeros(3, np.float32)}, str(path), metadata={"bptt": "{not json"})


def _json_not_object(path: Path) -> None:
    save_file({"w": np.zeros(3, np.float32)}, str(path), metadata={"bptt": "[1, 2]"})


def _shapes_do_not_match_spec(path: Path) -> None:
    good = make_checkpoint()
    ck.save(good, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["weight_hh_l1"] = np.zeros((5, 5), np.float32)
    save_file(tensors, str(path), metadata=meta)


def _vocab_does_not_match_spec(path: Path) -> None:
    good = make_checkpoint()
    ck.save(good, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()["bptt"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["vocab"]["idx_to_token"].append("z")
    save_file(tensors, str(path), metadata={"bptt": json.dumps(meta)})


@pytest.mark.parametrize("damage, message", [
    (_truncated, "unreadable"),
    (_random_bytes, "unreadable"),
    (_empty, "unreadable"),
    (_no_metadata, "expected bptt metadata .* found none"),
    (_foreign_metadata, "expected bptt metadata .* found none"),
    (_bad_json, "expected valid bptt metadata"),
    (_json_not_object, "expected valid bptt metadata"),
    (_shapes_do_not_match_spec, "does not fit its own model spec.*weight_hh_l1"),
    (_vocab_does_not_match_spec, "expected a vocabulary of"),
])
def test_damaged_checkpoint_is_a_clear_checkpoint_error(tmp_path, damage, message):
    path = tmp_path / "bad.safetensors"
    damage(path)
    with pytest.raises(ck.CheckpointError, match=message) as info:
        ck.load(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text


@pytest.mark.parametrize("cell, num_layers", [("rnn", 1), ("lstm", 2), ("gru", 2)])
def test_saved_parameters_load_into_plain_torch_modules(tmp_path, make_corpus, cell,
                                                        num_layers):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    corpus = make_corpus(PROSE)
    train(tiny_config(corpus, tmp_path / "run", cell=cell, num_layers=num_layers, epochs=1),
          log=quiet)
    path = tmp_path / "run" / "last.safetensors"
    tensors = load_file(str(path))
    model = load_model(path)
    V, H = model.spec.input_size, model.spec.hidden_size

    rnn = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        V, H, num_layers=num_layers, batch_first=True)
    head = torch.nn.Linear(H, V)
    rnn.load_state_dict({k: v for k, v in tensors.items()
                         if not k.startswith(("head.", "optim.", "state."))})
    head.load_state_dict({k[len("head."):]: v for k, v in tensors.items()
                          if k.startswith("head.")})

    X = np.random.default_rng(3).integers(0, V, size=(3, 9))
    with torch.no_grad():
        out, _ = rnn(torch.nn.functional.one_hot(torch.from_numpy(X), V).float())
        want = head(out).numpy()
    engine = NumpyEngine(model.spec)
    got, _ = engine.forward(engine.from_numpy(model.params), X, engine.begin_state(3))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# -- resume ------------------------------------------------------------------------------------


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders whose last checkpoints hold the same model and optimiser."""
    x, y = ck.load(a / "last.safetensors"), ck.load(b / "last.safetensors")
    assert x.train["epoch"] == y.train["epoch"]
    assert x.train["lr"] == y.train["lr"]
    assert x.train["optim_scalars"] == y.train["optim_scalars"]
    assert_same_arrays(x.params, y.params)
    assert_same_arrays(x.optim, y.optim)
    assert [m["epoch"] for m in x.metrics] == [m["epoch"] for m in y.metrics]
    np.testing.assert_allclose([m["loss"] for m in x.metrics], [m["loss"] for m in y.metrics],
                               rtol=1e-5)


@pytest.mark.parametrize("partition, optimizer, lr, cell", [
    ("sequential", "sgd", 1.0, "rnn"),
    ("random", "sgd", 1.0, "rnn"),
    ("sequential", "adam", 0.01, "rnn"),
    ("random", "adam", 0.01, "gru"),
])
def test_resume_between_epochs_equals_straight_run(tmp_path, make_corpus, partition, optimizer,
                                                   lr, cell):
    corpus = make_corpus(PROSE)
    kw = dict(partition=partition, optimizer=optimizer, lr=lr, cell=cell, val_frac=0.1)
    train(tiny_config(corpus, tmp_path / "straight", epochs=4, **kw), log=quiet)
    train(tiny_config(corpus, tmp_path / "resumed", epochs=2, **kw), log=quiet)
    result = train(tiny_config(corpus, tmp_path / "resumed", epochs=4), resume=True, log=quiet)
    assert result.epochs == 4
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    # metrics.jsonl holds the same epoch records, once each
    epochs = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text()
               .splitlines()] for d in ("straight", "resumed")]
    assert [r["epoch"] for r in epochs[1] if r["kind"] == "epoch"] == [1, 2, 3, 4]
    assert len(epochs[0]) == len(epochs[1])


@pytest.mark.parametrize("partition, cell, dropout", [
    ("sequential", "rnn", 0.0),
    ("random", "rnn", 0.0),
    ("sequential", "lstm", 0.3),
])
def test_resume_inside_an_epoch_equals_straight_run(tmp_path, make_corpus, monkeypatch,
                                                    partition, cell, dropout):
    corpus = make_corpus(PROSE)
    kw = dict(partition=partition, cell=cell, num_layers=2, dropout=dropout)
    train(tiny_config(corpus, tmp_path / "straight", epochs=3, **kw), log=quiet)

    monkeypatch.setattr(train_mod, "StopFlag", lambda: StopAfter(40))  # epochs: ~28 steps
    first = train(tiny_config(corpus, tmp_path / "resumed", epochs=3, **kw), log=quiet)
    assert first.interrupted and first.epochs == 1
    stopped = ck.load(tmp_path / "resumed" / "last.safetensors")
    assert stopped.train["epoch"] == 1 and 0 < stopped.train["batch"]
    assert stopped.state is not None  # the carried hidden state, saved mid-epoch
    assert len(stopped.train["partial"]["norms"]) == stopped.train["batch"]

    monkeypatch.undo()
    result = train(tiny_config(corpus, tmp_path / "resumed", epochs=3), resume=True, log=quiet)
    assert result.epochs == 3 and not result.interrupted
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    steps = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text()
              .splitlines() if '"step"' in line] for d in ("straight", "resumed")]
    assert [(s["epoch"], s["step"]) for s in steps[0]] == [(s["epoch"], s["step"])
                                                           for s in steps[1]]


def test_resume_without_a_checkpoint_says_so(tmp_path, hello_corpus):
    with pytest.raises(ck.CheckpointError, match="to resume from, found none"):
        train(tiny_config(hello_corpus, tmp_path / "nothing"), resume=True, log=quiet)


def test_resume_past_the_end_does_nothing(hello_run):
    run = hello_run / "run"
    before = (run / "last.safetensors").read_bytes()
    result = train(tiny_config(hello_run / "hello.txt", run, epochs=5), resume=True, log=quiet)
    assert result.epochs == 20 and len(result.metrics) == 20
    assert (run / "last.safetensors").read_bytes() == before


# -- generation --------------------------------------------------------------------------------


def greedy_by_hand(model: LanguageModel, prefix: str, length: int) -> str:
    """The book's predict_ch8 written out: one token at a time through the engine."""
    engine = NumpyEngine(model.spec)
    params = engine.from_numpy(model.params)
    state = engine.begin_state(1)
    tokens = list(prefix)
    for tok in tokens:
        logits, state = engine.forward(params, np.array([[model.vocab[tok]]]), state)
    for _ in range(length):
        nxt = int(np.argmax(logits[0, -1]))
        tokens.append(model.vocab.idx_to_token[nxt])
        logits, state = engine.forward(params, np.array([[nxt]]), state)
    return "".join(tokens)


def test_greedy_generation_equals_the_hand_written_argmax_loop(hello_run):
    model = load_model(hello_run / "run")
    for prefix in ("hello ", "wor", "d"):
        text = generate(model, prefix, 30)
        assert text == greedy_by_hand(model, prefix, 30)
        assert len(text) == len(prefix) + 30
    assert generate(model, "hello ", 12) == "hello world hello "


def test_sampling_is_deterministic_for_a_seed(hello_run):
    model = load_model(hello_run / "run")
    a = generate(model, "he", 40, temperature=1.5, seed=7)
    b = generate(model, "he", 40, temperature=1.5, seed=7)
    assert a == b and len(a) == 42
    samples = {generate(model, "he", 40, temperature=5.0, seed=s) for s in range(5)}
    assert len(samples) > 1  # a high temperature does sample


def test_top_k_one_and_tiny_top_p_are_greedy(hello_run):
    model = load_model(hello_run / "run")
    greedy = generate(model, "wo", 25)
    assert generate(model, "wo", 25, temperature=3.0, top_k=1, seed=1) == greedy
    assert generate(model, "wo", 25, temperature=3.0, top_p=1e-9, seed=2) == greedy


@pytest.mark.parametrize("kwargs, message", [
    (dict(length=-1), "length >= 0"),
    (dict(temperature=-0.5), "temperature >= 0"),
    (dict(top_k=0), "top_k >= 1"),
    (dict(top_p=0.0), "top_p in"),
    (dict(top_p=1.5), "top_p in"),
])
def test_generation_arguments_are_checked(hello_run, kwargs, message):
    model = load_model(hello_run / "run")
    kwargs = {"length": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(model, "he", **kwargs)


def test_unknown_prefix_characters_are_named_in_a_warning(tmp_path, make_corpus):
    corpus = make_corpus("Hello, World! " * 60)
    train(tiny_config(corpus, tmp_path / "run", normalization="none", epochs=1), log=quiet)
    model = load_model(tmp_path / "run")
    assert model.normalization == "none" and "H" in model.vocab.token_to_idx
    with pytest.warns(UserWarning, match="'时'.*'光'"):
        text = generate(model, "时光 Hello", 5)
    assert text.startswith("时光 Hello") and len(text) == len("时光 Hello") + 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, "Hello", 5)  # every character known: no warning


def test_chinese_text_is_one_token_per_character(tmp_path, make_corpus):
    poem = "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"
    corpus = make_corpus(poem * 30, "poem.txt")
    result = train(tiny_config(corpus, tmp_path / "run", normalization="none", hidden_size=32,
                               epochs=15, sample_every=15, sample_prefix="床前", sample_length=8),
                   log=quiet)
    model = load_model(tmp_path / "run")
    assert len(model.vocab) == len(set(poem)) + 1  # + <unk>
    assert result.sample.startswith("床前") and len(result.sample) == 10
    text = generate(model, "举头", 10)
    assert len(text) == 12 and set(text) <= set(poem)
    assert text == "举头望明月，低头思故乡。"


# -- evaluation --------------------------------------------------------------------------------


def test_training_text_has_low_perplexity_and_bits_are_log2(hello_run):
    model = load_model(hello_run / "run")
    engine = NumpyEngine(model.spec)
    ids = model.vocab.encode(list(HELLO.strip()))
    result = evaluate_tokens(engine, engine.from_numpy(model.params), ids, 4, 10)
    assert result["perplexity"] < 1.2
    assert result["bits_per_token"] == pytest.approx(math.log2(result["perplexity"]), rel=1e-9)
    assert result["loss"] == pytest.approx(math.log(result["perplexity"]), rel=1e-9)
    assert result["tokens"] == ids.size - 1          # every token but the first, none dropped
    # shuffled text is far less predictable
    shuffled = np.random.default_rng(0).permutation(ids)
    worse = evaluate_tokens(engine, engine.from_numpy(model.params), shuffled, 4, 10)
    assert worse["perplexity"] > 3 * result["perplexity"]


@pytest.mark.parametrize("ids, batch, steps, error, message", [
    ([1], 4, 10, DataError, "at least 2 tokens"),
    ([1, 2, 3], 4, 0, ValueError, "num_steps a positive integer"),
    ([1, 2, 3], 0, 10, ValueError, "batch_size a positive integer"),
])
def test_evaluate_rejects_bad_input(hello_run, ids, batch, steps, error, message):
    model = load_model(hello_run / "run")
    engine = NumpyEngine(model.spec)
    with pytest.raises(error, match=message):
        evaluate_tokens(engine, engine.from_numpy(model.params), np.array(ids), batch, steps)


# -- metrics, validation, learning-rate halving, plot -----------------------------------------


def strict_json(line: str) -> dict:
    def reject(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(line, parse_constant=reject)


def read_metrics(folder: Path) -> list[dict]:
    return [strict_json(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_metrics_validation_split_and_plot(tmp_path, make_corpus):
    corpus = make_corpus(PROSE)
    result = train(tiny_config(corpus, tmp_path / "run", val_frac=0.1, clip=0.5, epochs=3),
                   log=quiet)
    lines = read_metrics(tmp_path / "run")
    epochs = [r for r in lines if r["kind"] == "epoch"]
    steps = [r for r in lines if r["kind"] == "step"]
    assert {r["kind"] for r in lines} == {"epoch", "step"}
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs == result.metrics
    for r in epochs:
        assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]))
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
        assert r["val_perplexity"] > 1 and r["tokens_per_s"] > 0
    assert len(steps) == sum(r["steps"] for r in epochs)
    for s in steps:
        assert {"epoch", "step", "grad_norm", "grad_norm_clipped", "clipped"} <= set(s)
        assert isinstance(s["clipped"], bool)
        assert s["grad_norm_clipped"] <= 0.5
        assert s["clipped"] == (s["grad_norm"] > 0.5)
        assert s["grad_norm_clipped"] == pytest.approx(min(s["grad_norm"], 0.5))
    assert any(s["clipped"] for s in steps)
    assert (tmp_path / "run" / "perplexity.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (tmp_path / "run" / "grad_norms.png").read_bytes()[:8] == PNG_SIGNATURE
    # the best checkpoint is the epoch with the lowest validation perplexity
    best = ck.load(tmp_path / "run" / "best.safetensors")
    lowest = min(epochs, key=lambda r: r["val_perplexity"])
    assert best.train["epoch"] == lowest["epoch"]


def test_lr_halving_halves_the_rate_after_the_loss_rises(tmp_path, hello_corpus):
    kw = dict(optimizer="sgd", lr=10.0, clip=1.0, epochs=8)
    halved = train(tiny_config(hello_corpus, tmp_path / "halved", lr_halving=True, **kw),
                   log=quiet).metrics
    rises = [i for i in range(1, len(halved)) if halved[i]["loss"] > halved[i - 1]["loss"]]
    assert rises, "the constructed run never raised its loss"
    for i in range(1, len(halved) - 1):
        factor = 0.5 if i in rises else 1.0
        assert halved[i + 1]["lr"] == halved[i]["lr"] * factor
    assert halved[0]["lr"] == 10.0 and halved[-1]["lr"] < 10.0
    plain = train(tiny_config(hello_corpus, tmp_path / "plain", **kw), log=quiet).metrics
    assert {m["lr"] for m in plain} == {10.0}


# -- divergence --------------------------------------------------------------------------------


def test_a_diverging_run_stops_and_keeps_finite_parameters(tmp_path, hello_corpus):
    cfg = tiny_config(hello_corpus, tmp_path / "run", optimizer="sgd", lr=1e6, clip=None)
    with pytest.raises(Diverged, match="in epoch 1 .*lower --lr") as info:
        train(cfg, log=quiet)
    assert "\n" not in str(info.value)
    last = ck.load(tmp_path / "run" / "last.safetensors")
    assert all(np.isfinite(v).all() for v in last.params.values())
    assert last.train["epoch"] == 0
    init = init_params(last.spec, "torch", np.random.default_rng([0, 0]))
    assert_same_arrays(last.params, init, rtol=0, atol=0)  # the start of the diverged epoch
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_divergence_after_resume_restores_the_epochs_start_with_its_optimiser(tmp_path,
                                                                            make_corpus):
    corpus = make_corpus(PROSE)
    run = tmp_path / "run"
    train(tiny_config(corpus, run, epochs=2, clip=None), log=quiet)
    good = ck.load(run / "last.safetensors")
    good.train = {**good.train, "lr": 1e6}  # an Adam step of a million: certain divergence
    ck.save(good, run / "last.safetensors")
    with pytest.raises(Diverged, match="in epoch 3"):
        train(tiny_config(corpus, run, epochs=3), resume=True, log=quiet)
    after = ck.load(run / "last.safetensors")
    assert after.train["epoch"] == 2
    assert_same_arrays(after.params, good.params, rtol=0, atol=0)
    assert_same_arrays(after.optim, good.optim, rtol=0, atol=0)  # Adam's m, v not advanced
    assert after.train["optim_scalars"] == good.train["optim_scalars"]


def test_a_fresh_run_replaces_a_previous_runs_best(tmp_path, hello_corpus):
    run = tmp_path / "run"
    train(tiny_config(hello_corpus, run, epochs=2), log=quiet)
    assert (run / "best.safetensors").exists()
    with pytest.raises(Diverged):
        train(tiny_config(hello_corpus, run, optimizer="sgd", lr=1e6, clip=None),
              overwrite=True, log=quiet)
    # the folder now belongs to the new run: no stale best from the old one
    assert sorted(p.name for p in run.iterdir()) == ["last.safetensors", "metrics.jsonl"]
    assert read_metrics(run) == []
    (earlier,) = tmp_path.glob("run.previous-*")               # moved aside, whole
    assert (earlier / "best.safetensors").exists()
    assert [m["epoch"] for m in read_metrics(earlier) if m["kind"] == "epoch"] == [1, 2]


@pytest.mark.skipif(os.name == "nt", reason="signals")
def test_stop_flag_turns_ctrl_c_into_a_request(tmp_path):
    import signal

    before = signal.getsignal(signal.SIGINT)
    with train_mod.StopFlag() as flag:
        assert not flag.stop
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.stop
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C gives up at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
