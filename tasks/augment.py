"""Stage 2, augment: prompt-template variation and general-data replay.

- Prompt-template variation: each training row gets ``prompt_variants`` extra copies whose last user turn is
  rewritten by a template from ``templates_path`` or ``more_templates_paths`` (the answer and reasoning are untouched,
  so they stay correct), drawn only from the templates in the row's language (r1lib/data/language.py: a Chinese row
  gets Chinese templates or none). Rows that are not a plain question keep their wording: multi-turn chats, rows with
  a system prompt (personas, role-play), and with ``template_rows=reasoning`` (the default) rows without reasoning.
  The summary counts each row left alone by its reason.
- Text variants (``text_variants``): rewrites of the user turns that cannot change the answer, each added as a copy
  only when it changes the row: ``whitespace`` (runs of spaces/tabs collapsed, lines trimmed), ``punctuation``
  (full-width CJK punctuation and curly quotes <-> ASCII, in the direction that changes the text), ``question_first``
  (a trailing question moved before the context it follows: "Ann has 3 apples. How many?" -> "How many? Ann has 3
  apples."). Answer and reasoning are untouched.
- Replay: general rows (``data.replay_path``) mixed in at ``replay_ratio`` of the training rows, a guard against
  forgetting. Every added row records its ``origin`` and its ``parent`` row id.
- Preference rows (a dpo/orpo/kto run) are never rewritten and get no variant (skip reason ``preference_row``); their
  replay rows are the SFT rows of a preference run's training split, trained with the SFT loss beside the preference
  loss (``train.replay_weight``): the reference policy alone does not keep the general chats (forgetting).

Sharded (flows/data.py): each shard draws its templates and replay rows from its own random stream (``seed`` and the
shard's place), so the output does not depend on where or when a shard runs; a shard's replay rows follow its own
rows, unshuffled (the trainer samples at random).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from r1lib.config import AugmentConfig
from r1lib.data.language import language_of
from r1lib.data.preference import is_preference
from r1lib.data.records import content_key, prompt_of
from r1lib.data.shards import JsonlWriter, Shard, chunked
from r1lib.errors import ConfigError
from r1lib.io import iter_jsonl, write_json
from r1lib.paths import OutputPath
from r1lib.policy import stage_options
from r1lib.stage import StageResult
from r1lib.stages import FilterContext

# Why a row got no prompt-template variant, and the setting that changes it (None: nothing should).
SKIP_REASONS = {
    "multi_turn": None,
    "system_prompt": None,
    "no_reasoning": "augment.template_rows=all",
    "no_template_in_its_language": "a template in the row's language in augment.templates_path",
    "preference_row": None,  # a preference pair or labelled answer: its wording is part of what was judged
}


class AugmentedData(StageResult):
    shards: list[Shard]  # the augmented training rows, in shard order
    report: str
    rows_in: int
    rows_out: int
    origins: dict[str, int]
    template_skips: dict[str, int] = {}  # rows given no prompt-template variant, by reason (SKIP_REASONS)

    def summary(self) -> dict:
        return {
            "augment": {
                "rows_in": self.rows_in,
                "rows_out": self.rows_out,
                "origins": self.origins,
                "template_skips": self.template_skips,
            }
        }

    def summary_lines(self) -> list[tuple[str, str]]:
        lines = [("augment", f"{self.rows_in} -> {self.rows_out} rows {self.origins}")]
        if self.template_skips:
            why = ", ".join(
                f"{reason.replace('_', ' ')} {n}"
                + (f" ({SKIP_REASONS[reason]} adds them)" if SKIP_REASONS[reason] else "")
                for reason, n in sorted(self.template_skips.items())
            )
            lines.append(("augment", f"no prompt-template variant for {sum(self.template_skips.values())} rows: {why}"))
        return lines


def load_templates(path: Path) -> list[str]:
    templates = [
        line.rstrip("\n")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    bad = [t for t in templates if t.count("{instruction}") != 1]
    if bad:
        raise ConfigError(f"{path}: each template needs exactly one {{instruction}} placeholder: {bad[:3]}")
    return templates


def all_templates(cfg: AugmentConfig) -> list[str]:
    """The templates of ``templates_path`` then of each ``more_templates_paths`` file, in that order (a variant's
    origin names its index in this list)."""
    return [t for path in [cfg.templates_path, *cfg.more_templates_paths] for t in load_templates(Path(path))]


def _twin(record: dict) -> dict:
    """A copy whose messages can be edited (much cheaper than deepcopy; nothing else of a record is mutated)."""
    return {**record, "messages": [dict(m) for m in record["messages"]], "source": dict(record["source"])}


def vary_prompt(record: dict, template: str, origin: str) -> dict:
    twin = _twin(record)
    last_user = next(m for m in reversed(twin["messages"]) if m["role"] == "user")
    last_user["content"] = template.replace("{instruction}", last_user["content"])
    twin.update(origin=origin, parent=record["id"])
    twin["id"] = content_key(twin)[:16]
    return twin


# --- text variants: rewrites of the user turns that keep the answer correct ------------------------------------------

_INNER_SPACES_RE = re.compile(r"(?<=\S)[ \t\u00a0]{2,}(?=\S)")
_CODE_RE = re.compile(r"```|^(?: {4}|\t)", re.MULTILINE)
_FULL_TO_ASCII = str.maketrans(
    {
        "，": ",",
        "。": ".",
        "？": "?",
        "！": "!",
        "：": ":",
        "；": ";",
        "（": "(",
        "）": ")",
        "“": '"',
        "”": '"',
        "‘": "'",
        "’": "'",
    }
)
_ASCII_TO_FULL = str.maketrans({",": "，", "?": "？", "!": "！", ":": "：", ";": "；", "(": "（", ")": "）"})
_CJK_RE = re.compile(r"[\u3400-\u9fff]")
# "<context ending a sentence> <question>": the question is the last sentence (no sentence end inside it; "3.5" is
# fine), the context holds no question mark.
_QUESTION_LAST_RE = re.compile(
    r"^(?P<context>[^?？]*?[^?？\s](?:[.!](?=\s)|[。！]))\s*(?P<question>(?:[^?？。.!！\n]|[.!](?=\S))+[?？])$",
    re.DOTALL,
)
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "etc", "no", "e.g", "i.e", "approx", "fig"}


def whitespace_variant(text: str) -> str:
    """Inner runs of spaces collapsed, trailing spaces and blank edges removed. Text that looks like code (fences or
    indented lines) is left alone: there whitespace can be meaning."""
    if _CODE_RE.search(text):
        return text
    return "\n".join(_INNER_SPACES_RE.sub(" ", line).rstrip() for line in text.split("\n")).strip()


def punctuation_variant(text: str) -> str:
    ascii_ = text.translate(_FULL_TO_ASCII)
    if ascii_ != text:
        return ascii_
    if _CJK_RE.search(text):  # Chinese written with ASCII punctuation: the full-width form is as correct
        return text.translate(_ASCII_TO_FULL)
    return text


def question_first_variant(text: str) -> str:
    match = _QUESTION_LAST_RE.match(text.strip())
    if not match:
        return text
    last_word = re.split(r"\s", match.group("context")[:-1])[-1].lower()
    if last_word in _ABBREVIATIONS or len(last_word) == 1 and last_word.isalpha():
        return text  # "Dr. Smith has how many?": the period ends an abbreviation, not a sentence
    joiner = "" if _CJK_RE.search(match.group("question")) else " "
    return f"{match.group('question').strip()}{joiner}{match.group('context').strip()}"


TEXT_VARIANTS = {
    "whitespace": whitespace_variant,
    "punctuation": punctuation_variant,
    "question_first": question_first_variant,
}


def text_variant(record: dict, name: str) -> dict | None:
    """The record with ``name``'s rewrite applied to its user turns, or None when the rewrite changes nothing."""
    rewrite = TEXT_VARIANTS[name]
    twin = _twin(record)
    changed = False
    for message in twin["messages"]:
        if message["role"] == "user":
            new = rewrite(message["content"])
            if new != message["content"] and new.strip():
                message["content"], changed = new, True
    if not changed:
        return None
    twin.update(origin=f"text_variant:{name}", parent=record["id"])
    twin["id"] = content_key(twin)[:16]
    return twin


