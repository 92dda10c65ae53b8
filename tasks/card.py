"""Stage 9, deployable outputs for the GGUFs: Ollama Modelfiles and a model card, in the card stage's own folder
(``runs/<run>/card/``).

- ``<gguf stem>.Modelfile`` for each GGUF, and ``Modelfile`` for the recommended one (Q4_K_M when built): FROM the
  GGUF (its path relative to the Modelfile), the R1 chat format as an Ollama TEMPLATE (the generation prompt opens
  ``<think>``, as in training), stop tokens (``<｜end▁of▁sentence｜>``, ``<｜User｜>``, ...) and the evaluate stage's
  decoding settings (temperature, top_p, repeat_penalty; ``no_repeat_ngram_size`` has no Ollama / llama.cpp
  equivalent and is noted instead).
- ``README.md``: a model card with the base model, the data fingerprint (the validate stage's: sha256 of every input
  file), the configuration, the card section of each stage result it is given, in stage order (training with its
  loss curve, evaluation, GGUF metrics) and the exact commands to run it with llama.cpp (llama-cli / llama-server)
  and Ollama.

Everything is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from prefect import task

from r1lib.config import PipelineConfig
from r1lib.data.chat_template import ASSISTANT, BOS, EOS, USER
from r1lib.export.gguf import FULL_PRECISION, GGUFFile, verify_digests
from r1lib.io import atomic_path, write_text
from r1lib.model.generation import Decoding
from r1lib.paths import InputPath, OutputPath
from r1lib.policy import stage_options
from r1lib.stage import StageResult
from r1lib.stages import DataFingerprint, in_stage_order

PREFERRED = ("Q4_K_M", "Q5_K_M", "Q8_0")

# The R1 format as an Ollama (Go) template. No BOS here: llama.cpp adds it from the GGUF's add_bos_token, exactly
# once (the smoke test checks this). Earlier assistant turns carry their answers only, as the official template does.
OLLAMA_TEMPLATE = (
    "{{- if .System }}{{ .System }}{{ end }}\n"
    "{{- range $i, $_ := .Messages }}\n"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    f'{{{{- if eq .Role "user" }}}}{USER}{{{{ .Content }}}}\n'
    f'{{{{- else if eq .Role "assistant" }}}}{ASSISTANT}{{{{ .Content }}}}'
    f"{{{{- if not $last }}}}{EOS}{{{{- end }}}}\n"
    "{{- end }}\n"
    f'{{{{- if and $last (ne .Role "assistant") }}}}{ASSISTANT}<think>\n'
    "{{ end }}\n"
    "{{- end }}"
)
STOP_TOKENS = (EOS, BOS, USER, ASSISTANT)


class CardResult(StageResult):
    readme: str
    modelfiles: list[str]
    modelfile: str | None  # the recommended GGUF's
    loss_curve: str | None

    def summary(self) -> dict:
        return {"deploy": {"model_card": self.readme, "modelfile": self.modelfile, "loss_curve": self.loss_curve}}

    def summary_lines(self) -> list[tuple[str, str]]:
        return [("deploy", f"{self.readme}; ollama create <name> -f {self.modelfile}")]


def recommended(ggufs: list[GGUFFile]) -> GGUFFile:
    by_type = {g.type: g for g in ggufs}
    for qtype in PREFERRED:
        if qtype in by_type:
            return by_type[qtype]
    return next((g for g in ggufs if g.type not in FULL_PRECISION), ggufs[0])


def modelfile_text(gguf: str, decoding: Decoding, n_ctx: int, system_prompt: str = "") -> str:
    """An Ollama Modelfile for ``gguf`` (its path relative to the Modelfile's folder)."""
    lines = [
        f"# Ollama: ollama create <name> -f {Path(gguf).name.rsplit('.gguf', 1)[0]}.Modelfile  (or -f Modelfile)",
        f"FROM {gguf if '/' in gguf else './' + gguf}",
        "",
        f'TEMPLATE """{OLLAMA_TEMPLATE}"""',
        "",
    ]
    if system_prompt:
        lines += [f'SYSTEM """{system_prompt}"""', ""]
    lines += [f'PARAMETER stop "{token}"' for token in STOP_TOKENS]
    lines += [
        f"PARAMETER temperature {decoding.temperature}",
        f"PARAMETER top_p {decoding.top_p}",
        f"PARAMETER repeat_penalty {decoding.repetition_penalty}",
        f"PARAMETER num_ctx {n_ctx}",
    ]
    if decoding.no_repeat_ngram_size:
        lines.append(
            f"# no_repeat_ngram_size={decoding.no_repeat_ngram_size} was used in evaluation; "
            "Ollama / llama.cpp have no equivalent (repeat_penalty is the closest)."
        )
    return "\n".join(lines) + "\n"


def card_text(
    config: PipelineConfig,
    sections: list[StageResult],
    decoding: Decoding,
    fingerprint: DataFingerprint,
    rec: GGUFFile,
    rec_ref: str,
) -> str:
    """The model card; ``rec``: the recommended GGUF, ``rec_ref``: its path from the card's folder."""
    name = config.run_dir().name
    rec_name = Path(rec.path).name
    temp, penalty, top_p = decoding.temperature, decoding.repetition_penalty, decoding.top_p
    n_ctx = config.smoke.n_ctx
    # A reasoning model thinks at length: 2048 new tokens, or fewer where the model was trained on shorter rows.
    n_predict = min(max(config.smoke.max_tokens, 2048), config.tokenize.max_seq_length)
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
        f"Data fingerprint (sha256 over the files below): `{fingerprint.sha256}`",
        "",
        "| file | sha256 |",
        "|---|---|",
        *[f"| `{path}` | `{digest}` |" for path, digest in fingerprint.files.items()],
        "",
        "<details><summary>Configuration</summary>",
        "",
        "```json",
        json.dumps(
            {k: config.model_dump()[k] for k in ("model", "tokenize", "train", "evaluate", "export")},
            indent=2,
            default=str,
        ),
        "```",
        "",
        "</details>",
        "",
        *[text for text in (section.card_section() for section in in_stage_order(sections)) if text],
    ]
    prompt = "What is the capital of France?"
    raw = f"{USER}{prompt}{ASSISTANT}<think>\\n"
    lines += [
        "",
        "## Run it",
        "",
        f"Recommended file: `{rec_name}` ({rec.type}).",
        "",
        "### llama.cpp",
        "",
        "```sh",
        "# interactive chat; --jinja uses the R1 chat template stored in the GGUF",
        f"llama-cli -m {rec_name} -cnv --jinja -c {n_ctx} -n {n_predict} --temp {temp} --top-p {top_p} "
        f"--repeat-penalty {penalty}",
        "# one prompt, raw R1 format (llama.cpp adds the BOS token itself)",
        f'llama-cli -m {rec_name} -no-cnv -e -p "{raw}" -n {n_predict} --temp {temp} --top-p {top_p} '
        f"--repeat-penalty {penalty}",
        "# OpenAI-compatible server",
        f"llama-server -m {rec_name} --jinja -c {n_ctx} --port 8080",
        "curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\",
        f'  -d \'{{"messages": [{{"role": "user", "content": "{prompt}"}}], "temperature": {temp}, '
        f'"repeat_penalty": {penalty}}}\'',
        "```",
        "",
        "### Ollama",
        "",
        "```sh",
        f"ollama create {name.lower()} -f Modelfile          # Modelfile: FROM {rec_ref}",
        f'ollama run {name.lower()} "{prompt}"',
        "# another quantization: ollama create <name> -f <file stem>.Modelfile",
        "```",
        "",
        "The Modelfiles carry the R1 template, the stop tokens "
        + ", ".join(f"`{t}`" for t in STOP_TOKENS)
        + f" and the evaluation's decoding (temperature {temp}, "
        f"top_p {top_p}, repeat_penalty {penalty}).",
        "",
    ]
    return "\n".join(lines)


