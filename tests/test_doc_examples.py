"""The examples of README.md and docs/*.md run here, on the CPU, as written.

The rules a page must follow (docs/testing.md repeats them for writers):

- A fence opened with ```python is executed. Any other info string (``text``, ``bash``,
  ``toml``...) is not: output samples and pseudo-code are fenced ```text. Every opening
  fence names its language; a bare ``` fails ``test_every_fence_names_its_language``.
- The python blocks of one file run in order in one namespace: a block may use the names
  (imports, a model, data) that earlier blocks of the same file defined. Files share
  nothing.
- Each file's blocks run in a fresh temporary directory as the working directory, so the
  checkpoints and exports they write land there. The repository's autouse fixture seeds
  torch with 0 before every block.
- Examples must run as written wherever the package runs: no GPU, no network, no file
  that the example did not write itself. A block that would be slow on the CPU is made
  smaller, not skipped.
- A test's id is ``file:line`` of the block's opening fence, and tracebacks point at the
  lines of the Markdown file. Running one block alone (``-k 'ops.md:40'``) runs the
  earlier blocks of its file first.

Besides the blocks: every ``step-sparsity ...`` command of a ``bash`` block parses with
the real command line parser, the ``step-sparsity info`` samples have the structure of
the real output, relative links and their anchors resolve, and every ``step.<name>``
quoted in the docs exists.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Bare fences in pages this change did not edit; their owners fence them ```text and
# delete the entry here. Keyed by file and the block's first line, not by line number.
KNOWN_BARE_FENCES: set[tuple[str, str]] = {
    ("docs/cli.md", "step: validation perplexity 8.375 (loss 2.1253), switched at step 128"),
}


@dataclass
class Block:
    path: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    info: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


# An opening or closing fence; as in CommonMark, the info string holds no backtick.
FENCE = re.compile(r"^(?P<indent>[ ]*)(?P<fence>```+)(?P<info>[^`]*)$")


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order."""
    blocks, lines, i = [], path.read_text().split("\n"), 0
    rel = path.relative_to(ROOT).as_posix()
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        body, j = [], i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][indent:] if lines[j][:indent].isspace() else lines[j])
            j += 1
        assert j < len(lines), f"{rel}:{i + 1}: the fence opened here is never closed"
        blocks.append(Block(rel, i + 1, opening["info"].strip(), "\n".join(body)))
        i = j + 1
    return blocks


ALL_BLOCKS = [b for path in DOC_FILES for b in fenced_blocks(path)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.info.split()[:1] == ["python"]]


# ------------------------------------------------------------------- the python blocks


@dataclass
class FileRun:
    """The state of one file's blocks: a namespace and a working directory."""

    cwd: Path
    namespace: dict = field(default_factory=lambda: {"__name__": "__doc_example__"})
    done: int = 0  # how many of the file's blocks have run
    failed: str | None = None  # id of a block that failed


_RUNS: dict[str, FileRun] = {}


def run_block(block: Block, run: FileRun) -> None:
    # Blank lines first, so that a traceback names the line of the Markdown file.
    source = "\n" * block.line + block.code
    exec(compile(source, str(ROOT / block.path), "exec"), run.namespace)  # noqa: S102


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
def test_python_block_runs(block, tmp_path_factory, monkeypatch):
    run = _RUNS.get(block.path)
    if run is None:
        cwd = tmp_path_factory.mktemp(re.sub(r"\W", "_", block.path))
        run = _RUNS[block.path] = FileRun(cwd)
    same_file = [b for b in PYTHON_BLOCKS if b.path == block.path]
    index = same_file.index(block)
    if run.done > index:  # already ran (a rerun in the same session): start the file again
        run = _RUNS[block.path] = FileRun(tmp_path_factory.mktemp("rerun"))
    monkeypatch.chdir(run.cwd)
    monkeypatch.delenv("STEP_BACKEND", raising=False)  # the automatic choice, as a user has
    for earlier in same_file[run.done : index]:
        if run.failed:
            break
        try:
            run_block(earlier, run)
        except Exception:
            run.failed = earlier.id
        run.done += 1
    if run.failed:
        pytest.fail(f"{block.id} builds on {run.failed}, which failed")
    try:
        run_block(block, run)
    except Exception:
        run.failed = block.id
        raise
    finally:
        run.done = index + 1


def test_there_are_python_blocks():
    assert len(PYTHON_BLOCKS) >= 10
    assert {b.path for b in PYTHON_BLOCKS} >= {"README.md", "docs/ops.md", "docs/guide.md"}


def test_every_fence_names_its_language():
    known = {(b.path, b.code.split("\n")[0]): b for b in ALL_BLOCKS if not b.info}
    assert not KNOWN_BARE_FENCES - set(known), "fenced since: delete them from KNOWN_BARE_FENCES"
    bare = [b.id for key, b in known.items() if key not in KNOWN_BARE_FENCES]
    assert not bare, (
        f"fences without an info string at {bare}: use ```python for code the tests run, "
        "```text for output samples and pseudo-code (tests/test_doc_examples.py)"
    )