def template_skip(record: dict, cfg: AugmentConfig, languages: list[str | None]) -> str | None:
    """Why the record gets no prompt-template variant (a SKIP_REASONS key), or None when it may get one.
    ``languages``: each template's language."""
    if sum(m["role"] == "user" for m in record["messages"]) > 1:
        return "multi_turn"
    if record["system"].strip():
        return "system_prompt"
    if cfg.template_rows == "reasoning" and not record["reasoning"]:
        return "no_reasoning"
    language = language_of(prompt_of(record))
    if language is None or language not in languages:
        return "no_template_in_its_language"
    return None


def expand(
    train: list[dict],
    cfg: AugmentConfig,
    templates: list[str],
    rng: random.Random,
    skips: Counter | None = None,
) -> list[dict]:
    """The rows and their prompt-template and text variants (no replay): chunk by chunk, with one ``rng`` running
    through them, this draws what one call on all the rows would. ``skips`` counts the rows given no template
    variant, by reason."""
    out = list(train)
    languages = [language_of(t.replace("{instruction}", "")) for t in templates]
    for record in train:
        if is_preference(record):
            if skips is not None:
                skips["preference_row"] += 1
            continue
        if cfg.prompt_variants and templates:
            reason = template_skip(record, cfg, languages)
            if reason is not None:
                if skips is not None:
                    skips[reason] += 1
            else:
                language = language_of(prompt_of(record))
                fits = [k for k, lang in enumerate(languages) if lang == language]
                for k in rng.sample(fits, min(cfg.prompt_variants, len(fits))):
                    out.append(vary_prompt(record, templates[k], f"prompt_template:{k}"))
        for name in cfg.text_variants:
            if (twin := text_variant(record, name)) is not None:
                out.append(twin)
    return out


