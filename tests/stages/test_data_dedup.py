"""Dedup stage: exact and near duplicates, train/test leakage, the stable split, datasketch agreement."""

import json
import random

import numpy as np
import pytest
from conftest import r1, write_lines
from pydantic import ValidationError

from r1lib.config import DataConfig, DedupConfig
from r1lib.data.duplicates import MinHasher, band_keys, candidate_pairs, find_duplicates, is_test_item, lsh_params
from r1lib.data.records import make_record
from r1lib.data.row_formats import normalize
from tasks.dedup import dedup, dedup_files
from tasks.validate import validate

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon "
    "phi chi psi omega red green blue cyan magenta yellow black white"
).split()


def rec(prompt: str, answer: str, line: int, reasoning: str | None = None, file: str = "train.jsonl") -> dict:
    row = {"instruction": prompt, "output": r1(reasoning, answer) if reasoning else answer}
    return make_record(normalize(row), file, line)


def sentence(rng: random.Random, n: int = 30) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def corpus(n: int, seed: int = 0, words: int = 30) -> list[dict]:
    rng = random.Random(seed)
    return [rec(sentence(rng, words), sentence(rng, 10), i + 1) for i in range(n)]


def test_signatures_equal_datasketch_minhash():
    from datasketch import MinHash

    hasher = MinHasher(num_perm=32, ngram=3, seed=5)
    texts = ["the quick brown fox jumps over the lazy dog", "他说她明天来北京", "x", ""]
    hashes, owners = hasher.shingle_hashes(texts)
    sig = hasher.signatures_of_hashes(hashes, owners, len(texts))
    for i in range(len(texts)):
        m = MinHash(num_perm=32, seed=5, scheme="affine32", hashfunc=lambda h: h)
        m.update_batch(hashes[owners == i].tolist())
        assert np.array_equal(m.hashvalues, sig[i])
    assert (owners == 0).sum() == 7 and (owners == 1).sum() == 6  # word 3-grams; CJK characters are words


def test_similar_texts_have_similar_signatures():
    rng = random.Random(1)
    base = sentence(rng, 60)
    near = base + " omega"
    far = sentence(rng, 60)
    sig = MinHasher(128).signatures([base, near, far])
    assert (sig[0] == sig[1]).mean() > 0.85 > 0.3 > (sig[0] == sig[2]).mean()


def test_planted_exact_and_near_duplicates_are_found_and_first_is_kept():
    rows = corpus(300, words=80)
    rows.append(rec(rows[10]["messages"][0]["content"].upper() + "  ", rows[10]["messages"][1]["content"], 301))
    rows.append(rec(rows[20]["messages"][0]["content"] + " omega", rows[20]["messages"][1]["content"], 302))
    rows.append(rec(rows[30]["messages"][0]["content"], rows[30]["messages"][1]["content"], 303, reasoning="why"))
    train, test, quarantine, report = dedup(rows, [], DedupConfig())
    by_line = {q["line"]: q for q in quarantine}
    assert by_line[301]["reason"] == "duplicate" and by_line[301]["duplicate_of"]["line"] == 11
    assert by_line[302]["reason"] == "near_duplicate" and by_line[302]["duplicate_of"]["line"] == 21
    assert by_line[303]["reason"] == "duplicate"  # same conversation; reasoning is not part of the key
    assert (
        set(by_line) == {301, 302, 303}
        and len(train) == 300
        and report.reasons == {"duplicate": 2, "near_duplicate": 1}
    )
    assert len(train) + len(quarantine) == len(rows)


def test_threshold_is_configurable():
    rows = corpus(50)
    rows.append(rec(rows[5]["messages"][0]["content"] + " omega psi chi", rows[5]["messages"][1]["content"], 51))
    loose = dedup(rows, [], DedupConfig(threshold=0.6, num_perm=128))[3].reasons
    strict = dedup(rows, [], DedupConfig(threshold=0.98, num_perm=128))[3].reasons
    assert loose == {"near_duplicate": 1} and strict == {}
    assert lsh_params(0.85, 64) == (4, 15)


def test_leaked_test_items_are_removed_from_train_not_from_test():
    rows = corpus(200)
    test = [
        rec(rows[7]["messages"][0]["content"], "another answer", 1, file="test.jsonl"),  # same prompt
        rec(rows[8]["messages"][0]["content"] + " omega", rows[8]["messages"][1]["content"], 2, file="test.jsonl"),
        rec("a brand new question nobody asked", "new", 3, file="test.jsonl"),
    ]
    train, kept_test, quarantine, report = dedup(rows, test, DedupConfig())
    leaks = sorted((q["line"], q["duplicate_of"]["line"]) for q in quarantine if q["reason"] == "test_leak")
    assert leaks == [(8, 1), (9, 2)]
    assert len(kept_test) == 3 and len(train) == 198
    assert dedup(rows, test, DedupConfig(leakage=False))[3].reasons == {}


