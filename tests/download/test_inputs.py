import csv
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmdata.download.inputs import INPUT_FORMATS, InputSpec, count_rows, input_files, iter_input_shards

ROWS = [
    {"url": f"http://img.example/{i}.jpg", "caption": f'caption {i}, with "quotes" and é', "score": str(i * 7)}
    for i in range(25)
]


def write_rows(path, rows, fmt, *, header=True, columns=("url", "caption", "score")):
    """Write rows in one of the input formats (gzipped when the name ends in .gz)."""
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if fmt == "jsonl":
        text = "".join(json.dumps(row) + "\n" for row in rows)
    elif fmt == "json":
        text = json.dumps(rows, indent=1)
    elif fmt == "txt":
        text = "".join(row["url"] + "\n" for row in rows)
    elif fmt == "tsv":
        lines = ["\t".join(columns)] if header else []
        text = "\n".join(lines + ["\t".join(row[c] for c in columns) for row in rows]) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if header:
            writer.writerow(columns)
        writer.writerows([[row[c] for c in columns] for row in rows])
        text = buffer.getvalue()
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def read_all(spec, shard_size=1000):
    return [row for table in iter_input_shards(spec, shard_size) for row in table.to_pylist()]


@pytest.mark.parametrize(
    "fmt, gz", [(fmt, gz) for fmt in INPUT_FORMATS for gz in (False, True) if not (fmt == "parquet" and gz)]
)
def test_every_format_reads_every_row_in_order(tmp_path, fmt, gz):
    path = write_rows(tmp_path / f"rows.{fmt}{'.gz' if gz else ''}", ROWS, fmt)
    extra = () if fmt == "txt" else ("score",)
    shards = list(iter_input_shards(InputSpec(path=path, save_additional_columns=extra), 7))
    assert [t.num_rows for t in shards] == [7, 7, 7, 4]
    assert all(t.schema.names == ["url", "caption", *extra] for t in shards)
    assert all(
        t.schema.field("url").type == pa.string() and t.schema.field("caption").type == pa.string() for t in shards
    )
    rows = [row for t in shards for row in t.to_pylist()]
    if fmt == "txt":
        assert rows == [{"url": r["url"], "caption": None} for r in ROWS]
    else:
        assert rows == ROWS


def test_gzipped_parquet_is_refused(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "rows.parquet")
    (tmp_path / "rows.parquet.gz").write_bytes(gzip.compress((tmp_path / "rows.parquet").read_bytes()))
    with pytest.raises(ValueError, match="decompress"):
        read_all(InputSpec(path=tmp_path / "rows.parquet.gz"))
    with pytest.raises(ValueError, match="decompress"):
        count_rows(InputSpec(path=tmp_path))


def test_headerless_cc3m_tsv_keeps_quotes(tmp_path):
    captions = ['a "quoted" word', '"starts with a quote', "it's 5' 10\"", 'ends with quote"', "naïve café 日本"]
    lines = [f"{caption}\thttp://cc3m.example/{i}" for i, caption in enumerate(captions)]
    path = tmp_path / "Train_GCC-training.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = InputSpec(path=path, no_header=True, columns=("caption", "url"))
    rows = read_all(spec, 2)
    assert rows == [{"url": f"http://cc3m.example/{i}", "caption": caption} for i, caption in enumerate(captions)]


