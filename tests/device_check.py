"""Catch device mix-ups without a GPU: run the code with the model on the ``meta`` device under
``one_device_per_op``, which fails any torch call that takes non-scalar tensors on two devices (a CPU
index gathered from device logits, a CPU mask on device rows, ...). CUDA raises on most such mixes; the
meta device does not, so this mode stands in for it."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten


class one_device_per_op(TorchFunctionMode):  # noqa: N801 (used as a context manager)
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves, _ = tree_flatten((args, kwargs))
        devices = {leaf.device for leaf in leaves if isinstance(leaf, torch.Tensor) and leaf.dim() > 0}
        if len(devices) > 1:
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes devices {sorted(map(str, devices))}")
        return func(*args, **kwargs)


def on_meta(loaded):
    """A copy-free meta twin of a loaded model's adapter (weights become shapes only)."""
    loaded.model.to("meta")
    return loaded.adapter
