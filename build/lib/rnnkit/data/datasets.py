"""Real time series that install offline with a package, as long frames ``unique_id, ds, y``.

Nothing here downloads: each loader reads data bundled inside a pip package. Heavy or
optional sources name the command that installs them when they are missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd

from ..errors import DataError


@dataclass(frozen=True)
class Dataset:
    """A named dataset: where it comes from and how to load it as a long frame."""

    name: str
    description: str
    frequency: str
    season_length: int  # the period a seasonal-naive baseline repeats
    source: str  # the package that carries it, and the command that installs it
    loader: Callable[[], pd.DataFrame]


def _long(ds: pd.Series, y: pd.Series, unique_id: str) -> pd.DataFrame:
    return pd.DataFrame({"unique_id": unique_id, "ds": pd.to_datetime(ds).values, "y": y.astype(float).values})


def _statsmodels(name: str):
    try:
        import statsmodels.api as sm
    except ImportError as exc:  # statsmodels is a core dependency; be clear if it is gone
        raise DataError(f"dataset {name!r} needs statsmodels; install it with `pip install statsmodels`") from exc
    return getattr(sm.datasets, name).load_pandas().data


def _sunspots() -> pd.DataFrame:
    data = _statsmodels("sunspots")
    years = pd.to_datetime(data["YEAR"].astype(int).astype(str), format="%Y")
    return _long(years, data["SUNACTIVITY"], "sunspots")


def _co2() -> pd.DataFrame:
    data = _statsmodels("co2")
    # 59 weeks are missing; the stated rule: linear interpolation in time.
    y = data["co2"].interpolate(method="time")
    return _long(pd.Series(data.index), y, "co2")


def _elnino() -> pd.DataFrame:
    data = _statsmodels("elnino").set_index("YEAR")  # one row per year, columns JAN..DEC
    dates, values = [], []
    for year, row in data.iterrows():
        for month, value in enumerate(row, start=1):
            dates.append(pd.Timestamp(year=int(year), month=month, day=1))
            values.append(value)
    return _long(pd.Series(dates), pd.Series(values), "elnino")


def _macrodata() -> pd.DataFrame:
    data = _statsmodels("macrodata")
    dates = pd.PeriodIndex.from_fields(year=data["year"].astype(int), quarter=data["quarter"].astype(int), freq="Q")
    return _long(pd.Series(dates.to_timestamp()), data["realgdp"], "realgdp")


def _airpassengers() -> pd.DataFrame:
    # The Box-Jenkins airline series ships in several packages; take the first installed.
    # statsforecast's copy is dated at month ends: moved to month starts like the others.
    try:
        from statsforecast.utils import AirPassengersDF

        return _long(AirPassengersDF["ds"] - pd.offsets.MonthBegin(1), AirPassengersDF["y"], "airpassengers")
    except ImportError:
        pass
    for module in ("sktime.datasets", "aeon.datasets"):
        try:
            series = __import__(module, fromlist=["load_airline"]).load_airline()
        except ImportError:
            continue
        return _long(pd.Series(series.index.to_timestamp()), series, "airpassengers")
    raise DataError("dataset 'airpassengers' needs statsforecast, sktime or aeon; install the lightest with "
                    "`pip install statsforecast` (or `pip install 'rnnkit[bench]'`)")


def _stocks() -> pd.DataFrame:
    try:
        from vega_datasets import local_data
    except ImportError as exc:
        raise DataError("dataset 'stocks' needs vega_datasets; install with `pip install vega_datasets`") from exc
    data = local_data("stocks")
    return pd.DataFrame({"unique_id": data["symbol"], "ds": pd.to_datetime(data["date"]), "y": data["price"].astype(float)})


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("sunspots", "yearly mean sunspot numbers, 1700-2008 (309 points)", "YS", 11, "statsmodels", _sunspots),
        Dataset("co2", "weekly Mauna Loa CO2, 1958-2001 (2,284 points; gaps interpolated)", "W-SAT", 52, "statsmodels", _co2),
        Dataset("elnino", "monthly Pacific sea-surface temperature, 1950-2010 (732 points)", "MS", 12, "statsmodels", _elnino),
        Dataset("macrodata", "quarterly US real GDP, 1959-2009 (203 points)", "QS", 4, "statsmodels", _macrodata),
        Dataset("airpassengers", "monthly airline passengers, 1949-1960 (144 points)", "MS", 12, "statsforecast, sktime or aeon (optional)", _airpassengers),
        Dataset("stocks", "monthly prices of 5 stocks, 2000-2010", "MS", 12, "vega_datasets (optional)", _stocks),
    )
}


def list_datasets() -> list[Dataset]:
    """Every dataset rnnkit knows, installed or not."""
    return list(DATASETS.values())


def load_dataset(name: str) -> pd.DataFrame:
    """Load a dataset by name as a long frame with columns ``unique_id``, ``ds``, ``y``."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name].loader()
