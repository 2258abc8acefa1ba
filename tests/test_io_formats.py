"""The one table of formats (``m2l_ray.io.formats``) and text decoding (``io.textfiles``)."""

from __future__ import annotations

import gzip
import io

import pytest

from m2l_ray.io import FORMATS, UnreadableFile, format_of
from m2l_ray.io.textfiles import text_lines


@pytest.mark.parametrize(("name", "fmt"), [
    ("a.parquet", "parquet"), ("dir/A.PQ", "parquet"), ("s3://b/x.jsonl", "jsonl"),
    ("a.json", "jsonl"), ("a.ndjson", "jsonl"), ("a.jsonl.gz", "jsonl"), ("a.json.gz", "jsonl"),
    ("a.ndjson.gz", "jsonl"), ("a.parquet.gz", None), ("a.csv", None), ("_SUCCESS", None),
])
def test_format_of_names(name: str, fmt: str | None) -> None:
    assert format_of(name) == fmt


def test_every_format_has_a_writer() -> None:
    from m2l_ray.io import writer_for

    for fmt in FORMATS.values():
        assert writer_for(fmt.writer).name == fmt.writer


def _lines(path: str, data: bytes) -> list[bytes]:
    return list(text_lines(path, io.BytesIO(data)))


def test_text_lines_gzip_by_magic_and_bom_dropped() -> None:
    body = b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n'
    assert _lines("x.jsonl", body) == [b'{"a": 1}', b'{"a": 2}', b""]
    assert _lines("misnamed.jsonl", gzip.compress(body)) == [b'{"a": 1}', b'{"a": 2}', b""]
    assert _lines("empty.jsonl", b"") == [b""]
    with pytest.raises(UnreadableFile, match=r"^x.jsonl.gz: named .gz but not gzip-compressed"):
        _lines("x.jsonl.gz", body)
    with pytest.raises(UnreadableFile, match=r"^cut.jsonl.gz: not a readable gzip file"):
        _lines("cut.jsonl.gz", gzip.compress(body * 1000)[:60])


def test_jsonl_reader_reads_gzip_and_bom(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(gzip.compress(b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n'))
    table = FORMATS["jsonl"].read(None, str(path), None)
    assert table.column("a").to_pylist() == [1, 2]
