"""`mlp` and `lstm`: small torch models that forecast each series' deviation from its recent level.

One model serves every (layer, expert) series. At an origin its input is the series' last `lags`
values and its means over the last 4 … 1,024 steps, all minus the `window` mean (the level the
`window` method would carry forward); its output is the deviation from that level in K equal
segments of the horizon (K = min(H, 32)). An untrained model therefore forecasts like `window`,
and training can only add what the history predicts. Models are fitted for each horizon on a
training series: the part of the trace before the first origin, or another trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moetrace.errors import InvalidArgumentError
from moetrace.predict.forecasters import LoadForecaster, register_forecaster

SCALES = (4, 16, 64, 256, 1024)


def _prefix_means(series: np.ndarray, origins: np.ndarray, span: int) -> np.ndarray:
    """Mean of each column over the `span` rows before each origin (fewer at the start): (n, S)."""
    cumsum = np.concatenate([np.zeros((1, series.shape[1])), np.cumsum(series, axis=0)])
    starts = np.maximum(origins - span, 0)
    return (cumsum[origins] - cumsum[starts]) / (origins - starts)[:, None]


def features(series: np.ndarray, origins: np.ndarray, window: int, lags: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (n, S, lags + scales), level (n, S)) for a (T, S) series at each origin."""
    level = _prefix_means(series, origins, window)
    index = origins[:, None] - lags + np.arange(lags)[None, :]  # (n, lags)
    lagged = series[np.clip(index, 0, None)]  # (n, lags, S); before the first row: the first row
    lagged = np.transpose(lagged, (0, 2, 1)) - level[..., None]
    scales = np.stack([_prefix_means(series, origins, s) for s in SCALES], axis=2) - level[..., None]
    return np.concatenate([lagged, scales], axis=2), level


def segment_targets(
    series: np.ndarray, origins: np.ndarray, horizon: int, segments: int, level: np.ndarray
) -> np.ndarray:
    """Mean of each of K equal segments of rows [origin, origin + H), minus the level: (n, S, K)."""
    bounds = np.linspace(0, horizon, segments + 1).round().astype(int)
    cumsum = np.concatenate([np.zeros((1, series.shape[1])), np.cumsum(series, axis=0)])
    out = np.empty((len(origins), series.shape[1], segments))
    for k in range(segments):
        a, b = origins + bounds[k], origins + bounds[k + 1]
        out[:, :, k] = (cumsum[b] - cumsum[a]) / (b - a)[:, None] - level
    return out


def expand_segments(values: np.ndarray, horizon: int) -> np.ndarray:
    """(…, K) segment values -> (…, H) per step."""
    segments = values.shape[-1]
    bounds = np.linspace(0, horizon, segments + 1).round().astype(int)
    return np.repeat(values, np.diff(bounds), axis=-1)


