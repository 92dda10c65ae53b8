"""Evaluation, export, GGUF parity, smoke test and model card on one small trained run of the tiny default.

The run (5 training steps, merged, F16 + Q8_0 + Q4_K_M GGUFs) is built once by ``shared_run`` and kept under
``runs/pytest-eval-export/``, keyed by the code and configuration it came from, so every test file that needs it (this
one and tests/lib/export/test_export_crash.py) shares it instead of training again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import struct
from pathlib import Path

import pytest

from tests.conftest import ROOT

RUN = ROOT / "runs" / "pytest-eval-export"
# The shared run is rebuilt when its configuration or the code that trains it changes (export is exercised afresh
# by the tests that need it: tests/lib/export/test_export_crash.py).
KEY_SOURCES = [
    "r1lib/model/embedded.py",
    "r1lib/model/loading.py",
    "tasks/tokenize.py",
    "tasks/train.py",
    "r1lib/training/backends.py",
    "r1lib/training/fit.py",
    "r1lib/data/chat_template.py",
    "r1lib/data/chat_render.py",
    "r1lib/data/template_inspection.py",
]


def fixture_config():
    from r1lib.presets import preset

    cfg = preset("tiny", run_name="pytest-eval-export")
    cfg.train.max_steps = 5
    cfg.train.save_steps = 5
    cfg.train.logging_steps = 1
    return cfg


def _key(cfg) -> str:
    digest = hashlib.sha256(cfg.model_dump_json().encode())
    for path in KEY_SOURCES:
        digest.update((ROOT / path).read_bytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def shared_run() -> dict:
    """Paths of the shared small run, built on first use (validate, tokenize, 5 training steps, merge, GGUFs)."""
    from r1lib.io import write_json
    from r1lib.model.loading import load_tokenizer
    from tasks.export import convert, merge, quantize
    from tasks.resolve_model import resolve_model
    from tasks.tokenize import tokenize_file
    from tasks.train import train
    from tasks.validate import validate

    cfg = fixture_config()
    key = _key(cfg)
    marker = RUN / "fixture.json"
    with _lock(ROOT / "runs" / ".pytest-eval-export.lock"):
        if marker.exists():
            info = json.loads(marker.read_text())
            if info.get("key") == key and all(Path(p).exists() for p in info["ggufs"].values()):
                return info
        model_dir = resolve_model(cfg.model, cfg.cache_dir)
        data = validate(cfg.data, RUN / "validate")
        tokenizer = load_tokenizer(model_dir, trust_remote_code=False)
        tok = {
            split: tokenize_file(tokenizer, Path(path), cfg.tokenize, RUN / "tokenize" / split).dataset
            for split, path in (("train", data.train), ("test", data.test), ("replay", data.replay))
        }
        trained = train(tok["train"], None, model_dir, cfg.model, cfg.train, cfg.tokenize, RUN / "train")
        merged = merge(model_dir, trained.adapter, cfg.model, RUN / "export" / "merged")
        f16 = convert(merged, "f16", RUN / "export" / "pytest-eval-export-F16.gguf")
        ggufs = {"F16": f16.path}
        for qtype in ("Q8_0", "Q4_K_M"):
            ggufs[qtype] = quantize(Path(f16.path), qtype, RUN / "export" / f"pytest-eval-export-{qtype}.gguf").path
        info = {
            "key": key,
            "run_dir": str(RUN),
            "model_dir": model_dir,
            "adapter": trained.adapter,
            "log_history": trained.log_history,
            "train_result": trained.model_dump(),
            "merged": merged,
            "test_records": data.test,
            "test_dataset": tok["test"],
            "replay_dataset": tok["replay"],
            "ggufs": ggufs,
        }
        write_json(marker, info)
        return info


@pytest.fixture(scope="session")
def run() -> dict:
    return shared_run()


def gguf_files(run: dict) -> list:
    from r1lib.export.gguf import GGUFFile

    return [GGUFFile(path=p, type=t, bytes=Path(p).stat().st_size) for t, p in run["ggufs"].items()]


# --- evaluation ---------------------------------------------------------------------------------------------------


def _record(answer: str) -> dict:
    return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]}


def test_scores_strip_reasoning_and_check_the_r1_format():
    from r1lib.model.generation import format_check, normalize_answer, repetition_rate, score_generations

    records = [_record("Paris."), _record("Paris."), _record("4"), _record("x")]
    completions = [
        "The capital is Paris.\n</think>\n\nParis.<｜end▁of▁sentence｜><｜end▁of▁sentence｜>",  # exact (EOS padding)
        "thinking\n</think>\n\n paris <｜end▁of▁sentence｜>",  # normalized only
        "\n</think>\n\n4<｜end▁of▁sentence｜>",  # right answer, empty thinking: not format-compliant
        "never closes the think block x",  # no answer at all
    ]
    scores = score_generations(records, completions)
    assert scores["accuracy"] == 0.5 and scores["accuracy_normalized"] == 0.75
    assert scores["format_ok"] == 0.5 and scores["empty_thinking"] == 0.25
    assert format_check("a</think>b</think>c") == (False, False)
    assert normalize_answer("  The  Answer is\n 4. ") == "the answer is 4"
    assert repetition_rate("a b c a b c a b c") > 0.5 and repetition_rate("a b c d e") == 0


@pytest.mark.parametrize(
    ("answer", "gold"), [("-42?", "42"), ("12", "1/2"), ("4-2", "42"), ("3,14", "3.14"), ("5!", "5")]
)
def test_normalization_keeps_signs_slashes_separators_and_factorials(answer, gold):
    """Outside attack finding 3: normalization deleted all punctuation, so these scored as right answers."""
    from r1lib.model.generation import normalize_answer

    assert normalize_answer(answer) != normalize_answer(gold)


def test_the_sample_task_answers_still_match_when_cased_or_unpunctuated_differently():
    from r1lib.data.records import answer_of
    from r1lib.model.generation import normalize_answer, score_generations

    rows = [json.loads(line) for line in (ROOT / "data/sample/test.jsonl").read_text().splitlines()]
    golds = [row["output"].split("</think>", 1)[1].strip() for row in rows]
    assert len(set(golds)) > 1 and all(g.endswith(".") for g in golds)
    records = [_record(g) for g in golds]
    assert [answer_of(r) for r in records] == golds
    for gold in golds:
        assert normalize_answer(f" {gold.upper().rstrip('.')} ") == normalize_answer(gold)
    completions = [f"reasoning\n</think>\n\n{g.lower().rstrip('.')}" for g in golds]
    assert score_generations(records, completions)["accuracy_normalized"] == 1.0


def test_forgetting_limit_warns_or_fails():
    from r1lib.config import EvalConfig
    from tasks.evaluate import check_forgetting

    assert not check_forgetting(1.2, EvalConfig(max_forgetting_ratio=1.5))
    assert check_forgetting(2.0, EvalConfig(max_forgetting_ratio=1.5))
    assert not check_forgetting(9.0, EvalConfig(max_forgetting_ratio=None))
    assert not check_forgetting(None, EvalConfig())


def test_lm_eval_is_skipped_with_a_clear_message(tmp_path):
    import importlib.util

    from r1lib.config import EvalConfig
    from tasks.evaluate import lm_eval_unavailable

    assert lm_eval_unavailable(EvalConfig()) == "not requested"
    message = lm_eval_unavailable(EvalConfig(lm_eval_tasks=["arc_easy"], lm_eval_path=str(tmp_path / "missing")))
    if importlib.util.find_spec("lm_eval") is None:
        assert "not installed" in message and "arc_easy" in message
    else:
        assert "not a local folder" in message and "never downloaded" in message


def test_evaluate_base_vs_tuned_and_the_forgetting_gate(run, tmp_path):
    from r1lib.config import EvalConfig, ModelConfig, TokenizeConfig
    from r1lib.stages import Candidate, HeldOut
    from tasks.evaluate import Evaluation, QualityGateError, evaluate

    cfg = EvalConfig(
        max_examples=4,
        batch_size=4,
        max_new_tokens=12,
        repetition_penalty=1.2,
        no_repeat_ngram_size=3,
        perplexity_rows=24,
        max_forgetting_ratio=0.01,
        on_forgetting="fail",
        lm_eval_tasks=["hellaswag"],
    )
    with pytest.raises(QualityGateError, match="forgetting"):
        evaluate(
            Candidate(model_dir=run["model_dir"], adapter_dir=run["adapter"]),
            HeldOut(records=run["test_records"], dataset=run["test_dataset"], replay=run["replay_dataset"]),
            ModelConfig(),
            cfg,
            TokenizeConfig(),
            tmp_path,
        )
    result = Evaluation.model_validate(json.loads((tmp_path / "evaluation.json").read_text()))  # written before failing
    assert result.forgetting_exceeded and result.forgetting_limit == 0.01
    assert result.decoding.repetition_penalty == 1.2 and result.decoding.no_repeat_ngram_size == 3
    assert "hellaswag" in result.lm_eval_status and "skipped" in result.lm_eval_status
    for scores in (result.base, result.tuned):
        assert scores.generated == 4 and scores.answer_tokens > 100 and math.isfinite(scores.perplexity)
        assert scores.replay_perplexity and 0 <= scores.format_ok <= 1 and 0 <= scores.repetition_rate <= 1
    assert result.tuned.perplexity < result.base.perplexity  # even 5 steps move the held-out loss
    assert result.forgetting_ratio == pytest.approx(
        result.tuned.replay_perplexity / result.base.replay_perplexity, rel=1e-3
    )
    table = json.loads((tmp_path / "comparison.json").read_text())
    assert {r["metric"] for r in table} >= {"held-out answer perplexity (lower is better)", "answer accuracy, exact"}
    assert len((tmp_path / "generations.jsonl").read_text().splitlines()) == 4


def test_the_recorded_decoder_gives_the_evaluation_hf_generate_gives(run, tmp_path):
    """The evaluate stage with evaluate.kv_cache static (the recorded decode step, eager on a CPU) against dynamic
    (HF generate): the same completions for base and tuned, so the same scores."""
    from r1lib.config import EvalConfig, ModelConfig, TokenizeConfig
    from r1lib.stages import Candidate, HeldOut
    from tasks.evaluate import evaluate

    results = {}
    for cache in ("dynamic", "static"):
        out = tmp_path / cache
        results[cache] = evaluate(
            Candidate(model_dir=run["model_dir"], adapter_dir=run["adapter"]),
            HeldOut(records=run["test_records"], dataset=run["test_dataset"], replay=run["replay_dataset"]),
            ModelConfig(),
            EvalConfig(max_examples=6, batch_size=4, max_new_tokens=48, perplexity_rows=4, kv_cache=cache),
            TokenizeConfig(),
            out,
        )
    dynamic, static = results["dynamic"], results["static"]
    assert (tmp_path / "static" / "generations.jsonl").read_text() == (
        tmp_path / "dynamic" / "generations.jsonl"
    ).read_text()
    for side in ("base", "tuned"):
        a, b = getattr(dynamic, side), getattr(static, side)
        assert (a.accuracy, a.format_ok, a.generated) == (b.accuracy, b.format_ok, b.generated) and a.generated == 6
        assert a.generation.new_tokens == b.generation.new_tokens > 0
        assert (a.generation.decoder, b.generation.decoder) == ("HF generate", "recorded decode step")


# --- export -------------------------------------------------------------------------------------------------------


def _safetensors_dtypes(folder: Path) -> set[str]:
    dtypes = set()
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as handle:
            header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
        dtypes |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return dtypes


def test_merged_model_is_full_precision_with_tokenizer_and_r1_template(run):
    from r1lib.data.chat_template import ASSISTANT, USER
    from r1lib.export.gguf import gguf_metadata

    merged = Path(run["merged"])
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config
    assert _safetensors_dtypes(merged) <= {"F32", "F16", "BF16"}
    assert (merged / "tokenizer.json").exists() and (merged / "tokenizer_config.json").exists()
    template = (
        (merged / "chat_template.jinja").read_text()
        if (merged / "chat_template.jinja").exists()
        else json.loads((merged / "tokenizer_config.json").read_text())["chat_template"]
    )
    assert USER in template and ASSISTANT in template and "</think>" in template
    f16 = Path(run["ggufs"]["F16"])
    assert ASSISTANT in gguf_metadata(f16, "tokenizer.chat_template")  # the GGUF carries the R1 template too
    assert not list(f16.parent.glob(".*.tmp-*")), "temporary files left beside the GGUFs"


def test_prequantized_base_is_dequantized_before_merging(run, tmp_path):
    from transformers import AutoModelForCausalLM

    from r1lib.config import ModelConfig
    from r1lib.model.loading import is_prequantized, load_causal_lm, load_tokenizer
    from tasks.export import check_unquantized, merge

    prequantized = tmp_path / "base-bnb-4bit"  # like unsloth's -bnb-4bit uploads
    load_causal_lm(run["model_dir"], ModelConfig(), four_bit=True).save_pretrained(prequantized)
    load_tokenizer(run["model_dir"], trust_remote_code=False).save_pretrained(prequantized)
    assert is_prequantized(str(prequantized), trust_remote_code=False)
    out = Path(merge(str(prequantized), run["adapter"], ModelConfig(), tmp_path / "merged"))
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert _safetensors_dtypes(out) <= {"F32", "F16", "BF16"}
    check_unquantized(AutoModelForCausalLM.from_pretrained(out))


# --- smoke test, parity, card -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(run, tmp_path_factory):
    from r1lib.config import SmokeConfig
    from r1lib.model.generation import Decoding
    from tasks.smoke import smoke_test

    cfg = SmokeConfig(max_tokens=32, perplexity_rows=8, parity_tokens=16, n_threads=1)
    decoding = Decoding(temperature=0.0, top_p=1.0, repetition_penalty=1.2, no_repeat_ngram_size=3)
    return smoke_test(
        run["merged"], gguf_files(run), cfg, tmp_path_factory.mktemp("smoke"), run["test_dataset"], decoding
    )


def test_smoke_and_perplexity_parity_per_gguf(smoke):
    by_type = {r.type: r for r in smoke.results}
    assert set(by_type) == {"F16", "Q8_0", "Q4_K_M"}
    assert smoke.parity_matching == smoke.parity_tokens > 0  # HF vs F16 greedy tokens
    assert smoke.hf_perplexity and smoke.perplexity_rows == 8
    assert abs(by_type["F16"].perplexity_vs_hf) < 0.01  # same definition: answer tokens only
    assert by_type["F16"].quant_loss == 0
    for r in smoke.results:
        assert r.bos_count == 1 and r.bos_count_runtime == 1
        assert all(a for a in r.answers) and r.load_seconds > 0 and r.tokens_per_second > 0
        assert r.perplexity_tokens > 100 and math.isfinite(r.quant_loss)
    print({r.type: (r.perplexity, r.quant_loss, r.tokens_per_second) for r in smoke.results}, smoke.hf_perplexity)


def test_smoke_fails_loudly_on_a_broken_gguf(run, tmp_path):
    from r1lib.config import SmokeConfig
    from r1lib.errors import ExportCheckError
    from r1lib.export.gguf import GGUFFile
    from tasks.smoke import smoke_all

    broken = tmp_path / "broken-F16.gguf"
    broken.write_bytes(Path(run["ggufs"]["F16"]).read_bytes()[:4096])
    with pytest.raises(ExportCheckError, match="exited with"):
        smoke_all(
            [GGUFFile(path=str(broken), type="F16", bytes=4096)],
            ["<｜User｜>hi<｜Assistant｜><think>\n"],
            SmokeConfig(n_threads=1),
            timeout=120,
        )


def test_model_card_and_modelfiles(run, smoke, tmp_path):
    from r1lib.data.chat_template import ASSISTANT, EOS, USER
    from r1lib.model.generation import Decoding
    from tasks.card import write_card
    from tasks.evaluate import Evaluation, ModelScores
    from tasks.train import TrainResult
    from tasks.validate import data_fingerprint

    scores = dict(
        perplexity=3.0,
        replay_perplexity=2.0,
        accuracy=0.1,
        accuracy_normalized=0.2,
        format_ok=1.0,
        repetition_rate=0.0,
        generated=4,
        stopped_by_time_limit=False,
    )
    evaluation = Evaluation(
        base=ModelScores(**scores),
        tuned=ModelScores(**{**scores, "perplexity": 1.5}),
        forgetting_ratio=1.0,
        samples="x",
        decoding=Decoding(temperature=0.6, top_p=0.95, repetition_penalty=1.2, no_repeat_ngram_size=3),
    )
    cfg = fixture_config()
    trained = TrainResult.model_validate(run["train_result"])
    card = write_card(
        cfg,
        gguf_files(run),
        evaluation.decoding,
        data_fingerprint(cfg.data),
        [smoke, evaluation, trained],  # shown in stage order
        trained.loss_curve,
        tmp_path,
    )
    modelfile = Path(card.modelfile).read_text()
    source = modelfile.split("\nFROM ", 1)[1].split("\n", 1)[0]  # relative to the Modelfile's folder
    assert source.endswith("pytest-eval-export-Q4_K_M.gguf") and (tmp_path / source).resolve().is_file()
    assert 'TEMPLATE """' in modelfile and USER in modelfile and f"{ASSISTANT}<think>" in modelfile
    for stop in (EOS, USER):
        assert f'PARAMETER stop "{stop}"' in modelfile
    assert "PARAMETER temperature 0.6" in modelfile and "PARAMETER repeat_penalty 1.2" in modelfile
    assert "PARAMETER top_p 0.95" in modelfile and "no_repeat_ngram_size=3" in modelfile
    assert len(card.modelfiles) == 3
    readme = Path(card.readme).read_text()
    assert Path(card.loss_curve).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![Training and evaluation loss](loss_curve.png)" in readme
    assert readme.index("## Training") < readme.index("## Evaluation")  # stage order, whatever order they came in
    for needle in (
        "base_model: embedded",
        "Data fingerprint",
        "llama-cli -m pytest-eval-export-Q4_K_M.gguf",
        "llama-server -m",
        "ollama create",
        "ollama run",
        "F16 GGUF vs HF",
        "quantization loss",
        "data/sample/train.jsonl",
    ):
        assert needle in readme, needle
