"""Round three of the outside attack (issue 22) on the data readers: Parquet columns named twice, a Parquet
dictionary bomb (479 bytes decoding to 2 GB), placeholders whose values point at each other, one file named twice
with two spellings. Each used to be read (last-wins, 2.1 GB of RSS and 2 GB of quarantine, ``{{...}}`` in accepted
rows, every row read twice); now each is refused or quarantined, naming the file."""

from __future__ import annotations

import json
import resource

import pytest

from r1lib.errors import ConfigError, DataValidationError
from tasks.validate import validate_file


def peak_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def dictionary_bomb(path, rows=2000, cell=1_000_000):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def repeated(text):
        return pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array([text]))

    table = pa.table({"instruction": repeated("A" * cell), "output": repeated("x")})
    pq.write_table(table, path, compression="zstd", compression_level=22, store_schema=False)
    return path


def test_a_parquet_file_naming_a_column_twice_is_refused_naming_the_file_and_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "twice.parquet"
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"]), pa.array(["c"])], ["instruction"] * 2 + ["output"])
    pq.write_table(table, path)
    with pytest.raises(DataValidationError, match=r"twice\.parquet: names the column\(s\) \['instruction'\] more"):
        validate_file(path, max_chars=100_000)


def test_a_parquet_dictionary_bomb_is_refused_in_bounded_memory_with_no_quarantine(tmp_path):
    path = dictionary_bomb(tmp_path / "bomb.parquet")
    assert path.stat().st_size < 1000
    before = peak_mib()
    with pytest.raises(DataValidationError, match=r"bomb\.parquet: its rows decode to more than 67,108,864 bytes"):
        validate_file(path, max_chars=100_000)
    assert peak_mib() - before < 300  # before: 2.1 GB


def test_a_parquet_row_over_max_line_bytes_is_refused_before_it_is_decoded(tmp_path):
    path = dictionary_bomb(tmp_path / "wide.parquet", rows=3, cell=50_000)
    with pytest.raises(DataValidationError, match=r"wide\.parquet: row 1 decodes to 50,001 bytes, over data.max_line"):
        validate_file(path, max_chars=100_000, max_line_bytes=20_000)


def test_parquet_pages_that_decompress_past_the_bound_are_refused_from_the_footer(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "zstd.parquet"
    table = pa.table({"instruction": ["B" * 200_000] * 100, "output": ["x"] * 100})
    pq.write_table(table, path, compression="zstd", use_dictionary=False)
    with pytest.raises(DataValidationError, match=r"zstd\.parquet: its pages decompress to"):
        validate_file(path, max_chars=100_000, max_line_bytes=1_000_000)


def test_a_legitimate_parquet_file_reads_every_row_as_before(tmp_path):
    """Nested turns, dictionary and plain strings, nulls, numbers, several row groups and batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from r1lib.data.readers import iter_raw_rows

    rows = [
        {
            "messages": [{"role": "user", "content": f"问题 {i}"}, {"role": "assistant", "content": f"答 {i % 7}"}],
            "system": "You are terse." if i % 3 else None,
            "score": i * 0.5,
        }
        for i in range(5000)
    ]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1200)
    got = [row for _, _, row in iter_raw_rows(path, max_line_bytes=4096)]
    assert got == [{k: v for k, v in r.items() if v is not None} for r in rows]
    accepted, quarantined, _ = validate_file(path, max_chars=100_000)
    assert (len(accepted), quarantined) == (5000, [])


def test_placeholders_whose_values_point_at_each_other_are_quarantined_with_a_reason(tmp_path):
    from r1lib.data.row_rules import RowRules

    path = tmp_path / "identity.jsonl"
    rows = [
        {"instruction": "Who are you?", "output": "I am {{name}}, made by {{author}}."},
        {"instruction": "Hi", "output": "Hello."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rules = RowRules(placeholders={"name": "{{author}}", "author": "{{name}}"})
    accepted, quarantined, report = validate_file(path, max_chars=100_000, rules=rules)
    assert len(accepted) == 1 and "{{" not in json.dumps(accepted, ensure_ascii=False)
    assert report.reasons == {"placeholder": 1}
    assert "holds the placeholder {{author}} in turn" in quarantined[0]["message"]
    assert str(path) in quarantined[0]["message"]


def test_a_data_file_named_twice_with_two_spellings_is_refused(tmp_path, monkeypatch):
    from r1lib.data.inputs import distinct_inputs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "d" / "a.jsonl")
    roots = [str(tmp_path)]
    for second in ["./d/a.jsonl", "d//a.jsonl", "d/../d/a.jsonl", str(tmp_path / "d/a.jsonl"), "link.jsonl", "d"]:
        with pytest.raises(ConfigError, match=r"data.train_paths\[1\]: .* names the file .*a\.jsonl.*data.train_pa"):
            distinct_inputs([("data.train_paths[0]", "d/a.jsonl"), ("data.train_paths[1]", second)], roots)
    with pytest.raises(ConfigError, match="data.test_path"):
        distinct_inputs([("data.train_paths[0]", "d/*.jsonl"), ("data.test_path", "./d/a.jsonl")], roots)
    distinct_inputs([("data.train_paths[0]", "d/a.jsonl"), ("data.test_path", "missing.jsonl")], roots)


def test_preflight_refuses_it_before_any_work(tmp_path):
    from r1lib.config import PipelineConfig
    from r1lib.preflight import check_config

    config = PipelineConfig.model_validate(
        {
            "data": {"train_paths": ["data/sample/train.jsonl", "./data/sample/train.jsonl"]},
            "runs_dir": str(tmp_path / "runs"),
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    with pytest.raises(ConfigError, match=r"data.train_paths\[1\]: './data/sample/train.jsonl' names the file"):
        check_config(config)
