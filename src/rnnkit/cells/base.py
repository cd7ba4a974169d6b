"""What every recurrent cell shares: input checks, the choice of path, the time loop.

A cell is one recurrent layer in one direction over a batch-first sequence. Each cell
family (``rnn.py``, ``lstm.py``, ``gru.py``) writes down only what makes it itself:

- ``_reference_step``: one time step, the equations spelled out in plain torch ops;
- ``_fused_sequence`` / ``_fused_step``: the same computation through ATen's fused
  kernels (oneDNN on CPU, cuDNN on GPU), the kernels ``torch.nn.LSTM`` runs;
- which options the fused kernels can honour.

Where ATen has no kernel for a cell's options (peepholes, layer norm, the minimal cells),
``_run_fused`` runs rnnkit's own fused recurrence instead (``scan.py``, ``minimal.py``).

Which of these runs is chosen in one place, ``paths.py`` (``forward_path``, ``step_path``),
from the options (``backend="auto" | "fused" | "reference"``), the dtype, the device and
whether gradients are wanted; this base class asks it, then runs the time loop, masks
padding and packs variable-length batches for the fused kernels.

Internally a state is always a tuple of ``(batch, hidden_size)`` tensors: ``(h,)`` for
RNN and GRU, ``(h, c)`` for LSTM. At the public surface RNN and GRU take and return the
tensor ``h`` and LSTM the pair ``(h, c)``, as ``torch.nn`` does.
"""

from __future__ import annotations

import logging
import math
from typing import Literal, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..errors import RnnkitError
from .paths import Path, Paths, forced_reference, forward_path, select, step_path

Backend = Literal["auto", "fused", "reference"]
State = Union[Tensor, tuple[Tensor, Tensor]]
States = tuple[Tensor, ...]

log = logging.getLogger("rnnkit")
_fallbacks_reported: set[str] = set()


