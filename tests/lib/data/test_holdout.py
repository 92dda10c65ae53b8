"""A user's held-out numbers come from the user's data: with their own training files and no test file of theirs,
a stable hash split of their rows is the held-out set and the summary says so; a share of 0 is refused naming
data.test_path; the demo (sample in, sample out) and a user's own test file are used as they are."""

import gzip
import json
import shutil

import pytest
from conftest import write_lines

from r1lib.config import DataConfig, DedupConfig
from r1lib.data.duplicates import is_test_item
from r1lib.data.holdout import SHIPPED_SAMPLE, held_out_configs, held_out_source, is_shipped_sample
from r1lib.errors import ConfigError, DataValidationError
from r1lib.presets import config_from_args
from tasks.dedup import dedup_files
from tasks.validate import validate

SAMPLE_TEST = "data/sample/test.jsonl"


def user_rows(n: int) -> list[dict]:
    return [{"instruction": f"What is {k} plus {k + 1}?", "output": str(2 * k + 1)} for k in range(n)]


def test_the_shipped_sample_is_recognized_however_the_path_is_written(tmp_path):
    assert is_shipped_sample("data/sample/test.jsonl") and is_shipped_sample("./data/sample/../sample/train.jsonl")
    assert not is_shipped_sample(str(tmp_path / "test.jsonl")) and not is_shipped_sample("s3://bucket/data/sample/x")


def test_a_copy_of_the_sample_a_symlink_or_a_file_url_is_the_sample_not_the_users_test_file(tmp_path):
    # bench/attack4 finding 15: the held-out source was judged by the path as written
    sample_test = SHIPPED_SAMPLE / "test.jsonl"
    copy = tmp_path / "my_test.jsonl"
    shutil.copy(sample_test, copy)
    (tmp_path / "link.jsonl").symlink_to(sample_test)
    mine = write_lines(tmp_path / "mine.jsonl", [{"instruction": "Own row?", "output": "Yes."}])
    for spec in (f"file://{sample_test}", str(copy), str(tmp_path / "link.jsonl"), f"file://{copy}"):
        assert is_shipped_sample(spec), spec
        source = held_out_source(DataConfig(train_paths=[str(mine)], test_path=spec), DedupConfig())
        assert source.kind == "split" and "not used" in source.describe(), spec
    edited = tmp_path / "edited.jsonl"  # 10 sample rows among 20 of the user's: the user's own file
    sample_lines = sample_test.read_text().splitlines(keepends=True)
    edited.write_text("".join(sample_lines[:10]) + "".join(json.dumps(r) + "\n" for r in user_rows(20)))
    assert not is_shipped_sample(str(edited)) and not is_shipped_sample(str(mine))
    assert (
        held_out_source(DataConfig(train_paths=[str(mine)], test_path=str(edited)), DedupConfig()).kind == "test_file"
    )


