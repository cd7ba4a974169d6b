"""Thin wrapper: ``python benchmarks/streaming.py [--quick]`` writes benchmarks/results/streaming.json.

The benchmark itself is ``benchmarks/common/streaming.py``, which ``benchmarks/speed.py`` runs too;
see that module's docstring for what is measured.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

from common import main_for  # noqa: E402  benchmarks/common/, beside this script

if __name__ == "__main__":
    sys.exit(main_for("streaming", Path(__file__).resolve().parent / "results")())
