"""Document sources: every local format, folders, globs, the stdlib corpus, and one-line errors for bad input."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybrid_ray.data.sources import iter_documents, source_identity, stdlib_files
from hybrid_ray.errors import DataError, SpecError
from hybrid_ray.spec import DataSpec, parse_source


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def docs(source, **kw):
    return list(iter_documents(DataSpec(source=str(source), **kw)))


def one_line_error(source, match, **kw):
    with pytest.raises(DataError, match=match) as e:
        docs(source, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def write_parquet(path, texts, column="text", row_group_size=2):
    pq.write_table(pa.table({column: texts, "id": list(range(len(texts)))}), path, row_group_size=row_group_size)


def test_txt_is_one_document_per_file(tmp_path):
    (tmp_path / "a.txt").write_text("héllo\nworld\n")
    assert docs(tmp_path / "a.txt") == ["héllo\nworld\n"]


def test_jsonl_reads_the_text_field_and_skips_blank_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "one", "x": 1}\n\n{"text": "two"}\n{"text": ""}\n')
    assert docs(p) == ["one", "two"]
    p.write_text('{"body": "one"}\n')
    assert docs(p, text_field="body") == ["one"]


def test_json_list_and_json_lines(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([{"text": "a"}, {"text": "b"}]))
    (tmp_path / "lines.json").write_text('{"text": "c"}\n{"text": "d"}\n')
    assert docs(tmp_path / "list.json") == ["a", "b"]
    assert docs(tmp_path / "lines.json") == ["c", "d"]


def test_parquet_reads_the_column_across_row_groups(tmp_path):
    texts = [f"doc {i}" for i in range(7)]
    write_parquet(tmp_path / "d.parquet", texts)
    assert pq.ParquetFile(tmp_path / "d.parquet").num_row_groups > 1
    assert docs(tmp_path / "d.parquet") == texts


def test_folder_is_recursive_sorted_and_skips_hidden_and_other_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("bz")
    (tmp_path / "a.jsonl").write_text('{"text": "a1"}\n{"text": "a2"}\n')
    write_parquet(tmp_path / "c.parquet", ["c1"])
    (tmp_path / "notes.md").write_text("ignored")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.txt").write_text("hidden")
    assert docs(tmp_path) == ["a1", "a2", "bz", "c1"]


def test_glob(tmp_path):
    for name in ("x1.txt", "x2.txt", "y.txt"):
        (tmp_path / name).write_text(name)
    assert docs(tmp_path / "x*.txt") == ["x1.txt", "x2.txt"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x3.txt").write_text("x3.txt")
    assert docs(tmp_path / "**" / "x*.txt") == ["x3.txt", "x1.txt", "x2.txt"]  # sorted by path: sub/ < x1


def test_stdlib_is_sorted_python_sources_without_site_packages():
    files = stdlib_files()
    assert len(files) > 500 and all(f.suffix == ".py" for f in files)
    assert not any("site-packages" in f.parts for f in files)
    first = next(iter_documents(DataSpec(source="stdlib")))
    assert isinstance(first, str) and first


def test_source_identity_tracks_file_changes(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one")
    before = source_identity(DataSpec(source=str(p)))
    p.write_text("one more")
    assert source_identity(DataSpec(source=str(p))) != before
    assert source_identity(DataSpec(source="stdlib"))["kind"] == "stdlib"


def test_parse_source():
    hf = parse_source("hf:HuggingFaceTB/smollm-corpus:cosmopedia-v2")
    assert (hf.kind, hf.hf_name, hf.hf_config, hf.hf_split) == ("hf", "HuggingFaceTB/smollm-corpus", "cosmopedia-v2", "train")
    hf = parse_source("hf:user/ds@validation")
    assert (hf.hf_name, hf.hf_config, hf.hf_split) == ("user/ds", None, "validation")
    assert parse_source("stdlib").kind == "stdlib"
    mqar = parse_source("mqar?pairs=8")
    assert (mqar.kind, mqar.options) == ("mqar", "pairs=8")
    with pytest.raises(SpecError, match="expected hf:NAME"):
        parse_source("hf:")


def test_local_folders_named_like_other_sources_are_files(tmp_path, monkeypatch):
    """A folder named mqar_data or hf:corpus is read as files and made absolute (a Ray job runs elsewhere)."""
    monkeypatch.chdir(tmp_path)
    for name in ("mqar_data", "hf:corpus", "mqar"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.txt").write_text(f"text of {name}")
        spec = DataSpec(source=name)
        assert spec.parsed.kind == "files" and spec.source == str(tmp_path / name)
        monkeypatch.chdir("/")
        assert docs(spec.source) == [f"text of {name}"]
        monkeypatch.chdir(tmp_path)
    assert DataSpec(source="corpus/").source == DataSpec(source=str(tmp_path / "corpus")).source


def test_missing_path(tmp_path):
    msg = one_line_error(tmp_path / "nope.jsonl", "not found")
    assert "nope.jsonl" in msg


def test_empty_folder_and_no_glob_match(tmp_path):
    one_line_error(tmp_path, "no .txt")
    one_line_error(tmp_path / "*.jsonl", "no .txt")


def test_unsupported_extension(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    one_line_error(tmp_path / "a.csv", "unsupported file type")


def test_unreadable_parquet(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet at all")
    one_line_error(tmp_path / "bad.parquet", "cannot read parquet file .*bad.parquet")


def test_missing_text_column_and_field(tmp_path):
    write_parquet(tmp_path / "d.parquet", ["a"], column="content")
    msg = one_line_error(tmp_path / "d.parquet", "no text column 'text'")
    assert "content" in msg
    (tmp_path / "d.jsonl").write_text('{"txt": "a"}\n')
    assert "did you mean" in one_line_error(tmp_path / "d.jsonl", r"d.jsonl:1: no text field 'text'")


def test_invalid_json_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n{"text": \n')
    one_line_error(tmp_path / "d.jsonl", r"d.jsonl:2: invalid JSON")


def test_hub_unreachable_is_one_line():
    one_line_error("hf:HuggingFaceTB/smollm-corpus:cosmopedia-v2", "hub is unreachable")


def test_hf_source_streams_a_local_dataset_folder(tmp_path):
    """The hf: path through `datasets` streaming, without the hub: a local folder of data files."""
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert docs(f"hf:{tmp_path}") == ["a", "b"]
    one_line_error(f"hf:{tmp_path}", "no text field 'body'", text_field="body")
    one_line_error(f"hf:{tmp_path}@validation", "cannot load Hugging Face dataset")


def test_mqar_has_no_documents():
    one_line_error("mqar", "synthetic")


def test_binary_files_named_txt_are_skipped_and_counted(tmp_path):
    (tmp_path / "a.txt").write_text("real text")
    (tmp_path / "b.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00binary")
    (tmp_path / "c.txt").write_bytes(bytes(range(256)))
    with pytest.warns(UserWarning, match=f"skipped 2 binary file\\(s\\) named .txt in {tmp_path}"):
        assert docs(tmp_path) == ["real text"]


def test_the_embedded_corpus_leaves_out_generated_modules():
    names = {p.name for p in stdlib_files()}
    assert "os.py" in names and "cp1252.py" not in names and "topics.py" not in names
    assert not any(n.startswith("_sysconfigdata") for n in names)
