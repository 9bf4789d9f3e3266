"""`mlp`: a learned path predictor from the token and its experts at the last few layers.

One network per lookahead d serves every source layer (the layer is an input). Trained with
binary cross-entropy against the target layer's k experts on (token, layer) pairs of the training
tokens; it predicts the k highest-scoring experts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moetrace.predict.paths import PathPredictor, register_path_predictor
from moetrace.predict.paths.data import PathData


@register_path_predictor("mlp")
class PathMlpPredictor(PathPredictor):
    """A two-hidden-layer network over the token and its experts at the last `context` layers."""

    def __init__(
        self,
        context: int = 4,
        hidden: int = 512,
        train_steps: int = 3000,
        batch: int = 1024,
        lr: float = 2e-3,
        token_buckets: int = 16384,
        seed: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(context=context, hidden=hidden, train_steps=train_steps, batch=batch, lr=lr,
                         token_buckets=token_buckets, seed=seed, **options)  # fmt: skip
        self.context, self.hidden, self.train_steps, self.batch = context, hidden, train_steps, batch
        self.lr, self.token_buckets, self.seed = lr, token_buckets, seed
        self.nets: dict[int, Any] = {}

    def _net(self) -> Any:
        from moetrace.predict.paths.net import PathMlp

        return PathMlp(self.num_experts, len(self.layers), self.context, self.token_buckets, self.hidden)

    def fit(self, data: PathData, lookaheads: tuple[int, ...]) -> None:
        import torch

        super().fit(data, lookaheads)
        for d in lookaheads:
            sources = len(data.layers) - d
            generator = torch.Generator().manual_seed(self.seed + d)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + d)
                net = self._net()
            optimizer = torch.optim.Adam(net.parameters(), lr=self.lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.train_steps)
            experts = torch.as_tensor(data.experts)
            tokens = torch.as_tensor(data.token_id if data.token_id is not None else np.full(data.tokens, -1))
            net.train()
            for _ in range(self.train_steps):
                rows = torch.randint(0, data.tokens, (self.batch,), generator=generator)
                source = torch.randint(0, sources, (self.batch,), generator=generator)
                inputs = self._inputs(experts, rows, source)
                target = torch.zeros(self.batch, self.num_experts)
                target.scatter_(1, experts[rows, source + d], 1.0)
                logits = net(inputs, source, tokens[rows], source + d)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
            net.eval()
            self.nets[d] = net

    def _inputs(self, experts: Any, rows: Any, source: Any) -> Any:
        import torch

        layers = source[:, None] - torch.arange(self.context)[None, :]
        picked = experts[rows[:, None], layers.clamp(min=0)]
        return torch.where((layers >= 0)[..., None], picked, torch.full_like(picked, -1))

    def scores(self, data: PathData, source: int, lookahead: int) -> np.ndarray:
        import torch

        from moetrace.errors import InvalidArgumentError

        if lookahead not in self.nets:
            raise InvalidArgumentError(
                f"this mlp predictor was trained for lookahead {sorted(self.nets)}, not {lookahead}"
            )
        net = self.nets[lookahead]
        rows = torch.arange(data.tokens)
        tokens = torch.as_tensor(data.token_id if data.token_id is not None else np.full(data.tokens, -1))
        with torch.inference_mode():
            layer = torch.full((data.tokens,), source)
            inputs = self._inputs(torch.as_tensor(data.experts), rows, layer)
            return net(inputs, layer, tokens, layer + lookahead).numpy()

    def state(self) -> dict[str, np.ndarray]:
        return {
            f"nets.{d}.{name}": weight.detach().cpu().numpy()
            for d, net in self.nets.items()
            for name, weight in net.state_dict().items()
        }

    def restore(self, state: dict[str, np.ndarray]) -> None:
        import torch

        from moetrace.predict.files import grouped

        nets = grouped(state, "nets")
        for d in self.lookaheads:
            weights = nets[d]
            net = self._net()
            net.load_state_dict({name: torch.from_numpy(w) for name, w in weights.items()})
            net.eval()
            self.nets[d] = net
