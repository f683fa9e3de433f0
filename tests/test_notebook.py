"""notebooks/bptt_from_scratch.ipynb runs top to bottom (nbclient, a real kernel) on its quick
configuration, so it never rots: its own asserts check the hand-written backward against the
NumPy engine and autograd, the gradient flow and the training run."""

from __future__ import annotations

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "bptt_from_scratch.ipynb"


def test_the_notebook_runs_from_the_derivation_to_generated_text(tmp_path, data_dir,
                                                                 monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("BPTT_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("BPTT_NOTEBOOK_OUT", str(tmp_path / "run"))
    monkeypatch.delenv("MPLBACKEND", raising=False)   # the kernel's inline backend: figures
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream")
    assert "every gradient equal within 1e-9" in text
    assert "last greedy : time traveller" in text
    assert (tmp_path / "run" / "best.safetensors").is_file()
    # the gradient-flow plot and the training curve, shown inline (training, which writes its
    # own PNG files, leaves the session's backend alone)
    figures = [c for c in nb.cells if c.cell_type == "code"
               and any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert len(figures) == 2, [c.source[:40] for c in figures]
    assert (tmp_path / "run" / "perplexity.png").is_file()


def test_the_stored_notebook_is_valid_and_holds_no_error():
    """What a reader sees without running it: valid nbformat, outputs without a traceback."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any("import bptt" in c.source for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
