"""Ingest reads each landed file in chunks (validation.landing_chunk_rows): the staged bytes, the
manifest, the value issues (with each file's real row and line numbers), the verdict and the report
do not depend on the chunk size, for CSV, JSON Lines and Parquet, passing and failing."""

import io
import json
import unicodedata

import pandas as pd
import pytest
import pyarrow as pa
import pyarrow.parquet as pq

from components.core.catalog import Layout
from components.core.config import load_config
from components.core.refs import DayRef, ValidationHistory
from components.data.ingest import normalize, run_ingest
from components.data.sources.synthetic import write_log
from components.data.validate import run_validate
from components.data.validation_result import DataValidationError

from tests.unit.data_fixtures import day, land

TINY = 13  # rows per chunk: many chunks, boundaries everywhere
STAGED = ("rows.parquet", "issues.parquet", "files.json")


def _run(tmp_path, name, landing_chunk_rows, write):
    """``write(landing folder)`` lands day 1 (once per test); ingest it with ``landing_chunk_rows`` (validate's own
    chunk size fixed) and validate it: (layout, ingest result, validate result or error)."""
    layout = Layout.at(tmp_path / name)
    cfg = load_config(overrides={"root": str(tmp_path / name), "validation.landing_chunk_rows": landing_chunk_rows})
    landing = tmp_path / "landing"  # one landing for every run: the manifest names it
    if not landing.exists():
        landing.mkdir()
        write(landing)
    ingested = run_ingest(layout, day(1), cfg, landing=str(landing))
    try:
        return layout, ingested, run_validate(layout, day(1), cfg, staged=DayRef.of(ingested),
                                              history=ValidationHistory())  # day 1: no day before it
    except DataValidationError as error:
        return layout, ingested, error


def _same_staging(tmp_path, write):
    """Ingest and validate the same landing in 13-row chunks and in one chunk; assert the staged bytes,
    the manifest and the verdict are the same; return (tiny layout, ingest result, outcome)."""
    tiny_layout, tiny, tiny_outcome = _run(tmp_path, "tiny", TINY, write)
    whole_layout, whole, whole_outcome = _run(tmp_path, "whole", 10**6, write)
    assert tiny.version == whole.version  # a content hash of the staged partition: the same bytes
    for name in STAGED:
        assert (tiny_layout.staging(day(1)) / name).read_bytes() == (whole_layout.staging(day(1)) / name).read_bytes(), name
    assert (tiny.rows, tiny.files, tiny.issues) == (whole.rows, whole.files, whole.issues)
    assert type(tiny_outcome) is type(whole_outcome)
    if isinstance(tiny_outcome, DataValidationError):
        assert str(tiny_outcome).replace(str(tmp_path / "tiny"), "") == str(whole_outcome).replace(str(tmp_path / "whole"), "")
        reports = [json.loads(p.read_text())["result"]["rules"] for p in
                   (next((tmp_path / name / "quarantine").glob("*/*/validation.json")) for name in ("tiny", "whole"))]
        assert reports[0] == reports[1]
    else:
        for field in ("success", "rows", "accepted_rows", "duplicate_rows", "profile", "rules", "unknown_columns"):
            assert getattr(tiny_outcome, field) == getattr(whole_outcome, field), field
        reports = [(layout.reports(day(1)) / "validation" / "report.md").read_text() for layout in (tiny_layout, whole_layout)]
        assert reports[0] == reports[1]
    return tiny_layout, tiny, tiny_outcome


def _base(tmp_path):
    return pd.read_parquet(land(Layout.at(tmp_path / "scratch"), 1))


def _without_pandas_metadata(frame, path):
    """Parquet as a non-pandas producer writes it: an integer or boolean column with a null reads back
    as float or object only from the chunk holding the null, unless the whole file is surveyed."""
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None), path)


def _jsonl(records):
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_a_clean_day_in_three_formats_stages_the_same_bytes_in_13_row_chunks(tmp_path):
    base = _base(tmp_path)
    assert len(base) > 180

    def write(landing):
        write_log(base.iloc[:70].assign(channel="web"), landing / "a.parquet")
        write_log(base.iloc[70:140], landing / "b.jsonl")
        write_log(pd.concat([base.iloc[140:], base.iloc[[3, 100]]]), landing / "c.csv")  # redelivered
    layout, ingested, result = _same_staging(tmp_path, write)
    assert result.success and result.duplicate_rows == 2 and ingested.rows == len(base) + 2
    rows = pd.read_parquet(layout.staging(day(1)) / "rows.parquet")
    csv = rows[rows["source_file"] == "c.csv"]
    assert csv["source_row"].tolist() == list(range(1, len(base) - 140 + 3))  # the file's rows, across chunks


