"""The shape of the code, read from the source with ``ast``.

  imports    layers from the ground (the cell registry) up to the command line: a module imports
             its own layer or below, never above; no import circle; lm and series apart
  length     no function longer than MAX_FUNCTION_LINES
  labels     every labelled code line the derivations in docs/ quote exists where they say,
             every `bptt.x.y` name the docs quote exists (imported to find out), and every
             hand-written backward carries its equation labels

Each checker is a plain function over a source tree and returns the problems it finds; the
tests at the end of each section feed it a small made-up tree, so a checker that cannot fail
fails its own test.
"""

from __future__ import annotations

import ast
import importlib
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

from bptt.cells import CELL_NAMES

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
DOCS = REPO / "docs"
PACKAGE = "bptt"


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package under ``src``, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def where(path: Path, line: int, src: Path = SRC) -> str:
    return f"{path.relative_to(src.parent)}:{line}"


# == imports ======================================================================================

# Bottom to top. A module belongs to the layer of its first name below ``bptt``.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("ground", frozenset({"cells", "errors", "jsonl", "dictconfig", "ranges"})),
    ("data", frozenset({"data"})),
    ("model", frozenset({"model"})),
    ("engine", frozenset({"engine"})),
    ("optim", frozenset({"optim"})),
    # what every job shares: the training core, checkpoint I/O, plotting, run folders, memory
    ("below the jobs", frozenset({"training", "checkpoint", "plot", "rundir", "memory",
                                      "tensorboard"})),
    ("jobs", frozenset({"lm", "series", "check", "gradflow", "bench", "export", "nn"})),
    ("cli", frozenset({"cli"})),
)
JOBS = dict(LAYERS)["jobs"]
# ``import bptt`` itself: only the top may lean on the package's lazy public names.
ROOT_LAYER = len(LAYERS) - 1
# Jobs that must not import each other in either direction.
APART = ("lm", "series")


def is_entry_point(module: str) -> bool:
    """``bptt/__init__.py`` and any ``__main__`` may import anything."""
    return module == PACKAGE or module.rsplit(".", 1)[-1] == "__main__"


def layer_of(module: str) -> int | None:
    """The index in LAYERS of ``module``'s layer (the package itself: the top); None: unplaced."""
    if module == PACKAGE:
        return ROOT_LAYER
    top = module.split(".")[1]
    for i, (_, names) in enumerate(LAYERS):
        if top in names:
            return i
    return None


@dataclass(frozen=True)
class Import:
    importer: str      # dotted module names
    target: str
    where: str         # file:line of the import statement

    def __str__(self) -> str:
        return f"{self.where}: {self.importer} imports {self.target}"


def _resolve(base: str, name: str | None, known: dict[str, Path]) -> str:
    """``from base import name``: the submodule when ``base.name`` is one, else ``base``."""
    if name is not None and f"{base}.{name}" in known:
        return f"{base}.{name}"
    return base


def imports(src: Path = SRC) -> list[Import]:
    """Every import of a ``bptt`` module in the package, at module level, inside functions, and
    through ``importlib.import_module("...")`` with a literal name; relative ones resolved."""
    known = modules(src)
    found: dict[Import, None] = {}                  # in order, once per statement and target
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    parts = parts[:len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [_resolve(base, a.name, known) for a in node.names]
            elif (isinstance(node, ast.Call) and node.args
                  and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)
                  and getattr(node.func, "attr", getattr(node.func, "id", None))
                  == "import_module"):
                targets = [node.args[0].value]
            for target in targets:
                if target.split(".")[0] == PACKAGE:
                    imp = Import(module, _known_prefix(target, known),
                                 where(path, node.lineno, src))
                    found[imp] = None
    return list(found)


def _known_prefix(target: str, known: dict[str, Path]) -> str:
    """``bptt.a.b.name`` -> the longest prefix that is a module (``import a.b.c`` of a module)."""
    parts = target.split(".")
    while len(parts) > 1 and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts)


