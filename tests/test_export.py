"""``bptt export``: TorchScript and ONNX files that run with no bptt installed, giving the
greedy continuation of ``bptt generate`` and the NumPy engine's logits within float32
tolerance; the loop path (a scripted loop of a cell's steps) equal to the torch.nn path; the
rules of --out; one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bptt import checkpoint as ck
from bptt.data import Vocab
from bptt.export import Exportable, export_model
from bptt.export.write import reference
from bptt.model import ModelSpec, init_params
from conftest import subprocess_env

pytestmark = pytest.mark.usefixtures("no_network")

# A program that knows nothing of bptt: it reads the file's own description, encodes the
# prefix, warms the state up on it and continues greedily, as ``bptt generate`` does.
CONSUMER = r'''
import json, sys
sys.modules["bptt"] = None                # bptt must not be importable here
import numpy as np

def greedy(step, begin, desc, prefix, length):
    index = {t: i for i, t in enumerate(desc["vocab"])}
    ids = np.array([[index.get(c, desc["unk_index"]) for c in prefix]], dtype=np.int64)
    logits, state = step(ids, begin(1))
    first = logits
    out = list(prefix)
    for _ in range(length):
        nxt = int(np.argmax(logits[0, -1]))
        out.append(desc["vocab"][nxt])
        logits, state = step(np.array([[nxt]], dtype=np.int64), state)
    return "".join(out), first

def torchscript(path):
    import torch
    files = {"description.json": ""}
    m = torch.jit.load(path, _extra_files=files)
    desc = json.loads(files["description.json"])
    def step(ids, state):
        with torch.no_grad():
            y, s = m(torch.from_numpy(ids), state)
        return y.numpy(), s
    return desc, step, m.begin_state

def onnx(path):
    import onnxruntime
    sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    desc = json.loads(sess.get_modelmeta().custom_metadata_map["bptt"])
    names = desc["inputs"]
    def step(ids, state):
        y, *s = sess.run(None, dict(zip(names, [ids, *state])))
        return y, s
    def begin(b):
        H = desc["hidden_size"]
        return [np.zeros((desc["num_states"], b, H), np.float32) for _ in names[1:]]
    return desc, step, begin

jobs = json.loads(sys.argv[1])
results = []
for job in jobs:
    desc, step, begin = (torchscript if job["format"] == "torchscript" else onnx)(job["path"])
    text, logits = greedy(step, begin, desc, job["prefix"], job["length"])
    results.append({"text": text, "logits": np.asarray(logits).tolist(),
                    "bptt_loaded": "bptt" in sys.modules and sys.modules["bptt"] is not None})
print(json.dumps(results))
'''


def run_consumer(tmp_path: Path, jobs: list[dict]) -> list[dict]:
    """Run CONSUMER in a fresh interpreter, outside the repository, with bptt unimportable."""
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER, encoding="utf-8")
    env = subprocess_env()
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-I", str(script), json.dumps(jobs)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def prefix_logits(run: Path, prefix: str) -> np.ndarray:
    """The NumPy engine's logits over the prefix from a zero state."""
    ckpt = ck.load(run)
    model = Exportable.from_checkpoint(ckpt)
    ids = np.array([ckpt.vocab.encode(list(prefix))], dtype=np.int64)
    zeros = [np.zeros((model.num_states, 1, size), np.float32) for size in model.state_sizes]
    return reference(model, ids, zeros)[0]


def synthetic_run(folder: Path, cell: str, num_layers: int = 2, **spec_kw) -> Path:
    """A language-model checkpoint with random weights: exports need no training."""
    vocab = Vocab(list("abcdefghij klmnop"))
    spec = ModelSpec(cell=cell, input_size=len(vocab), hidden_size=12, output_size=len(vocab),
                     num_layers=num_layers, **spec_kw)
    params = init_params(spec, rng=np.random.default_rng(7))
    params = {k: 3.0 * v for k, v in params.items()}   # larger weights: decisive argmaxes
    ck.save(ck.Checkpoint(spec=spec, params=params, vocab=vocab,
                          text={"normalization": "none", "tokenization": "char"}),
            folder / "best.safetensors")
    return folder