def augment_chunks(
    records: Iterable[dict],
    n_rows: int,
    replay: list[dict],
    cfg: AugmentConfig,
    templates: list[str],
    rng: random.Random,
    skips: Counter | None = None,
) -> Iterator[list[dict]]:
    """One shard, streamed: each chunk of records with its variants, then ``replay_ratio`` x ``n_rows`` replay rows
    drawn from ``replay``. No shuffle: the trainer samples rows at random anyway, and streaming keeps memory flat."""
    for chunk in chunked(records):
        yield expand(chunk, cfg, templates, rng, skips)
    n_replay = round(cfg.replay_ratio * n_rows)
    if n_replay and replay:
        picks = rng.sample(replay, n_replay) if n_replay <= len(replay) else rng.choices(replay, k=n_replay)
        yield [{**r, "origin": "replay", "parent": r["id"]} for r in picks]


def shard_rng(cfg: AugmentConfig, index: int) -> random.Random:
    """Each shard draws from its own stream (seeded by ``seed`` and the shard's place), so shards run anywhere, in
    any order, and draw the same."""
    return random.Random(f"{cfg.seed}:{index}")


def augment(
    train: list[dict], replay: list[dict], cfg: AugmentConfig, templates: list[str], index: int = 0
) -> list[dict]:
    """Shard ``index`` augmented in memory (what augment_shard writes)."""
    return [
        row
        for chunk in augment_chunks(train, len(train), replay, cfg, templates, shard_rng(cfg, index))
        for row in chunk
    ]


class AugmentedShard(BaseModel):
    shard: Shard
    rows_in: int
    origins: dict[str, int]
    template_skips: dict[str, int] = {}


def augment_shard(
    shard: Shard, replay_path: str | None, cfg: AugmentConfig, index: int, out_path: Path
) -> AugmentedShard:
    """The map unit: one deduplicated shard with its variants and its share of replay rows."""
    replay = list(iter_jsonl(Path(replay_path))) if replay_path and cfg.replay_ratio > 0 else []
    templates = all_templates(cfg)
    origins: Counter = Counter()
    skips: Counter = Counter()
    with JsonlWriter(out_path) as out:
        for rows in augment_chunks(
            iter_jsonl(Path(shard.path)), shard.rows, replay, cfg, templates, shard_rng(cfg, index), skips
        ):
            out.write_many(rows)
            origins.update(r["origin"].split(":")[0] for r in rows)
        return AugmentedShard(shard=out.close(), rows_in=shard.rows, origins=dict(origins), template_skips=dict(skips))


def merge_augmented(parts: list[AugmentedShard], out_dir: Path) -> AugmentedData:
    """The augmented shards in order (they stay shards: debias maps over them) and the counts in report.json."""
    origins: Counter = Counter()
    skips: Counter = Counter()
    for part in parts:
        origins.update(part.origins)
        skips.update(part.template_skips)
    result = AugmentedData(
        shards=[p.shard for p in parts],
        report=str(Path(out_dir) / "report.json"),
        rows_in=sum(p.rows_in for p in parts),
        rows_out=sum(p.shard.rows for p in parts),
        origins=dict(sorted(origins.items())),
        template_skips=dict(sorted(skips.items())),
    )
    write_json(Path(result.report), result.model_dump(exclude={"shards", "report"}))
    return result


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="augment-shard", task_run_name="augment {index}", **stage_options())
def augment_shard_task(
    shard: Shard, index: int, cfg: AugmentConfig, context: FilterContext, out_dir: OutputPath
) -> AugmentedShard:
    """Add prompt-template and text variants and general replay rows (``context.replay``) to one shard."""
    return augment_shard(shard, context.replay, cfg, index, Path(out_dir, "shards", f"train-{index:04d}.jsonl"))


@task(name="augment", task_run_name="augment merge", **stage_options())
def augment_merge_task(parts: list[AugmentedShard], cfg: AugmentConfig, out_dir: OutputPath) -> AugmentedData:
    """The augmented training shards and their counts."""
    result = merge_augmented(parts, Path(out_dir))
    for _, line in result.summary_lines():
        print(line)
    return result