def _broken_landing(base):
    """Value issues in every format, in later chunks, and file-level decisions no chunk can take alone."""
    parquet = base.iloc[:50].copy()
    parquet["score"] = pd.array(range(50), dtype="Int64")
    parquet.loc[45, "score"] = pd.NA  # null only in the 4th chunk: "12.0" in every chunk, as a whole read gives
    parquet["flag"] = pd.array([True] * 50, dtype="boolean")
    parquet.loc[40, "flag"] = pd.NA
    parquet.loc[27, "user_id"] = unicodedata.normalize("NFD", "josé")
    records = json.loads(base.iloc[50:140].to_json(orient="records", date_format="iso", date_unit="s"))
    for number, record in enumerate(records):
        record["tag"] = number if number < 30 else None if number == 31 else f"t{number}"  # ints, a null, text later
        record["n"] = number  # integers only: int64, never float, in every chunk
        record["created_at"] = 1767312000 + number  # named like a date: kept as it came, not guessed into one
        if number >= 50:
            record["late"] = "x"  # a column first seen in the 4th chunk
    records[5]["tag"] = None
    records[70]["user_id"] = 13.0  # a whole float among string ids
    records[80]["ts"] = 1767312000  # an epoch among ISO times: ts_consistent_form at its real row
    csv = base.iloc[140:].copy()
    csv["ts"] = [f"{t:%Y-%m-%dT%H:%M:%S}Z" if i < TINY else str(int(t.timestamp())) for i, t in enumerate(csv["ts"])]
    csv = csv.astype({"user_id": object})
    csv.iloc[20, csv.columns.get_loc("user_id")] = "NULL"
    csv.iloc[33, csv.columns.get_loc("ts")] = "yesterday"
    csv.iloc[40, csv.columns.get_loc("item_id")] = "17.0"
    return parquet, records, csv


def test_a_failing_day_in_13_row_chunks_fails_with_the_same_issues_rows_and_report(tmp_path):
    parquet, records, csv = _broken_landing(_base(tmp_path))

    def write(landing):
        _without_pandas_metadata(parquet, landing / "a.parquet")
        (landing / "b.jsonl").write_bytes(_jsonl(records[:40]) + b"\n" * 27 + _jsonl(records[40:]))  # a block of blank lines
        csv.to_csv(landing / "c.csv", index=False)
    layout, ingested, error = _same_staging(tmp_path, write)
    assert isinstance(error, DataValidationError)
    files = {f.name: f for f in ingested.files}
    # The csv's first chunk is all ISO: only the whole file says its form is epoch seconds.
    assert files["c.csv"].ts_form == "epoch-s" and files["b.jsonl"].ts_form == "iso-offset"
    assert files["b.jsonl"].extra_columns == ("tag", "n", "created_at", "late")
    issues = pd.read_parquet(layout.staging(day(1)) / "issues.parquet")
    found = set(zip(issues["source_file"], issues["rule"], issues["source_row"]))
    assert {("a.parquet", "id_unicode_form", 28), ("b.jsonl", "id_float_form", 71), ("b.jsonl", "ts_consistent_form", 81),
            ("c.csv", "expect_column_values_to_not_be_null", 21), ("c.csv", "expect_column_values_to_not_be_null", 34),
            ("c.csv", "id_float_form", 41)} <= found
    odd = issues[(issues["source_file"] == "c.csv") & (issues["rule"] == "ts_consistent_form")]
    assert odd["source_row"].tolist() == list(range(1, TINY + 1))
    assert odd["cause"].iloc[0] == f"iso-offset value in a file whose other {len(csv) - TINY - 1} timestamps are epoch-s (one form per file)"
    rows = pd.read_parquet(layout.staging(day(1)) / "rows.parquet")
    parquet_rows = rows[rows["source_file"] == "a.parquet"]
    assert parquet_rows["extra.score"].iloc[[0, 44]].tolist() == ["0.0", "44.0"] and pd.isna(parquet_rows["extra.score"].iloc[45])
    json_rows = rows[rows["source_file"] == "b.jsonl"]
    assert json_rows["extra.tag"].iloc[[0, 40]].tolist() == ["0", "t40"] and json_rows["extra.late"].iloc[:50].isna().all()
    assert json_rows["extra.n"].tolist() == [str(n) for n in range(len(records))]
    assert json_rows["extra.created_at"].iloc[0] == "1767312000"


