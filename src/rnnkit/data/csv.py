"""Reading CSV files as pandas, Python's csv module and spreadsheets write them: one reader for every command.

``read_csv`` decodes the bytes itself (UTF-8 with or without a byte-order mark, UTF-16 as
Excel's "Unicode text" export writes it, else Windows-1252 unless an encoding is given),
sniffs the delimiter from the header row (``,`` ``;`` tab or ``|``) and, in a
semicolon-separated export, reads decimal commas (``1,5``) as numbers. ``parse_dates`` reads
numeric dates such as ``01.02.2000`` or ``13/01/2000`` day-first or month-first, whichever
the data says, and refuses to guess when it cannot tell. A file that cannot be read gets one
line saying why (empty, binary, an Excel workbook, a broken row) as a ``DataError``.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import warnings
from pathlib import Path
from typing import Optional, Union

import pandas as pd

from ..errors import DataError

PathLike = Union[str, Path]
DELIMITERS = (",", ";", "\t", "|")  # in order of preference when the header splits equally
# A decimal-comma number as European spreadsheets write it: -1234,5, 1.234,5 (dots group thousands), 5,1E-05.
_DECIMAL_COMMA = r"[+-]?(\d+|\d{1,3}(\.\d{3})+)(,\d+)?([eE][+-]?\d+)?"
# A date written as three numbers with day and month first in some order: 01.02.2000, 1/13/99, 01-02-2000.
_NUMERIC_DATE = re.compile(r"^\s*(\d{1,2})([./-])(\d{1,2})\2(\d{4}|\d{2})(?!\d)")
DATE_ORDER_HINT = "pass --dayfirst or --monthfirst (in Python: parse the column with pd.to_datetime(..., dayfirst=...))"


def read_csv(path: PathLike, *, encoding: Optional[str] = None, strings: bool = False,
             expect: str = "a header row") -> pd.DataFrame:
    """The CSV at ``path`` as a frame; ``expect`` says what the file should hold, for the messages.

    ``encoding=None`` reads UTF-8 and falls back to Windows-1252, what Excel saves as "CSV" on
    Windows; a named encoding is used as given (a UTF-8 byte-order mark is dropped either way).
    ``strings=True`` keeps every cell as text, empty cells as ``""`` (texts and labels);
    otherwise pandas infers the column types.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}; pass the path of a CSV with {expect}")
    text = _decode(path.read_bytes(), encoding, path, expect)
    return parse_csv(text, source=str(path), strings=strings, expect=expect)


def parse_csv(text: str, *, source: str = "the CSV", strings: bool = False, expect: str = "a header row"
              ) -> pd.DataFrame:
    """CSV text (already decoded) as a frame: see :func:`read_csv`."""
    if not text.strip():
        raise DataError(f"{source} is not a readable CSV: it is empty; pass a CSV with {expect}")
    sep = sniff_delimiter(text)
    options = dict(dtype=str, keep_default_na=False) if strings else {}
    if "\r" in text.replace("\r\n", ""):
        # Carriage returns inside fields of a file whose rows end in \n (pandas' to_csv leaves a
        # lone \r unquoted): pandas' C parser takes them for row ends and fails or splits rows.
        # Rows end at \n alone, then, and the \r stay in the text they belong to.
        text, options["lineterminator"] = _rows_end_in_lf(text), "\n"
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{source} is not a readable CSV: {str(exc).strip().splitlines()[0]}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if sep == ";" and not strings:
        frame = _decimal_commas(frame)
    return frame


def _decode(data: bytes, encoding: Optional[str], path: Path, expect: str) -> str:
    """The file's text; a workbook, a binary file or bytes that are not the encoding get one line."""
    if data[:4] == b"PK\x03\x04" or data[:4] == b"\xd0\xcf\x11\xe0":
        raise DataError(f"{path} is an Excel workbook (or another archive), not a CSV; save it as CSV "
                        f"(File > Save As > CSV UTF-8) and pass that file")
    utf8 = encoding is None or _codec(encoding) == "utf-8"
    if utf8 and data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16")  # Excel's "Unicode text": UTF-16 with a byte-order mark, tab-separated
    if b"\x00" in data[:8192]:
        raise DataError(f"{path} is a binary file, not CSV text; pass a CSV with {expect}")
    try:
        return data.decode("utf-8-sig" if utf8 else encoding)
    except UnicodeDecodeError as exc:
        if encoding is None:
            return data.decode("cp1252", errors="replace")  # the five bytes cp1252 leaves undefined become U+FFFD
        raise DataError(f"{path} is not valid {encoding} text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        f"re-save it as UTF-8 or pass its encoding, e.g. --encoding latin-1") from None


def _codec(encoding: str) -> str:
    """The codec's canonical name (``UTF8`` -> ``utf-8``); an unknown one is the user's typo."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}; use e.g. utf-8 or latin-1") from None


def sniff_delimiter(text: str) -> str:
    """The delimiter that splits the header row into the most columns (``,`` on a tie).

    The header is the most regular row a spreadsheet writes (no numbers with decimal commas,
    rarely free text), so it decides; ``csv.Sniffer`` on a sample of data rows is misled by
    commas and semicolons inside texts.
    """
    counts = {}
    for sep in DELIMITERS:
        header = next(csv.reader(io.StringIO(text), delimiter=sep), [])
        counts[sep] = len(header)
    return max(DELIMITERS, key=lambda sep: (counts[sep], -DELIMITERS.index(sep)))


def _rows_end_in_lf(text: str) -> str:
    r"""``\r\n`` row ends become ``\n``; a ``\r\n`` inside a quoted field is kept as written.

    Splitting on the quote character leaves the text outside quoted fields at even positions
    (a doubled quote inside a field splits it into two odd parts around an empty even one).
    """
    parts = text.split('"')
    parts[0::2] = [p.replace("\r\n", "\n") for p in parts[0::2]]
    return '"'.join(parts)


def _decimal_commas(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns whose every cell is a decimal-comma number (``-1,5``, ``1.234,5``) as floats."""
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) or values.isna().all():
            continue
        cells = values.dropna().astype(str).str.strip()
        if cells.str.fullmatch(_DECIMAL_COMMA).all() and cells.str.contains(",").any():
            numbers = values.astype(str).str.strip().str.replace(".", "", regex=False).str.replace(",", ".")
            frame[column] = pd.to_numeric(numbers.where(values.notna()), errors="coerce")
    return frame


