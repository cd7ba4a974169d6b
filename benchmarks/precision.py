"""Thin wrapper: ``python benchmarks/precision.py [--quick]`` writes benchmarks/results/precision.json.

The benchmark itself lives in the package (``rnnkit/bench/precision.py``) so that ``rnnkit bench``
runs the same code on any install; see that module's docstring for what is measured.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

from rnnkit.bench import main_for  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_for("precision", Path(__file__).resolve().parent / "results")())
