"""Thin wrapper: ``python benchmarks/streaming.py [--quick]`` writes benchmarks/results/streaming.json.

Builds the optional compiled streaming kernel first (cached), as ``rnnkit bench`` does.

The benchmark itself lives in the package (``rnnkit/bench/streaming.py``) so that ``rnnkit bench``
runs the same code on any install; see that module's docstring for what is measured.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

from rnnkit.bench import main_for  # noqa: E402
from rnnkit.cells import kernels  # noqa: E402
from rnnkit.errors import RnnkitError  # noqa: E402

if __name__ == "__main__":
    try:  # the compiled streaming kernel, as `rnnkit bench` does (cached: a no-op once built)
        kernels.build(names=["stream"])
    except RnnkitError as exc:  # no compiler: the Python step is measured (the JSON says compiled_kernel: false)
        print(exc)
    sys.exit(main_for("streaming", Path(__file__).resolve().parent / "results")())