def parse_dates(values: pd.Series, *, dayfirst: Optional[bool] = None, groups: Optional[pd.Series] = None,
                source: str = "data", column: str = "ds") -> pd.Series:
    """Timestamps from a column of dates; a date that does not parse is an error naming its row.

    Dates written as three numbers (``01.02.2000``, ``13/01/2000``) are read in the order
    ``dayfirst`` gives, else the only order in which every date exists (13/01 is day-first),
    else the one that spaces every series (rows grouped by ``groups``) evenly, else day-first
    for dotted dates (no locale writes them month-first). When both orders still fit, the
    ambiguity is refused with the option to pass, never guessed. Other dates (ISO
    ``2000-02-01``, ...) go to pandas as they are.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    parts = values.astype(str).str.extract(_NUMERIC_DATE)  # day-or-month, separator, month-or-day, year
    if parts.isna().any().any() or parts[1].nunique() > 1 or parts[3].str.len().nunique() > 1:
        dates = _to_datetime(values)
    else:
        dates = _numeric_dates(values, parts, dayfirst, groups, source, column)
    if dates.isna().any():
        row = int(dates.isna().to_numpy().argmax())
        raise DataError(f"{source}: unparsable date {values.iloc[row]!r} in column {column} (row {row + 1})")
    return dates


def _numeric_dates(values: pd.Series, parts: pd.DataFrame, dayfirst: Optional[bool], groups: Optional[pd.Series],
                   source: str, column: str) -> pd.Series:
    """Dates such as ``01.02.2000`` read in the order :func:`parse_dates` describes; NaT where none fits."""
    sep, year = parts[1].iloc[0], "%Y" if len(parts[3].iloc[0]) == 4 else "%y"
    prefixes = parts[0] + sep + parts[2] + sep + parts[3]
    readings = {first: pd.to_datetime(prefixes, format=f"{a}{sep}{b}{sep}{year}", errors="coerce")
                for first, (a, b) in ((True, ("%d", "%m")), (False, ("%m", "%d")))}
    if dayfirst is None:
        dayfirst = _date_order(values, readings, groups, sep, source, column)
    dates = readings[dayfirst]
    if (values.astype(str).str.strip().str.len() > prefixes.str.len()).any():  # a time of day follows
        full = _to_datetime(values, dayfirst=dayfirst)
        dates = full.where(full.dt.normalize() == dates)
    return dates


def _date_order(values: pd.Series, readings: dict[bool, pd.Series], groups: Optional[pd.Series], sep: str,
                source: str, column: str) -> bool:
    """``True`` for day-first: see :func:`parse_dates`; an ambiguity the data cannot settle raises."""
    day, month = readings[True], readings[False]
    if day.isna().any() or month.isna().any():
        return bool(day.isna().sum() <= month.isna().sum())  # the order in which (more) dates exist
    if day.equals(month):
        return True
    even = {first: _evenly_spaced(dates, groups) for first, dates in readings.items()}
    if even[True] != even[False]:
        return even[True]
    if sep == ".":
        return True
    i = int((day != month).to_numpy().argmax())
    how = "both read" if even[True] else "neither reads"
    raise DataError(f"{source}: dates in column {column} such as {values.iloc[i]!r} could be day-first "
                    f"({day.iloc[i]:%Y-%m-%d}) or month-first ({month.iloc[i]:%Y-%m-%d}), and {how} as evenly "
                    f"spaced series; {DATE_ORDER_HINT}")


def _evenly_spaced(dates: pd.Series, groups: Optional[pd.Series]) -> bool:
    """Whether every series (of three dates or more) has a regular frequency once sorted."""
    keys = groups.to_numpy() if groups is not None else [0] * len(dates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _, series in pd.Series(dates.to_numpy()).groupby(keys, sort=False):
            if len(series) >= 3 and pd.infer_freq(pd.DatetimeIndex(series.sort_values())) is None:
                return False
    return True


def _to_datetime(values: pd.Series, dayfirst: bool = False) -> pd.Series:
    """pandas' own date parsing, NaT where it fails; its format-inference warnings are not the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pd.to_datetime(values, errors="coerce", dayfirst=dayfirst)
