"""Looking inside recurrent models: gradient flow through time, gate traces, feature-tracking cells.

- :func:`hidden_gradient_norms`: ``|dL/dh_t|`` at every step ``t``, the total derivative
  (through every later step), for any model and loss. It shows how fast the gradient
  fades going back in time: geometrically for a vanilla RNN, slowly for an LSTM.
- :func:`gate_traces`: every gate activation and cell state at every step, which fused
  kernels hide (pytorch 31423), from the cells' reference equations.
- :func:`best_cells`: the units whose activation follows a given feature most closely
  (Karpathy, Johnson & Fei-Fei, 2015, "Visualizing and Understanding Recurrent Networks").
- :class:`Inspectable`: what a task's model offers so that ``rnnkit inspect`` can read it.

(The module is not called ``inspect`` so that it never shadows the standard library's.)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from .errors import DataError, RnnkitError
from .layers import Recurrent


@dataclass
class InspectionInput:
    """One input ready for a model's recurrent stack.

    ``x`` is what the :class:`~rnnkit.layers.Recurrent` reads, ``(1, T, I)`` (already
    embedded or scaled); ``labels`` names each of the ``T`` steps on the plot's axis (a
    character, a value); ``features`` are named ``(T,)`` signals a unit may track.
    """

    x: Tensor
    labels: list[str]
    features: dict[str, np.ndarray] = field(default_factory=dict)
    title: str = ""


@runtime_checkable
class Inspectable(Protocol):
    """What a model loaded from a bundle offers to ``rnnkit inspect``.

    Any task's estimator can join by having these two methods; nothing to register.
    """

    def inspection_recurrent(self) -> Recurrent:
        """The recurrent stack whose gates are traced."""

    def inspection_input(self, source: str) -> InspectionInput:
        """Turn user input (text, or values as text) into the stack's input and axis labels.

        Raises :class:`~rnnkit.errors.DataError` saying what form is expected."""


def recurrent_of(model: object) -> Recurrent:
    """The model's recurrent stack, or a clear error if it has none."""
    if not isinstance(model, Inspectable):
        raise RnnkitError(f"a {type(model).__name__} model has no recurrent cell rnnkit can inspect (it lacks "
                          "inspection_recurrent/inspection_input); inspect a bundle of a recurrent task model")
    recurrent = model.inspection_recurrent()
    if not isinstance(recurrent, Recurrent):
        raise RnnkitError(f"a {type(model).__name__} model has no recurrent cell to inspect: its "
                          f"inspection_recurrent() gave {type(recurrent).__name__}, not an rnnkit Recurrent")
    return recurrent


# --------------------------------------------------------------------- gradient flow


@contextmanager
def _probe_hidden(recurrent: Recurrent) -> Iterator[dict[str, list[Tensor]]]:
    """Add a zero tensor that requires grad to every step's new hidden state.

    ``h_t + 0`` changes nothing forward, but the gradient of the loss with respect to that
    zero is the total ``dL/dh_t``: through the output at ``t`` and every later step. The
    cells run their reference equations meanwhile (the fused kernel has no per-step hook).
    """
    probes: dict[str, list[Tensor]] = {}
    saved = []
    for index, cell in enumerate(recurrent.cells):
        layer, direction = divmod(index, recurrent.num_directions)
        key = f"l{layer}" + ("_reverse" if direction else "")
        probes[key] = []
        original = cell._reference_step

        def step(xw_t, states, return_gates=False, _original=original, _list=probes[key]):
            new_states, gates = _original(xw_t, states, return_gates)
            zero = torch.zeros_like(new_states[0], requires_grad=True)
            _list.append(zero)
            return (new_states[0] + zero, *new_states[1:]), gates

        saved.append((cell, cell.backend))
        cell._reference_step, cell.backend = step, "reference"
    try:
        yield probes
    finally:
        for cell, backend in saved:
            del cell._reference_step  # the class's method shows through again
            cell.backend = backend


def hidden_gradient_norms(model: nn.Module, loss: Callable[[], Tensor], *,
                          recurrent: Optional[Recurrent] = None) -> dict[str, Tensor]:
    """``|dL/dh_t|`` for every step ``t`` and every layer (and direction) of the model.

    Args:
        model: any module holding a :class:`~rnnkit.layers.Recurrent` (found automatically
            when there is exactly one; else pass ``recurrent``).
        loss: a closure that runs ``model`` once on a batch and returns the scalar loss, e.g.
            ``lambda: loss_fn(model, batch, None)[0]``.

    Returns:
        ``{"l0": norms, ...}``, each ``(T,)``: the Frobenius norm over batch and units of
        the gradient at step ``t`` (reverse directions indexed by input position too).
        ``torch.autograd.grad`` computes it, so the parameters' ``.grad`` stay as they were.
    """
    recurrent = recurrent or _single_recurrent(model)
    with _probe_hidden(recurrent) as probes:
        value = loss()
        if not isinstance(value, Tensor) or value.dim() != 0:
            raise RnnkitError("loss() must return a scalar tensor, e.g. lambda: loss_fn(model, batch, None)[0]")
        steps = [zero for trace in probes.values() for zero in trace]
        if not steps:
            raise RnnkitError("loss() never ran the model's recurrent stack; call the model inside loss()")
        grads = torch.autograd.grad(value, steps, allow_unused=True)
    norms, position = {}, 0
    for key, trace in probes.items():
        chunk = grads[position:position + len(trace)]
        position += len(trace)
        norm = torch.stack([torch.zeros(()) if g is None else g.detach().norm().cpu() for g in chunk])
        norms[key] = norm.flip(0) if key.endswith("_reverse") else norm  # reverse cells run backwards
    return norms