class _Neural(LoadForecaster):
    learned = True
    kind = ""

    def __init__(
        self,
        window: int = 100,
        lags: int = 32,
        hidden: int = 64,
        train_steps: int = 400,
        lr: float = 3e-3,
        max_samples: int = 20_000,
        seed: int = 0,
        **options: Any,
    ) -> None:
        if window < 1 or lags < 1:
            raise InvalidArgumentError("--window and the number of lags must be at least 1")
        super().__init__(window=window, lags=lags, hidden=hidden, train_steps=train_steps, lr=lr, seed=seed, **options)
        self.window, self.lags, self.hidden = window, lags, hidden
        self.train_steps, self.lr, self.max_samples, self.seed = train_steps, lr, max_samples, seed
        self.models: dict[int, Any] = {}
        """horizon -> (torch module, input scale)"""
        self.loaded_meta: dict[str, Any] = {}
        """What a saved model says about the trace it was trained on."""

    def describe(self) -> str:
        return f"{self.name} (lags {self.lags}, w={self.window})"

    def segments(self, horizon: int) -> int:
        return min(horizon, 32)

    def build(self, inputs: int, outputs: int) -> Any:
        raise NotImplementedError

    def fit(self, train: np.ndarray, horizon: int) -> None:
        import torch

        columns = train.reshape(len(train), -1)
        first = min(self.lags, len(train) - 1)
        last = len(train) - horizon
        if last <= first:
            raise InvalidArgumentError(
                f"{self.name}: the training series has {len(train)} steps, too few for horizon {horizon} "
                f"(it needs more than {first + horizon}); give --train-trace or a longer --warmup"
            )
        origins = np.arange(first, last + 1)
        stride = max(1, int(np.ceil(len(origins) * columns.shape[1] / self.max_samples)))
        origins = origins[::stride]
        x, level = features(columns, origins, self.window, self.lags)
        y = segment_targets(columns, origins, horizon, self.segments(horizon), level)
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        scale = float(np.std(x[:, : self.lags])) or 1.0
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self.build(x.shape[1], y.shape[1])
        xt = torch.tensor(x / scale, dtype=torch.float32)
        yt = torch.tensor(y / scale, dtype=torch.float32)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        batch = min(256, len(xt))
        model.train()
        for _ in range(self.train_steps):
            rows = torch.randint(0, len(xt), (batch,), generator=generator)
            loss = torch.nn.functional.l1_loss(model(xt[rows]), yt[rows])  # MAE, the metric itself
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        self.models[horizon] = (model, scale)

    def forecast(self, history: np.ndarray, horizon: int) -> np.ndarray:
        return self.forecast_origins(history, np.array([len(history)]), horizon, None)[0]

    def forecast_origins(
        self, series: np.ndarray, origins: np.ndarray, horizon: int, history: int | None
    ) -> np.ndarray:
        import torch

        if horizon not in self.models:
            raise InvalidArgumentError(f"{self.name} has no model for horizon {horizon}; fit it or --load one that has")
        model, scale = self.models[horizon]
        columns = series.reshape(len(series), -1)
        x, level = features(columns, origins, self.window, self.lags)
        with torch.inference_mode():
            deviation = model(torch.tensor(x.reshape(-1, x.shape[-1]) / scale, dtype=torch.float32)).numpy() * scale
        deviation = deviation.reshape(len(origins), columns.shape[1], -1)
        steps = expand_segments(deviation, horizon) + level[..., None]  # (n, S, H)
        return np.transpose(steps, (0, 2, 1)).reshape(len(origins), horizon, *series.shape[1:])

    def save(self, path: str | Path, meta: dict[str, Any]) -> None:
        """Write the fitted models as a safetensors predictor file (`predict/files.py`); `meta` joins its header."""
        from moetrace.predict.files import LOAD_FORECASTER, write_predictor_file

        tensors = {
            f"models.{horizon}.{name}": weight.detach().cpu().numpy()
            for horizon, (model, _) in self.models.items()
            for name, weight in model.state_dict().items()
        }
        models = {
            str(horizon): {"scale": scale, "inputs": self.lags + len(SCALES), "outputs": self.segments(horizon)}
            for horizon, (_, scale) in self.models.items()
        }
        header = {"method": self.name, "options": self.options, "models": models, **meta}
        write_predictor_file(path, LOAD_FORECASTER, header, tensors)

    @classmethod
    def load(cls, path: str | Path) -> _Neural:
        """A forecaster saved by `save`, read as safetensors only (never unpickled)."""
        import torch

        from moetrace.errors import MoetraceError, PredictorFileError
        from moetrace.predict.files import LOAD_FORECASTER, grouped, read_predictor_file
        from moetrace.predict.forecasters import make_forecaster

        header, tensors = read_predictor_file(path, LOAD_FORECASTER)
        if header.get("method") not in ("mlp", "lstm"):
            raise PredictorFileError(f"{path} is not a saved moetrace mlp or lstm load forecaster")
        try:
            weights = grouped(tensors, "models")
            forecaster = make_forecaster(header["method"], **header["options"])
            assert isinstance(forecaster, _Neural)
            for horizon, entry in header["models"].items():
                model = forecaster.build(int(entry["inputs"]), int(entry["outputs"]))
                model.load_state_dict({name: torch.from_numpy(w) for name, w in weights[int(horizon)].items()})
                model.eval()
                forecaster.models[int(horizon)] = (model, float(entry["scale"]))
        except MoetraceError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            method = header["method"]
            raise PredictorFileError(f"{path}: its tensors do not fit its {method} header ({reason})") from None
        forecaster.loaded_meta = {k: v for k, v in header.items() if k in ("model", "trace_hash", "trained_on")}
        return forecaster


@register_forecaster("mlp")
class Mlp(_Neural):
    """Two hidden layers over the lags and multi-scale means of one series."""

    def build(self, inputs: int, outputs: int) -> Any:
        from moetrace.predict.forecasters.nets import mlp

        return mlp(inputs, self.hidden, outputs)


@register_forecaster("lstm")
class Lstm(_Neural):
    """An LSTM over the lags (each step carrying the multi-scale means too), then a linear head."""

    def __init__(self, lags: int = 16, hidden: int = 32, **options: Any) -> None:
        super().__init__(lags=lags, hidden=hidden, **options)

    def build(self, inputs: int, outputs: int) -> Any:
        from moetrace.predict.forecasters.nets import LstmNet

        return LstmNet(self.lags, inputs - self.lags, self.hidden, outputs)