def test_csv_quoting_commas_newlines_and_text_values(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(
        'url,caption,zip\nhttp://a,"one, two\nthree",007\nhttp://b,,NA\nhttp://c,NA,1e3\n', encoding="utf-8"
    )
    rows = read_all(InputSpec(path=path, save_additional_columns=("zip",)))
    assert rows == [
        {"url": "http://a", "caption": "one, two\nthree", "zip": "007"},
        {"url": "http://b", "caption": "", "zip": "NA"},
        {"url": "http://c", "caption": "NA", "zip": "1e3"},
    ]


@pytest.mark.parametrize("shard_size", [1, 5, 9, 10, 11, 17, 100])
def test_shards_cross_file_boundaries_exactly(tmp_path, shard_size):
    """Files are read in sorted name order and shards cut across them at exact row counts."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_rows(folder / "b.csv", ROWS[10:17], "csv")
    write_rows(folder / "a.parquet", ROWS[:10], "parquet")
    write_rows(folder / "c.jsonl.gz", ROWS[17:], "jsonl")
    spec = InputSpec(path=folder, save_additional_columns=("score",))
    shards = list(iter_input_shards(spec, shard_size))
    sizes = [t.num_rows for t in shards]
    assert sizes[:-1] == [shard_size] * (len(sizes) - 1) and 0 < sizes[-1] <= shard_size
    assert [row for t in shards for row in t.to_pylist()] == ROWS
    assert [t.to_pylist() for t in shards] == [t.to_pylist() for t in iter_input_shards(spec, shard_size)]


def test_folder_of_mixed_files_skips_unknown_hidden_and_markers(tmp_path):
    write_rows(tmp_path / "2.txt", ROWS[5:8], "txt")
    write_rows(tmp_path / "1.tsv.gz", ROWS[:5], "tsv")
    write_rows(tmp_path / ".hidden.csv", ROWS, "csv")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / "sub").mkdir()
    write_rows(tmp_path / "sub" / "0.csv", ROWS, "csv")
    assert [p.name for p, _ in input_files(InputSpec(path=tmp_path))] == ["1.tsv.gz", "2.txt"]
    rows = read_all(InputSpec(path=tmp_path), 4)
    assert rows == [{"url": r["url"], "caption": r["caption"]} for r in ROWS[:5]] + [
        {"url": r["url"], "caption": None} for r in ROWS[5:8]
    ]


def test_folder_with_input_format_reads_only_that_format(tmp_path):
    write_rows(tmp_path / "a.csv", ROWS[:3], "csv")
    write_rows(tmp_path / "b.txt", ROWS[3:6], "txt")
    assert [r["url"] for r in read_all(InputSpec(path=tmp_path, input_format="txt"))] == [r["url"] for r in ROWS[3:6]]


def test_input_format_overrides_extension(tmp_path):
    path = write_rows(tmp_path / "urls.list", ROWS[:4], "txt")
    assert len(read_all(InputSpec(path=path, input_format="txt"))) == 4
    with pytest.raises(ValueError, match="input_format"):
        read_all(InputSpec(path=path))


def test_txt_keeps_blank_lines_and_strips_whitespace(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_bytes(b"http://a\r\n\r\n  http://b  \n\nhttp://c")
    assert [r["url"] for r in read_all(InputSpec(path=path))] == ["http://a", "", "http://b", "", "http://c"]


def test_jsonl_missing_caption_is_null_and_extra_types_kept(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(
        '{"url": "u1", "caption": "c1", "n": 1}\n{"url": "u2", "n": 2}\n{"url": null, "caption": "c3", "n": 3}\n'
    )
    table = next(iter_input_shards(InputSpec(path=path, save_additional_columns=("n",)), 10))
    assert table.to_pylist() == [
        {"url": "u1", "caption": "c1", "n": 1},
        {"url": "u2", "caption": None, "n": 2},
        {"url": None, "caption": "c3", "n": 3},
    ]
    assert table.schema.field("n").type == pa.int64()


def test_parquet_column_types_are_normalised(tmp_path):
    table = pa.table(
        {
            "URL": pa.array(["http://a", None], pa.large_string()),
            "TEXT": pa.array([1, 2], pa.int32()),
            "WIDTH": pa.array([10, 20], pa.int64()),
        }
    )
    pq.write_table(table, tmp_path / "laion.parquet")
    spec = InputSpec(
        path=tmp_path / "laion.parquet", url_col="URL", caption_col="TEXT", save_additional_columns=("WIDTH",)
    )
    shard = next(iter_input_shards(spec, 10))
    assert shard.schema == pa.schema([("url", pa.string()), ("caption", pa.string()), ("WIDTH", pa.int64())])
    assert shard.to_pylist() == [
        {"url": "http://a", "caption": "1", "WIDTH": 10}, {"url": None, "caption": "2", "WIDTH": 20}
    ]


def test_files_disagreeing_on_extra_types_use_the_first_files_type(tmp_path):
    pq.write_table(pa.table({"url": ["a"], "n": pa.array([1], pa.int32())}), tmp_path / "0.parquet")
    pq.write_table(pa.table({"url": ["b"], "n": pa.array([2], pa.int64())}), tmp_path / "1.parquet")
    shard = next(iter_input_shards(InputSpec(path=tmp_path, save_additional_columns=("n",)), 10))
    assert shard.schema.field("n").type == pa.int32() and shard.column("n").to_pylist() == [1, 2]


def test_absent_or_disabled_caption_column_gives_nulls(tmp_path):
    path = tmp_path / "urls.csv"
    path.write_text("url,other\nhttp://a,x\n")
    assert read_all(InputSpec(path=path)) == [{"url": "http://a", "caption": None}]
    write_rows(tmp_path / "rows.csv", ROWS[:2], "csv")
    assert [r["caption"] for r in read_all(InputSpec(path=tmp_path / "rows.csv", caption_col=None))] == [None, None]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl"])
def test_missing_url_column_names_the_columns_found(tmp_path, fmt):
    path = write_rows(tmp_path / f"rows.{fmt}", ROWS[:3], fmt)
    with pytest.raises(ValueError, match=r"no (column|field).*'link'.*caption"):
        read_all(InputSpec(path=path, url_col="link"))


def test_missing_additional_column_names_the_columns_found(tmp_path):
    path = write_rows(tmp_path / "rows.csv", ROWS[:3], "csv")
    with pytest.raises(ValueError, match=r"\['aesthetic'\].*columns found.*score"):
        read_all(InputSpec(path=path, save_additional_columns=("score", "aesthetic")))


def test_missing_input_and_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_all(InputSpec(path=tmp_path / "nope.csv"))
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(ValueError, match="parquet/csv/tsv/jsonl/json/txt"):
        read_all(InputSpec(path=tmp_path))


def test_malformed_row_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("caption\turl\nok\thttp://a\ntoo\tmany\tfields\n")
    with pytest.raises(ValueError, match="bad.tsv"):
        read_all(InputSpec(path=path))


@pytest.mark.parametrize("name", ["bad.csv", "bad.txt", "bad.tsv.gz"])
def test_invalid_utf8_is_an_error_naming_the_file(tmp_path, name):
    data = "url\tcaption\n".replace("\t", "," if "csv" in name else "\t").encode() + b"http://a\xff\xfe\n"
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(ValueError, match=name):
        read_all(InputSpec(path=tmp_path / name))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_format": "xlsx"}, "parquet, csv, tsv, jsonl, json, txt"),
        ({"url_col": ""}, "url_col"),
        ({"columns": ("caption", "url")}, "no_header=True"),
        ({"no_header": True, "input_format": "tsv"}, "columns="),
        ({"no_header": True, "columns": ("caption", "link")}, "url_col"),
        ({"no_header": True, "columns": ("url", "url")}, "distinct"),
        ({"save_additional_columns": ("a", "a")}, "duplicates"),
        ({"save_additional_columns": ("sha256",)}, "overwrite"),
        ({"save_additional_columns": ("exif",)}, "overwrite"),
        ({"save_additional_columns": "a,b"}, "not a string"),
        ({"save_additional_columns": ("caption",)}, "already saved"),
    ],
)
def test_invalid_specs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InputSpec(path="x", **kwargs)


def test_shard_size_must_be_positive(tmp_path):
    path = write_rows(tmp_path / "rows.txt", ROWS, "txt")
    with pytest.raises(ValueError, match="shard_size"):
        next(iter_input_shards(InputSpec(path=path), 0))


def test_count_rows_from_parquet_metadata_only(tmp_path):
    write_rows(tmp_path / "a.parquet", ROWS[:10], "parquet")
    write_rows(tmp_path / "b.parquet", ROWS[10:], "parquet")
    assert count_rows(InputSpec(path=tmp_path)) == 25
    write_rows(tmp_path / "c.csv", ROWS, "csv")
    assert count_rows(InputSpec(path=tmp_path)) is None


def test_shards_are_streamed_before_the_file_is_read_to_the_end(tmp_path):
    """A malformed last line surfaces only after earlier shards were yielded: the reader never
    parses the whole file up front (a 3.3M-row TSV is not loaded at once)."""
    path = tmp_path / "big.tsv"
    line = "a caption of a realistic length for a web image, say eighty characters\thttp://img.example/{}\n"
    path.write_text("".join(line.format(i) for i in range(60_000)) + "bad\tline\twith\tfields\n")
    shards = iter_input_shards(InputSpec(path=path, no_header=True, columns=("caption", "url")), 1_000)
    first = next(shards)
    assert first.num_rows == 1_000 and first.column("url")[999].as_py() == "http://img.example/999"
    yielded = 1
    with pytest.raises(ValueError, match="Expected 2 columns"):
        for _ in shards:
            yielded += 1
    assert yielded >= 50


# --- the columns a row needs: bbox_col, verify_hash, a saved uid ----------------------------------


def test_row_columns_follow_the_saved_ones(tmp_path):
    rows = [{"url": f"http://x/{i}", "caption": "c", "uid": f"{i:032x}", "faces": [[0.1, 0.2, 0.3, 0.4]] * (i % 2),
             "sha": f"{i:064x}".upper(), "n": i} for i in range(5)]
    path = write_rows(tmp_path / "rows.parquet", rows, "parquet")
    spec = InputSpec(path=path, save_additional_columns=("uid",), bbox_col="faces", verify_hash=("sha", "sha256"))
    (table,) = iter_input_shards(spec, 10)
    assert table.schema.names == ["url", "caption", "uid", "faces", "expected_sha256"]
    assert table.schema.field("faces").type == pa.list_(pa.list_(pa.float64()))
    assert table.column("expected_sha256").to_pylist() == [row["sha"] for row in rows]
    saved_too = InputSpec(path=path, save_additional_columns=("faces", "n"), bbox_col="faces")
    assert next(iter_input_shards(saved_too, 10)).schema.names == ["url", "caption", "faces", "n"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json"])
def test_text_formats_carry_bbox_and_hash_columns(tmp_path, fmt):
    rows = [{"url": "http://x/1", "caption": "c", "score": '[[0.1, 0.2, 0.3, 0.4]]'},
            {"url": "http://x/2", "caption": "d", "score": "[]"}]
    path = write_rows(tmp_path / f"rows.{fmt}", rows, fmt)
    spec = InputSpec(path=path, bbox_col="score", verify_hash=("caption", "md5"), caption_col=None)
    (table,) = iter_input_shards(spec, 10)
    assert table.schema.names == ["url", "caption", "score", "expected_md5"]
    assert table.column("score").to_pylist() == [row["score"] for row in rows]  # JSON text: parsed per row
    assert table.column("expected_md5").to_pylist() == ["c", "d"]


def test_missing_bbox_or_hash_column_names_it(tmp_path):
    path = write_rows(tmp_path / "rows.parquet", ROWS, "parquet")
    with pytest.raises(ValueError, match="face_bboxes"):
        read_all(InputSpec(path=path, bbox_col="face_bboxes"))
    with pytest.raises(ValueError, match="'sha256'"):
        read_all(InputSpec(path=path, verify_hash=("sha256", "sha256")))


def test_img2dataset_gz_input_formats_are_accepted(tmp_path):
    path = write_rows(tmp_path / "rows.csv.gz", ROWS, "csv")
    spec = InputSpec(path=path, input_format="csv.gz")
    assert spec.input_format == "csv" and len(read_all(spec)) == len(ROWS)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"url": "http://x/1"}', "a JSON array of objects"),
        ('[{"url": "http://x/1"}, "http://x/2"]', "an object for each array element"),
        ('[{"url": "http://x/1"} {"url": "http://x/2"}]', "',' or ']'"),
        ('[{"url": "http://x/1"}] [', "nothing after the array"),
        ('[{"url": "http://x/1"},', "malformed JSON array element"),
    ],
)
def test_malformed_json_array_says_what_is_wrong(tmp_path, text, message):
    (tmp_path / "rows.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_all(InputSpec(path=tmp_path / "rows.json"))


def test_json_array_is_streamed_element_by_element(tmp_path):
    """A malformed last element surfaces only after earlier shards were yielded."""
    elements = ",\n".join(json.dumps({"url": f"http://img.example/{i}", "caption": "x" * 60}) for i in range(30_000))
    (tmp_path / "rows.json").write_text(f"[{elements},\n{{\"url\": ]")
    shards = iter_input_shards(InputSpec(path=tmp_path / "rows.json"), 1_000)
    assert next(shards).column("url")[999].as_py() == "http://img.example/999"
    with pytest.raises(ValueError, match="malformed JSON array element"):
        list(shards)
