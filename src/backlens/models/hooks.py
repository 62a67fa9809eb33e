"""Forward hooks as context managers that always remove themselves.

Every hook the project installs goes through this module, so an exception inside a
``with`` block can never leave a stale hook on a shared model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


def first_tensor(output: object) -> torch.Tensor:
    """Modules such as GPT-2's attention return tuples; the hidden state is the first item."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find a tensor in module output of type {type(output).__name__}")


def _replace_first(output: object, tensor: torch.Tensor) -> object:
    if isinstance(output, torch.Tensor):
        return tensor
    return (tensor, *output[1:])


@dataclass
class ModuleIO:
    """Inputs and outputs seen by hooked modules during one forward pass.

    ``inputs[key]`` is the module's first positional input, ``outputs[key]`` its first
    output tensor; both keep their autograd history so VJPs can be taken with respect
    to them.
    """

    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


@contextmanager
def record_module_io(
    modules: Mapping[str, nn.Module], *, inputs: bool = True, outputs: bool = True
) -> Iterator[ModuleIO]:
    """Record the first input and/or first output tensor of each named module."""
    record = ModuleIO()
    handles = []

    def make_hook(key: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if inputs:
                record.inputs[key] = args[0]
            if outputs:
                record.outputs[key] = first_tensor(output)

        return hook

    try:
        for key, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(key)))
        yield record
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _forward_hooks(hooks: Mapping[nn.Module, Callable]) -> Iterator[None]:
    """Register each module's forward hook for the block and remove them all after it."""
    handles = []
    try:
        for module, hook in hooks.items():
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def replace_outputs(
    replacements: Mapping[nn.Module, Callable[[torch.Tensor], torch.Tensor]],
) -> AbstractContextManager[None]:
    """Replace each module's (first) output tensor by ``fn(output)`` during the block."""

    def make_hook(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
        return lambda module, args, output: _replace_first(output, fn(first_tensor(output)))

    return _forward_hooks({module: make_hook(fn) for module, fn in replacements.items()})


def add_to_outputs(
    additions: Mapping[nn.Module, Callable[[torch.Tensor], torch.Tensor]],
) -> AbstractContextManager[None]:
    """Add ``fn(input)`` to each module's (first) output during the block, ``input`` being the
    module's first positional input (e.g. a weight change applied to the inputs of a linear map)."""

    def make_hook(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
        return lambda module, args, output: _replace_first(output, first_tensor(output) + fn(args[0]))

    return _forward_hooks({module: make_hook(fn) for module, fn in additions.items()})
