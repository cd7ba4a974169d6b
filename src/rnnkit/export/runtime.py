"""Run an exported graph in onnxruntime beside PyTorch, on sizes other than the traced example's.

A graph whose dynamic axes were fixed during tracing (an unrolled loop, a shape baked in as a
constant) still runs at the example's size; it fails, or answers wrongly, at another. So the
check feeds batch sizes and lengths that differ from the example's (:data:`SIZES`) and compares
every output with the task's own model in PyTorch, float32 within ``ATOL + RTOL * |expected|``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import RnnkitError
from .graphs import Graph

EXAMPLE = (3, 6)  # (batch, steps) of the inputs the exporter traces
SIZES = ((1, 4), (5, 11))  # (batch, steps) checked in onnxruntime; neither is the example's
ATOL = RTOL = 1e-5


def session(path: Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session of the graph at ``path``, on ``threads`` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess: Any, graph: Graph, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """The graph's outputs from onnxruntime for torch ``inputs`` given in the graph's input order."""
    return sess.run(None, {p.name: t.numpy() for p, t in zip(graph.inputs, inputs)})


def compare(name: str, expected: Sequence[torch.Tensor], got: Sequence[np.ndarray]) -> float:
    """The largest absolute difference over all outputs; raises if any exceeds the tolerance."""
    worst = 0.0
    for index, (want, have) in enumerate(zip(expected, got)):
        want = want.numpy()
        if want.shape != have.shape:
            raise RnnkitError(f"the exported {name} graph gives output {index} of shape {have.shape}, "
                              f"PyTorch {want.shape}; please report this")
        if want.dtype == np.bool_:
            ok, diff = bool((want == have).all()), float((want != have).sum())
        else:
            diff = float(np.abs(want - have).max()) if want.size else 0.0
            ok = np.allclose(have, want, atol=ATOL, rtol=RTOL)
        if not ok:
            raise RnnkitError(f"the exported {name} graph disagrees with PyTorch on output {index} "
                              f"(max difference {diff:.3g}); please report this")
        worst = max(worst, diff)
    return worst


def verify(graph: Graph, path: Path) -> dict[str, Any]:
    """Check ``path`` against the task's own model (``graph.original``, its fused paths) at every size of
    :data:`SIZES`; returns what was checked, for the sidecar."""
    sess = session(path)
    worst = 0.0
    for batch, steps in SIZES:
        inputs = graph.make_example(batch, steps)
        with torch.no_grad():
            expected = graph.original(*inputs)
        expected = (expected,) if isinstance(expected, torch.Tensor) else tuple(expected)
        worst = max(worst, compare(graph.name, expected, run(sess, graph, inputs)))
    return {"sizes": [{"batch": b, "steps": s} for b, s in SIZES], "max_abs_diff": worst,
            "tolerance": {"atol": ATOL, "rtol": RTOL}}


__all__ = ["ATOL", "EXAMPLE", "RTOL", "SIZES", "compare", "run", "session", "verify"]
