"""Expert weights in host memory, one contiguous (pinned) buffer per expert, and device slots."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moetrace.errors import NotAMoEModelError


@dataclass
class ExpertLayout:
    """How one expert's parameters lie in its flat buffer: (name, shape, offset, numel)."""

    parts: list[tuple[str, tuple[int, ...], int, int]]
    numel: int
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return self.numel * torch.tensor([], dtype=self.dtype).element_size()

    def views(self, buffer: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each parameter as a view of a (rows, numel) buffer laid out this way, shaped (rows, *shape)."""
        return {
            name: buffer[:, offset : offset + numel].unflatten(1, shape) for name, shape, offset, numel in self.parts
        }


def expert_layout(module: nn.Module, num_experts: int) -> ExpertLayout:
    parts, offset, dtype = [], 0, None
    for name, parameter in module.named_parameters(recurse=False):
        if parameter.dim() < 1 or parameter.shape[0] != num_experts:
            continue
        shape = tuple(parameter.shape[1:])
        numel = int(torch.Size(shape).numel())
        parts.append((name, shape, offset, numel))
        offset += numel
        dtype = dtype or parameter.dtype
        if parameter.dtype != dtype:
            raise NotAMoEModelError(f"{type(module).__name__} mixes parameter dtypes; moetrace cannot pack its experts")
    if not parts:
        raise NotAMoEModelError(f"{type(module).__name__} holds no per-expert parameters that moetrace can offload")
    return ExpertLayout(parts, offset, dtype)  # type: ignore[arg-type]


class HostExperts:
    """Every expert of one MoE block as a contiguous host buffer (pinned when CUDA is used)."""

    def __init__(self, module: nn.Module, num_experts: int, pin: bool) -> None:
        self.layout = expert_layout(module, num_experts)
        buffer = torch.empty((num_experts, self.layout.numel), dtype=self.layout.dtype, pin_memory=pin)
        with torch.no_grad():
            for name, _, offset, numel in self.layout.parts:
                buffer[:, offset : offset + numel].copy_(getattr(module, name).detach().reshape(num_experts, numel))
        self.buffer = buffer

    def views(self) -> dict[str, torch.Tensor]:
        """Each parameter as a view of the buffer, in its original shape (experts first)."""
        return self.layout.views(self.buffer)


class DeviceSlots:
    """`slots` expert-sized buffers on `device`, with per-parameter views of each slot."""

    def __init__(self, layout: ExpertLayout, slots: int, device: torch.device) -> None:
        self.layout = layout
        self.buffer = torch.empty((slots, layout.numel), dtype=layout.dtype, device=device)
        self.views = layout.views(self.buffer)
        self.ready: list[torch.cuda.Event | None] = [None] * slots
        self.released: list[torch.cuda.Event | None] = [None] * slots

    def weights(self, slot: int) -> dict[str, torch.Tensor]:
        return {name: view[slot] for name, view in self.views.items()}