def test_a_re_saved_copy_of_the_sample_is_the_sample_judged_by_its_rows(tmp_path):
    # bench/attack5 finding 11: a whole-file digest missed every re-saved copy
    original = (SHIPPED_SAMPLE / "test.jsonl").read_bytes()
    lines = original.decode().splitlines(keepends=True)
    respaced = "".join(json.dumps(json.loads(line), indent=None, separators=(", ", " : ")) + "\n" for line in lines)
    copies = {
        "crlf.jsonl": original.replace(b"\n", b"\r\n"),
        "blank.jsonl": original + b"\n\n",
        "shuffled.jsonl": "".join(lines[1::2] + lines[::2]).encode(),
        "half.jsonl": "".join(lines[: len(lines) // 2]).encode(),
        "test.jsonl.gz": gzip.compress(original),
        "respaced.jsonl": respaced.encode("utf-8-sig"),
        "mostly.jsonl": "".join(lines[:30] + [json.dumps(r) + "\n" for r in user_rows(20)]).encode(),
    }
    mine = write_lines(tmp_path / "mine.jsonl", user_rows(5))
    for name, content in copies.items():
        (tmp_path / name).write_bytes(content)
        assert is_shipped_sample(str(tmp_path / name)), name
        source = held_out_source(DataConfig(train_paths=[str(mine)], test_path=str(tmp_path / name)), DedupConfig())
        assert source.kind == "split", name
    half_mine = tmp_path / "half_mine.jsonl"  # half the rows the user's: not "most of them" the sample's
    half_mine.write_text("".join(lines[:20] + [json.dumps(r) + "\n" for r in user_rows(20)]))
    assert not is_shipped_sample(str(half_mine))
    (tmp_path / "junk.jsonl").write_bytes(b"\xff\xfe not text")
    assert not is_shipped_sample(str(tmp_path / "junk.jsonl"))


def test_the_demo_is_scored_on_the_shipped_sample():
    source = held_out_source(DataConfig(), DedupConfig())
    assert (source.kind, source.test_path) == ("shipped_sample", SAMPLE_TEST)
    data, dedup, _ = held_out_configs(DataConfig(), DedupConfig())
    assert (data.test_path, dedup.split_test_fraction) == (SAMPLE_TEST, 0)


def test_a_test_file_of_the_users_is_used_as_it_is(tmp_path):
    cfg = DataConfig(train_paths=[str(tmp_path / "a.jsonl")], test_path=str(tmp_path / "t.jsonl"))
    data, dedup, source = held_out_configs(cfg, DedupConfig())
    assert source.kind == "test_file" and data.test_path == str(tmp_path / "t.jsonl")
    assert "data.test_path" in source.describe(7) and dedup.split_test_fraction == 0


@pytest.mark.parametrize("test_path", [SAMPLE_TEST, ""])
def test_the_users_training_files_without_a_test_file_of_theirs_are_split(tmp_path, test_path):
    cfg = DataConfig(train_paths=["data/sample/train.jsonl", str(tmp_path / "mine.jsonl")], test_path=test_path)
    data, dedup, source = held_out_configs(cfg, DedupConfig())
    assert (source.kind, source.fraction, data.test_path, dedup.split_test_fraction) == ("split", 0.1, "", 0.1)
    text = source.describe(12)
    assert text.startswith("12 rows: 10% of your training rows") and "data.holdout_fraction" in text
    assert ("(the shipped sample) not used" in text) == bool(test_path)


def test_a_split_asked_of_dedup_wins_and_dedup_off_still_holds_rows_out(tmp_path):
    cfg = DataConfig(train_paths=[str(tmp_path / "mine.jsonl")], holdout_fraction=0.2)
    _, dedup, source = held_out_configs(cfg, DedupConfig(split_test_fraction=0.3))
    assert source.fraction == dedup.split_test_fraction == 0.3
    _, dedup, _ = held_out_configs(cfg, DedupConfig(enabled=False))
    assert (dedup.enabled, dedup.exact, dedup.near, dedup.leakage, dedup.split_test_fraction) == (
        True, False, False, False, 0.2
    )  # fmt: skip


def test_no_share_to_hold_out_is_refused_naming_the_test_path(tmp_path):
    mine = write_lines(tmp_path / "mine.jsonl", user_rows(3))
    cfg = DataConfig(train_paths=[str(mine)], holdout_fraction=0)
    with pytest.raises(ConfigError) as info:
        held_out_source(cfg, DedupConfig())
    message = str(info.value)
    assert "data.test_path" in message and "data.holdout_fraction" in message and SAMPLE_TEST in message
    from r1lib.preflight import check_config

    config = config_from_args(
        ["--set", f"data.train_paths={json.dumps([str(mine)])}", "--set", "data.holdout_fraction=0",
         "--set", f"data.allowed_roots={json.dumps(['{project}/data', str(tmp_path)])}"]
    )  # fmt: skip
    with pytest.raises(ConfigError, match="data.test_path"):
        check_config(config)  # before any stage works


def test_the_held_out_rows_are_the_users_own_and_the_summary_says_where_they_came_from(tmp_path):
    rows = user_rows(200)
    mine = write_lines(tmp_path / "mine.jsonl", rows)
    cfg = DataConfig(train_paths=[str(mine)], replay_path=None, allowed_roots=["{project}/data", str(tmp_path)])
    data, dedup, source = held_out_configs(cfg, DedupConfig())
    validated = validate(data, tmp_path / "validate")
    deduped = dedup_files(validated.shards["train"], validated.shards["test"], dedup, tmp_path / "dedup", source)
    test = [json.loads(line) for line in open(deduped.test, encoding="utf-8")]
    prompts = [r["instruction"] for r in rows]
    salt = "r1-finetune-split"
    expected = [p for p in prompts if is_test_item({"messages": [{"role": "user", "content": p}]}, 0.1, salt)]
    assert 8 <= len(test) <= 35 and [r["messages"][0]["content"] for r in test] == expected
    assert all(r["source"]["file"] == str(mine) for r in test)
    assert deduped.report.train_out + len(test) == 200
    lines = dict(deduped.summary_lines())
    assert lines["held-out"].startswith(f"{len(test)} rows: 10% of your training rows")
    assert deduped.summary()["dedup"]["held_out"]["kind"] == "split"


def test_a_split_that_holds_out_no_row_fails_at_dedup_naming_the_settings(tmp_path):
    """Outside attack finding 3: a split of a tiny share (or of few rows) used to fail later, in tokenize, naming
    tokenize.*; it now fails where it happens, naming data.holdout_fraction and data.test_path."""
    mine = write_lines(tmp_path / "mine.jsonl", user_rows(5))
    cfg = DataConfig(train_paths=[str(mine)], replay_path=None, allowed_roots=["{project}/data", str(tmp_path)])
    data, dedup, source = held_out_configs(cfg.model_copy(update={"holdout_fraction": 1e-9}), DedupConfig())
    validated = validate(data, tmp_path / "validate")
    with pytest.raises(DataValidationError) as refused:
        dedup_files(validated.shards["train"], validated.shards["test"], dedup, tmp_path / "dedup", source)
    assert "data.holdout_fraction" in str(refused.value) and "data.test_path" in str(refused.value)
