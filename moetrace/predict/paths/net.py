"""The torch network behind the `mlp` path predictor (imported only when one is built)."""

from __future__ import annotations

import torch
from torch import nn


class PathMlp(nn.Module):
    """Sum of embeddings (= a linear layer over one-hot inputs), a hidden layer, a head per target layer.

    Inputs per (token, source layer i): the experts at layers i, i−1, …, i−context+1, each embedded
    as (its layer, its id) so that expert 5 of layer 3 and expert 5 of layer 10 differ (−1 for layers
    before the first); the source layer; the token id (hashed). Output: one score per expert of the
    target layer, from that layer's own head.
    """

    def __init__(self, num_experts: int, layers: int, context: int, token_buckets: int, hidden: int) -> None:
        super().__init__()
        self.num_experts, self.context, self.token_buckets = num_experts, context, token_buckets
        self.experts = nn.Embedding(layers * num_experts + 1, hidden, padding_idx=layers * num_experts)
        self.layer = nn.Embedding(layers, hidden)
        self.token = nn.Sequential(nn.Embedding(token_buckets + 1, 32), nn.Linear(32, hidden, bias=False))
        self.body = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Parameter(torch.randn(layers, num_experts, hidden) * hidden**-0.5)
        self.head_bias = nn.Parameter(torch.zeros(layers, num_experts))

    def forward(
        self, context_experts: torch.Tensor, layer: torch.Tensor, token: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """context_experts (n, context, k) with −1 for absent layers; layer, token (−1: none), target: (n,)."""
        slot_layer = layer[:, None] - torch.arange(self.context, device=layer.device)[None, :]  # (n, context)
        absent = len(self.layer.weight) * self.num_experts
        index = torch.where(context_experts >= 0, slot_layer[..., None] * self.num_experts + context_experts, absent)
        hidden = self.experts(index.flatten(1)).sum(dim=1) + self.layer(layer)
        hidden = hidden + self.token(torch.where(token >= 0, token % self.token_buckets, self.token_buckets))
        hidden = self.body(hidden)
        layers, experts = self.head_bias.shape
        every = hidden @ self.head.view(layers * experts, -1).T  # (n, layers × experts): one matmul
        rows = torch.arange(len(target), device=target.device)[:, None]
        columns = target[:, None] * experts + torch.arange(experts, device=target.device)[None, :]
        return every[rows, columns] + self.head_bias[target]