def _single_recurrent(model: nn.Module) -> Recurrent:
    found = [m for m in model.modules() if isinstance(m, Recurrent)]
    if len(found) != 1:
        raise RnnkitError(f"the model holds {len(found)} Recurrent stacks; pass recurrent=... to pick one")
    return found[0]


# ------------------------------------------------------------------------- gate traces


@torch.no_grad()
def gate_traces(recurrent: Recurrent, x: Tensor) -> dict[str, dict[str, np.ndarray]]:
    """Every gate, the cell state and the output of every layer at every step, for one sequence.

    ``x`` ``(1, T, I)`` (or ``(T, I)``). Returns ``{"l0": {"input": (T, H), ..., "hidden":
    (T, H)}, "l0_reverse": ..., "l1": ...}`` as NumPy arrays, in input order for reverse
    directions too; ``"hidden"`` is the cell's output ``h_t``, what the next layer reads.
    The layers run as in :class:`~rnnkit.layers.Recurrent` in eval mode (no dropout).
    """
    x = x.unsqueeze(0) if x.dim() == 2 else x
    if x.dim() != 3 or x.size(0) != 1:
        raise DataError(f"gate_traces expects one sequence (1, T, {recurrent.input_size}), got {tuple(x.shape)}")
    recurrent.cells[0]._check_input(x)
    traces: dict[str, dict[str, np.ndarray]] = {}
    layer_input = x.to(next(recurrent.parameters()).device)
    for layer in range(recurrent.num_layers):
        outputs = []
        for direction in range(recurrent.num_directions):
            cell = recurrent.cells[layer * recurrent.num_directions + direction]
            flip = (lambda t: t.flip(1)) if direction else (lambda t: t)  # reverse cells read backwards
            out, _, gates = cell(flip(layer_input), return_gates=True)  # (1, T, H) each
            outputs.append(flip(out))
            key = f"l{layer}" + ("_reverse" if direction else "")
            traces[key] = {name: flip(t)[0].cpu().numpy() for name, t in {**gates, "hidden": out}.items()}
        layer_input = torch.cat(outputs, dim=2)
    return traces


