"""Count the layers that activation checkpointing re-ran: proof it is on, not only requested.

transformers checkpoints a layer's `forward`, not its `__call__`, and only while the layer
is in train mode with gradients enabled (`GradientCheckpointingLayer`). A hook on the layer
therefore fires once per forward pass, while a hook on a module inside it also fires when
the backward pass recomputes the layer. The difference between the two counts is the
number of recomputations: 0 for a model left in eval mode, whatever was requested.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from transformers.modeling_layers import GradientCheckpointingLayer


class RecomputeCounter:
    """Hooks on every checkpointable layer of `model`; use as a context manager."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.layer_calls = 0  # forward passes through a layer
        self.body_calls = 0  # runs of the layer's first sub-module: passes + recomputations
        self._handles = []
        for module in model.modules():
            first = next(module.children(), None)
            if isinstance(module, GradientCheckpointingLayer) and first is not None:
                self._handles += [module.register_forward_pre_hook(self._count_layer),
                                  first.register_forward_pre_hook(self._count_body)]

    def _count_layer(self, module: torch.nn.Module, args: Any) -> None:
        self.layer_calls += 1

    def _count_body(self, module: torch.nn.Module, args: Any) -> None:
        self.body_calls += 1

    @property
    def recomputations(self) -> int:
        return self.body_calls - self.layer_calls

    def __enter__(self) -> RecomputeCounter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
