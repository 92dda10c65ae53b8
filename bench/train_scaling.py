"""Data-parallel scaling: training tokens/s on 1 GPU and on N GPUs for the same global batch, through the pipeline.

    python bench/train_scaling.py                                  # 8B shape, Unsloth (HF if Unsloth cannot), 1 vs 2
    python bench/train_scaling.py --shape qwen1.5b --backend hf --gpus 1,2 --steps 8

Each configuration is one call of ``tasks.train.train`` (the function the Prefect task wraps) with ``train.gpus`` set
to 1 or N: one GPU trains in-process, N GPUs go through the ``ddp`` launch preset (torchrun, one rank per GPU). The
global batch is the same in every configuration: micro-batch x gradient accumulation = ``--micro-batch`` x
``--accumulation`` rows of ``--seq`` tokens; with N GPUs each rank accumulates 1/N of it. Throughput is the steady
rate the train stage reports (``steady_tokens_per_second``: non-pad tokens summed over ranks, from the end of the 3rd
optimizer step to the last, so model loading, compilation and warm-up are left out). Scaling efficiency =
tokens/s(N) / (N x tokens/s(1)). Models have random weights (bench/train_throughput.py builds them; no download).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import train_throughput as tt  # noqa: E402  (model shapes, random-weight models, fixed-length rows)


def run(backend: str, gpus: int, args, model_dir: Path, dataset_dir: Path, work: Path) -> dict:
    from r1lib.config import ModelConfig, TokenizeConfig
    from r1lib.presets import preset
    from tasks.train import train

    shape = tt.SHAPES[args.shape]
    cfg = preset(shape["preset"]).train.model_copy(
        update=dict(
            backend=backend,
            gpus=gpus,
            launch=args.launch if gpus > 1 else "auto",
            max_steps=3 + args.steps,
            save_steps=100_000,
            logging_steps=1,
            micro_batch_size=args.micro_batch,
            gradient_accumulation=args.accumulation,
            packing=False,
            eval_steps=0,
            early_stopping_patience=0,
        )
    )
    started = time.monotonic()
    result = train(
        str(dataset_dir),
        None,
        str(model_dir),
        ModelConfig(name_or_path=str(model_dir)),
        cfg,
        TokenizeConfig(max_seq_length=args.seq),
        work / f"{backend}-{gpus}gpu",
    )
    return dict(
        backend=backend,
        gpus=gpus,
        launch=result.launch,
        processes=result.processes,
        micro_batch=result.micro_batch_size,
        accumulation_per_rank=result.gradient_accumulation,
        global_batch_rows=result.micro_batch_size * result.gradient_accumulation * result.processes,
        steps=result.steps,
        steady_tokens_per_s=result.steady_tokens_per_second,
        whole_run_tokens_per_s=result.tokens_per_second,
        train_seconds=result.seconds,
        wall_seconds=round(time.monotonic() - started, 1),
        first_loss=result.first_loss,
        last_loss=result.last_loss,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="llama8b", choices=sorted(tt.SHAPES))
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "unsloth", "hf"],
        help="auto: Unsloth, and HF where Unsloth fails to train data-parallel",
    )
    parser.add_argument("--gpus", default="1,2")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument(
        "--launch", default="auto", help="the launch preset of the multi-GPU runs: auto (ddp), ddp, fsdp"
    )
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps after 3 warm-up steps")
    parser.add_argument("--work", default="/tmp/bench-scaling")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    tt.stub_prefect()  # only where prefect is absent (the GPU image); the train stage's logic does not use it
    import torch
    from datasets import Dataset

    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = tt.build_model_dir(args.shape, work / "models")
    global_rows = args.micro_batch * args.accumulation
    dataset_dir = work / f"rows-{args.shape}-{args.seq}"
    if not dataset_dir.exists():
        rows = tt.fixed_rows(global_rows * (3 + args.steps + 1), args.seq, tt.SHAPES[args.shape]["vocab_size"], seed=1)
        Dataset.from_dict(rows).save_to_disk(str(dataset_dir))

    counts = [int(n) for n in args.gpus.split(",")]
    backends = ["unsloth", "hf"] if args.backend == "auto" else [args.backend]
    results, errors = [], []
    for backend in backends:
        results, errors = [], []
        for gpus in counts:
            print(f"[scaling] {backend} on {gpus} GPU(s), global batch {global_rows} x {args.seq} tokens", flush=True)
            try:
                results.append(run(backend, gpus, args, model_dir, dataset_dir, work))
                print(f"[scaling] {json.dumps(results[-1])}", flush=True)
            except Exception as exc:  # noqa: BLE001  (report, and try the next backend)
                errors.append(dict(backend=backend, gpus=gpus, error=f"{type(exc).__name__}: {str(exc)[:800]}"))
                print(f"[scaling] FAILED {errors[-1]}", flush=True)
                break
        if not errors:
            break

    base = next((r for r in results if r["gpus"] == 1), None)
    lines = [
        "",
        f"{'backend':8} {'GPUs':>4} {'launch':7} {'micro x acc x ranks':>20} {'tokens/s':>10} {'speed-up':>9} "
        f"{'efficiency':>10}",
    ]
    for r in results:
        # no steady rate where a run resumed a finished checkpoint (a warm machine's work folder) or had < 4 steps
        timed = base and base["steady_tokens_per_s"] and r["steady_tokens_per_s"]
        speedup = r["steady_tokens_per_s"] / base["steady_tokens_per_s"] if timed else None
        r["speedup_over_1gpu"] = round(speedup, 3) if speedup else None
        r["scaling_efficiency"] = round(speedup / r["gpus"], 3) if speedup else None
        lines.append(
            f"{r['backend']:8} {r['gpus']:4} {r['launch']:7} "
            f"{r['micro_batch']:>8} x {r['accumulation_per_rank']} x {r['processes']:<5} "
            f"{r['steady_tokens_per_s'] or 0:10.0f} {speedup or 0:8.2f}x {r['scaling_efficiency'] or 0:10.1%}"
        )
    print("\n".join(lines + [f"errors: {errors}" if errors else ""]), flush=True)
    summary = dict(
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        device_count=torch.cuda.device_count(),
        torch=torch.__version__,
        shape=args.shape,
        seq=args.seq,
        global_batch_rows=global_rows,
        timed_steps=args.steps,
        results=results,
        errors=errors,
        target="2 GPUs >= 1.8x the 1-GPU tokens/s",
        note=__doc__.strip(),
    )
    path = out / f"train_scaling{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[scaling] wrote {path}", flush=True)


if __name__ == "__main__":
    main()