def test_chunked_json_lines_and_parquet_stage_what_a_whole_file_read_gives(tmp_path):
    """The survey makes each chunk's dtypes the whole file's: staged rows equal ``normalize`` of the
    file read at once (pandas' inference over every value)."""
    parquet, records, _ = _broken_landing(_base(tmp_path))

    def write(landing):
        _without_pandas_metadata(parquet, landing / "a.parquet")
        (landing / "b.jsonl").write_bytes(_jsonl(records[:40]) + b"\n" * 27 + _jsonl(records[40:]))
    layout, _, _ = _run(tmp_path, "tiny", TINY, write)
    staged = pd.read_parquet(layout.staging(day(1)) / "rows.parquet")
    landing = tmp_path / "landing"
    wholes = {"a.parquet": pd.read_parquet(landing / "a.parquet"),
              "b.jsonl": pd.read_json(io.BytesIO((landing / "b.jsonl").read_bytes()), lines=True, dtype=False, convert_dates=False)}
    for name, whole in wholes.items():
        expected, _, _ = normalize(whole, name)
        got = staged[staged["source_file"] == name].dropna(axis=1, how="all").reset_index(drop=True)
        as_values = lambda f: f.astype(object).where(f.notna(), None)  # noqa: E731 (merged parts: object or string)
        pd.testing.assert_frame_equal(as_values(got), as_values(expected[got.columns]))


def test_a_malformed_line_in_a_later_chunk_is_named_by_its_line_in_the_file(tmp_path):
    base = _base(tmp_path)

    def write(landing):
        lines = _jsonl(json.loads(base.iloc[:60].to_json(orient="records", date_format="iso"))).split(b"\n")
        lines.insert(20, b"")  # a blank line: line numbers count it, rows do not
        lines[45] = b'{"event_id": "e1", "user_id": '
        (landing / "b.jsonl").write_bytes(b"\n".join(lines))
        write_log(base.iloc[60:], landing / "a.parquet")
        text = base.iloc[:60].to_csv(index=False).split("\n")
        text[31] += ",extra"  # data row 31: inside a 13-row chunk
        (landing / "c.csv").write_text("\n".join(text))
    _, ingested, error = _same_staging(tmp_path, write)
    files = {f.name: f for f in ingested.files}
    assert files["b.jsonl"].rows is None and files["b.jsonl"].error.startswith("ValueError: line 46: malformed JSON")
    assert files["c.csv"].rows is None and "Expected 5 fields in line 32, saw 6" in files["c.csv"].error
    assert isinstance(error, DataValidationError) and "b.jsonl" in str(error)


@pytest.mark.parametrize("data_row", [1, 14])  # the first row of the file, of the second 13-row chunk
def test_a_row_wider_than_the_header_fails_its_file_where_pandas_reads_it_silently(tmp_path, data_row):
    """pandas' C parser does not count the fields of the first row of a chunk: that row's extra field
    became an index and shifted its chunk's values by one column, without an error."""
    base = _base(tmp_path)

    def write(landing):
        text = base.iloc[:60].to_csv(index=False).split("\n")
        text[data_row] += ",extra"
        (landing / "c.csv").write_text("\n".join(text))
        write_log(base.iloc[60:], landing / "a.parquet")
    _, ingested, error = _same_staging(tmp_path, write)
    files = {f.name: f for f in ingested.files}
    assert files["c.csv"].rows is None
    assert f"Expected 5 fields in line {data_row + 1}, saw 6" in files["c.csv"].error
    assert files["a.parquet"].rows == len(base) - 60
    assert isinstance(error, DataValidationError) and "c.csv" in str(error)


def test_empty_files_and_a_header_without_rows_are_the_same_in_chunks(tmp_path):
    base = _base(tmp_path)

    def write(landing):
        (landing / "empty.csv").write_bytes(b"  \n")
        (landing / "header.csv").write_bytes(b"event_id,user_id,item_id,event_type,ts\n")
        write_log(base.iloc[:0], landing / "none.parquet")
        write_log(base, landing / "a.parquet")
    _, ingested, result = _same_staging(tmp_path, write)
    files = {f.name: f for f in ingested.files}
    assert (files["empty.csv"].rows, files["header.csv"].rows, files["none.parquet"].rows) == (0, 0, 0)
    assert files["empty.csv"].missing_columns == ("event_id", "user_id", "item_id", "event_type", "ts")
    assert ingested.rows == len(base) and isinstance(result, DataValidationError)  # files without the contract's columns
