"""Rehearse the whole finetune flow at a real model's size before downloading it: will the job fit, how long will
each stage take?

    python -m flows.rehearse --shape r1-qwen-7b --train-steps 20                 # one GPU, the whole card
    python -m flows.rehearse --shape r1-qwen-7b --gpu-cap-gib 24 --train-steps 8  # as on a 24 GiB card
    python -m flows.rehearse --shape tiny-qwen --train-rows 24 --test-rows 4 \\
        --prompt-tokens 20,60 --completion-tokens 40,200 --eval-max-new-tokens 16  # the same path on a CPU

It builds a random-weight checkpoint of the shape (r1lib/rehearsal/shapes.py: R1-Distill-Qwen 1.5B/7B, -Llama-8B;
the real tokenizer and R1 chat template; seconds on a GPU, nothing downloaded) and an R1-like data set of realistic
lengths (r1lib/rehearsal/data.py), then runs the real finetune flow (flows/finetune.py) on them with the shape's
preset: data stages, training for ``--train-steps``, evaluation with real generation lengths, merge, F16 GGUF,
Q4_K_M and Q8_0, smoke test, card. A sampler measures every stage (r1lib/rehearsal/meter.py) and the result is one
JSON and one dated Markdown table in ``--out`` (r1lib/rehearsal/report.py). The builders, the configuration and
the measurement are r1lib/rehearsal/run.py; this module hands it the flow. Random weights never end a sentence,
so every generation runs to its token limit and the smoke test records (does not require) the R1 answer format.

Each rehearsal starts clean: its own work folder and its own Prefect home (a cached stage would hide its cost);
``--resume`` keeps both, so a second invocation after an interrupted one continues from the finished stages and the
last training checkpoint. Where the disk cannot hold base + merged + F16 + quantized files at once, the base
weights are deleted as soon as the merge has written the merged model (said in the result).
"""

from __future__ import annotations

import sys


def run_finetune(config):
    """The finetune flow on ``config``; imported here, after the rehearsal has given this process its own Prefect
    home (r1lib/rehearsal/run.py)."""
    from flows.finetune import finetune

    return finetune(config)


def main(argv: list[str]) -> int:
    from r1lib.rehearsal.run import rehearse

    return rehearse(argv, run_finetune)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
