"""Word-level language models: <eos>, --max-vocab and the vocabulary of the training tokens,
the Time Machine's split, the embedding, tied weights, dropout places and variational masks in
both engines, the learning-rate schedules, evaluate, the Zaremba recipes, and the whole job
through the command line. Tiny models on The Time Machine at word level: seconds each."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from bptt import checkpoint as ck
from bptt.data import (
    EOS,
    SPLITS,
    UNK,
    DataError,
    Vocab,
    line_range,
    load_corpus,
    read_text,
    resolve,
    select_lines,
    text_tokens,
)
from bptt.engine import as_numpy, get_engine
from bptt.engine.dropout import draw_masks
from bptt.engine.numpy.model import NumpyEngine
from bptt.lm.config import PAPER, RECIPES, TrainConfig, apply_recipe
from bptt.lm.evaluate import evaluate_text
from bptt.lm.generate import LanguageModel, generate
from bptt.lm.train import build_spec, train
from bptt.model import ModelSpec, init_params, param_shapes
from conftest import quiet

pytestmark = pytest.mark.usefixtures("no_network")

ENGINES = ("numpy", "torch", "torch-autograd", "torch-builtin")


def word_config(out, **kw) -> TrainConfig:
    """A tiny word-level LSTM on the Time Machine's split: seconds per epoch."""
    base = dict(data="timemachine:train", val_data="timemachine:valid", tokenization="word",
                min_freq=3, cell="lstm", hidden_size=12, num_layers=2, embedding_size=12,
                batch_size=10, num_steps=12, epochs=2, optimizer="sgd", lr=5.0, clip=0.25,
                init="uniform", sample_every=0, progress="log", out=str(out))
    base.update(kw)
    return TrainConfig(**base)


def tm(part: str, **kw):
    """The Time Machine's part ``part`` as word ids with <eos>, and its vocabulary."""
    data = f"timemachine:{part}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_corpus(resolve(data), "d2l", "word", eos=True, lines=line_range(data), **kw)


def spec_for(V: int, **kw) -> ModelSpec:
    base = dict(cell="lstm", input_size=V, hidden_size=6, output_size=V, num_layers=2,
                embedding_size=6, dropout_placement="non-recurrent")
    base.update(kw)
    return ModelSpec(**base)


# -- data: <eos>, the vocabulary, the split --------------------------------------------------


def test_eos_ends_every_line_blank_ones_too_and_char_tokens_are_unchanged():
    text = "The cat, sat.\n\n  on   the mat\n"
    assert text_tokens(text, "d2l", "word", eos=True) == [
        "the", "cat", "sat", EOS, EOS, "on", "the", "mat", EOS]
    assert text_tokens(text, "none", "word", eos=True) == [
        "The", "cat,", "sat.", EOS, EOS, "on", "the", "mat", EOS]
    assert text_tokens(text, "d2l", "word", eos=False) == ["the", "cat", "sat", "on", "the",
                                                           "mat"]
    assert text_tokens("ab\ncd", "none", "char", eos=True) == list("ab\ncd")
    assert text_tokens("no newline at the end", "none", "word", eos=True)[-1] == EOS


def test_max_vocab_keeps_the_most_frequent_unk_and_eos_included(make_corpus):
    path = make_corpus("a a a b b c\nd a b\n")
    ids, vocab = load_corpus(path, "none", "word", eos=True, max_vocab=4)
    assert vocab.idx_to_token == [UNK, EOS, "a", "b"]           # <eos> reserved, then by count
    assert vocab.decode(ids) == ["a", "a", "a", "b", "b", UNK, EOS, UNK, "a", "b", EOS]
    assert len(load_corpus(path, "none", "word", eos=True)[1]) == 6
    with pytest.raises(DataError, match="--max-vocab 2 leaves no room"):
        load_corpus(path, "none", "word", eos=True, max_vocab=2)
    with pytest.raises(DataError, match="expected a vocabulary size of at least 3"):
        Vocab(["a"], reserved=["x", "y"], max_size=2)


