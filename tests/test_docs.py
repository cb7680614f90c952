"""Every example in README.md and docs/*.md runs and says what it does.

The pages are README.md and every docs/*.md that exists when the tests are collected, so a
page is covered as soon as it is written. A block is a fenced block: a line of three
backticks with a language, its lines, and a line of three backticks.

- ```python blocks run, each in a fresh namespace, in the workspace below (the current
  directory). When the next block is a ```text block and no heading comes between them, it is
  the block's expected output, compared with doctest's ELLIPSIS checker. A python block that
  cannot run here (it needs another Keras backend, chosen before Keras is imported, or several
  devices) starts with the line ``# not run: <why>``: it is compiled, so its syntax is checked,
  and every formula it passes as the first argument of ``compile_loss`` must validate against
  the ``units`` written beside it.
- ```lossdsl blocks validate and compile in the context the language page states (UNITS and
  PARAMS below), and the compiled loss gives one finite value per sample.
- ```sh blocks: each ``lossdsl ...`` line runs as ``lossdsl.cli.main(shlex.split(line)[1:])``
  in the workspace, after its ``# comment`` is dropped and with ``< FILE`` as its standard
  input. Its exit status must be the one its comment states (``# exit status 1``), else 0.
  When the next block is a ```text block with no heading between, it is the output of the
  block's commands (each command's stdout, then its stderr), compared with ELLIPSIS. Lines
  that run ``make`` or a program in ``.venv/bin/`` are skipped: they build the environment or
  run this suite, atheris or another backend's tests. Any other line fails, so no documented
  command goes unchecked.
- The workspace of both holds a copy of examples/config.yaml at the same relative path,
  formulas.txt (the two valid formulas FORMULAS_TXT), t.npy and p.npy (labels and predictions
  of shape (4, 2)), and every ```yaml or ```toml block of the page whose first line is
  ``# NAME``, written as the file NAME (that line included, so that line numbers in messages
  are the block's).

Links between the pages are checked too: every relative link leads to a file and, when it has
an anchor, to a heading of that file. docs/speed.md is written apart from these pages; a link
to it is accepted before it exists.
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import io
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import lossdsl
import lossdsl.catalog
import lossdsl.cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGE_PAGE = ROOT / "docs" / "language.md"
UNITS = {"presence": 0, "loc": 1, "box": [2, 6], "cls": [6, 9]}
PARAMS = {"alpha": 0.7, "beta": 0.5}
FORMULAS_TXT = "bce(u0) + mse(u1)\nmse(u1) where true(u0) == 1\n"
NOT_RUN = "# not run:"
FENCE = re.compile(r"^```(\w*)\s*$")
HEADING = re.compile(r"^#{1,6} ")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    output: str | None  # the ```text block that follows, if any

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    """The page's fenced blocks, each with the ```text block that follows it."""
    lines = page.read_text().splitlines(keepends=True)
    found: list[tuple[int, str, str, bool]] = []  # line, lang, code, heading before it
    heading, i = False, 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            heading = heading or bool(HEADING.match(lines[i]))
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```")
        found.append((i + 1, match.group(1), "".join(lines[i + 1 : end]), heading))
        heading, i = False, end + 1
    blocks = []
    for k, (line, lang, code, _) in enumerate(found):
        follows = found[k + 1] if k + 1 < len(found) else None
        output = follows[2] if follows and follows[1] == "text" and not follows[3] else None
        blocks.append(Block(page, line, lang, code, output))
    return blocks


BLOCKS = [block for page in PAGES for block in read_blocks(page)]


def blocks(lang: str) -> list[Block]:
    return [b for b in BLOCKS if b.lang == lang]


def each(lang: str) -> pytest.MarkDecorator:
    chosen = blocks(lang)
    return pytest.mark.parametrize("block", chosen, ids=[b.id for b in chosen])


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder the examples run in; see the module's docstring."""
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "config.yaml", tmp_path / "examples" / "config.yaml")
    (tmp_path / "formulas.txt").write_text(FORMULAS_TXT)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "t.npy", (rng.uniform(size=(4, 2)) > 0.5).astype("float32"))
    np.save(tmp_path / "p.npy", rng.uniform(0.05, 0.95, size=(4, 2)).astype("float32"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_files(page: Path, where: Path) -> None:
    for block in read_blocks(page):
        first = block.code.split("\n", 1)[0]
        if block.lang in ("yaml", "toml") and first.startswith("# "):
            (where / first[2:].strip()).write_text(block.code)


def check_output(expected: str, got: str) -> None:
    checker = doctest.OutputChecker()
    assert checker.check_output(expected, got, doctest.ELLIPSIS), f"got:\n{got}"


# -- the pages as a whole ---------------------------------------------------------------


def test_the_language_page_states_the_context_used_here() -> None:
    text = LANGUAGE_PAGE.read_text()
    assert '`units={"presence": 0, "loc": 1, "box": [2, 6], "cls": [6, 9]}`' in text
    assert '`params={"alpha": 0.7, "beta": 0.5}`' in text


def test_every_builtin_loss_is_documented() -> None:
    """Each built-in loss and math function has its row in the language page's tables."""
    text = LANGUAGE_PAGE.read_text()
    for name in lossdsl.catalog.BUILTIN_LOSSES:
        assert f"| `{name}` |" in text, name
    for entry in lossdsl.catalog.MATH.values():
        assert f"| `{entry.signature}` |" in text, entry.signature


def test_the_readme_is_a_front_door_to_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in [*PAGES[1:], ROOT / "docs" / "speed.md"]:
        assert f"](docs/{page.name}" in readme, page.name


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_block = False
    for line in page.read_text().splitlines():
        if FENCE.match(line) or (in_block and line.rstrip() == "```"):
            in_block = not in_block
            continue
        if not in_block and HEADING.match(line):
            base = slug(line.lstrip("#"))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_links_lead_somewhere(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # another site
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if dest == ROOT / "docs" / "speed.md" and not dest.exists():
            continue
        assert dest.exists(), f"{page.name}: {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name}: {target}"


# -- formulas ---------------------------------------------------------------------------


@each("lossdsl")
def test_formula_block_validates_and_computes(block: Block) -> None:
    f = lossdsl.validate(block.code, units=UNITS, params=PARAMS)
    assert lossdsl.parse(str(f)) == f
    loss = lossdsl.compile_loss(block.code, units=UNITS, params=PARAMS)
    rng = np.random.default_rng(0)
    y_true = (rng.uniform(size=(8, 9)) > 0.5).astype("float32")
    y_pred = rng.uniform(0.05, 0.95, size=(8, 9)).astype("float32")
    values = np.asarray(loss.call(y_true, y_pred))
    assert values.shape == (8,)
    assert np.isfinite(values).all()


# -- Python -----------------------------------------------------------------------------


def formulas_passed_to_compile_loss(code: str) -> list[tuple[str, object]]:
    """``(formula, units)`` of each ``compile_loss("...", units=...)`` call with literals."""
    out = []
    for node in ast.walk(ast.parse(code)):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "compile_loss"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            units = next((k.value for k in node.keywords if k.arg == "units"), None)
            out.append((node.args[0].value, ast.literal_eval(units) if units else None))
    return out


@each("python")
def test_python_block_runs(block: Block, workspace: Path) -> None:
    if block.code.startswith(NOT_RUN):
        # Cannot run in this process: compile it, and validate the formulas it compiles.
        compile(block.code, block.id, "exec")
        for formula, units in formulas_passed_to_compile_loss(block.code):
            lossdsl.validate(formula, units=units)
        return
    write_files(block.page, workspace)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.code, block.id, "exec"), {"__name__": "docs_example"})
    if block.output is not None:
        check_output(block.output, out.getvalue())


# -- the command line -------------------------------------------------------------------

SKIPPED = re.compile(r"^make\b|\.venv/bin/")


def run_command(line: str) -> tuple[int, str]:
    """Run one documented ``lossdsl ...`` line; its exit status and its output."""
    words = shlex.split(line, comments=True)
    stdin = None
    if "<" in words:
        at = words.index("<")
        stdin = Path(words[at + 1]).read_text()
        words = words[:at] + words[at + 2 :]
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = lossdsl.cli.main(words[1:])
    finally:
        sys.stdin = saved
    return status, out.getvalue() + err.getvalue()


@each("sh")
def test_command_lines_run(block: Block, workspace: Path) -> None:
    write_files(block.page, workspace)
    outputs = []
    for raw in block.code.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or SKIPPED.search(line):
            continue
        assert line.startswith("lossdsl "), f"{block.id}: a command this test cannot run: {line}"
        expected = re.search(r"#.*\bexit status (\d+)", line)
        status, output = run_command(line)
        assert status == (int(expected.group(1)) if expected else 0), f"{line}\n{output}"
        outputs.append(output)
    if block.output is not None:
        assert outputs, f"{block.id}: an output shown for no command"
        check_output(block.output, "".join(outputs))