def unplaced_modules(src: Path = SRC) -> list[str]:
    return [m for m in modules(src) if not is_entry_point(m) and layer_of(m) is None]


def upward_imports(src: Path = SRC) -> list[str]:
    """Each import of a module on a higher layer than the importer's, as ``file:line: ...``."""
    problems = []
    for imp in imports(src):
        if is_entry_point(imp.importer):
            continue
        low, high = layer_of(imp.importer), layer_of(imp.target)
        if low is None or high is None or high <= low:
            continue
        what = "a job" if imp.target.split(".")[1] in JOBS else f"layer {LAYERS[high][0]}"
        problems.append(f"{imp} ({what}, above layer {LAYERS[low][0]})")
    return problems


def import_cycles(src: Path = SRC) -> list[str]:
    """Each import circle (a strongly connected set of two or more modules, or a module that
    imports itself), with the imports that close it."""
    edges: dict[str, list[Import]] = {}
    for imp in imports(src):
        edges.setdefault(imp.importer, []).append(imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:                      # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for imp in edges.get(v, []):
            w = imp.target
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            inside = [imp for m in group for imp in edges.get(m, []) if imp.target in group]
            if len(group) > 1 or inside:
                circles.append(" <-> ".join(sorted(group)) + ": "
                               + "; ".join(str(imp) for imp in inside))

    for v in sorted(modules(src)):
        if v not in index:
            visit(v)
    return circles


def imports_between(a: str, b: str, src: Path = SRC) -> list[Import]:
    """Imports from ``bptt.a`` into ``bptt.b`` or back."""
    def top(m: str) -> str:
        return m.split(".")[1] if "." in m else ""

    return [imp for imp in imports(src)
            if {top(imp.importer), top(imp.target)} == {a, b}]


def test_every_module_has_a_layer():
    assert not unplaced_modules(), (
        f"modules on no layer: {unplaced_modules()}; add their first name to LAYERS")


def test_no_module_imports_a_layer_above_its_own():
    problems = upward_imports()
    assert not problems, "imports going up a layer:\n" + "\n".join(problems)


def test_no_import_circle():
    circles = import_cycles()
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_lm_and_series_do_not_import_each_other():
    found = [str(imp) for imp in imports_between(*APART)]
    assert not found, f"imports between bptt.{APART[0]} and bptt.{APART[1]}:\n" + "\n".join(found)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_import_checker_finds_upward_imports_and_circles(tmp_path):
    src = write_tree(tmp_path / "src", {
        "bptt/__init__.py": "from .check import run_checks\n",
        "bptt/cells.py": "",
        "bptt/model.py": "from . import cells\n",
        "bptt/engine/__init__.py": "",
        "bptt/engine/torch/__init__.py": "",
        "bptt/engine/torch/stack.py": """\
            import numpy as np


            def rows():
                from ...check import rows as job_rows
                return job_rows
            """,
        "bptt/check/__init__.py": "from .rows import run_checks\n",
        "bptt/check/rows.py": """\
            from ..engine.torch import stack
            from .table import fmt

            def run_checks():
                return fmt(stack)
            """,
        "bptt/check/table.py": """\
            import importlib

            def fmt(x):
                return importlib.import_module("bptt.check.rows")
            """,
        "bptt/lm/__init__.py": "",
        "bptt/series/__init__.py": "from bptt.lm import train\n",
        "bptt/lm/train.py": "",
        "bptt/newjob.py": "",
    })
    up = upward_imports(src)
    assert up == ["src/bptt/engine/torch/stack.py:5: bptt.engine.torch.stack imports "
                  "bptt.check.rows (a job, above layer engine)"]
    circles = import_cycles(src)
    assert len(circles) == 1, circles
    assert circles[0].startswith(
        "bptt.check.rows <-> bptt.check.table <-> bptt.engine.torch.stack: ")
    for closing in ("src/bptt/check/table.py:4: bptt.check.table imports bptt.check.rows",
                    "src/bptt/engine/torch/stack.py:5: bptt.engine.torch.stack imports "
                    "bptt.check.rows", "src/bptt/check/rows.py:2: bptt.check.rows imports "
                    "bptt.check.table"):
        assert closing in circles[0]
    assert [str(i) for i in imports_between("lm", "series", src)] == [
        "src/bptt/series/__init__.py:1: bptt.series imports bptt.lm.train"]
    assert unplaced_modules(src) == ["bptt.newjob"]


# == function length ==============================================================================

MAX_FUNCTION_LINES = 80


def function_lengths(src: Path = SRC) -> dict[str, int]:
    """Lines from ``def`` to the function's last line, for every function and method (nested
    ones too), keyed ``bptt/path.py::Qualified.name``."""
    lengths = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lengths[name] = child.end_lineno - child.lineno + 1
                walk(child, name + ".")
            else:
                walk(child, prefix)

    for path in sorted((src / PACKAGE).rglob("*.py")):
        walk(ast.parse(path.read_text(), str(path)), f"{path.relative_to(src).as_posix()}::")
    return lengths


def length_problems(lengths: dict[str, int], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    return [f"{name} is {n} lines (at most {limit})"
            for name, n in sorted(lengths.items()) if n > limit]


def test_no_function_is_longer_than_the_limit():
    problems = length_problems(function_lengths())
    assert not problems, "\n".join(problems)


def test_length_checker_counts_from_def_to_the_last_line(tmp_path):
    body = "\n".join(f"                x{i} = {i}" for i in range(80))
    src = write_tree(tmp_path / "src", {"bptt/m.py": f"""\
        class C:
            def long(self):
{body}
                return 1

            def short(self):
                def inner():
                    return 2
                return inner
        """})
    lengths = function_lengths(src)
    assert lengths == {"bptt/m.py::C.long": 82, "bptt/m.py::C.short": 4,
                       "bptt/m.py::C.short.inner": 2}
    assert length_problems(lengths) == ["bptt/m.py::C.long is 82 lines (at most 80)"]
    assert length_problems(lengths, limit=82) == []


# == code labels ==================================================================================
#
# A derivation in docs/ points at code as "`rnn.backward`, line `# dz_t = dh_t * (1 - h_t^2)`":
# a reference (a function `module.function` or `Class.method` of the package the document
# derives, a dotted `bptt.x.y` name or a `src/bptt/...py` file), then the labels it quotes, a
# code span starting with "# " in the text or a trailing "# ..." comment in a code block. Each
# label belongs to the reference before it and must begin a comment there. The package a
# document derives is the first package or file it names.

CODE_SPAN = re.compile(r"`([^`]+)`")
# `module.function` or `Class.method`; `rnn.py` or `metrics.jsonl` is a file name, not a reference
SHORT_NAME = re.compile(r"[A-Za-z_]\w*\.(?!(?:py|md|txt|jsonl?|csv|png|safetensors)$)[A-Za-z_]\w*")
DOTTED_NAME = re.compile(rf"{PACKAGE}(\.[A-Za-z_]\w*)+")
SOURCE_FILE = re.compile(rf"src/{PACKAGE}/[\w/]+\.py")
BLOCK_COMMENT = re.compile(r"\s(#\s.*?)\s*$")


def _squeeze(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Quote:
    """A label quoted by a document, and the reference it belongs to."""

    label: str
    reference: str | None
    doc: Path
    line: int

    def __str__(self) -> str:
        return f"{self.doc.name}:{self.line}: `{self.label}` (of `{self.reference}`)"


def _items(text: str) -> list[tuple[int, str, bool, bool]]:
    """(line, text, is_label, in_block) of every code span in the prose and every trailing
    comment in a code block, in reading order. Prose spans may wrap onto the next line."""
    items: list[tuple[int, str, bool, bool]] = []
    prose: list[tuple[int, str]] = []

    def flush() -> None:
        joined = "\n".join(line for _, line in prose)
        starts = [0]
        for _, line in prose:
            starts.append(starts[-1] + len(line) + 1)
        for m in CODE_SPAN.finditer(joined):
            line = prose[max(i for i, s in enumerate(starts[:-1]) if s <= m.start())][0]
            span = _squeeze(m.group(1))
            items.append((line, span, span.startswith("# "), False))
        prose.clear()

    fenced = False
    previous_blank = True
    in_block = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            flush()
            fenced = not fenced
            continue
        indented = line.startswith("    ") and (previous_blank or in_block)
        if fenced or indented:
            flush()
            in_block = not fenced
            m = BLOCK_COMMENT.search(line)
            if m:
                items.append((number, _squeeze(m.group(1)), True, True))
        else:
            in_block = in_block and not line.strip()
            prose.append((number, line))
        previous_blank = not line.strip()
    flush()
    return items


def quotes(doc: Path) -> list[Quote]:
    """The labels ``doc`` quotes, each with the reference it belongs to. A document that quotes
    no label in its prose quotes none: the comments of its code blocks are its own."""
    items = _items(doc.read_text())
    if not any(is_label and not in_block for _, _, is_label, in_block in items):
        return []
    found, reference = [], None
    for line, text, is_label, _ in items:
        if is_label:
            found.append(Quote(text, reference, doc, line))
        elif SHORT_NAME.fullmatch(text) or DOTTED_NAME.fullmatch(text) or \
                SOURCE_FILE.fullmatch(text):
            reference = text
    return found


def derived_package(doc: Path, src: Path = SRC) -> Path | None:
    """The folder of the first package or source file the document names."""
    for _, text, is_label, _ in _items(doc.read_text()):
        if is_label:
            continue
        if SOURCE_FILE.fullmatch(text):
            return (src.parent / text).parent
        if DOTTED_NAME.fullmatch(text):
            folder = src.joinpath(*text.split("."))
            if folder.is_dir():
                return folder
    return None


def _definition(tree: ast.AST, names: list[str]) -> ast.AST | None:
    """The function or class reached by ``names`` from ``tree`` (a module)."""
    node = tree
    for name in names:
        node = next((c for c in ast.iter_child_nodes(node)
                     if isinstance(c, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                     and c.name == name), None)
        if node is None:
            return None
    return node


def locate(reference: str, package: Path | None, src: Path = SRC) -> tuple[Path, ast.AST]:
    """The file and the definition (or the whole module) a reference names; ValueError when it
    names nothing."""
    if SOURCE_FILE.fullmatch(reference):
        path = src.parent / reference
        if not path.is_file():
            raise ValueError(f"no file {reference}")
        return path, ast.parse(path.read_text())
    parts = reference.split(".")
    if parts[0] == PACKAGE:
        candidates = [(src.joinpath(*parts[:i]), parts[i:]) for i in range(len(parts), 0, -1)]
    elif package is not None:
        first, rest = parts[0], parts[1:]
        candidates = [(package / first, rest)]
        candidates += [(path.with_suffix(""), parts) for path in sorted(package.glob("*.py"))]
    else:
        raise ValueError("the document names no package of its own")
    for base, names in candidates:
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                node = _definition(ast.parse(path.read_text()), names)
                if node is not None:
                    return path, node
    raise ValueError(f"`{reference}` names no function, class or file")


def comments(path: Path, node: ast.AST) -> list[str]:
    """The comments of ``path`` inside ``node`` (the whole file for a module), squeezed."""
    text = path.read_text()
    first = getattr(node, "lineno", 1)
    last = getattr(node, "end_lineno", None) or len(text.splitlines())
    return [_squeeze(t.string) for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type == tokenize.COMMENT and first <= t.start[0] <= last]


def label_problems(doc: Path, src: Path = SRC) -> list[str]:
    """Each label ``doc`` quotes that begins no comment of the code its reference names."""
    package = derived_package(doc, src)
    problems = []
    for quote in quotes(doc):
        if quote.reference is None:
            problems.append(f"{quote}: no reference before the label")
            continue
        try:
            path, node = locate(quote.reference, package, src)
        except ValueError as e:
            problems.append(f"{quote}: {e}")
            continue
        if not any(c.startswith(quote.label) for c in comments(path, node)):
            problems.append(f"{quote}: no such label in {path.relative_to(src.parent)}")
    return problems


def labelled_docs(docs: Path = DOCS) -> list[Path]:
    return [doc for doc in sorted(docs.glob("*.md")) if quotes(doc)]


def test_the_derivations_quote_labels():
    names = {doc.name for doc in labelled_docs()}
    assert {"bptt.md", "bptt_lstm_gru.md"} <= names
    assert len(quotes(DOCS / "bptt.md")) >= 20 and len(quotes(DOCS / "bptt_lstm_gru.md")) >= 20


@pytest.mark.parametrize("doc", labelled_docs(), ids=lambda d: d.name)
def test_every_quoted_label_exists_where_the_doc_says(doc):
    problems = label_problems(doc)
    assert not problems, "\n".join(problems)


def test_label_checker_rejects_a_made_up_label(tmp_path):
    src = write_tree(tmp_path / "src", {"bptt/engine/numpy/rnn.py": """\
        def backward(dz, w):
            dh = dz @ w                  # dh_{t-1} = dz_t W_hh
            return dh


        def forward(x):
            return x                     # h_t = x_t
        """})
    doc = tmp_path / "docs" / "d.md"
    write_tree(tmp_path / "docs", {"d.md": """\
        The derivation behind `bptt.engine.numpy`.

        In `rnn.backward`, line `# dh_{t-1} = dz_t W_hh` and
        line `# dW_hh = sum_t dz_t^T h_{t-1}`:

            dh = dz W     # dh_{t-1} = dz_t W_hh
            h = x         # h_t = x_t

        `rnn.forward` has `# dh_{t-1} = dz_t W_hh` too, and `rnn.sideways` has
        `# h_t = x_t`; `src/bptt/engine/numpy/gone.py` has `# h`.
        """})
    assert [q.line for q in quotes(doc)] == [3, 4, 6, 7, 9, 10, 10]
    assert label_problems(doc, src) == [
        "d.md:4: `# dW_hh = sum_t dz_t^T h_{t-1}` (of `rnn.backward`): no such label in "
        "src/bptt/engine/numpy/rnn.py",
        "d.md:7: `# h_t = x_t` (of `rnn.backward`): no such label in "
        "src/bptt/engine/numpy/rnn.py",
        "d.md:9: `# dh_{t-1} = dz_t W_hh` (of `rnn.forward`): no such label in "
        "src/bptt/engine/numpy/rnn.py",
        "d.md:10: `# h_t = x_t` (of `rnn.sideways`): `rnn.sideways` names no function, "
        "class or file",
        "d.md:10: `# h` (of `src/bptt/engine/numpy/gone.py`): no file "
        "src/bptt/engine/numpy/gone.py",
    ]


def dotted_names(docs: list[Path]) -> list[tuple[Path, int, str]]:
    """Every `bptt.x.y` code span of the documents' prose."""
    return [(doc, line, text) for doc in docs for line, text, is_label, _ in _items(doc.read_text())
            if not is_label and DOTTED_NAME.fullmatch(text)]


def missing_name(name: str) -> str | None:
    """None when ``name`` is a module or an attribute reached from one; else what is missing."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for j, attr in enumerate(parts[i:], i):
            if not hasattr(value, attr):
                return f"{'.'.join(parts[:j])} has no {attr}"
            value = getattr(value, attr)
        return None
    return f"no module {parts[0]}"


def test_every_dotted_name_the_docs_quote_exists():
    found = dotted_names([*sorted(DOCS.glob("*.md")), REPO / "README.md"])
    assert len(found) >= 20
    problems = [f"{doc.name}:{line}: `{name}`: {why}" for doc, line, name in found
                if (why := missing_name(name)) is not None]
    assert not problems, "\n".join(problems)


def test_dotted_name_checker():
    assert missing_name("bptt.check.references.truncated_loss") is None
    assert missing_name("bptt.run_checks") is None
    assert missing_name("bptt.check._truncated_loss") == "bptt.check has no _truncated_loss"


# -- every hand-written backward is labelled ----------------------------------------------------

MIN_BACKWARD_LABELS = 3
ENGINES_WITH_CELL_MODULES = ("numpy", "torch")
# a gradient, then its equation: "# dW_hh += dz_t^T h_{t-1}", "# dz^o_t   (6)", "# dc_t f_t (2)"
EQUATION_LABEL = re.compile(r"#\s*d[A-Za-z]\S*.*(=|\(\d+(?:\s*-\s*\d+)?(?:,\s*\d+)*\))")
EQUATION_CITED = re.compile(r"\((\d+(?:\s*-\s*\d+)?(?:,\s*\d+)*)\)")
EQUATION_NUMBERED = re.compile(r"^\s*\((\d+)\)", re.MULTILINE)


def backward_helpers(tree: ast.Module, backward: ast.AST) -> list[ast.AST]:
    """The module's own private functions that ``backward`` calls by name (its one-step
    backward, its weight gradients): their lines are part of the backward."""
    private = {n.name: n for n in tree.body
               if isinstance(n, ast.FunctionDef) and n.name.startswith("_")}
    called = {c.func.id for c in ast.walk(backward)
              if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
    return [private[name] for name in sorted(called & set(private))]


def backward_label_problems(path: Path, minimum: int = MIN_BACKWARD_LABELS) -> list[str]:
    """A cell module's ``backward`` must carry ``minimum`` equation labels, and each numbered
    equation they cite (``(2)``, ``(3-5)``) must be numbered in the module's docstring."""
    tree = ast.parse(path.read_text())
    node = _definition(tree, ["backward"])
    if node is None:
        return [f"{path.name}: no backward"]
    parts = [node, *backward_helpers(tree, node)]
    texts = [c for part in parts for c in comments(path, part)]
    labels = [c for c in texts if EQUATION_LABEL.match(c)]
    problems = []
    if len(labels) < minimum:
        problems.append(f"{path.name}: backward has {len(labels)} equation labels, expected at "
                        f"least {minimum}")
    numbered = set(EQUATION_NUMBERED.findall(ast.get_docstring(tree) or ""))
    if numbered:
        for c in texts:
            for cited in EQUATION_CITED.findall(c):
                ends = re.split(r"\s*-\s*|,\s*", cited)
                missing = [n for n in ends if n not in numbered]
                if missing:
                    problems.append(f"{path.name}: `{c}` cites equation(s) {missing}, not "
                                    "numbered in the module docstring")
    return problems


@pytest.mark.parametrize("engine", ENGINES_WITH_CELL_MODULES)
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_every_backward_is_labelled(engine, cell):
    path = SRC / PACKAGE / "engine" / engine / f"{cell}.py"
    assert path.is_file(), f"cell {cell!r} has no {engine} module {path.relative_to(REPO)}"
    problems = backward_label_problems(path)
    assert not problems, "\n".join(problems)


def test_backward_label_checker(tmp_path):
    cell = write_tree(tmp_path, {"cell.py": '''\
        """A cell.

            (1) dh_t = dz_{t+1} W
            (2) dz_t = dh_t * f'
        """


        def backward(dz, w):
            dh = dz @ w                  # dh_{t-1} = dz_t W_hh
            g = dh * 2                   # dz_t          (2)
            h = g                        # a plain comment (1, 2)
            return h                     # dx_t W        (1-3)
        '''}) / "cell.py"
    assert backward_label_problems(cell, minimum=3) == [
        "cell.py: `# dx_t W (1-3)` cites equation(s) ['3'], not numbered in the module "
        "docstring"]
    assert backward_label_problems(cell, minimum=4)[0] == (
        "cell.py: backward has 3 equation labels, expected at least 4")
    assert backward_label_problems(write_tree(tmp_path, {"none.py": "x = 1\n"}) / "none.py") \
        == ["none.py: no backward"]