def test_stable_split_never_moves_an_old_test_item_into_train():
    old = corpus(2000, seed=3)
    new = old + corpus(3000, seed=4)
    random.Random(0).shuffle(new)  # arrival order must not matter either
    cfg = DedupConfig(split_test_fraction=0.1)
    _, test_old, _, rep_old = dedup(old, [], cfg)
    train_new, test_new, _, _ = dedup(new, [], cfg)
    ids_old, ids_new = {r["id"] for r in test_old}, {r["id"] for r in test_new}
    assert ids_old <= ids_new and not ids_old & {r["id"] for r in train_new}
    assert 0.07 < len(test_old) / 2000 < 0.13 and rep_old.split_to_test == len(test_old)
    assert is_test_item(test_old[0], 0.1, cfg.split_salt) and not is_test_item(test_old[0], 0.0, cfg.split_salt)


def test_split_keeps_exact_duplicates_on_one_side():
    row = corpus(1)[0]
    twin = rec(row["messages"][0]["content"].lower(), row["messages"][1]["content"], 9)
    assert is_test_item(row, 0.5, "s") == is_test_item(twin, 0.5, "s")


def test_candidate_pairs_cover_every_bucket_member():
    sig = np.zeros((5, 8), dtype=np.uint32)
    sig[3] = 1  # rows 0, 1, 2, 4 are identical
    pairs = {tuple(p) for p in candidate_pairs(band_keys(sig, 2, 4)).tolist()}
    assert {(0, 1), (0, 2), (0, 4)} <= pairs and not any(3 in p for p in pairs)
    drop = find_duplicates(np.arange(5, dtype=np.uint64), sig, 0.9, 2, 4)
    assert drop == {1: ("near_duplicate", 0), 2: ("near_duplicate", 0), 4: ("near_duplicate", 0)}


def test_stage_on_validated_shards_writes_quarantine_and_the_cleaned_sets(tmp_path):
    rows = [{"instruction": f"Question number {w} about {w} and {w}.", "output": r1("Think.", w)} for w in WORDS]
    rows += [rows[0], {**rows[1], "instruction": rows[1]["instruction"].upper()}]
    write_lines(tmp_path / "train.jsonl", rows)
    write_lines(tmp_path / "test.jsonl", [rows[2]])
    data = validate(
        DataConfig(
            train_paths=[str(tmp_path / "train.jsonl")],
            test_path=str(tmp_path / "test.jsonl"),
            replay_path=None,
            allowed_roots=[str(tmp_path)],
        ),
        tmp_path / "validate",
    )
    result = dedup_files(data.shards["train"], data.shards["test"], DedupConfig(), tmp_path / "dedup")
    lines = [json.loads(x) for x in open(result.quarantine, encoding="utf-8")]
    assert sorted((q["line"], q["reason"]) for q in lines) == [(3, "test_leak"), (33, "duplicate"), (34, "duplicate")]
    assert sum(1 for _ in open(result.train, encoding="utf-8")) == len(WORDS) - 1
    assert json.loads(open(tmp_path / "dedup" / "report.json").read())["train_out"] == len(WORDS) - 1


def test_no_test_file_and_split(tmp_path):
    rows = [
        {"instruction": f"Question {i}: {' '.join(random.Random(i).choices(WORDS, k=8))}", "output": str(i)}
        for i in range(200)
    ]
    write_lines(tmp_path / "train.jsonl", rows)
    data = validate(
        DataConfig(
            train_paths=[str(tmp_path / "train.jsonl")], test_path="", replay_path=None, allowed_roots=[str(tmp_path)]
        ),
        tmp_path / "validate",
    )
    assert open(data.test).read() == ""
    result = dedup_files(
        data.shards["train"], data.shards["test"], DedupConfig(split_test_fraction=0.2), tmp_path / "dedup"
    )
    report = result.report
    n_test = sum(1 for _ in open(result.test, encoding="utf-8"))
    assert report.split_to_test == n_test and 20 < n_test < 60
    assert report.train_out + n_test == 200


def test_disabled_stage_passes_rows_through(tmp_path):
    data = validate(DataConfig(), tmp_path / "validate")
    report = dedup_files(
        data.shards["train"], data.shards["test"], DedupConfig(enabled=False), tmp_path / "dedup"
    ).report
    assert report.train_out == report.train_in and report.reasons == {}
    with pytest.raises(ValidationError):
        DedupConfig(threshold=0)