class RecurrentCell(nn.Module):
    """Base class of rnnkit's recurrent cells (see the module docstring).

    Args:
        input_size: features of each input step, ``I``.
        hidden_size: features of the hidden state, ``H``.
        bias: whether the cell has the biases ``b_ih`` and ``b_hh``.
        backend: ``"auto"`` runs the fused kernel whenever the options allow and says
            once (``logging``) why it does not; ``"fused"`` insists and raises at
            construction if the options rule the kernel out; ``"reference"`` always
            runs the spelled-out equations.
    """

    #: names of the gate traces ``forward(..., return_gates=True)`` returns
    gate_names: tuple[str, ...] = ()
    #: the family's name in the cell registry (``cells.CELLS``): what ``paths.py`` chooses by
    kind: str = ""
    #: how many ``H``-sized blocks ``weight_ih`` stacks (4 for LSTM, 3 for GRU, 1 for RNN)
    num_chunks: int = 1
    #: how many tensors the state holds: 2 for LSTM ``(h, c)``, 1 otherwise
    num_states: int = 1
    #: whether the cell has ``weight_hh``/``bias_hh`` (minGRU and minLSTM do not: their gates
    #: read only the input, which is what lets them train in parallel over time)
    recurrent_weights: bool = True

    def __init__(
        self, input_size: int, hidden_size: int, *, bias: bool = True, backend: Backend = "auto"
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or value < 1:
                raise RnnkitError(f"{name} must be a positive integer, got {value!r}")
        if backend not in ("auto", "fused", "reference"):
            raise RnnkitError(f"backend must be 'auto', 'fused' or 'reference', got {backend!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.backend = backend
        gate_rows = self.num_chunks * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gate_rows, input_size))
        recurrent = self.recurrent_weights
        self.register_parameter("weight_hh", nn.Parameter(torch.empty(gate_rows, hidden_size)) if recurrent else None)
        self.register_parameter("bias_ih", nn.Parameter(torch.empty(gate_rows)) if bias else None)
        self.register_parameter("bias_hh", nn.Parameter(torch.empty(gate_rows)) if bias and recurrent else None)

    def _finish_init(self) -> None:
        """Called by subclasses once all their options are set."""
        self.reset_parameters()
        reason = self.fused_unavailable_reason()
        if reason and self.backend == "fused":
            raise RnnkitError(f"backend='fused' cannot be honoured: {reason}; use backend='auto'")
        if reason and self.backend == "auto" and reason not in _fallbacks_reported:
            _fallbacks_reported.add(reason)
            log.info("%s runs the reference equations: %s", type(self).__name__, reason)

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as ``torch.nn`` does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    # ----------------------------------------------------------------------- contract

    def fused_unavailable_reason(self) -> Optional[str]:
        """Why the fused kernel cannot run this cell's options, or ``None`` if it can."""
        return None

    def torch_nn_unavailable_reason(self) -> Optional[str]:
        """Why ``torch.nn`` has no module with this cell's options, or ``None`` if it has."""
        return None

    @property
    def uses_fused(self) -> bool:
        """Whether ``forward`` (without ``return_gates``) runs a fused path, not the reference
        equations (which one: ``paths.forward_path``)."""
        return forced_reference(self) is None

    def paths(self, batch: int = 1, *, dtype: Optional[torch.dtype] = None, training: bool = False,
              precision: str = "fp32") -> Paths:
        """The paths ``step`` and ``forward`` take for ``batch`` streams on this machine, and why
        (``paths.select``); ``precision="bf16"``: under bfloat16 autocast."""
        return select(self, batch=batch, dtype=dtype, training=training, precision=precision)

    def initial_state(self, batch_size: int, like: Tensor) -> State:
        """The zero state for ``batch_size`` streams, on ``like``'s device and dtype."""
        zeros = like.new_zeros(batch_size, self.hidden_size)
        return self._to_public(tuple(zeros for _ in range(self.num_states)))

    def forward(
        self,
        x: Tensor,
        state: Optional[State] = None,
        *,
        lengths: Optional[Tensor] = None,
        return_gates: bool = False,
    ):
        """Run the cell over a sequence.

        Args:
            x: ``(batch, time, input_size)``.
            state: initial state, zeros if ``None`` (``(batch, H)``, or ``(h, c)`` for LSTM).
            lengths: ``(batch,)`` valid steps per sequence, for right-padded batches.
                Steps past a sequence's length give zero outputs and leave its state alone.
            return_gates: also return the per-step gate traces (reference equations).

        Returns:
            ``(outputs, state)``, outputs ``(batch, time, H)``; with ``return_gates``,
            ``(outputs, state, gates)``, ``gates`` a dict of ``(batch, time, H)`` tensors
            named by ``gate_names``.
        """
        self._check_input(x)
        states = self._check_state(state, x)
        lengths = _check_lengths(lengths, x)
        outputs, states, gates = self.run(x, states, lengths, return_gates)
        if return_gates:
            return outputs, self._to_public(states), gates
        return outputs, self._to_public(states)

    def step(self, x_t: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        """One time step for a batch of streams: ``x_t`` ``(batch, input_size)`` to ``(h_t, state)``."""
        if x_t.dim() != 2 or x_t.size(1) != self.input_size:
            raise RnnkitError(
                f"step expects x_t of shape (batch, {self.input_size}), got {tuple(x_t.shape)}"
            )
        states = self._step(x_t, self._check_state(state, x_t.unsqueeze(1)))
        return states[0], self._to_public(states)

    # ------------------------------------------------------------------- internals

    def run(
        self, x: Tensor, states: States, lengths: Optional[Tensor], return_gates: bool
    ) -> tuple[Tensor, States, Optional[dict[str, Tensor]]]:
        """The unchecked forward used by layers: inputs already validated."""
        path = forward_path(self, dtype=x.dtype, state_dtype=states[0].dtype, device=x.device,
                            grad=torch.is_grad_enabled(), lengths=lengths is not None, return_gates=return_gates)
        if path.name == "reference":
            return self._run_reference(x, states, lengths, return_gates)
        outputs, states = self._run_fused(path, x, states, lengths)
        return outputs, states, None

    def _step(self, x_t: Tensor, states: States) -> States:
        """The unchecked step used by ``step``: on the path ``paths.step_path`` picks for this cell."""
        return self._step_on(step_path(self), x_t, states)

    def _step_on(self, path: Path, x_t: Tensor, states: States) -> States:
        """One step on ``path`` (chosen by ``paths.step_path``): the equations, or ATen's fused cell."""
        if path.name == "reference":
            return self._reference_step(self._project_input(x_t), states)[0]
        return self._fused_step(x_t, states)

    def _run_fused(self, path: Path, x: Tensor, states: States, lengths: Optional[Tensor]):
        """The forward on ``path`` (chosen by ``paths.forward_path``); here ATen's kernels
        (``aten-*``), packed for variable lengths; families with paths of their own override it."""
        hx = tuple(s.unsqueeze(0) for s in states)  # each (1, B, H): one layer, one direction
        if lengths is None:
            outputs, *final = self._fused_sequence(x, hx, batch_sizes=None)
            return outputs, tuple(s.squeeze(0) for s in final)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        hx = tuple(s.index_select(1, packed.sorted_indices) for s in hx)
        data, *final = self._fused_sequence(packed.data, hx, batch_sizes=packed.batch_sizes)
        packed_out = PackedSequence(
            data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
        )
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=x.size(1))
        return outputs, tuple(s.index_select(1, packed.unsorted_indices).squeeze(0) for s in final)

    def _run_reference(self, x: Tensor, states: States, lengths: Optional[Tensor], return_gates: bool):
        projected = self._project_input(x)  # (B, T, chunks*H): the input half of every gate
        outputs, traces = [], []
        for t in range(x.size(1)):
            new_states, gates = self._reference_step(projected[:, t], states, return_gates)
            if lengths is not None:
                # A finished sequence keeps its state; its padded outputs are zero.
                valid = (lengths > t).unsqueeze(1)
                states = tuple(torch.where(valid, new, old) for new, old in zip(new_states, states))
                outputs.append(new_states[0] * valid)
            else:
                states = new_states
                outputs.append(new_states[0])
            if return_gates:
                traces.append(gates)
        gates = None
        if return_gates:
            gates = {name: torch.stack([g[name] for g in traces], dim=1) for name in self.gate_names}
            if lengths is not None:
                valid = torch.arange(x.size(1), device=x.device)[None, :, None] < lengths[:, None, None]
                gates = {name: trace * valid for name, trace in gates.items()}
        return torch.stack(outputs, dim=1), states, gates

    def _project_input(self, x: Tensor) -> Tensor:
        """``W_ih x + b_ih`` for every step at once: one large matmul instead of T small ones."""
        return nn.functional.linear(x, self.weight_ih, self.bias_ih)

    def _recurrent(self, h: Tensor) -> Tensor:
        """``W_hh h + b_hh``."""
        return nn.functional.linear(h, self.weight_hh, self.bias_hh)

    def _flat_weights(self) -> list[Tensor]:
        weights = [self.weight_ih, self.weight_hh]
        if self.bias:
            weights += [self.bias_ih, self.bias_hh]
        return weights

    def _reference_step(self, xw_t: Tensor, states: States, return_gates: bool = False):
        raise NotImplementedError

    def _fused_sequence(self, x: Tensor, hx: States, batch_sizes: Optional[Tensor]):
        raise NotImplementedError

    def _fused_step(self, x_t: Tensor, states: States) -> States:
        raise NotImplementedError

    # ------------------------------------------------------------------ checking

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise RnnkitError(f"expected a tensor (batch, time, {self.input_size}), got {type(x).__name__}")
        if x.dim() != 3:
            raise RnnkitError(
                f"expected input of shape (batch, time, {self.input_size}), got {x.dim()}-D {tuple(x.shape)}"
            )
        if x.size(2) != self.input_size:
            raise RnnkitError(
                f"expected {self.input_size} input features, got {x.size(2)}; "
                f"build the cell with input_size={x.size(2)} or fix the data"
            )
        if x.size(0) == 0 or x.size(1) == 0:
            raise RnnkitError(f"empty input {tuple(x.shape)}: need at least one sequence of one step")
        if not x.is_floating_point():
            raise RnnkitError(f"expected a floating-point input, got {x.dtype}; convert with x.float()")
        # One reduction screens the input cheaply (cheaper than isnan().any()); NaN or inf anywhere
        # makes the sum non-finite. Huge finite inputs can overflow too: the precise check decides.
        # On an accelerator the check would wait for the device at every forward (a host sync), so
        # it runs on the CPU only; the tasks check their data before it reaches a model.
        if x.device.type == "cpu" and not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
            kind = "NaN" if torch.isnan(x).any() else "infinite values"
            raise RnnkitError(f"input contains {kind}; fill or drop the missing values before the model sees them")

    def _check_state(self, state: Optional[State], x: Tensor) -> States:
        batch = x.size(0)
        if state is None:
            zeros = x.new_zeros(batch, self.hidden_size)
            return tuple(zeros for _ in range(self.num_states))
        states = (state,) if isinstance(state, Tensor) else tuple(state)
        expected = (batch, self.hidden_size)
        if len(states) != self.num_states or any(tuple(s.shape) != expected for s in states):
            got = [tuple(s.shape) for s in states]
            want = "(h, c), each" if self.num_states == 2 else "h"
            raise RnnkitError(f"expected state {want} of shape {expected}, got {got}")
        return states

    def _to_public(self, states: States) -> State:
        return states if self.num_states == 2 else states[0]

    def extra_repr(self) -> str:
        path = "fused" if self.uses_fused else "reference"  # which fused one: paths.forward_path
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}, path={path}"


def _check_lengths(lengths: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=x.device)
    if lengths.shape != (x.size(0),):
        raise RnnkitError(f"expected lengths of shape ({x.size(0)},), got {tuple(lengths.shape)}")
    if lengths.min() < 1 or lengths.max() > x.size(1):
        raise RnnkitError(
            f"every length must be between 1 and the padded time {x.size(1)}, "
            f"got {lengths.min().item()}..{lengths.max().item()}"
        )
    return lengths


def valid_steps(lengths: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    """``(B, T, 1)`` boolean, True on the steps within each sequence's length (``None``: all)."""
    if lengths is None:
        return None
    steps = torch.arange(x.size(1), device=x.device)
    return (steps[None, :] < lengths.to(x.device)[:, None]).unsqueeze(2)
