"""The torch networks behind `mlp` and `lstm` (imported only when one is built)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(inputs: int, hidden: int, outputs: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs)
    )


class LstmNet(nn.Module):
    """An LSTM over the lags, each step also carrying the context features, then a linear head."""

    def __init__(self, lags: int, context: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.lags = lags
        self.lstm = nn.LSTM(1 + context, hidden, batch_first=True)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = x[:, : self.lags, None]
        context = x[:, None, self.lags :].expand(-1, self.lags, -1)
        output, _ = self.lstm(torch.cat([sequence, context], dim=2))
        return self.head(output[:, -1])
