"""A stack of recurrent cells: layers, direction, dropout, variable lengths, carried state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .cells import CELLS, RecurrentCell
from .cells.base import Backend, _check_lengths
from .cells.paths import COLMAJOR_STEPS, STACK_STEPS, Path, Paths, autocast_bf16, needs_grad, select, step_path
from .cells.streaming import PathCache, colmajor_step, compiled_step, selection_key, stack_step
from .errors import RnnkitError

#: a layer's state, laid out as ``torch.nn``'s: ``(num_layers * num_directions, B, H)``,
#: a pair ``(h, c)`` of those for LSTM
LayerState = Union[Tensor, tuple[Tensor, Tensor]]


class Recurrent(nn.Module):
    r"""Stacked, optionally bidirectional recurrent layers over batch-first sequences.

    Layer ``l`` reads layer ``l - 1``'s outputs (both directions concatenated), with
    dropout between layers in training, exactly as ``torch.nn.LSTM`` stacks them. The
    reverse direction reads each sequence backwards *within its own length*, so padding
    never reaches a valid step.

    Args:
        input_size: features per input step, ``I``.
        hidden_size: features per direction of the hidden state, ``H``.
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        num_layers: stacked layers, ``L``.
        bidirectional: add a reverse-direction cell per layer (``D`` = 2).
        dropout: dropout probability on the outputs of every layer but the last.
        **cell_options: passed to every cell (``backend``, ``peephole``, ``layer_norm``,
            ``nonlinearity``, ``bias``, ...).

    Shapes: inputs ``(B, T, I)``; outputs ``(B, T, D*H)``; state ``(L*D, B, H)`` (a pair
    of them for LSTM), in ``torch.nn``'s order: layer-major, forward before reverse.

    Cells live in ``self.cells``, index ``l * D + d``; ``to_torch()`` gives the equivalent
    ``torch.nn`` module with the same weights.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        cell: str = "lstm",
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        **cell_options: Any,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise RnnkitError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise RnnkitError(f"num_layers must be a positive integer, got {num_layers!r}")
        if not 0.0 <= dropout < 1.0:
            raise RnnkitError(f"dropout must be in [0, 1), got {dropout!r}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.cell_type, self.num_layers, self.bidirectional = cell, num_layers, bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.cell_options = dict(cell_options)
        cell_class = CELLS[cell]
        self.cells = nn.ModuleList(
            cell_class(input_size if layer == 0 else self.num_directions * hidden_size, hidden_size, **cell_options)
            for layer in range(num_layers)
            for _ in range(self.num_directions)
        )
        self.dropout = nn.Dropout(dropout)
        self.num_states = self.cells[0].num_states
        #: what the step paths cache between steps (compiled stack, packed weights): cells/streaming.py
        self.path_cache = PathCache()

    @property
    def output_size(self) -> int:
        """Features per output step: ``D * H``."""
        return self.num_directions * self.hidden_size

    def forward(
        self,
        x: Tensor,
        state: Optional[LayerState] = None,
        *,
        lengths: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
        return_gates: bool = False,
    ):
        """Run every layer over the sequence.

        Args:
            x: ``(B, T, I)``.
            state: initial state, ``(L*D, B, H)`` (a pair for LSTM); zeros if ``None``.
            lengths: ``(B,)`` valid steps of each right-padded sequence.
            mask: ``(B, T)`` boolean, True on valid steps; the alternative to ``lengths``.
            return_gates: also return gate traces, a dict keyed ``"l0"``, ``"l0_reverse"``, ...

        Returns:
            ``(outputs, state)`` or ``(outputs, state, gates)``; outputs ``(B, T, D*H)``.
        """
        self.cells[0]._check_input(x)
        lengths = _check_lengths(self._lengths_from(lengths, mask, x), x)
        states = self._split_state(state, x)
        final: list[tuple[Tensor, ...]] = []
        traces: dict[str, dict[str, Tensor]] = {}
        layer_input = x
        for layer in range(self.num_layers):
            direction_outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                reverse = direction == 1
                seq = _reverse_within_lengths(layer_input, lengths) if reverse else layer_input
                out, cell_final, gates = self.cells[index].run(seq, states[index], lengths, return_gates)
                if reverse:
                    out = _reverse_within_lengths(out, lengths)
                    gates = gates and {k: _reverse_within_lengths(v, lengths) for k, v in gates.items()}
                direction_outputs.append(out)
                final.append(cell_final)
                if return_gates:
                    traces[f"l{layer}" + ("_reverse" if reverse else "")] = gates
            layer_input = torch.cat(direction_outputs, dim=2) if self.bidirectional else direction_outputs[0]
            if layer < self.num_layers - 1:
                layer_input = self.dropout(layer_input)
        outputs, state = layer_input, self._join_state(final)
        return (outputs, state, traces) if return_gates else (outputs, state)

    def step(self, x_t: Tensor, state: Optional[LayerState] = None) -> tuple[Tensor, LayerState]:
        """One step of every layer for a batch of streams: ``x_t`` ``(B, I)`` to ``(output_t (B, H), state)``.

        The path is chosen by ``cells.paths.step_path`` (``self.paths()`` says which, and why)."""
        cache, cells = self.path_cache, self._modules["cells"]
        if type(state) is tuple and len(state) == 2:
            # The streaming hot path: the compiled stack the selector chose on an earlier step, one
            # call that re-checks its conditions itself; None sends it the checked way below.
            out = compiled_step(cache, cells, x_t, state)
            if out is not None:
                return out
        # The path chosen before for inputs like these (cells/streaming.py, selection_key): the
        # key holds the shapes the checks below passed, so a hit needs neither.
        key = selection_key(cells, x_t, state)
        path = cache.steps.get(key) if key is not None else None
        if path is not None:
            parts = state if type(state) is tuple else (state,)
        else:
            path, parts = self._choose_step(x_t, state)
            cache.remember(key, path)
        if path.name in COLMAJOR_STEPS:
            return colmajor_step(cells, cache, x_t, parts)
        if path.name in STACK_STEPS:
            return stack_step(path, cells, cache, x_t, *parts)
        final = []
        for cell, cell_state in zip(cells, zip(*(p.unbind(0) for p in parts))):
            cell_state = cell._step_on(path, x_t, cell_state)
            x_t = cell_state[0]
            final.append(cell_state)
        return x_t, self._join_state(final)

    def _choose_step(self, x_t: Tensor, state: Optional[LayerState]) -> tuple[Path, tuple[Tensor, ...]]:
        """Check a step's arguments and ask the selector: ``(path, the state as (L, B, H) tensors)``."""
        if self.bidirectional:
            raise RnnkitError("a bidirectional layer reads the future and cannot be stepped; use bidirectional=False to stream")
        if x_t.dim() != 2 or x_t.size(1) != self.input_size:
            raise RnnkitError(f"step expects x_t of shape (batch, {self.input_size}), got {tuple(x_t.shape)}")
        parts = self._check_state(state, x_t)  # x_t (B, I): only its batch size and dtype are read
        h = parts[0]
        state_dtype = h.dtype if h.dtype != torch.float32 else parts[-1].dtype  # float32 only if all are
        path = step_path(self.cells, batch=x_t.size(0), dtype=x_t.dtype, state_dtype=state_dtype,
                         device=x_t.device, grad=needs_grad(self.cells, x_t, *parts), bf16=autocast_bf16())
        return path, parts

    def paths(self, batch: int = 1, *, dtype: Optional[torch.dtype] = None, training: bool = False,
              precision: str = "fp32") -> Paths:
        """The paths ``step`` and ``forward`` take for ``batch`` streams on this machine, and why
        (``cells.paths.select``); ``precision="bf16"``: under bfloat16 autocast."""
        return select(self.cells, batch=batch, dtype=dtype, training=training, precision=precision,
                      bidirectional=self.bidirectional)

    def initial_state(self, batch_size: int, like: Tensor) -> LayerState:
        """The zero state for ``batch_size`` streams, on ``like``'s device and dtype."""
        zeros = like.new_zeros(self.num_layers * self.num_directions, batch_size, self.hidden_size)
        return (zeros, zeros.clone()) if self.num_states == 2 else zeros

    def to_torch(self) -> nn.RNNBase:
        """The ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (batch_first) with these weights.

        Raises for options ``torch.nn`` does not have (peepholes, layer norm).
        """
        reason = self.cells[0].torch_nn_unavailable_reason()
        if reason:
            raise RnnkitError(f"cannot convert to torch.nn: {reason}")
        module_class = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[self.cell_type]
        extra = {"nonlinearity": self.cells[0].nonlinearity} if self.cell_type == "rnn" else {}
        module = module_class(
            self.input_size, self.hidden_size, num_layers=self.num_layers, bias=self.cells[0].bias,
            batch_first=True, dropout=self.dropout.p, bidirectional=self.bidirectional, **extra,
        )
        module.load_state_dict(self.native_state_dict())
        return module.to(self.cells[0].weight_ih.device)

    def native_state_dict(self) -> dict[str, Tensor]:
        """This layer's weights under ``torch.nn``'s names (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...)."""
        native = {}
        for index, cell in enumerate(self.cells):
            layer, direction = divmod(index, self.num_directions)
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            for name, tensor in cell.state_dict().items():
                native[name + suffix] = tensor
        return native

    def load_native_state_dict(self, native: dict[str, Tensor]) -> None:
        """Load weights saved under ``torch.nn``'s names, e.g. ``torch.nn.LSTM(...).state_dict()``."""
        for index, cell in enumerate(self.cells):
            layer, direction = divmod(index, self.num_directions)
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            cell.load_state_dict({name: native[name + suffix] for name in cell.state_dict()})

    # ------------------------------------------------------------------- internals

    def _lengths_from(self, lengths: Optional[Tensor], mask: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
        if mask is None:
            return lengths
        if lengths is not None:
            raise RnnkitError("pass lengths or mask, not both")
        if mask.shape != x.shape[:2]:
            raise RnnkitError(f"expected mask of shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        mask = mask.bool()
        lengths = mask.sum(dim=1)
        prefix = torch.arange(x.size(1), device=x.device)[None, :] < lengths[:, None]
        if not torch.equal(prefix, mask):
            raise RnnkitError("mask must mark a prefix of each sequence (right padding); got gaps inside a sequence")
        return lengths

    def _split_state(self, state: Optional[LayerState], x: Tensor) -> list[tuple[Tensor, ...]]:
        """``(L*D, B, H)`` (or a pair of them) to one state tuple per cell."""
        count, batch = self.num_layers * self.num_directions, x.size(0)
        if state is None:
            zeros = x.new_zeros(batch, self.hidden_size)
            return [tuple(zeros for _ in range(self.num_states))] * count
        return list(zip(*(p.unbind(0) for p in self._check_state(state, x))))

    def _check_state(self, state: Optional[LayerState], x: Tensor) -> tuple[Tensor, ...]:
        """The state as a tuple of ``(L*D, B, H)`` tensors, zeros if ``None``; raises on bad shapes."""
        count, batch = self.num_layers * self.num_directions, x.size(0)
        if state is None:
            return tuple(x.new_zeros(count, batch, self.hidden_size) for _ in range(self.num_states))
        parts = (state,) if isinstance(state, Tensor) else tuple(state)
        expected = (count, batch, self.hidden_size)
        if len(parts) != self.num_states or not all(p.shape == expected for p in parts):
            want = "(h, c), each" if self.num_states == 2 else "a tensor"
            raise RnnkitError(
                f"expected state {want} of shape (layers*directions, batch, hidden) = {expected}, "
                f"got {[tuple(p.shape) for p in parts]}"
            )
        return parts

    def _join_state(self, final: list[tuple[Tensor, ...]]) -> LayerState:
        stacked = tuple(torch.stack([cell_state[k] for cell_state in final]) for k in range(self.num_states))
        return stacked if self.num_states == 2 else stacked[0]

    def extra_repr(self) -> str:
        return (
            f"cell={self.cell_type}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"bidirectional={self.bidirectional}"
        )


@dataclass(frozen=True)
class LayerPaths:
    """One recurrent layer of a model and the paths its step and forward take (:func:`explain`)."""

    name: str  # the layer's name in the model (``model.named_modules()``), "" for the model itself
    layer: str  # what it is, e.g. "Recurrent(lstm, 2 layers, 256 -> 256)"
    step: Path
    forward: Path


def explain(model: nn.Module, batch: int = 1, *, dtype: Optional[torch.dtype] = None, training: bool = False,
            precision: str = "fp32") -> list[LayerPaths]:
    """Which path the step and the forward of every recurrent layer in ``model`` take on this
    machine, and why (``cells.paths``), for ``batch`` streams of ``dtype`` (the weights' if
    ``None``), with gradients (``training``) or without, in ``precision`` ("bf16": bfloat16 autocast).

    Every :class:`Recurrent` is one entry; so is a cell used on its own, outside one. Asking may
    load (or start building, once) the optional compiled kernels, as the first step would."""
    if not isinstance(batch, int) or batch < 1:
        raise RnnkitError(f"batch must be a positive integer, got {batch!r}")
    if precision not in ("fp32", "bf16"):
        raise RnnkitError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    found, stacked = [], set()
    for name, module in model.named_modules():  # a layer comes before its cells
        if isinstance(module, Recurrent):
            stacked.update(id(cell) for cell in module.cells)
            paths = module.paths(batch, dtype=dtype, training=training, precision=precision)
            what = (f"Recurrent({module.cell_type}, {module.num_layers} layer{'s' * (module.num_layers > 1)}"
                    f"{', bidirectional' if module.bidirectional else ''}, {module.input_size} -> {module.hidden_size})")
        elif isinstance(module, RecurrentCell) and id(module) not in stacked:
            paths = select(module, batch=batch, dtype=dtype, training=training, precision=precision)
            what = f"{type(module).__name__}({module.input_size} -> {module.hidden_size})"
        else:
            continue
        found.append(LayerPaths(name, what, paths.step, paths.forward))
    return found


def set_backend(model: nn.Module, backend: Backend) -> nn.Module:
    """Switch every recurrent cell in ``model`` to ``backend`` and drop what the layers' step paths
    cached; returns ``model``. ``set_backend(model, "reference")`` makes every step and forward run
    the cells' equations in plain torch ops (``cells/paths.py``): what an exporter that traces the
    model needs, whatever kernels this machine has. All cells are checked before any changes."""
    if backend not in ("auto", "fused", "reference"):
        raise RnnkitError(f"backend must be 'auto', 'fused' or 'reference', got {backend!r}")
    cells = [(name, m) for name, m in model.named_modules() if isinstance(m, RecurrentCell)]
    for name, cell in cells:
        reason = cell.fused_unavailable_reason()
        if backend == "fused" and reason:
            raise RnnkitError(f"backend='fused' cannot be honoured by {name or 'the model'}: {reason}; use 'auto'")
    for _, cell in cells:
        cell.backend = backend
    for layer in model.modules():
        if isinstance(layer, Recurrent):
            layer.cell_options["backend"] = backend
            layer.path_cache.clear()  # a cached compiled stack would otherwise keep stepping
    return model


def _reverse_within_lengths(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse each sequence's first ``length`` steps in time, leaving its padding in place."""
    if lengths is None:
        return x.flip(1)
    steps = torch.arange(x.size(1), device=x.device)[None, :]  # (1, T)
    lengths = lengths.to(x.device)[:, None]  # (B, 1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (B, T)
    return x.gather(1, index[:, :, None].expand_as(x))


__all__ = ["LayerPaths", "LayerState", "Recurrent", "RecurrentCell", "explain", "set_backend"]