def write_card(
    config: PipelineConfig,
    ggufs: list[GGUFFile],
    decoding: Decoding,
    fingerprint: DataFingerprint,
    sections: list[StageResult],
    loss_curve: str | None,
    out_dir: Path,
) -> CardResult:
    """Modelfiles, README.md and the loss curve in ``out_dir``; every GGUF must still hold what the export wrote."""
    verify_digests(ggufs)
    out_dir = Path(out_dir)
    n_ctx, system_prompt = config.smoke.n_ctx, config.tokenize.system_prompt
    refs = {g.path: os.path.relpath(Path(g.path).resolve(), out_dir.resolve()) for g in ggufs}
    modelfiles = []
    for g in ggufs:
        path = out_dir / f"{Path(g.path).name.rsplit('.gguf', 1)[0]}.Modelfile"
        write_text(path, modelfile_text(refs[g.path], decoding, n_ctx, system_prompt))
        modelfiles.append(str(path))
    rec = recommended(ggufs)
    main_modelfile = out_dir / "Modelfile"
    write_text(main_modelfile, modelfile_text(refs[rec.path], decoding, n_ctx, system_prompt))
    curve = None
    if loss_curve and Path(loss_curve).exists():
        curve = out_dir / "loss_curve.png"
        with atomic_path(curve) as tmp:
            shutil.copyfile(loss_curve, tmp)
    readme = out_dir / "README.md"
    text = card_text(config, sections, decoding, fingerprint, rec, refs[rec.path])
    digests = [f"| `{Path(g.path).name}` | `{g.sha256}` |" for g in ggufs if g.sha256]
    if digests:
        text += "\n## File digests\n\n| file | sha256 |\n|---|---|\n" + "\n".join(digests) + "\n"
    write_text(readme, text)
    return CardResult(
        readme=str(readme),
        modelfiles=modelfiles,
        modelfile=str(main_modelfile),
        loss_curve=str(curve) if curve else None,
    )


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="model-card", task_run_name="model card", **stage_options(timeout_seconds=600))
def card_task(
    config: PipelineConfig,
    ggufs: list[GGUFFile],
    decoding: Decoding,
    fingerprint: DataFingerprint,
    sections: list[StageResult],
    loss_curve: InputPath | None,
    out_dir: OutputPath,
) -> CardResult:
    """Ollama Modelfiles and the model card (README.md + loss curve); ``sections``: the stage results whose card
    sections it shows (in stage order); ``decoding``: the evaluate stage's generation settings; ``fingerprint``: the
    validate stage's."""
    result = write_card(config, ggufs, decoding, fingerprint, sections, loss_curve, Path(out_dir))
    print(f"model card {result.readme}; Ollama: ollama create <name> -f {result.modelfile}")
    return result