# ------------------------------------------------------------------------ the commands


def shell_commands(block: Block) -> list[list[str]]:
    """The simple commands of a bash block, as argument lists (comments dropped)."""
    commands = []
    for line in block.code.replace("\\\n", " ").split("\n"):
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(part)
            while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
                words.pop(0)
            if words:
                commands.append(words)
    return commands


STEP_COMMANDS = [
    (b, words)
    for b in ALL_BLOCKS
    if b.info == "bash"
    for words in shell_commands(b)
    if words[0] == "step-sparsity"
]


@pytest.mark.parametrize(
    "block, words", STEP_COMMANDS, ids=[f"{b.id}:{' '.join(w[1:3])}" for b, w in STEP_COMMANDS]
)
def test_step_sparsity_commands_parse(block, words):
    from step.cli import build_parser

    try:
        build_parser().parse_args(words[1:])
    except SystemExit as exit:  # argparse's usage error
        pytest.fail(f"{block.id}: `{' '.join(words)}` is refused by the parser ({exit})")


def test_script_paths_in_commands_exist():
    missing = [
        (b.id, word)
        for b in ALL_BLOCKS
        if b.info == "bash"
        for words in shell_commands(b)
        for word in words[1:]
        if re.match(r"^(scripts|experiments|benchmarks|tests)/\S+\.(py|sh)$", word)
        and not (ROOT / word).exists()
    ]
    assert not missing


def real_info() -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "STEP_BACKEND")}
    code = "import sys; from step.cli import main; sys.exit(main(['info']))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=120, check=True,
    )  # fmt: skip
    return result.stdout


def parse_info(text: str) -> tuple[list[str], dict[str, list[tuple[str, str, str]]]]:
    """(the version keys in order, {device: [(backend, yes/no, reason), ...]})."""
    keys, sections, device = [], {}, None
    for line in text.strip("\n").split("\n"):
        if line == "...":
            continue
        if header := re.match(r"^backends on (\S+):$", line):
            device = header[1]
            sections[device] = []
        elif device is not None:
            row = re.match(r"^  (\S+)\s+(yes|no)\s+(.+)$", line)
            assert row, f"not a backend row: {line!r}"
            sections[device].append((row[1], row[2], row[3]))
        else:
            version = re.match(r"^\s*([\w-]+): \S", line)
            assert version, f"not a version line: {line!r}"
            keys.append(version[1])
    return keys, sections


INFO_SAMPLES = [b for b in ALL_BLOCKS if re.search(r"(?m)^backends on \S+:$", b.code)]


@pytest.mark.parametrize("block", INFO_SAMPLES, ids=[b.id for b in INFO_SAMPLES])
def test_info_samples_match_the_real_output(block):
    assert block.info == "text"
    real_keys, real_sections = parse_info(real_info())
    keys, sections = parse_info(block.code)
    real_keys = list(dict.fromkeys(real_keys))  # one "gpu" line per GPU
    assert keys == [k for k in real_keys if k in keys], "version lines: unknown or out of order"
    assert keys in ([], real_keys), "the sample shows all the version lines or none"
    for device, rows in sections.items():
        real = {"cuda:0" if d.startswith("cuda") else d: r for d, r in real_sections.items()}
        if device not in real:
            continue  # a GPU's section, on a machine without one
        assert [r[0] for r in rows] == [r[0] for r in real[device]], f"{device}: backends"
        if device == "cpu" and not torch.cuda.is_available():
            # On a CPU-only machine these rows do not depend on the machine.
            fixed = [r for r in rows if r[0] in ("cuda", "reference")]
            assert fixed == [r for r in real["cpu"] if r[0] in ("cuda", "reference")]


def test_info_is_shown_somewhere():
    assert any(b.path == "docs/index.md" for b in INFO_SAMPLES)


# ------------------------------------------------------------------ links and names


def heading_anchors(path: Path) -> set[str]:
    """The anchors of a page's headings, as mkdocs' toc extension makes them."""
    anchors = set()
    in_fence = False
    for line in path.read_text().split("\n"):
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (heading := re.match(r"^#+ (.*)$", line)):
            text = re.sub(r"[^\w\s-]", "", heading[1].replace("`", "")).strip().lower()
            anchors.add(re.sub(r"[-\s]+", "-", text))
    return anchors


def prose(path: Path) -> str:
    """The page without its fenced blocks."""
    text = path.read_text()
    for b in fenced_blocks(path):
        text = text.replace(b.code, "")
    return text


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.relative_to(ROOT).as_posix() for p in DOC_FILES])
def test_relative_links_resolve(path):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(path)):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
            broken.append(target)
    assert not broken


def resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.relative_to(ROOT).as_posix() for p in DOC_FILES])
def test_quoted_step_names_exist(path):
    names = {
        name
        for span in re.findall(r"`[^`\n]+`", path.read_text())
        for name in re.findall(r"(?<![\w.])(step(?:\.[A-Za-z_]\w*)+)", span)
    }
    assert not sorted(n for n in names if not resolves(n))
