"""Stage 2, dedup: exact and near duplicates, train/test leakage, and a stable split when there is no test file.

Keys are mapped over the shards, one task plans over all of them (so duplicates and leaks across shards are found as
in one pass), a second map writes each shard's survivors. Every dropped row goes to ``dedup/quarantine.jsonl`` with
the row it repeats. The rules: docs/data-stages.md."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from r1lib.config import DedupConfig
from r1lib.data.duplicates import (
    MinHasher,
    conversation_text,
    find_contradictions,
    find_duplicates,
    find_leaks,
    hash64,
    lsh_params,
    normalize_text,
    pair_orientation,
    prompt_text,
    quarantine_row,
)
from r1lib.data.holdout import HeldOutSource
from r1lib.data.shards import JsonlWriter, Shard, chunked
from r1lib.errors import DataValidationError
from r1lib.io import atomic_path, concat_files, iter_jsonl, write_json
from r1lib.paths import InputPath, OutputPath
from r1lib.policy import stage_options
from r1lib.stage import StageResult


class DedupReport(BaseModel):
    train_in: int
    test_in: int
    train_out: int
    test_out: int
    split_to_test: int
    reasons: dict[str, int]
    threshold: float
    num_perm: int
    bands: int
    rows_per_band: int
    max_removed_fraction: float = 1.0  # dedup.max_removed_fraction, checked by merge_dedup
    held_out_pairs: int = 0  # training pairs held out by dedup.preference_test_fraction (of split_to_test)

    def removed(self) -> dict[str, tuple[int, int]]:
        """(rows removed, rows in) per split; rows the split moved from train to test are moved, not removed."""
        return {
            "train": (self.train_in - self.split_to_test - self.train_out, self.train_in),
            "test": (self.test_in + self.split_to_test - self.test_out, self.test_in + self.split_to_test),
        }


# --- keys (map), plan (reduce), survivors (map) ----------------------------------------------------------------------

KEEP_TRAIN, KEEP_TEST, DROPPED = 0, 1, 2


class Keys(BaseModel):
    """What the plan needs of one shard's rows (``path``: a .npy structured array, one entry per row in order) and
    the input files they came from (``files``, indexed by the array's ``file`` field)."""

    path: InputPath
    rows: int
    files: list[str]


def _key_dtype(num_perm: int) -> np.dtype:
    return np.dtype(
        [
            ("exact", "<u8"),
            ("prompt", "<u8"),
            ("to_test", "?"),
            ("pair", "?"),  # a preference pair
            ("pair_to_test", "?"),  # held out for preference accuracy when the test rows hold no pair
            ("contra", "<u8"),  # a pair's prompt and answers as a set (0: no pair), and which way round they are
            ("flip", "?"),
            ("line", "<i8"),
            ("file", "<i4"),
            ("id", "S16"),
            ("sig", "<u4", (num_perm,)),
        ]
    )


def record_keys(records: list[dict], cfg: DedupConfig, hasher: MinHasher | None, files: dict[str, int]) -> np.ndarray:
    """The keys of a chunk of records: exact and prompt hashes, the split decision, the MinHash signature, and
    file/line/id to name the row in another row's quarantine entry. Each text is normalized once."""
    out = np.zeros(len(records), dtype=_key_dtype(cfg.num_perm))
    conversations = [normalize_text(conversation_text(r)) for r in records]
    prompts = [normalize_text(prompt_text(r)) for r in records]
    out["exact"] = [hash64(c) for c in conversations] if cfg.exact else 0
    out["prompt"] = [hash64(p) for p in prompts]
    if cfg.split_test_fraction > 0:
        limit = cfg.split_test_fraction * 2**64
        # A labelled answer (KTO) is never held out: held-out preference rows are pairs (preference accuracy).
        out["to_test"] = [
            r.get("preference") != "label" and hash64(p, cfg.split_salt) < limit for r, p in zip(records, prompts)
        ]
    out["pair"] = [r.get("preference") == "pair" for r in records]
    orientations = [pair_orientation(r) for r in records]
    out["contra"], out["flip"] = [k for k, _ in orientations], [f for _, f in orientations]
    if cfg.preference_test_fraction > 0:
        limit = cfg.preference_test_fraction * 2**64
        out["pair_to_test"] = out["pair"] & np.array([hash64(p, cfg.split_salt) < limit for p in prompts], dtype=bool)
    out["line"] = [r["source"]["line"] for r in records]
    out["file"] = [files.setdefault(r["source"]["file"], len(files)) for r in records]
    out["id"] = [r["id"].encode() for r in records]
    if hasher is not None:
        out["sig"] = hasher.signatures(conversations, normalized=True)
    return out


def shard_keys(shard: str, cfg: DedupConfig, out_path: Path) -> Keys:
    """The map before the plan: keys of one shard, streamed chunk by chunk."""
    hasher = MinHasher(cfg.num_perm, cfg.ngram, cfg.seed) if cfg.near else None
    files: dict[str, int] = {}
    parts = [record_keys(chunk, cfg, hasher, files) for chunk in chunked(iter_jsonl(Path(shard)), 10_000)]
    keys = np.concatenate(parts) if parts else np.zeros(0, dtype=_key_dtype(cfg.num_perm))
    with atomic_path(Path(out_path)) as tmp, open(tmp, "wb") as handle:
        np.save(handle, keys, allow_pickle=False)
    return Keys(path=str(out_path), rows=len(keys), files=list(files))


class Side:
    """The keys of one split's shards, concatenated in shard order."""

    def __init__(self, arrays: list[np.ndarray], files: list[list[str]], num_perm: int):
        self.keys = np.concatenate(arrays) if arrays else np.zeros(0, dtype=_key_dtype(num_perm))
        self.files = files
        sizes = [len(a) for a in arrays]
        self.shard_of = np.repeat(np.arange(len(arrays)), sizes)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @classmethod
    def load(cls, keys: list[Keys], num_perm: int) -> Side:
        return cls([np.load(k.path, allow_pickle=False) for k in keys], [k.files for k in keys], num_perm)

    def __len__(self) -> int:
        return len(self.keys)

    def ref(self, i: int) -> dict:
        """file, line and id of row ``i``: how another row's quarantine entry names it."""
        row = self.keys[i]
        return {"file": self.files[self.shard_of[i]][row["file"]], "line": int(row["line"]), "id": row["id"].decode()}


def plan(train: Side, test: Side, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray, dict, DedupReport]:
    """The reduce: one global pass over every shard's keys. Returns the fate of each train and test row (KEEP_TRAIN,
    KEEP_TEST or DROPPED), the dropped rows ({(side, row): (reason, split, other side, other row)}) and the report.

    With no test rows and ``split_test_fraction`` > 0, train rows whose prompt hash falls below the fraction become
    the test set (in train order). When no test row is a preference pair, the training pairs whose prompt hash falls
    below ``preference_test_fraction`` are held out as test rows too (the pairs preference accuracy is measured on).
    First every pair that another pair of its set contradicts (same prompt and answers, preferred the other way) is
    dropped, both directions. Then each set loses its exact and near duplicates (the first row is kept), then train
    loses the rows that leak a kept test row (same prompt, or a near-identical conversation)."""
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
    n_train, n_test = len(train), len(test)
    moved = train.keys["to_test"] & (n_test == 0 and cfg.split_test_fraction > 0)
    test_pairs = bool(test.keys["pair"].any() or (train.keys["pair"] & moved).any())
    held_pairs = train.keys["pair_to_test"] & ~moved & (not test_pairs)
    train_fate = np.where(moved | held_pairs, KEEP_TEST, KEEP_TRAIN).astype(np.int8)
    test_fate = np.full(n_test, KEEP_TEST, dtype=np.int8)
    fates = {"train": train_fate, "test": test_fate}
    sides = {"train": train, "test": test}
    drops: dict[tuple[str, int], tuple[str, str, str, int]] = {}
    for side in ("train", "test"):  # one prompt, the same two answers preferred both ways: neither is trained
        for i, j in find_contradictions(sides[side].keys["contra"], sides[side].keys["flip"]).items():
            split = "test" if side == "test" or fates[side][i] == KEEP_TEST else "train"
            drops[(side, i)], fates[side][i] = ("contradictory_pair", split, side, j), DROPPED

    def drop_duplicates(side: str, idx: np.ndarray, split: str) -> np.ndarray:
        idx, keys = idx[fates[side][idx] != DROPPED], sides[side].keys
        exact = keys["exact"][idx] if cfg.exact else np.arange(len(idx), dtype=np.uint64)
        for pos, (reason, of) in find_duplicates(
            exact, keys["sig"][idx] if cfg.near else None, cfg.threshold, bands, rows
        ).items():
            drops[(side, int(idx[pos]))] = (reason, split, side, int(idx[of]))
            fates[side][idx[pos]] = DROPPED
        return idx[fates[side][idx] != DROPPED]

    train_idx = drop_duplicates("train", np.flatnonzero(~moved & ~held_pairs), "train")
    first_side, first_idx = ("train", np.flatnonzero(moved)) if moved.any() else ("test", np.arange(n_test))
    kept_test = [(first_side, drop_duplicates(first_side, first_idx, "test"))]
    kept_test.append(("train", drop_duplicates("train", np.flatnonzero(held_pairs), "test")))
    for test_side, test_idx in kept_test:
        train_idx = train_idx[train_fate[train_idx] != DROPPED]
        if not (cfg.leakage and len(test_idx)):
            continue
        t, e = train.keys[train_idx], sides[test_side].keys[test_idx]
        leaks = find_leaks(
            t["prompt"],
            t["sig"] if cfg.near else None,
            e["prompt"],
            e["sig"] if cfg.near else None,
            cfg.threshold,
            bands,
            rows,
        )
        for i, j in leaks.items():
            drops[("train", int(train_idx[i]))] = ("test_leak", "train", test_side, int(test_idx[j]))
            train_fate[train_idx[i]] = DROPPED
    report = DedupReport(
        train_in=n_train,
        test_in=n_test,
        train_out=int((train_fate == KEEP_TRAIN).sum()),
        test_out=int((train_fate == KEEP_TEST).sum() + (test_fate == KEEP_TEST).sum()),
        split_to_test=int(moved.sum() + held_pairs.sum()),
        held_out_pairs=int(held_pairs.sum()),
        reasons=dict(Counter(d[0] for d in drops.values())),
        threshold=cfg.threshold,
        num_perm=cfg.num_perm,
        bands=bands,
        rows_per_band=rows,
        max_removed_fraction=cfg.max_removed_fraction,
    )
    return train_fate, test_fate, drops, report


def shard_plans(side_name: str, side: Side, fate: np.ndarray, drops: dict, sides: dict[str, Side]) -> list[dict]:
    """The plan cut back into shards: per shard, the fate of each row and, for each dropped row, what it repeats."""
    plans = []
    for k in range(len(side.offsets) - 1):
        lo, hi = int(side.offsets[k]), int(side.offsets[k + 1])
        dropped = {}
        for i in np.flatnonzero(fate[lo:hi] == DROPPED).tolist():
            reason, split, other_side, other = drops[(side_name, lo + i)]
            dropped[str(i)] = {"reason": reason, "split": split, "of": sides[other_side].ref(other)}
        plans.append({"fate": (fate[lo:hi] + ord("0")).astype(np.uint8).tobytes().decode("ascii"), "dropped": dropped})
    return plans


class DedupPlan(BaseModel):
    train: list[InputPath]  # one plan file per train shard, in shard order
    test: list[InputPath]
    report: DedupReport


def make_plan(train_keys: list[Keys], test_keys: list[Keys], cfg: DedupConfig, out_dir: Path) -> DedupPlan:
    """The reduce task: the global plan, written as one small JSON file per shard."""
    sides = {"train": Side.load(train_keys, cfg.num_perm), "test": Side.load(test_keys, cfg.num_perm)}
    train_fate, test_fate, drops, report = plan(sides["train"], sides["test"], cfg)
    paths: dict[str, list[str]] = {"train": [], "test": []}
    for name, fate in (("train", train_fate), ("test", test_fate)):
        for k, shard_plan in enumerate(shard_plans(name, sides[name], fate, drops, sides)):
            paths[name].append(str(write_json(Path(out_dir) / "plan" / f"{name}-{k:04d}.json", shard_plan)))
    return DedupPlan(train=paths["train"], test=paths["test"], report=report)


class DedupShard(BaseModel):
    """One shard after dedup: its kept train rows, its test rows (kept test rows, or train rows the split moved) and
    its quarantined rows."""

    train: Shard | None
    test: Shard | None
    quarantine: InputPath | None = None


def write_survivors(shard: str, plan_path: str, out_prefix: Path) -> DedupShard:
    """The map after the plan: one shard's rows to its train part, its test part (kept test rows, or train rows the
    split moved), or its quarantine part."""
    shard_plan = json.loads(Path(plan_path).read_text(encoding="utf-8"))
    fate, dropped = shard_plan["fate"], shard_plan["dropped"]
    with (
        JsonlWriter(f"{out_prefix}.train.jsonl") as train,
        JsonlWriter(f"{out_prefix}.test.jsonl") as test,
        JsonlWriter(f"{out_prefix}.quarantine.jsonl") as quarantine,
    ):
        rows = 0
        for i, record in enumerate(iter_jsonl(Path(shard))):
            rows += 1
            if fate[i] == "0":
                train.write(record)
            elif fate[i] == "1":
                test.write(record)
            else:
                drop = dropped[str(i)]
                quarantine.write(quarantine_row(record, drop["reason"], drop["of"], drop["split"]))
        if rows != len(fate):  # the shard changed after its keys were taken
            raise DataValidationError(f"{shard}: {rows} rows, but its dedup plan has {len(fate)}")
        return DedupShard(train=train.close(), test=test.close(), quarantine=quarantine.close().path)


_SUMMARY_KEYS = {"train_in", "train_out", "test_in", "test_out", "split_to_test", "held_out_pairs", "reasons"}


class DedupedData(StageResult):
    """Train and test records, deduplicated and leak-free, as files and as shards (what the next stages map over)."""

    train: InputPath
    test: InputPath
    shards: dict[str, list[Shard]]  # "train", "test"
    quarantine: str
    report: DedupReport
    held_out: HeldOutSource | None = None  # where the test rows came from (r1lib/data/holdout.py)

    def summary(self) -> dict:
        held_out = {"held_out": {**self.held_out.model_dump(), "rows": self.report.test_out}} if self.held_out else {}
        return {
            "dedup": {
                **self.report.model_dump(include=_SUMMARY_KEYS),
                "quarantine": self.quarantine,
                **held_out,
            }
        }

    def summary_lines(self) -> list[tuple[str, str]]:
        r = self.report
        lines = [
            (
                "dedup",
                f"train {r.train_in} -> {r.train_out}, test {r.test_in} -> {r.test_out}, "
                f"{r.reasons or 'nothing dropped'}",
            )
        ]
        return lines + ([("held-out", self.held_out.describe(r.test_out))] if self.held_out else [])


def merge_dedup(
    train_parts: list[DedupShard],
    test_parts: list[DedupShard],
    report: DedupReport,
    out_dir: Path,
    held_out: HeldOutSource | None = None,
) -> DedupedData:
    """Join the shards' parts in shard order: train.jsonl, test.jsonl (test-file rows, then rows the split moved),
    quarantine.jsonl, report.json. ``held_out`` says where the test rows came from (the summary shows it)."""
    out_dir = Path(out_dir)
    # Written before the limits are checked: a refusal names this file, so it must hold the removed rows.
    quarantine = concat_files(
        out_dir / "quarantine.jsonl", [p.quarantine for p in train_parts + test_parts if p.quarantine]
    )
    write_json(out_dir / "report.json", report.model_dump())
    swapped = (  # not repetition: the data contradicts itself, and no setting can say which direction it means
        "; contradictory_pair rows prefer each of two answers to the other for one prompt: keep the direction you "
        "mean and delete the other row (its file and line are in the quarantine)"
    ) * ("contradictory_pair" in report.reasons)
    if not report.train_out:
        split = " (the held-out split took the rest: data.holdout_fraction)" if report.split_to_test else ""
        raise DataValidationError(
            f"no training row left after dedup ({report.reasons}){split}; every dropped row is in "
            f"{out_dir / 'quarantine.jsonl'}{swapped}"
        )
    if held_out is not None and held_out.kind == "split" and not report.test_out:
        raise DataValidationError(
            f"the held-out split of {held_out.fraction:g} (data.holdout_fraction) took no row of "
            f"{report.train_in} (rows whose prompts hash above it, or labelled KTO answers, stay in training): "
            "give a test file of your own (data.test_path) or raise data.holdout_fraction"
        )
    for split, (removed, rows) in report.removed().items():
        if rows and removed / rows > report.max_removed_fraction:
            raise DataValidationError(
                f"dedup removed {removed} of {rows} {split} rows ({removed / rows:.0%}, over "
                f"dedup.max_removed_fraction={report.max_removed_fraction:g}): {report.reasons}; every removed row "
                f"is in {out_dir / 'quarantine.jsonl'} with the row it repeats. If that much repetition is expected, "
                f"raise dedup.max_removed_fraction, or relax dedup.threshold (near duplicates) or dedup.leakage"
                f"{swapped}"
            )
    train_shards = [p.train for p in train_parts if p.train and p.train.rows]
    test_shards = [p.test for p in test_parts + train_parts if p.test and p.test.rows]
    train = concat_files(out_dir / "train.jsonl", [s.path for s in train_shards])
    test = concat_files(out_dir / "test.jsonl", [s.path for s in test_shards])
    return DedupedData(
        train=str(train),
        test=str(test),
        shards={"train": train_shards, "test": test_shards},
        quarantine=str(quarantine),
        report=report,
        held_out=held_out,
    )


def passthrough_parts(train: list[Shard], test: list[Shard]) -> tuple[list[DedupShard], list[DedupShard]]:
    """dedup.enabled = false: every shard kept as it is."""
    return [DedupShard(train=s, test=None) for s in train], [DedupShard(train=None, test=s) for s in test]


def passthrough_report(train: list[Shard], test: list[Shard], cfg: DedupConfig) -> DedupReport:
    train_in, test_in = sum(s.rows for s in train), sum(s.rows for s in test)
    return DedupReport(
        train_in=train_in, test_in=test_in, train_out=train_in, test_out=test_in, split_to_test=0, reasons={},
        threshold=cfg.threshold, num_perm=cfg.num_perm, bands=0, rows_per_band=0,
        max_removed_fraction=cfg.max_removed_fraction,
    )  # fmt: skip


def dedup_files(
    train: list[Shard], test: list[Shard], cfg: DedupConfig, out_dir: Path, held_out: HeldOutSource | None = None
) -> DedupedData:
    """The whole stage in this process, on validate's shards (the flow maps the same steps over them:
    flows/data.py)."""
    out_dir = Path(out_dir)
    if not cfg.enabled:
        return merge_dedup(*passthrough_parts(train, test), passthrough_report(train, test, cfg), out_dir, held_out)
    keys = {
        split: [shard_keys(s.path, cfg, out_dir / "keys" / f"{split}-{k:04d}.npy") for k, s in enumerate(shards)]
        for split, shards in (("train", train), ("test", test))
    }
    the_plan = make_plan(keys["train"], keys["test"], cfg, out_dir)
    parts = {
        split: [
            write_survivors(s.path, p, out_dir / "shards" / f"{split}-{k:04d}")
            for k, (s, p) in enumerate(zip(shards, getattr(the_plan, split)))
        ]
        for split, shards in (("train", train), ("test", test))
    }
    return merge_dedup(parts["train"], parts["test"], the_plan.report, out_dir, held_out)


def dedup(
    train: list[dict], test: list[dict], cfg: DedupConfig
) -> tuple[list[dict], list[dict], list[dict], DedupReport]:
    """The plan on records in memory: (kept train rows, kept test rows, quarantine rows, report)."""
    hasher = MinHasher(cfg.num_perm, cfg.ngram, cfg.seed) if cfg.near else None

    def side(records: list[dict]) -> Side:
        files: dict[str, int] = {}
        keys = record_keys(records, cfg, hasher, files)
        return Side([keys], [list(files)], cfg.num_perm)

    sides = {"train": side(train), "test": side(test)}
    train_fate, test_fate, drops, report = plan(sides["train"], sides["test"], cfg)
    records = {"train": train, "test": test}
    quarantine = [
        quarantine_row(records[side][i], reason, sides[other_side].ref(other), split)
        for (side, i), (reason, split, other_side, other) in sorted(drops.items())
    ]
    kept_test = [r for r, f in zip(test, test_fate) if f == KEEP_TEST] + [
        r for r, f in zip(train, train_fate) if f == KEEP_TEST
    ]
    return [r for r, f in zip(train, train_fate) if f == KEEP_TRAIN], kept_test, quarantine, report


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="dedup-keys", task_run_name="dedup keys {split} {index}", **stage_options())
def dedup_keys_task(shard: Shard, cfg: DedupConfig, split: str, index: int, out_dir: OutputPath) -> Keys:
    """Normalized-text hashes and MinHash signatures of one shard."""
    return shard_keys(shard.path, cfg, Path(out_dir, "keys", f"{split}-{index:04d}.npy"))


