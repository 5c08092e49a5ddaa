"""A landed file read in bounded chunks (CSV, JSON Lines, Parquet), as a whole-file read would see it.

A day can land as one 1.2 GB file of 20 M rows (issue 20): ingest never holds a file whole. Each
chunk has the dtypes the whole file would get, which pandas decides from every value of a column
(a Parquet integer column with a null anywhere is float in every chunk; a JSON column holding 13
and "a" is object), so a first pass (``survey``) finds them and ``chunks`` applies them: what ingest
stages does not depend on the chunk size.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.io.json import ujson_loads  # the parser read_json uses, so a survey sees the values it sees

SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
READ_BLOCK_BYTES = 1 << 24  # hashing reads 16 MiB at a time
_MISSING = object()  # a JSON record without the key: pandas fills NaN


@dataclass(frozen=True)
class Digest:
    bytes: int
    sha256: str
    blank: bool  # only whitespace: an empty log (zero rows, no columns), not a parse error


def digest(fs: Any, path: str) -> Digest:
    """Size, SHA-256 and blankness of a file, streamed (raises OSError when it cannot be read)."""
    sha, size, blank = hashlib.sha256(), 0, True
    with fs.open(path, "rb") as stream:
        while block := stream.read(READ_BLOCK_BYTES):
            sha.update(block)
            size += len(block)
            blank = blank and not block.strip()
    return Digest(size, sha.hexdigest(), blank)


@dataclass(frozen=True)
class Survey:
    """What every chunk's reading depends on, found by a first pass over the file."""

    dtypes: dict[str, Any] = field(default_factory=dict)  # column -> the whole file's pandas dtype
    # JSON Lines: records prepended to each chunk before pandas infers it (then dropped), holding
    # every kind of value each column has in the file, so the chunk's inference is the file's.
    sentinel: str = ""
    sentinel_rows: int = 0


def suffix_of(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"unsupported format {suffix!r}; accepted: {', '.join(SUPPORTED_SUFFIXES)}")
    return suffix


def survey(fs: Any, path: str, name: str, chunk_rows: int, blank: bool) -> Survey:
    """First pass: the dtypes a whole-file read gives. Raises the file's parse error, if any, naming
    its real line (JSON Lines)."""
    suffix = suffix_of(name)
    if blank and suffix != ".parquet":
        return Survey()
    if suffix == ".csv":  # read as text: every column is object in every chunk
        _check_csv_widths(fs, path)
        return Survey()
    if suffix == ".parquet":
        dtypes: dict[str, Any] = {}
        for frame in _parquet_frames(fs, path, chunk_rows):
            for column, dtype in frame.dtypes.items():
                dtypes[column] = common_dtype(dtypes[column], dtype) if column in dtypes else dtype
        return Survey(dtypes)
    return _json_survey(fs, path, chunk_rows)


def chunks(fs: Any, path: str, name: str, chunk_rows: int, found: Survey, blank: bool) -> Iterator[pd.DataFrame]:
    """Second pass: frames of at most ``chunk_rows`` rows with the whole file's dtypes; a file without
    rows yields one empty frame (with its columns, if it has a header or schema)."""
    suffix = suffix_of(name)
    if blank and suffix != ".parquet":
        yield pd.DataFrame()
    elif suffix == ".csv":
        # Rows wider than the header were failed by the survey (_check_csv_widths): pandas misses them here.
        with fs.open(path, "rb") as stream:
            yield from pd.read_csv(stream, dtype=str, keep_default_na=False, na_values=[""], chunksize=chunk_rows)
    elif suffix == ".parquet":
        for frame in _parquet_frames(fs, path, chunk_rows):
            for column, dtype in found.dtypes.items():
                if frame[column].dtype != dtype:
                    frame[column] = frame[column].astype(dtype)
            yield frame
    else:
        emitted = False
        for _, lines in _json_blocks(fs, path, chunk_rows):
            text = found.sentinel + b"".join(lines).decode("utf-8")
            # convert_dates=False: pandas would turn a column named like a date (created_at) into
            # timestamps by a guess over all its values, with a unit guessed per chunk; an unknown
            # column is kept as the text it came as.
            frame = pd.read_json(io.StringIO(text), lines=True, dtype=False, convert_dates=False)
            frame = frame.iloc[found.sentinel_rows:].reset_index(drop=True)
            if len(frame) or not emitted:
                emitted = True
                yield frame


