"""Comments say why, not how fast: no comment or docstring in ``src/`` quotes a timing, a speed-up or a
benchmark score. Such figures go stale on the next CPU; they belong in ``benchmarks/results/*.json``
and the README. A comment may name the benchmark that sets a threshold (``benchmarks/streaming.py``).

The check reads Python comments and docstrings (module, class, function and attribute strings) and
the C++ kernels' comments, and fails listing ``file:line`` for every figure found."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: what a quoted measurement looks like; shapes (``2x2``, ``1 x 512``), ratios of sizes (``3 x
#: horizon``), definitions (``an 80 % interval``) and hardware facts (``2 MB of L2``) do not match
FIGURES = {
    "a time": r"(?<![\w.])~?\d+(\.\d+)?\s?(ns|us|µs|μs|ms|s)\b(?!/)",
    "a speed-up factor": r"(?<![\w.])~?\d+(\.\d+)?x\b(?!\d)",
    "N times faster": r"\d+(\.\d+)?\s*(times|-fold)\s+(faster|slower|quicker)",
    "a speed-up of N": r"speed-?up\s+(of\s+)?~?\d",
    "two measurements side by side": r"\d+(\.\d+)?\s*(vs\.?|against|versus)\s*~?\d",
    "a throughput": r"\d\s*(tokens/s|tok/s|GFLOP/s|it/s|steps/s|samples/s)",
    "a score": r"\b(MASE|MAE|RMSE|sMAPE|BLEU|chrF|bpc|bits per char(acter)?|accuracy|F1|perplexity)\s*(of|=|:)?\s*~?\d+\.\d",
    "a measured share": r"~\s?\d+(\.\d+)?\s*%",
}
#: deliberate exceptions: (path under src/, text on the line, why it is not a measured figure)
ALLOWED: list[tuple[str, str, str]] = []


def _python_texts(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and every docstring line of a Python file."""
    texts = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        for statement in body if isinstance(body, list) else []:
            if (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
                    and isinstance(statement.value.value, str)):  # a docstring, or an attribute's
                first = statement.lineno
                texts += [(first + i, line) for i, line in enumerate(statement.value.value.splitlines())]
    return texts


def _cpp_texts(source: str) -> list[tuple[int, str]]:
    """(line, text) of every ``//`` and ``/* ... */`` comment line of a C++ file."""
    texts, in_block = [], False
    for number, line in enumerate(source.splitlines(), 1):
        if in_block or "/*" in line:
            texts.append((number, line))
            in_block = "*/" not in line.split("/*")[-1] if "/*" in line else "*/" not in line
        elif "//" in line:
            texts.append((number, line[line.index("//"):]))
    return texts


def figures_in(root: Path) -> list[str]:
    """``file:line: what: text`` for every measured figure in the comments and docstrings under ``root``."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".py", ".cpp", ".h"):
            continue
        source = path.read_text(encoding="utf-8")
        texts = _python_texts(source) if path.suffix == ".py" else _cpp_texts(source)
        where = path.relative_to(root).as_posix()
        for line, text in texts:
            if any(where == file and snippet in text for file, snippet, _ in ALLOWED):
                continue
            for what, pattern in FIGURES.items():
                if re.search(pattern, text):
                    found.append(f"{where}:{line}: {what}: {text.strip()}")
    return found


def test_no_comment_or_docstring_in_src_quotes_a_measured_figure():
    found = figures_in(SRC)
    assert not found, ("measured figures in comments or docstrings; move them to benchmarks/results/*.json "
                       "and the README, and name the benchmark instead:\n" + "\n".join(found))


@pytest.mark.parametrize("planted", [
    '    x = 1  # one step takes 198 us against 179 us for torch.nn\n',
    '    """The decoder head: 0.76 vs 0.79 validation MASE."""\n',
    '    x = 1  # ~2x faster than the reference path\n',
    '    x = 1  # a speed-up of 5.4 on AVX-512\n',
    '    x = 1  # reaches 400,000 tokens/s here\n',
    '    x = 1  # the concatenation cost ~5 %\n',
])
def test_the_check_finds_a_planted_figure(tmp_path, planted):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(f"def f():\n{planted}    return 1\n")
    (tmp_path / "pkg" / "kernel.cpp").write_text("// per step: 52 us with kernels\nint x;\n")
    found = figures_in(tmp_path)
    assert found[0].startswith("pkg/kernel.cpp:1: a time: // per step: 52 us"), found
    assert any(f.startswith("pkg/mod.py:2: ") for f in found[1:]), found


def test_shapes_definitions_and_hardware_facts_pass(tmp_path):
    (tmp_path / "ok.py").write_text(
        '"""A 2x2 grid; x (B, T, 4H); a 1 x 512 by 512 x 76 head; None = 3 x horizon."""\n'
        "Q = 0.1  # 0.1-0.9 an 80 % interval; the last 5 % held out; 2 MB of L2; test MSE below 0.05\n")
    assert figures_in(tmp_path) == []
