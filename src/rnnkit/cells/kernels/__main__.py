"""``python -m rnnkit.cells.kernels``: build the optional compiled kernels ahead of time."""

from . import build

for module in build(verbose=True):
    print(f"built {module.__file__}")