@task(name="dedup-plan", task_run_name="dedup plan", **stage_options())
def dedup_plan_task(train_keys: list[Keys], test_keys: list[Keys], cfg: DedupConfig, out_dir: OutputPath) -> DedupPlan:
    """One global pass over every shard's keys: which rows are duplicates, near duplicates or test leaks."""
    return make_plan(train_keys, test_keys, cfg, Path(out_dir))


@task(name="dedup-write", task_run_name="dedup write {split} {index}", **stage_options())
def dedup_write_task(shard: Shard, plan_path: InputPath, split: str, index: int, out_dir: OutputPath) -> DedupShard:
    """Write one shard's survivors and its quarantined rows."""
    return write_survivors(shard.path, plan_path, Path(out_dir, "shards", f"{split}-{index:04d}"))


@task(name="dedup", task_run_name="dedup merge", **stage_options())
def dedup_merge_task(
    train_parts: list[DedupShard],
    test_parts: list[DedupShard],
    report: DedupReport,
    out_dir: OutputPath,
    held_out: HeldOutSource | None = None,
) -> DedupedData:
    """Join the deduplicated shards: train/test deduplicated and leak-free; ``held_out``: where the test rows came
    from."""
    result = merge_dedup(train_parts, test_parts, report, Path(out_dir), held_out)
    create_table_artifact(
        key="dedup-report",
        table=[
            {
                "train in": report.train_in,
                "train out": report.train_out,
                "test in": report.test_in,
                "test out": report.test_out,
                "split to test": report.split_to_test,
                "reasons": json.dumps(report.reasons),
                "threshold": report.threshold,
                "bands x rows": f"{report.bands} x {report.rows_per_band}",
            }
        ],
        description=f"Exact/near duplicates and train/test leakage removed. Quarantine: {result.quarantine}",
    )
    print(result.summary_lines()[0][1])
    return result