def common_dtype(first: Any, second: Any) -> Any:
    """The dtype pandas gives a whole column whose chunks came out as ``first`` and ``second`` (Arrow
    integers with nulls become float, booleans with nulls object, differing dictionaries object)."""
    if first == second:
        return first
    numeric = [pd.api.types.is_numeric_dtype(d) and not pd.api.types.is_bool_dtype(d) for d in (first, second)]
    return np.dtype("float64") if all(numeric) else np.dtype(object)


def _parquet_frames(fs: Any, path: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    with fs.open(path, "rb") as stream:
        parquet = pq.ParquetFile(stream)
        rows = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            rows += batch.num_rows
            yield pa.Table.from_batches([batch]).to_pandas()  # the schema's pandas metadata keeps dtypes
        if rows == 0:
            yield parquet.schema_arrow.empty_table().to_pandas()


def _json_blocks(fs: Any, path: str, chunk_rows: int) -> Iterator[tuple[int, list[bytes]]]:
    """(lines before the block, the block's lines): ``chunk_rows`` lines at a time, blank ones included."""
    with fs.open(path, "rb") as stream:
        before = 0
        while lines := list(islice(stream, chunk_rows)):
            yield before, lines
            before += len(lines)


def _json_survey(fs: Any, path: str, chunk_rows: int) -> Survey:
    """Every column in order of first appearance, with one value of each Python type it holds (the
    smallest and largest integers: they decide int64, uint64 or object) and whether a record lacks it."""
    kinds: dict[str, dict[Any, Any]] = {}
    records_before = 0
    for before, lines in _json_blocks(fs, path, chunk_rows):
        text = b"".join(lines).decode("utf-8")
        body = [line for line in (line.strip() for line in text.split("\n")) if line]
        if body and not records_before and body[0][:1] == "[":
            raise ValueError("the file is a JSON array; the contract expects JSON Lines (one JSON object per line)")
        try:
            records = ujson_loads("[" + ",".join(body) + "]")
        except ValueError:
            _raise_bad_line(text, before)
            raise
        if not all(type(record) is dict for record in records):
            _raise_bad_line(text, before)
        if not records:  # blank lines only
            continue
        frame = pd.DataFrame(records, dtype=object)  # raw values, no inference
        for column in kinds.keys() - set(frame.columns):
            kinds[column].setdefault("missing", _MISSING)
        for column in frame.columns:
            if column not in kinds:
                kinds[column] = {"missing": _MISSING} if records_before else {}
            _representatives(frame[column].to_numpy(), kinds[column])
        records_before += len(records)
    if not kinds:
        return Survey()
    columns = {c: list(v.values()) for c, v in kinds.items()}
    width = max(len(v) for v in columns.values())
    records = [{c: v[i] if i < len(v) else v[0] for c, v in columns.items()} for i in range(width)]
    sentinel = "".join(json.dumps({c: x for c, x in r.items() if x is not _MISSING}) + "\n" for r in records)
    return Survey({}, sentinel, width)


def _representatives(values: np.ndarray, kinds: dict[Any, Any]) -> None:
    types = pd.Series(values).map(type).to_numpy()
    missing = pd.isna(values) & (types == float)
    if missing.any():
        kinds.setdefault("missing", _MISSING)
    for kind in pd.unique(types[~missing]):
        of_kind = values[(types == kind) & ~missing]
        if kind is int:
            low, high = min(of_kind), max(of_kind)
            kinds["int-min"] = min(kinds.get("int-min", low), low)
            kinds["int-max"] = max(kinds.get("int-max", high), high)
        else:
            kinds.setdefault(kind.__name__, of_kind[0])


def _check_csv_widths(fs: Any, path: str) -> None:
    """Fail a CSV with a row wider than its header, naming the line as pandas names it elsewhere.

    pandas' C parser does not count the fields of the first row of each block it reads (a chunk, and
    its own blocks of 131,072 rows for five columns, in a whole-file read too): such a row turns the
    first column into an index and shifts its chunk's values by one column, or with ``index_col=False``
    loses its extra field, without a word (measured, pandas 2.3). The csv module counts every row:
    0.7 s per million rows, a few percent of ingest + validate. Shorter rows stay pandas' (nulls)."""
    with fs.open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        rows = csv.reader(text)
        width = len(next(rows, []))
        for row in rows:
            if len(row) > width:
                raise pd.errors.ParserError(f"Expected {width} fields in line {rows.line_num}, saw {len(row)}")


def _raise_bad_line(text: str, before: int) -> None:
    """Name the first malformed line of a block by its line in the file (pandas' message has none)."""
    for number, line in enumerate(text.splitlines(), start=before + 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number}: malformed JSON ({exc.msg} at column {exc.colno}): {line[:80]!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"line {number}: a JSON {type(value).__name__}, expected one object per line: {line[:80]!r}") from None