def test_no_eos_on_the_command_line_reads_the_words_without_line_ends(data_dir):
    from bptt.cli import build_parser
    from bptt.cli.train import config_from_args
    from bptt.data import resolve_normalization
    from bptt.lm.train import load_data

    got = {}
    for flags in ((), ("--no-eos",)):
        args = build_parser().parse_args(["train", "--recipe", "zaremba-small", *flags])
        cfg = config_from_args(args)
        auto = resolve_normalization(cfg.normalization, cfg.data)      # as train resolves it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids, _, vocab = load_data(replace(cfg, normalization=auto))
        got[flags] = (cfg.eos, vocab, ids)
    (eos, vocab, ids), (no_eos, vocab_no, ids_no) = got.values()
    assert eos and not no_eos and EOS in vocab.token_to_idx and EOS not in vocab_no.token_to_idx
    n_lines = len(read_text(resolve("timemachine")).splitlines())
    ends = int((ids == vocab.token_to_idx[EOS]).sum())
    assert ends == math.floor(0.8 * n_lines) == ids.size - ids_no.size   # one per train line


def test_word_vocabulary_comes_from_the_training_tokens_alone(make_corpus):
    path = make_corpus("one two one two\n" * 9 + "three four\n")     # the last 10%: new words
    ids, vocab = load_corpus(path, "none", "word", eos=True, held_out=0.1)
    assert "three" not in vocab.token_to_idx and "two" in vocab.token_to_idx
    tail = vocab.decode(ids[-3:])
    assert tail == [UNK, UNK, EOS]                                    # validation reads <unk>
    _, chars = load_corpus(path, "none", "char", held_out=0.1)      # the book's: every char
    assert "h" in chars.token_to_idx


def test_the_time_machine_split_covers_every_line_once(data_dir):
    text = read_text(resolve("timemachine"))
    parts = [select_lines(text, SPLITS[p]) for p in ("train", "valid", "test")]
    assert "".join(parts) == text if text.endswith("\n") else text + "\n"
    n = text.count("\n") + (not text.endswith("\n"))
    assert [p.count("\n") for p in parts] == [int(0.8 * n), int(0.9 * n) - int(0.8 * n),
                                              n - int(0.9 * n)]
    assert line_range("timemachine:test") == (0.9, 1.0) and line_range("timemachine") is None
    assert resolve("timemachine:valid") == resolve("timemachine")
    train_ids, vocab = tm("train")
    test_ids, _ = tm("test", vocab=vocab)
    assert vocab.idx_to_token[:2] == [UNK, EOS]
    assert np.count_nonzero(train_ids == 0) == 0                     # every training word known
    assert 0 < np.count_nonzero(test_ids == 0) < test_ids.size // 5


# -- the model: parameters, tying, placement ----------------------------------------------------


