"""The torch network behind the `mlp` path predictor (imported only when one is built)."""

from __future__ import annotations

import torch
from torch import nn


class PathMlp(nn.Module):
    """Sum of embeddings (= a linear layer over one-hot inputs), then two hidden layers.

    Inputs per (token, source layer i): the experts at layers i, i−1, …, i−context+1 (one block of
    `num_experts` per slot; −1 for layers before the first), the source layer, the token id (hashed).
    """

    def __init__(self, num_experts: int, layers: int, context: int, token_buckets: int, hidden: int) -> None:
        super().__init__()
        self.num_experts, self.context, self.token_buckets = num_experts, context, token_buckets
        self.experts = nn.Embedding(context * num_experts + 1, hidden, padding_idx=context * num_experts)
        self.layer = nn.Embedding(layers, hidden)
        self.token = nn.Sequential(nn.Embedding(token_buckets + 1, 32), nn.Linear(32, hidden, bias=False))
        self.body = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_experts))

    def forward(self, context_experts: torch.Tensor, layer: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """context_experts (n, context, k) with −1 for absent layers; layer (n,); token (n,) (−1: none)."""
        slots = torch.arange(self.context, device=context_experts.device).view(1, -1, 1) * self.num_experts
        index = torch.where(context_experts >= 0, context_experts + slots, self.context * self.num_experts)
        hidden = self.experts(index.flatten(1)).sum(dim=1) + self.layer(layer)
        hidden = hidden + self.token(torch.where(token >= 0, token % self.token_buckets, self.token_buckets))
        return self.body(hidden)
