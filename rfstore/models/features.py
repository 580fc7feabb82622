"""Capturing the outputs of named layers with forward hooks, stopping early.

Rules
-----
* Each requested layer is recorded at its **last** call in a forward pass.  A
  module applied several times per pass (torchvision ``BasicBlock.relu`` runs
  after ``bn1`` and again after the residual addition) therefore yields the
  block output.  The number of calls per layer is counted during the first
  forward pass of an extractor, which runs the whole network; the model must
  call its modules the same number of times on every input.
* Later passes stop as soon as every requested layer has had its last call
  (a private exception is raised from the hook and caught), so only the part
  of the network up to the deepest requested layer runs.
* Captured outputs are cloned when they are taken, so in-place operations
  that run later (``ReLU(inplace=True)``, ``out += identity``) cannot change
  them.  The output that ends the pass is not cloned (nothing runs after it)
  unless it shares memory with the input.
* With ``reduce``, each output is summarised inside its hook instead
  (``reduce(name, output)``), at the moment the module returns it: no clone
  is needed, later in-place operations cannot change the summary, and the
  full-size outputs of early layers are freed as the pass goes on.
* TorchScript modules do not support forward hooks, so capture needs an
  eager model; a :class:`LayerSelectionError` says so.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .layers import LayerSelectionError, resolve_layers

__all__ = ["FeatureExtractor"]


class _StopForward(BaseException):
    """Raised by a hook to end the forward pass; BaseException so that model code
    catching ``Exception`` cannot swallow it."""


@dataclass
class _Run:
    """State of one forward pass (one per thread)."""

    expected: tuple[int, ...] | None  # calls per slot; None during calibration
    calls: list[int]
    remaining: int
    source: torch.Tensor
    outputs: dict[int, Any] = field(default_factory=dict)


class _HookState(threading.local):
    """Per-thread pointer to the active run; hooks are no-ops when it is None."""

    run: _Run | None = None


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return True


Reducer = Callable[[str, torch.Tensor], Any]


def _make_hook(state: _HookState, slot: int, label: str, reduce: Reducer | None) -> Callable[..., None]:
    def take(output: torch.Tensor) -> Any:
        return output.clone() if reduce is None else reduce(label, output)

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        run = state.run
        if run is None:
            return
        if not isinstance(output, torch.Tensor):
            raise LayerSelectionError(
                f"layer {label!r} returned a {type(output).__name__}, not a tensor; "
                "choose a module that outputs a single tensor"
            )
        run.calls[slot] += 1
        if run.expected is None:  # calibration: keep every call, the last one wins
            run.outputs[slot] = take(output)
            return
        count, expected = run.calls[slot], run.expected[slot]
        if count < expected:
            return
        if count > expected:
            raise RuntimeError(
                f"layer {label!r} ran {count} times in this forward pass but "
                f"{expected} times in the first one; models whose call pattern depends "
                "on the input are not supported"
            )
        run.remaining -= 1
        if run.remaining == 0:
            if reduce is not None:
                run.outputs[slot] = reduce(label, output)
            else:
                keep = _shares_memory(output, run.source)
                run.outputs[slot] = output.clone() if keep else output
            raise _StopForward
        run.outputs[slot] = take(output)

    return hook


class FeatureExtractor(nn.Module):
    """Run a model and return the outputs of named layers.

    Parameters
    ----------
    model : nn.Module
        An eager (non-TorchScript) network; it becomes a submodule.
    layers : Sequence[str]
        Module names from ``model.named_modules()``, each at most once.
    reduce : callable, optional
        ``reduce(name, output) -> summary``, applied inside the hook to each
        captured output; the pass then returns the summaries instead of
        tensors. For a module reachable under several requested names, the
        first of them is passed.

    Raises
    ------
    LayerSelectionError
        For unknown names (with near matches) or TorchScript modules.

    Notes
    -----
    Hooks are registered on construction and removed by :meth:`close`, on
    leaving a ``with`` block, or when the extractor is garbage collected (the
    hooks do not reference the extractor).  While no pass of this extractor is
    running in the current thread the hooks do nothing, so the model can still
    be used directly, and several threads may share one extractor.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], reduce: Reducer | None = None) -> None:
        super().__init__()
        if isinstance(model, torch.jit.ScriptModule):
            raise LayerSelectionError(
                "layer capture needs an eager model, but this is a TorchScript module, "
                "which does not support forward hooks; load it with a 'module:factory' "
                "or 'file.py:factory' spec and a state_dict instead"
            )
        self.model = model
        self.layers: tuple[str, ...] = tuple(layers)
        modules = resolve_layers(model, self.layers)
        # One hook per distinct module (a module may be reachable by two names).
        slot_of_module: dict[int, int] = {}
        self._slots: tuple[int, ...] = tuple(
            slot_of_module.setdefault(id(module), len(slot_of_module)) for module in modules
        )
        self._num_slots = len(slot_of_module)
        self._state = _HookState()
        self._expected: tuple[int, ...] | None = None
        self._calibration_lock = threading.Lock()
        self._handles: list[RemovableHandle] = []
        registered: set[int] = set()
        for name, module, slot in zip(self.layers, modules, self._slots):
            if slot in registered:
                continue
            registered.add(slot)
            if isinstance(module, torch.jit.ScriptModule):
                self.close()
                raise LayerSelectionError(
                    f"layer {name!r} is a TorchScript module, which does not support "
                    "forward hooks; layer capture needs an eager model"
                )
            hook = _make_hook(self._state, slot, name, reduce)
            self._handles.append(module.register_forward_hook(hook))

    @property
    def call_counts(self) -> dict[str, int] | None:
        """Calls per layer in one forward pass, known after the first pass."""
        if self._expected is None:
            return None
        return {name: self._expected[slot] for name, slot in zip(self.layers, self._slots)}

    def _run(self, x: torch.Tensor, expected: tuple[int, ...] | None) -> _Run:
        run = _Run(
            expected=expected,
            calls=[0] * self._num_slots,
            remaining=self._num_slots,
            source=x,
        )
        previous = self._state.run
        self._state.run = run
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            self._state.run = previous
        return run

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on `x` up to the deepest requested layer.

        Parameters
        ----------
        x : torch.Tensor
            Input batch, e.g. ``(N, C, H, W)``.

        Returns
        -------
        dict[str, torch.Tensor]
            Layer name to output, in the order of `layers`; conv layers give
            ``(N, C, H', W')``, linear layers ``(N, F)``. With ``reduce``, the
            values are its summaries instead.
        """
        if not self._handles:
            raise RuntimeError("this FeatureExtractor is closed; create a new one")
        expected = self._expected
        if expected is None:
            with self._calibration_lock:
                if self._expected is None:
                    run = self._run(x, None)
                    missing = [
                        name for name, slot in zip(self.layers, self._slots)
                        if run.calls[slot] == 0
                    ]
                    if missing:
                        raise LayerSelectionError(
                            f"layers {missing} did not run in the forward pass (unused in "
                            "eval mode, or inside a TorchScript submodule); choose layers "
                            "that the model's forward calls"
                        )
                    self._expected = tuple(run.calls)
                    return self._collect(run)
            expected = self._expected
        run = self._run(x, expected)
        if run.remaining:
            raise RuntimeError(
                "the forward pass ended before every requested layer ran as often as in "
                "the first pass; models whose call pattern depends on the input are not "
                "supported"
            )
        return self._collect(run)

    def _collect(self, run: _Run) -> dict[str, torch.Tensor]:
        return {name: run.outputs[slot] for name, slot in zip(self.layers, self._slots)}

    def close(self) -> None:
        """Remove the hooks from the model; idempotent."""
        for handle in getattr(self, "_handles", ()):
            handle.remove()
        if hasattr(self, "_handles"):
            self._handles.clear()

    def __enter__(self) -> FeatureExtractor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass
