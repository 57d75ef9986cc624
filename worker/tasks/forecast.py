"""``forecast`` on Prophet, whose wheel bundles its Stan model and cmdstan (no download).

Each job is its own model: Prophet fits the series it is given, then predicts ``horizon`` points
at the series' frequency with an 80% interval. A fit is one call that cannot be interrupted, so
the safe points are before and after it.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from schemas.tasks.forecast import ForecastInput
from worker.attempts import StopToken
from worker.errors import PermanentError

INTERVAL_WIDTH = 0.8


def _frequency(code: str) -> Any:
    import pandas as pd

    # Steps from the last point, whatever weekday or day of month it fell on.
    return {
        "H": pd.Timedelta(hours=1),
        "D": pd.Timedelta(days=1),
        "W": pd.Timedelta(weeks=1),
        "M": pd.DateOffset(months=1),
    }[code]


class ForecastAdapter:
    name = "forecast"

    def __init__(self) -> None:
        self._prophet: Any = None
        self._pd: Any = None
        self.device = "cpu"  # Stan fits on the CPU
        self.forward_passes = 0

    def load(self) -> None:
        # Prophet logs an error when plotly is missing (plots are not served here), and
        # cmdstanpy logs every chain start and stop through a plain-text handler of its own.
        logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
        import cmdstanpy
        import pandas as pd
        from prophet import Prophet

        stan_logger = logging.getLogger("cmdstanpy")
        for handler in list(stan_logger.handlers):
            stan_logger.removeHandler(handler)
        stan_logger.propagate = True
        stan_logger.setLevel(logging.WARNING)
        del cmdstanpy
        self._prophet, self._pd = Prophet, pd
        # A first fit pays cmdstan's one-time start-up here, not in the first job.
        self._fit_and_predict(
            ForecastInput.model_validate(
                {
                    "series": [{"ds": f"2026-01-{d:02d}", "y": float(d % 7)} for d in range(1, 22)],
                    "horizon": 2,
                    "frequency": "D",
                }
            )
        )

    def _fit_and_predict(self, item: ForecastInput) -> dict[str, Any]:
        pd = self._pd
        frame = pd.DataFrame(
            {
                "ds": [point.ds.replace(tzinfo=None) for point in item.series],
                "y": [float(point.y) for point in item.series],
            }
        ).sort_values("ds")
        model = self._prophet(interval_width=INTERVAL_WIDTH)
        try:
            model.fit(frame)
        except (ValueError, RuntimeError) as exc:
            raise PermanentError("bad_series", f"Prophet could not fit the series: {exc}") from exc
        future = model.make_future_dataframe(
            periods=item.horizon, freq=_frequency(item.frequency), include_history=False
        )
        predicted = model.predict(future)
        return {
            "forecast": [
                {
                    "ds": row.ds.isoformat(),
                    "yhat": float(row.yhat),
                    "yhat_lower": float(row.yhat_lower),
                    "yhat_upper": float(row.yhat_upper),
                }
                for row in predicted.itertuples()
            ]
        }

    def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
        results = []
        for item in inputs:
            assert isinstance(item, ForecastInput)
            stop.check()
            self.forward_passes += 1
            results.append(self._fit_and_predict(item))
        stop.check()
        return results