def test_exported_files_continue_as_bptt_generate(hello_run, tmp_path, cli):
    run = hello_run / "run"
    prefix, length = "hello ", 40
    ran = cli("generate", run, "--prefix", prefix, "--length", str(length))
    assert ran.rc == 0, ran.err
    expected = ran.out.strip()
    jobs = []
    for fmt, suffix in (("torchscript", "pt"), ("onnx", "onnx")):
        out = tmp_path / f"model.{suffix}"
        ran = cli("export", run, "--format", fmt, "--out", out)
        assert ran.rc == 0, ran.err
        assert out.is_file() and f"wrote {out}" in ran.out
        jobs.append({"format": fmt, "path": str(out), "prefix": prefix, "length": length})
    want = prefix_logits(run, prefix)
    for job, got in zip(jobs, run_consumer(tmp_path, jobs), strict=True):
        assert not got["bptt_loaded"]
        assert got["text"] == expected, job["format"]
        np.testing.assert_allclose(np.array(got["logits"]), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_every_cell_and_path_matches_the_numpy_engine(tmp_path, cell):
    run = synthetic_run(tmp_path / cell, cell, nonlinearity="relu" if cell == "rnn" else "tanh")
    prefix, length = "abc fed", 25
    jobs = []
    for fmt, via in (("torchscript", "torch.nn"), ("torchscript", "loop"), ("onnx", None)):
        out = tmp_path / f"{cell}-{via}.{fmt}"
        result = export_model(run, fmt, out, via=via)
        assert result.via == (via or "onnx operators") and result.error <= 1e-5
        jobs.append({"format": fmt, "path": str(out), "prefix": prefix, "length": length})
    from bptt.lm.generate import LanguageModel, generate

    model = LanguageModel.from_checkpoint(ck.load(run))
    expected = generate(model, prefix, length)
    want = prefix_logits(run, prefix)
    for got in run_consumer(tmp_path, jobs):
        assert got["text"] == expected
        np.testing.assert_allclose(np.array(got["logits"]), want, rtol=1e-5, atol=1e-5)
    assert np.abs(want).max() > 0.5                    # the comparison is not of zeros


def test_a_projected_lstm_exports_as_torchscript_and_onnx_refuses_it(tmp_path):
    """proj_size P: torch.nn.LSTM(proj_size=P) in the file, h0 (L*D, B, P) from its own
    begin_state; the loop path and ONNX (no projection) refuse in one line, writing nothing."""
    run = synthetic_run(tmp_path / "proj", "lstm", proj_size=5)
    prefix, length = "abc fed", 25
    out = tmp_path / "proj.pt"
    result = export_model(run, "torchscript", out)
    assert result.via == "torch.nn" and result.error <= 1e-5
    from bptt.lm.generate import LanguageModel, generate

    expected = generate(LanguageModel.from_checkpoint(ck.load(run)), prefix, length)
    job = {"format": "torchscript", "path": str(out), "prefix": prefix, "length": length}
    (got,) = run_consumer(tmp_path, [job])
    assert got["text"] == expected
    np.testing.assert_allclose(np.array(got["logits"]), prefix_logits(run, prefix), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="expected via one of torch.nn for cell 'lstm'"):
        export_model(run, "torchscript", tmp_path / "loop.pt", via="loop")
    with pytest.raises(ValueError, match="ONNX's LSTM operator has no projection"):
        export_model(run, "onnx", tmp_path / "proj.onnx")
    assert not (tmp_path / "loop.pt").exists() and not (tmp_path / "proj.onnx").exists()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_regression_and_bidirectional_models_export(tmp_path, cell):
    from bptt.export import onnx_graph, torchscript

    spec = ModelSpec(cell=cell, input_size=3, hidden_size=5, output_size=2, num_layers=2,
                     bidirectional=True, task="regression", bias=cell == "gru")
    model = Exportable(spec, init_params(spec, rng=3))
    x, state = model.probe(batch=3, steps=6)
    want = reference(model, x, state)
    files = {"torch.nn": tmp_path / "a.pt", "loop": tmp_path / "b.pt"}
    for via, path in files.items():
        torchscript.save(model, str(path), via)
        got = torchscript.run(str(path), x, state)
        for a, b in zip([got[0], *got[1]], [want[0], *want[1]], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    onnx_graph.save(model, str(tmp_path / "c.onnx"))
    got = onnx_graph.run(str(tmp_path / "c.onnx"), x, state)
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_an_embedding_and_a_tied_head_export(tmp_path):
    """A model whose input is ``embedding.weight`` rows and whose head reads the same matrix
    (tied): both files gather the rows and reuse the matrix, checked against torch.nn."""
    import torch

    from bptt.export import onnx_graph, torchscript

    V, E = 9, 6
    spec = ModelSpec(cell="lstm", input_size=V, hidden_size=E, output_size=V, num_layers=1)
    rng = np.random.default_rng(0)
    params = {k: v for k, v in init_params(spec, rng=rng).items() if k != "head.weight"}
    params["weight_ih_l0"] = rng.uniform(-0.4, 0.4, (4 * E, E)).astype(np.float32)
    params["embedding.weight"] = rng.standard_normal((V, E)).astype(np.float32)
    model = Exportable(spec, params, [str(i) for i in range(V)])
    x, state = model.probe()
    emb = torch.nn.Embedding.from_pretrained(torch.from_numpy(params["embedding.weight"]))
    lstm = torch.nn.LSTM(E, E, batch_first=True)
    lstm.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()
                          if k.endswith("_l0")})
    with torch.no_grad():
        y, (h, c) = lstm(emb(torch.from_numpy(x)), tuple(torch.from_numpy(s) for s in state))
        logits = y @ emb.weight.T + torch.from_numpy(params["head.bias"])
    want = [logits.numpy(), h.numpy(), c.numpy()]
    torchscript.save(model, str(tmp_path / "e.pt"), "loop")
    onnx_graph.save(model, str(tmp_path / "e.onnx"))
    for got in (torchscript.run(str(tmp_path / "e.pt"), x, state),
                onnx_graph.run(str(tmp_path / "e.onnx"), x, state)):
        for a, b in zip([got[0], *got[1]], want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_an_existing_out_is_kept_without_overwrite(hello_run, tmp_path, cli):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"mine")
    ran = cli("export", hello_run / "run", "--format", "onnx", "--out", out)
    assert ran.rc == 2 and "--overwrite" in ran.err and len(ran.err_lines) == 1
    assert out.read_bytes() == b"mine"
    ran = cli("export", hello_run / "run", "--format", "onnx", "--out", out, "--overwrite")
    assert ran.rc == 0, ran.err
    assert out.read_bytes() != b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]   # no temporary left