def test_tying_halves_the_head_and_embedding_parameters_and_needs_e_equal_h(data_dir):
    _, vocab = tm("train")
    V, H = len(vocab), 200
    untied = param_shapes(spec_for(V, hidden_size=H, embedding_size=H))
    tied = param_shapes(spec_for(V, hidden_size=H, embedding_size=H, tie_weights=True))
    size = {name: math.prod(s) for name, s in untied.items()}
    assert size["embedding.weight"] == size["head.weight"] == V * H
    assert set(untied) - set(tied) == {"head.weight"}
    assert (sum(math.prod(tied[k]) for k in tied if k in ("embedding.weight", "head.weight"))
            == (size["embedding.weight"] + size["head.weight"]) // 2)
    with pytest.raises(ValueError, match="embedding_size equal to the head's input size"):
        spec_for(V, hidden_size=H, embedding_size=100, tie_weights=True)
    with pytest.raises(ValueError, match="expected an embedding_size with tie_weights"):
        spec_for(V, embedding_size=None, tie_weights=True)
    # a projected LSTM's head reads P features: tying needs E = P
    projected = param_shapes(spec_for(V, hidden_size=H, proj_size=50, embedding_size=50,
                                      tie_weights=True))
    assert projected["embedding.weight"] == (V, 50) and "head.weight" not in projected
    with pytest.raises(ValueError, match=r"head's input size D\*P = 50"):
        spec_for(V, hidden_size=H, proj_size=50, embedding_size=H, tie_weights=True)
    assert build_spec(TrainConfig(cell="lstm", hidden_size=8, proj_size=3, tie_weights=True),
                      30).embedding_size == 3
    with pytest.raises(ValueError, match="--embedding-size equal to --proj-size 3"):
        train(TrainConfig(cell="lstm", hidden_size=8, proj_size=3, tie_weights=True,
                          embedding_size=8))


def test_old_specs_and_configs_load_and_mean_what_they_meant():
    old = {"cell": "lstm", "input_size": 9, "hidden_size": 4, "output_size": 9, "num_layers": 2,
           "nonlinearity": "tanh", "bias": True, "dropout": 0.2, "bidirectional": False,
           "task": "lm"}
    spec = ModelSpec.from_dict(old)
    assert spec.embedding_size is None and not spec.tie_weights
    assert (spec.dropout_placement, spec.dropout_mode) == ("between-layers", "standard")
    assert list(param_shapes(spec))[0] == "weight_ih_l0" and "head.weight" in param_shapes(spec)
    cfg = TrainConfig.from_dict({"tokenization": "word", "lr": 2.0})
    assert cfg.eos is False and cfg.embedding_size is None and cfg.lr_decay is None
    assert TrainConfig.from_dict(TrainConfig().to_dict()).eos is True


def test_dropout_placement_follows_the_input():
    assert build_spec(TrainConfig(dropout=0.5), 30).dropout_placement == "between-layers"
    spec = build_spec(TrainConfig(dropout=0.5, tie_weights=True, hidden_size=8,
                                  dropout_mode="variational"), 30)
    assert spec.embedding_size == 8 and spec.dropout_placement == "non-recurrent"
    assert spec.dropout_mode == "variational" and spec.drops_out


# -- gradients: tying sums both uses, masks are reused ----------------------------------------


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_the_tied_gradient_is_the_sum_of_both_uses(engine):
    V, T, B = 11, 5, 3
    tied = spec_for(V, tie_weights=True)
    untied = spec_for(V)
    params = init_params(tied, "uniform", 0, "float64", scale=0.4)
    same = {**params, "head.weight": params["embedding.weight"].copy()}
    rng = np.random.default_rng(1)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    grads = {}
    for name, spec, p in (("tied", tied, params), ("untied", untied, same)):
        eng = get_engine(engine, spec, device="cpu", dtype="float64")
        _, g, _ = eng.loss_and_grads(eng.from_numpy(p), X, Y, training=False)
        grads[name] = {k: as_numpy(v) for k, v in g.items()}
    assert "head.weight" not in grads["tied"]
    np.testing.assert_allclose(grads["tied"]["embedding.weight"],
                               grads["untied"]["embedding.weight"]
                               + grads["untied"]["head.weight"], rtol=1e-12, atol=1e-15)
    for k in grads["tied"]:
        if k != "embedding.weight":
            np.testing.assert_allclose(grads["tied"][k], grads["untied"][k], rtol=1e-12)


def test_variational_masks_are_constant_over_time_and_reused_by_the_backward():
    V, T, B = 13, 6, 4
    spec = spec_for(V, dropout=0.5, dropout_mode="variational")
    eng = NumpyEngine(spec, dtype="float64")
    params = init_params(spec, "uniform", 0, "float64", scale=0.4)
    masks = eng.draw_masks(T, B, np.random.default_rng(7))
    assert [m.shape for m in (masks.input, *masks.layers, masks.output)] == [
        (1, B, 6), (1, B, 6), (1, B, 6)]
    x = np.random.default_rng(2).integers(0, V, (T, B))
    _, _, cache = eng.model_forward(params, x, None, masks)
    rows = cache.rows.reshape(T, B, -1)
    dropped = masks.output[0] == 0
    assert dropped.any() and (rows[:, dropped] == 0).all()      # the same units, every step
    assert (rows[:, ~dropped] != 0).all()
    standard = draw_masks(spec_for(V, dropout=0.5), T, B,
                          lambda s: np.random.default_rng(0).random(s) < 0.5)
    assert standard.output.shape == (T, B, 6) and not (standard.output == standard.output[0]).all()
    # loss_and_grads draws exactly these masks from the rng, and its backward reuses them
    Y = np.random.default_rng(3).integers(0, V, (B, T))
    loss, grads, _ = eng.loss_and_grads(params, x.T, Y, rng=np.random.default_rng(7))
    y, _, cache = eng.model_forward(params, x, None, masks)
    from bptt.engine.numpy.loss import softmax_cross_entropy_

    want_loss, dy = softmax_cross_entropy_(y, Y.T.reshape(-1))
    want, _ = eng.model_backward(params, dy, cache)
    assert loss == want_loss and all(np.array_equal(grads[k], want[k]) for k in want)


@pytest.mark.parametrize("proj", [0, 4])        # 4: a projected LSTM, tied to E = P
def test_every_engine_computes_the_same_word_model(proj):
    V = 9
    spec = spec_for(V, tie_weights=True, dropout=0.3, dropout_mode="variational",
                    proj_size=proj, embedding_size=proj or 6)
    params = init_params(spec, "uniform", 0, "float64", scale=0.4)
    rng = np.random.default_rng(1)
    X, Y = rng.integers(0, V, (3, 7)), rng.integers(0, V, (3, 7))
    out = {}
    for name in ENGINES:
        eng = get_engine(name, spec, device="cpu", dtype="float64")
        p = eng.from_numpy(params)
        loss, grads, _ = eng.loss_and_grads(p, X, Y, rng=torch.Generator().manual_seed(3)
                                            if name != "numpy" else np.random.default_rng(3))
        logits, _ = eng.forward(p, X)
        step, _ = eng.forward(p, X[:, :1])                         # generation's one step
        out[name] = (float(loss), {k: as_numpy(v) for k, v in grads.items()},
                     as_numpy(logits), as_numpy(step))
    ref = out["torch-autograd"]
    for name in ENGINES:
        np.testing.assert_allclose(out[name][2], ref[2], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(out[name][3], ref[2][:, :1], rtol=1e-12, atol=1e-13)
        if name != "numpy":                   # the same torch generator: the same masks
            assert out[name][0] == pytest.approx(ref[0], rel=1e-12)
            for k in ref[1]:
                np.testing.assert_allclose(out[name][1][k], ref[1][k], rtol=1e-10, atol=1e-13)


# -- bptt check ---------------------------------------------------------------------------------


def test_model_rows_pass_and_a_wrong_embedding_gradient_fails_them(monkeypatch):
    from bptt.check.model import check_model_against_torch, check_model_finite_differences
    from bptt.engine.numpy import model as numpy_model
    from bptt.engine.torch import embedding

    rows = [check_model_against_torch("lstm", tied=t, dropout=d, engine=e)
            for t, d, e in ((True, "var", "numpy"), (False, "std", "numpy"),
                            (True, "std", "torch"), (False, "var", "torch"))]
    rows.append(check_model_finite_differences("gru", tied=True, dropout="var"))
    assert all(r.ok and r.embedding is not None for r in rows), rows
    assert all(r.worst <= 1e-9 for r in rows[:4])

    real = numpy_model.token_weight_grad_

    def off(dW, ids, rows):
        return real(dW, ids, rows * 1.001)

    monkeypatch.setattr(numpy_model, "token_weight_grad_", off)
    assert not check_model_against_torch("lstm", dropout="var").ok
    assert not check_model_finite_differences("lstm").ok
    backward = embedding.EmbeddingFunction.backward

    def off_torch(ctx, de):
        return tuple(None if g is None else g * 1.001 for g in backward(ctx, de))

    monkeypatch.setattr(embedding.EmbeddingFunction, "backward", staticmethod(off_torch))
    assert not check_model_against_torch("lstm", engine="torch").ok


# -- schedules ----------------------------------------------------------------------------------


def epoch_lrs(run) -> list[float]:
    return [m["lr"] for m in ck.load(run / "last.safetensors").metrics]


def test_the_schedule_by_epoch_and_across_a_resume(data_dir, tmp_path):
    kw = dict(lr=8.0, lr_decay=0.5, lr_decay_start=2, epochs=5)
    train(word_config(tmp_path / "straight", **kw), log=quiet)
    assert epoch_lrs(tmp_path / "straight") == [8.0, 8.0, 4.0, 2.0, 1.0]
    train(word_config(tmp_path / "resumed", **{**kw, "epochs": 3}), log=quiet)
    train(word_config(tmp_path / "resumed", **kw), resume=True, log=quiet)
    assert epoch_lrs(tmp_path / "resumed") == epoch_lrs(tmp_path / "straight")
    a, b = (ck.load(tmp_path / d / "last.safetensors") for d in ("straight", "resumed"))
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    # an explicit lr on resume takes over, and the decay goes on from it
    train(word_config(tmp_path / "resumed", **{**kw, "epochs": 7}), resume=True, lr=3.0,
          log=quiet)
    assert epoch_lrs(tmp_path / "resumed")[5:] == [3.0, 1.5]
    assert ck.load(tmp_path / "resumed" / "last.safetensors").config["lr"] == 3.0


# -- evaluate -----------------------------------------------------------------------------------


def test_evaluate_counts_known_unknowns_and_every_token(data_dir, tmp_path, make_corpus):
    train(word_config(tmp_path / "run", epochs=1), log=quiet)
    model = LanguageModel.from_checkpoint(ck.load(tmp_path / "run"))
    assert model.eos and model.tokenization == "word"
    text = make_corpus("the time traveller zzqx\n\nand qqqy the qqqy\nthe\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = evaluate_text(model, str(text), batch_size=2, num_steps=3)
    tokens = ["the", "time", "traveller", "zzqx", EOS, EOS, "and", "qqqy", "the", "qqqy", EOS,
              "the", EOS]
    assert r["text_tokens"] == len(tokens) and r["tokens"] == len(tokens) - 1
    assert r["unknown"] == 3 and r["unknown_share"] == pytest.approx(3 / len(tokens))
    assert r["seconds"] > 0 and r["tokens_per_s"] > 0
    assert any("3 of 13 tokens" in str(w.message) for w in caught)
    # every token: one row (batch 1) gives the tokens' log-probabilities in one stream, the
    # state carried across its batches of 3 steps and into the last, partial one
    r = evaluate_text(model, str(text), batch_size=1, num_steps=3)
    assert r["tokens"] == len(tokens) - 1
    eng = get_engine("numpy", model.spec)
    ids = model.vocab.encode(tokens)
    logits, _ = eng.forward(eng.from_numpy(model.params), ids[None, :-1])
    logp = logits[0] - np.log(np.exp(logits[0]).sum(axis=1, keepdims=True))
    assert r["loss"] == pytest.approx(-logp[np.arange(12), ids[1:]].mean(), rel=1e-5)


# -- recipes ------------------------------------------------------------------------------------


def test_zaremba_recipes_in_our_loss_scale():
    small = apply_recipe(TrainConfig(), "zaremba-small")
    assert (small.lr, small.clip, small.num_steps, small.batch_size) == (20.0, 0.25, 20, 20)
    assert (small.lr_decay, small.lr_decay_start, small.epochs) == (0.5, 4, 13)
    assert (small.hidden_size, small.embedding_size, small.num_layers) == (200, 200, 2)
    assert (small.init, small.init_scale, small.dropout) == ("uniform", 0.1, 0.0)
    medium = apply_recipe(TrainConfig(), "zaremba-medium")
    assert medium.lr == 35.0 and medium.clip == pytest.approx(5 / 35)
    assert medium.lr_decay == pytest.approx(1 / 1.2) and medium.dropout == 0.5
    large = apply_recipe(TrainConfig(), "zaremba-large")
    assert large.clip == pytest.approx(10 / 35) and large.epochs == 55
    assert large.lr_decay_start == 14 and large.init_scale == 0.04
    assert small.data == "timemachine:train" and small.val_data == "timemachine:valid"
    own = apply_recipe(TrainConfig(), "zaremba-small", {"data": "ptb.train.txt"})
    assert own.val_data is None and own.min_freq == 0 and own.lr == 20.0
    assert {"114.5", "82.7", "78.4"} == {PAPER[n].split("perplexity ")[1].split()[0]
                                         for n in RECIPES if n in PAPER}


@pytest.mark.parametrize("clip", [1.0, 1e3])
def test_lr_t_and_clip_over_t_take_the_papers_steps_on_the_summed_loss(clip):
    """Zaremba's SGD (lr 1, norm clip c, the loss summed over the T steps and averaged over the
    B rows, torch.nn modules under autograd) and ours (lr T, clip c / T on the mean over T*B
    tokens) move the weights alike, with the clip biting (c 1) and idle (c 1e3)."""
    from bptt import optim, training

    V, T, B = 11, 7, 3
    spec = spec_for(V)
    params = init_params(spec, "uniform", 0, "float64", scale=0.5)
    rng = np.random.default_rng(1)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    ours = {k: v.copy() for k, v in params.items()}
    _, grads, _ = NumpyEngine(spec, dtype="float64").loss_and_grads(ours, X, Y, training=False)
    before, _ = training.clip_and_step(optim.make_optimizer("sgd", lr=T), ours, grads, clip / T)

    emb = torch.nn.Embedding(V, 6).double()
    lstm = torch.nn.LSTM(6, 6, num_layers=2).double()
    head = torch.nn.Linear(6, V).double()
    modules = {"embedding.": emb, "": lstm, "head.": head}
    for prefix, m in modules.items():
        m.load_state_dict({k: torch.tensor(params[prefix + k]) for k, _ in m.named_parameters()})
    out, _ = lstm(emb(torch.tensor(X.T)))                                   # (T, B, H)
    targets = torch.tensor(Y.T.reshape(-1))                                 # (T*B,)
    loss = torch.nn.functional.cross_entropy(head(out).reshape(T * B, V), targets,
                                             reduction="sum") / B
    loss.backward()
    paper_norm = math.sqrt(sum(float((p.grad ** 2).sum())
                               for m in modules.values() for p in m.parameters()))
    assert (paper_norm > clip) == (clip == 1.0)                      # the clip bites, or not
    assert paper_norm == pytest.approx(T * float(before), rel=1e-12)
    scale = min(1.0, clip / paper_norm)          # the paper's rule: g * c / ||g|| past c
    # clipping divides by the norm + 1e-6 (torch's rule, ours too): on our T times smaller
    # norm that 1e-6 weighs T times more, a relative 7e-6 / ||g|| in the clipped step
    rtol = 1e-10 if scale == 1.0 else 1e-5
    for prefix, m in modules.items():
        for k, p in m.named_parameters():
            step = -1.0 * scale * p.grad.numpy()                        # SGD at lr 1
            np.testing.assert_allclose(ours[prefix + k] - params[prefix + k], step, rtol=rtol,
                                       atol=1e-14)


def test_the_closing_line_names_the_best_validation_epoch_beside_the_last():
    from bptt.cli.train import summary

    overfit = [{"epoch": e, "perplexity": p, "val_perplexity": v, "tokens_per_s": 1000.0}
               for e, p, v in ((1, 900.0, 650.0), (2, 300.0, 399.8), (3, 40.0, 1737.0))]
    line = summary(overfit, "numpy")
    assert line.startswith("perplexity 40.00, validation perplexity 1737.00 (epoch 3; "
                           "best 399.80 at epoch 2)"), line
    assert "validation" not in summary([{k: v for k, v in overfit[0].items()
                                          if k != "val_perplexity"}], "numpy")


# -- the whole job through the command line ----------------------------------------------------


def test_word_model_train_resume_evaluate_generate_through_the_cli(data_dir, tmp_path, cli):
    run = tmp_path / "run"
    tiny = ("--hidden-size", "12", "--embedding-size", "12", "--batch-size", "10",
            "--num-steps", "12", "--epochs", "2", "--sample-every", "0", "--progress", "log",
            "--out", run)
    ran = cli("train", "--recipe", "zaremba-small", "--tie-weights", "--dropout", "0.2",
              "--dropout-mode", "variational", "--min-freq", "3", *tiny)
    assert ran.rc == 0, ran.err
    assert "report test perplexity 114.5" in ran.err
    closing = ran.out.splitlines()[0]
    assert "validation perplexity" in closing and "best" in closing and "at epoch" in closing
    assert "bptt evaluate" in ran.out and "timemachine:test" in ran.out
    saved = ck.load(run / "last.safetensors")
    assert saved.spec.tie_weights and saved.spec.dropout_mode == "variational"
    assert "head.weight" not in saved.params and saved.text["eos"] is True
    assert [m["lr"] for m in saved.metrics] == [20.0, 20.0]
    more = cli("train", "--resume", "--out", run, "--epochs", "3", "--progress", "log")
    assert more.rc == 0, more.err
    assert ck.load(run / "last.safetensors").train["epoch"] == 3
    ev = cli("evaluate", run, "--data", "timemachine:test", "--json", "--engine", "torch")
    assert ev.rc == 0, ev.err
    result = json.loads(ev.out)
    assert 0 < result["unknown"] < result["text_tokens"] and result["perplexity"] < 1800
    gen = cli("generate", run, "--prefix", "the time\ntraveller", "--length", "40",
              "--temperature", "1", "--seed", "0")
    assert gen.rc == 0, gen.err
    assert gen.out.startswith("the time\ntraveller ")
    model = LanguageModel.from_checkpoint(ck.load(run))
    assert model.join(["a", EOS, "b", "c", EOS]) == "a\nb c\n"
    assert generate(model, "the", 5, seed=0, temperature=1.0).startswith("the")


@pytest.mark.parametrize("argv, message", [
    (["--tie-weights", "--embedding-size", "8", "--hidden-size", "16"],
     "expected --embedding-size equal to --hidden-size 16 with --tie-weights"),
    (["--lr-decay", "1.5"], "expected lr_decay in (0, 1]"),
    (["--embedding-size", "0"], "expected embedding_size >= 1"),
    (["--max-vocab", "1"], "expected max_vocab >= 2"),
    (["--init-scale", "0"], "expected init_scale > 0"),
])
def test_bad_word_flags_are_one_line_errors(tmp_path, cli, argv, message):
    ran = cli("train", "--tokenization", "word", "--out", tmp_path / "run", *argv)
    assert ran.rc == 2 and message in ran.err and len(ran.err_lines) == 1, ran.err
    assert not (tmp_path / "run").exists()
