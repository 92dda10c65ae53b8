"""Stage 9, deployable outputs beside the GGUFs: Ollama Modelfiles and a model card.

- ``<gguf stem>.Modelfile`` for each GGUF, and ``Modelfile`` for the recommended one (Q4_K_M when built): FROM the
  GGUF, the R1 chat format as an Ollama TEMPLATE (the generation prompt opens ``<think>``, as in training), stop tokens
  (``<｜end▁of▁sentence｜>``, ``<｜User｜>``, ...) and the evaluate stage's decoding settings (temperature, top_p,
  repeat_penalty; ``no_repeat_ngram_size`` has no Ollama / llama.cpp equivalent and is noted instead).
- ``README.md``: a model card with the base model, the data fingerprint (sha256 of every input file), the
  configuration, the evaluation and GGUF metrics, the training and eval loss curves (``loss_curve.png``, drawn from
  ``train/log_history.json``) and the exact commands to run it with llama.cpp (llama-cli / llama-server) and Ollama.

Everything is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from r1lib.chat_template import ASSISTANT, BOS, EOS, USER
from r1lib.config import PipelineConfig
from r1lib.io import atomic_path, sha256_file, write_text
from r1lib.policy import stage_options

PREFERRED = ("Q4_K_M", "Q5_K_M", "Q8_0")
FULL_PRECISION = ("F16", "BF16", "F32")

# The R1 format as an Ollama (Go) template. No BOS here: llama.cpp adds it from the GGUF's add_bos_token, exactly
# once (the smoke test checks this). Earlier assistant turns carry their answers only, as the official template does.
OLLAMA_TEMPLATE = (
    "{{- if .System }}{{ .System }}{{ end }}\n"
    "{{- range $i, $_ := .Messages }}\n"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    f"{{{{- if eq .Role \"user\" }}}}{USER}{{{{ .Content }}}}\n"
    f"{{{{- else if eq .Role \"assistant\" }}}}{ASSISTANT}{{{{ .Content }}}}"
    f"{{{{- if not $last }}}}{EOS}{{{{- end }}}}\n"
    "{{- end }}\n"
    f"{{{{- if and $last (ne .Role \"assistant\") }}}}{ASSISTANT}<think>\n"
    "{{ end }}\n"
    "{{- end }}"
)
STOP_TOKENS = (EOS, BOS, USER, ASSISTANT)


class CardResult(BaseModel):
    readme: str
    modelfiles: list[str]
    modelfile: str | None  # the recommended GGUF's
    loss_curve: str | None


def recommended(ggufs: list) -> object:
    by_type = {g.type: g for g in ggufs}
    for qtype in PREFERRED:
        if qtype in by_type:
            return by_type[qtype]
    return next((g for g in ggufs if g.type not in FULL_PRECISION), ggufs[0])


def modelfile_text(gguf_name: str, decoding: dict, n_ctx: int, system_prompt: str = "") -> str:
    """An Ollama Modelfile for ``gguf_name`` (a file in the same folder)."""
    lines = [f"# Ollama: ollama create <name> -f {gguf_name.rsplit('.gguf', 1)[0]}.Modelfile  (or -f Modelfile)",
             f"FROM ./{gguf_name}", "", f'TEMPLATE """{OLLAMA_TEMPLATE}"""', ""]
    if system_prompt:
        lines += [f'SYSTEM """{system_prompt}"""', ""]
    lines += [f'PARAMETER stop "{token}"' for token in STOP_TOKENS]
    lines += [f"PARAMETER temperature {decoding.get('temperature', 0.0)}",
              f"PARAMETER top_p {decoding.get('top_p', 1.0)}",
              f"PARAMETER repeat_penalty {decoding.get('repetition_penalty', 1.0)}",
              f"PARAMETER num_ctx {n_ctx}"]
    if decoding.get("no_repeat_ngram_size"):
        lines.append(f"# no_repeat_ngram_size={decoding['no_repeat_ngram_size']} was used in evaluation; "
                     "Ollama / llama.cpp have no equivalent (repeat_penalty is the closest).")
    return "\n".join(lines) + "\n"


def loss_curve(log_history: Path, out_png: Path, eval_points: list[tuple[int, float, str]] = ()) -> Path | None:
    """Training loss (and eval_loss when training evaluated) per step, plus the evaluate stage's held-out answer loss
    before/after (``eval_points``: step, loss, label). None when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = json.loads(Path(log_history).read_text(encoding="utf-8")) if Path(log_history).exists() else []
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), marker=".", label="training loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss (held-out, during training)")
    for step, loss, label in eval_points:
        ax.scatter([step], [loss], marker="s", s=50, zorder=3, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title("Training and evaluation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out_png)


def data_fingerprint(config: PipelineConfig) -> dict:
    paths = [*config.data.train_paths, config.data.test_path, *([config.data.replay_path] if config.data.replay_path else [])]
    files = {p: sha256_file(Path(p)) for p in paths if Path(p).exists()}
    import hashlib

    combined = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"sha256": combined, "files": files}


def _fmt(value, pct: bool = False) -> str:
    if value is None:
        return "–"
    if pct:
        return f"{value:+.3%}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def card_text(config: PipelineConfig, run_dir: str, trained, evaluation, ggufs: list, smoke, fingerprint: dict,
              curve: Path | None, rec) -> str:
    name = Path(run_dir).name
    rec_name = Path(rec.path).name
    smoke_by_type = {r.type: r for r in smoke.results} if smoke else {}
    decoding = evaluation.decoding if evaluation else {}
    temp = decoding.get("temperature", 0.0)
    penalty = decoding.get("repetition_penalty", 1.0)
    top_p = decoding.get("top_p", 1.0)
    n_ctx = config.smoke.n_ctx
    n_predict = config.evaluate.max_new_tokens if config.preset == "tiny" else max(config.smoke.max_tokens, 2048)
    lines = [
        "---",
        f"base_model: {config.model.name_or_path}",
        "library_name: gguf",
        "tags: [deepseek-r1, reasoning, lora, qlora, gguf, llama.cpp, ollama]",
        "---",
        "",
        f"# {name}",
        "",
        f"A LoRA fine-tune (4-bit QLoRA, merged at full precision) of **{config.model.name_or_path}**"
        + (f" @ `{config.model.revision}`" if config.model.revision else "")
        + f", exported to GGUF with llama.cpp's converter and quantizer. Preset `{config.preset}`, "
        f"config fingerprint `{config.fingerprint()[:16]}`.",
        "",
        "It answers in the DeepSeek-R1 format: reasoning inside `<think> ... </think>`, then the answer.",
        "",
        "## Data",
        "",
        f"Data fingerprint (sha256 over the files below): `{fingerprint['sha256']}`",
        "",
        "| file | sha256 |", "|---|---|",
        *[f"| `{path}` | `{digest}` |" for path, digest in fingerprint["files"].items()],
        "",
        "## Training",
        "",
    ]
    if trained is not None:
        lines += [f"{trained.backend} backend, {trained.steps} steps, loss {_fmt(trained.first_loss)} -> "
                  f"{_fmt(trained.last_loss)}, {trained.seconds} s, micro batch {trained.micro_batch_size} x "
                  f"accumulation {trained.gradient_accumulation}.", ""]
    if curve is not None:
        lines += [f"![Training and evaluation loss]({curve.name})", ""]
    lines += ["<details><summary>Configuration</summary>", "", "```json",
              json.dumps({k: config.model_dump()[k] for k in ("model", "tokenize", "train", "evaluate", "export")},
                         indent=2, default=str), "```", "", "</details>", ""]
    if evaluation is not None:
        from tasks.evaluate import comparison_table

        lines += ["## Evaluation (held-out set, base vs fine-tuned)", "",
                  f"Decoding: {json.dumps(decoding)}. Perplexity is token-weighted over answer tokens only; accuracy "
                  "compares the answer after `</think>` (reasoning stripped) with the reference.", "",
                  "| metric | base | fine-tuned | change |", "|---|---|---|---|",
                  *[f"| {r['metric']} | {_fmt(r['base'])} | {_fmt(r['tuned'])} | {_fmt(r['change'])} |"
                    for r in comparison_table(evaluation)], ""]
        if evaluation.forgetting_exceeded:
            lines += [f"**Warning:** replay perplexity rose {evaluation.forgetting_ratio}x, over the limit "
                      f"{evaluation.forgetting_limit}x (forgetting).", ""]
        lines += [f"lm-evaluation-harness: {evaluation.lm_eval_status}.", ""]
    lines += ["## GGUF files", ""]
    if smoke is not None and smoke.hf_perplexity is not None:
        lines += [f"Perplexity on {smoke.perplexity_rows} held-out rows (answer tokens only) through llama-cpp-python; "
                  f"the HF merged model scores {smoke.hf_perplexity:.6g}. Quantization loss is the relative perplexity "
                  "increase over the full-precision GGUF.", ""]
    lines += ["| file | type | MiB | perplexity | vs HF | quantization loss | smoke tokens/s | load s |",
              "|---|---|---|---|---|---|---|---|"]
    for g in ggufs:
        r = smoke_by_type.get(g.type)
        lines.append(f"| `{Path(g.path).name}` | {g.type} | {g.bytes / 2**20:.1f} | {_fmt(r.perplexity if r else None)} | "
                     f"{_fmt(r.perplexity_vs_hf if r else None, True)} | {_fmt(r.quant_loss if r else None, True)} | "
                     f"{_fmt(r.tokens_per_second if r else None)} | {_fmt(r.load_seconds if r else None)} |")
    if smoke is not None:
        lines += ["", f"Greedy-token parity, F16 GGUF vs HF merged model: {smoke.parity_matching}/{smoke.parity_tokens} "
                  "tokens equal. Every GGUF passed the smoke test (one BOS, closed think block, non-empty answer)."]
    prompt = "What is the capital of France?"
    raw = f"{USER}{prompt}{ASSISTANT}<think>\\n"
    lines += [
        "", "## Run it", "",
        f"Recommended file: `{rec_name}` ({rec.type}).", "",
        "### llama.cpp", "",
        "```sh",
        "# interactive chat; --jinja uses the R1 chat template stored in the GGUF",
        f"llama-cli -m {rec_name} -cnv --jinja -c {n_ctx} -n {n_predict} --temp {temp} --top-p {top_p} "
        f"--repeat-penalty {penalty}",
        "# one prompt, raw R1 format (llama.cpp adds the BOS token itself)",
        f"llama-cli -m {rec_name} -no-cnv -e -p \"{raw}\" -n {n_predict} --temp {temp} --top-p {top_p} "
        f"--repeat-penalty {penalty}",
        "# OpenAI-compatible server",
        f"llama-server -m {rec_name} --jinja -c {n_ctx} --port 8080",
        "curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\",
        f"  -d '{{\"messages\": [{{\"role\": \"user\", \"content\": \"{prompt}\"}}], \"temperature\": {temp}, "
        f"\"repeat_penalty\": {penalty}}}'",
        "```", "",
        "### Ollama", "",
        "```sh",
        f"ollama create {name.lower()} -f Modelfile          # Modelfile: FROM ./{rec_name}",
        f"ollama run {name.lower()} \"{prompt}\"",
        "# another quantization: ollama create <name> -f <file stem>.Modelfile",
        "```", "",
        "The Modelfiles carry the R1 template, the stop tokens "
        + ", ".join(f"`{t}`" for t in STOP_TOKENS) + f" and the evaluation's decoding (temperature {temp}, "
        f"top_p {top_p}, repeat_penalty {penalty}).", "",
    ]
    return "\n".join(lines)