@pytest.mark.parametrize("argv, message", [
    (["--format", "onnx", "--via", "loop"], "only with --format torchscript"),
    (["--format", "onnx", "--out", "{tmp}/no/such/folder/m.onnx"], "existing folder"),
    (["--format", "onnx", "--out", "{tmp}"], "to be a file"),
])
def test_bad_export_arguments_are_one_line_errors(hello_run, tmp_path, cli, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "m.onnx")]
    ran = cli("export", hello_run / "run", *argv)
    assert ran.rc == 2 and len(ran.err_lines) == 1 and message in ran.err, ran.err
    assert "Traceback" not in ran.err


def test_a_checkpoint_that_is_not_there_is_a_one_line_error(tmp_path, cli):
    ran = cli("export", tmp_path / "nothing", "--format", "torchscript", "--out",
              tmp_path / "m.pt")
    assert ran.rc == 2 and len(ran.err_lines) == 1 and "no such file" in ran.err
    assert not (tmp_path / "m.pt").exists()


def test_a_cell_without_torch_nn_class_or_step_is_refused_in_one_line(tmp_path, monkeypatch,
                                                                       cli):
    """A cell that neither torch.nn nor the step table knows (as a new cell kind is until its
    step is added): TorchScript refuses it in one line, and so does ONNX without an
    operator."""
    import dataclasses

    from bptt import cells
    from bptt.export import onnx_graph, torchscript

    run = synthetic_run(tmp_path / "run", "gru", num_layers=1)
    bare = dataclasses.replace(cells.CELLS["gru"], torch_name=None)
    monkeypatch.setitem(cells.CELLS, "gru", bare)
    monkeypatch.delitem(torchscript.STEPS, ("gru", None))
    ran = cli("export", run, "--format", "torchscript", "--out", tmp_path / "m.pt")
    assert ran.rc == 2 and len(ran.err_lines) == 1 and "STEPS" in ran.err, ran.err
    monkeypatch.delitem(onnx_graph.OPERATORS, "gru")
    ran = cli("export", run, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert ran.rc == 2 and len(ran.err_lines) == 1 and "ONNX operator" in ran.err, ran.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]        # nothing written
