"""``python -m rnnkit.cells.kernels``: build the optional compiled kernels ahead of time."""

from . import build

print(f"built {build(verbose=True).__file__}")