def write_card(config: PipelineConfig, run_dir: str, ggufs: list, trained=None, evaluation=None, smoke=None,
               out_dir: Path | None = None) -> CardResult:
    """Modelfiles and README.md (+ loss_curve.png) beside the GGUFs (``runs/<run>/export``)."""
    out_dir = Path(out_dir or Path(ggufs[0].path).parent)
    decoding = evaluation.decoding if evaluation is not None else {}
    modelfiles = []
    for g in ggufs:
        name = Path(g.path).name
        path = out_dir / f"{name.rsplit('.gguf', 1)[0]}.Modelfile"
        write_text(path, modelfile_text(name, decoding, config.smoke.n_ctx, config.tokenize.system_prompt))
        modelfiles.append(str(path))
    rec = recommended(ggufs)
    main_modelfile = out_dir / "Modelfile"
    write_text(main_modelfile, modelfile_text(Path(rec.path).name, decoding, config.smoke.n_ctx,
                                              config.tokenize.system_prompt))
    points = []
    if evaluation is not None:
        last_step = trained.steps if trained is not None else 0
        points = [(0, math.log(evaluation.base.perplexity), "held-out answer loss, base"),
                  (last_step, math.log(evaluation.tuned.perplexity), "held-out answer loss, fine-tuned")]
    history = Path(trained.log_history) if trained is not None else Path(run_dir) / "train" / "log_history.json"
    curve = loss_curve(history, out_dir / "loss_curve.png", points)
    readme = out_dir / "README.md"
    write_text(readme, card_text(config, run_dir, trained, evaluation, ggufs, smoke, data_fingerprint(config), curve, rec))
    return CardResult(readme=str(readme), modelfiles=modelfiles, modelfile=str(main_modelfile),
                      loss_curve=str(curve) if curve else None)


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="model-card", **stage_options(timeout_seconds=600))
def card_task(config: PipelineConfig, run_dir: str, ggufs: list, trained=None, evaluation=None, smoke=None) -> CardResult:
    """Ollama Modelfiles and the model card (README.md + loss curve) beside the GGUFs."""
    result = write_card(config, run_dir, ggufs, trained, evaluation, smoke)
    print(f"model card {result.readme}; Ollama: ollama create <name> -f {result.modelfile}")
    return result