def best_cells(trace: np.ndarray, feature: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    """The ``k`` units of ``trace`` ``(T, H)`` whose activation correlates most with ``feature`` ``(T,)``.

    Returns ``(unit, pearson r)`` pairs, strongest ``|r|`` first; constant units score 0.
    """
    trace, feature = np.asarray(trace, dtype=float), np.asarray(feature, dtype=float)
    if trace.ndim != 2 or feature.shape != (trace.shape[0],):
        raise DataError(f"expected a trace (T, H) and a feature (T,), got {trace.shape} and {feature.shape}")
    centred, f = trace - trace.mean(0), feature - feature.mean()
    denominator = np.sqrt((centred ** 2).sum(0) * (f ** 2).sum())
    r = np.divide(centred.T @ f, denominator, out=np.zeros(trace.shape[1]), where=denominator > 1e-12)
    order = np.argsort(-np.abs(r), kind="stable")[:k]
    return [(int(u), float(r[u])) for u in order]


def read_source(text_or_file: str) -> str:
    """``--input``: the contents of the file if it names one, else the text itself."""
    path = Path(text_or_file)
    try:
        if len(text_or_file) < 4096 and path.is_file():
            return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; pass a text or CSV file, or the input itself") from None
    return text_or_file


def parse_values(source: str, columns: int = 1, what: str = "the input") -> np.ndarray:
    """Numbers separated by commas, spaces or newlines (or a CSV with a header) as ``(T, columns)``.

    With ``columns`` > 1 each line (or each group of ``columns`` numbers) is one step."""
    lines = [line.strip() for line in source.strip().splitlines() if line.strip()]
    if lines and not _is_number(lines[0].replace(",", " ").split()[0]):
        lines = lines[1:]  # a CSV header
    tokens = [t for line in lines for t in line.replace(",", " ").replace(";", " ").split()]
    bad = next((t for t in tokens if not _is_number(t)), None)
    if bad is not None or not tokens:
        found = f"found {bad!r}" if bad is not None else "found nothing"
        raise DataError(f"{what} must be numbers separated by commas or newlines, {found}; "
                        "pass e.g. --input '1.5,2,3.25' or a CSV file of values")
    values = np.asarray([float(t) for t in tokens])
    if len(values) % columns:
        raise DataError(f"{what} needs {columns} numbers per step, got {len(values)} numbers in all; "
                        f"write one step per line as {', '.join(['x'] * columns)}")
    return values.reshape(-1, columns)


def parse_series(source: str, what: str = "the input") -> np.ndarray:
    """One series ``(T,)``: numbers (see :func:`parse_values`), or a CSV whose ``y`` or ``value``
    column (else its last column) holds them, as ``date,value`` and ``unique_id,ds,y`` files do."""
    lines = source.strip().splitlines()
    header = lines[0].split(",") if lines else []
    if len(lines) < 2 or len(header) < 2 or all(_is_number(t) for t in header):  # no header row
        return parse_values(source, 1, what)[:, 0]
    columns = [c.strip() for c in header]
    name = next((c for c in ("y", "value") if c in columns), columns[-1])
    index = columns.index(name)
    cells = [line.split(",")[index].strip() if len(line.split(",")) > index else "" for line in lines[1:]]
    return parse_values("\n".join(cells) or "-", 1, f"{what} (column {name!r})")[:, 0]


def _is_number(token: str) -> bool:
    try:
        return np.isfinite(float(token))
    except ValueError:
        return False


# ----------------------------------------------------------------------------- plots


def plot_gates(traces: dict[str, dict[str, np.ndarray]], labels: Sequence[str], path: Union[str, Path], *,
               layer: str = "l0", units: int = 24, title: str = "") -> Path:
    """Heatmaps of every gate, the cell state and ``h_t`` of ``layer``: units down, steps across.

    Steps are labelled with the input (characters or values), as in Karpathy et al. (2015);
    with many units, the ``units`` whose cell state (or output) varies most are shown.
    """
    from .plotting import plt  # matplotlib with the Agg backend

    if layer not in traces:
        raise RnnkitError(f"no layer {layer!r} in the model; choose one of {', '.join(traces)}")
    trace = traces[layer]
    main = trace.get("cell", trace["hidden"])
    shown = np.sort(np.argsort(-main.std(0), kind="stable")[:units])
    names = list(trace)
    steps = len(labels)
    figure, axes = plt.subplots(len(names), 1, figsize=(min(max(6.0, 0.18 * steps + 2), 24), 1.0 + 1.1 * len(names)
                                                          * max(1.0, len(shown) / 24)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        values = trace[name][:, shown].T  # (units, T)
        bounded = name in ("input", "forget", "output", "update", "reset")  # sigmoid gates live in [0, 1]
        image = ax.imshow(values, aspect="auto", interpolation="nearest",
                          cmap="viridis" if bounded else "RdBu_r",
                          vmin=0 if bounded else -np.abs(values).max(), vmax=1 if bounded else np.abs(values).max())
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.set_yticks([])
        figure.colorbar(image, ax=ax, pad=0.01, fraction=0.02)
        _label_steps(ax, labels)
    axes[0, 0].set_title(title or f"gates of {layer}, {len(shown)} of {main.shape[1]} units")
    figure.tight_layout()
    return _save(figure, path)


def _label_steps(ax, labels: Sequence[str]) -> None:
    every = max(1, len(labels) // 60)
    ticks = list(range(0, len(labels), every))
    ax.set_xticks(ticks)
    ax.set_xticklabels([labels[i].replace("\n", "⏎") or "·" for i in ticks], fontsize=7,
                       rotation=0 if all(len(labels[i]) <= 1 for i in ticks) else 90, family="monospace")


def plot_gradient_flow(curves: dict[str, np.ndarray], path: Union[str, Path], *, title: str = "") -> Path:
    """``|dL/dh_t|`` against ``t`` on a log scale, one line per model (or layer)."""
    from .plotting import plt

    figure, ax = plt.subplots(figsize=(8, 4.5))
    for name, norms in curves.items():
        norms = np.asarray(norms, dtype=float)
        ax.semilogy(np.arange(1, len(norms) + 1), np.maximum(norms, 1e-30), lw=1.6, label=name)
    ax.set_xlabel("time step t (the loss is read at the last step)")
    ax.set_ylabel("|dL / dh_t|")
    ax.set_title(title or "gradient flow through time")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure, path: Union[str, Path]) -> Path:
    from .plotting import plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        plt.close(figure)
        raise RnnkitError(f"plots are written as PNG; name the file *.png, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    import io

    from .files import atomic_write_bytes

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


__all__ = ["Inspectable", "InspectionInput", "best_cells", "gate_traces", "hidden_gradient_norms",
           "parse_series", "parse_values", "plot_gates", "plot_gradient_flow", "read_source", "recurrent_of"]
