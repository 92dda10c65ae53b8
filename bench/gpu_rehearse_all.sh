#!/usr/bin/env bash
# Issue #26 on a lent GPU machine: the rehearsals of the three shapes, the evaluation-generation bench and the export
# bench, each writing its raw log, JSON and Markdown table under $OUT. One part per device call (each fits the
# 10-minute limit of a call; a flow that is still running at --deadline-s writes its table so far and exits 3):
#
#   run(carry=[".gpu"], command="source scripts/gpu-env.sh && bench/gpu_rehearse_all.sh 7b")
#   ... the same with 7b-cap24, 8b, evalgen (bench/eval_generation.py on the 7B shape) and export (bench/export_speed.py)
#   KV_CACHE=dynamic bench/gpu_rehearse_all.sh 7b  # the rehearsal with plain HF generate in evaluation
#   GRPO_STEPS=2 bench/gpu_rehearse_all.sh 1.5b     # with a GRPO stage after the flow (issue #25)
#   bench/gpu_rehearse_all.sh probe 7b             # first the machine's cores, memory and disk/RAM write speed
#
#   bench/gpu_rehearse_all.sh grpo                 # GRPO step, pipeline vs TRL, 7B under the 24 GiB cap (issue #25)
#   bench/gpu_rehearse_all.sh grpo-unsloth-rollouts  # the pipeline side with train.grpo.rollouts=hf, to compare
#   bench/gpu_rehearse_all.sh dpo                  # DPO, pipeline vs TRL, 8B shape, 16 pairs of 2,048 (issue #24)
#   bench/gpu_rehearse_all.sh preference-tests     # DPO, ORPO and KTO train on Unsloth's 4-bit base (pytest -m gpu)
#
# Several parts in one call run one after the other (``bench/gpu_rehearse_all.sh evalgen export``).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/r1-rehearse}
DEADLINE=${DEADLINE:-540}  # seconds after the rehearsal starts: the table is written before the call's limit
KV_CACHE=${KV_CACHE:-auto}  # evaluate.kv_cache: auto records the decode step as a CUDA graph on the GPU
# The issue's measurement: 4 training steps, 256 new tokens per evaluation row, 2 perplexity rows in the smoke test.
COMMON=(--train-steps 4 --eval-max-new-tokens 256 --set smoke.perplexity_rows=2 --deadline-s "$DEADLINE"
        --set "evaluate.kv_cache=\"$KV_CACHE\"" --out "$OUT" --work "$WORK")
GRPO_STEPS=${GRPO_STEPS:-0}  # issue #25: a GRPO stage after the flow (8 completions of 1,024 tokens a step)
[ "$GRPO_STEPS" -gt 0 ] && COMMON+=(--grpo-steps "$GRPO_STEPS")

part() {  # name, command...: the command's whole output into $OUT/<name>.log, its status into the log's last line
  local name=$1; shift
  echo "[gpu_rehearse_all] $name: $*" | tee "$OUT/$name.log"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >>"$OUT/$name.log" 2>&1
  local began=$SECONDS
  "$@" 2>&1 | tee -a "$OUT/$name.log"
  local code=${PIPESTATUS[0]}
  echo "[gpu_rehearse_all] $name exited $code after $((SECONDS - began)) s" | tee -a "$OUT/$name.log"
}

for what in "${@:-7b}"; do
  case "$what" in
    probe) part machine-probe bash -c 'nproc; lscpu | grep -E "Model name|^CPU\(s\)"; free -g; df -h /tmp /dev/shm .;
             echo "dirty_ratio $(cat /proc/sys/vm/dirty_ratio) background $(cat /proc/sys/vm/dirty_background_ratio)";
             echo "cgroup cpu.max: $(cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null)";
             python3 bench/cpu_parallel.py;
             for d in /tmp /dev/shm; do echo "write 4 GiB to $d:";
               dd if=/dev/zero of=$d/r1-dd-probe bs=16M count=256 conv=fdatasync 2>&1 | tail -1; rm -f $d/r1-dd-probe;
             done' ;;
    1.5b) part rehearse-r1-qwen-1.5b python -m flows.rehearse --shape r1-qwen-1.5b "${COMMON[@]}" ;;
    7b-grpo) part rehearse-r1-qwen-7b-grpo python -m flows.rehearse --shape r1-qwen-7b --set stop_after='"tokenize"' \
               --tag grpo "${COMMON[@]}" ;;  # the data stages, then the GRPO stage alone (GRPO_STEPS)
    1.5b-grpo) part rehearse-r1-qwen-1.5b-grpo python -m flows.rehearse --shape r1-qwen-1.5b \
                 --set stop_after='"tokenize"' --tag grpo "${COMMON[@]}" ;;
    7b) part rehearse-r1-qwen-7b python -m flows.rehearse --shape r1-qwen-7b "${COMMON[@]}" ;;
    7b-cap24) part rehearse-r1-qwen-7b-cap24 python -m flows.rehearse --shape r1-qwen-7b --gpu-cap-gib 24 "${COMMON[@]}" ;;
    8b) part rehearse-r1-llama-8b python -m flows.rehearse --shape r1-llama-8b "${COMMON[@]}" ;;
    evalgen) part eval-generation-r1-qwen-7b python bench/eval_generation.py --shape r1-qwen-7b --batch 16 \
               --max-new-tokens 256 --out "$OUT" --work "$WORK/evalgen" ;;
    export) part export-speed-r1-qwen-7b python bench/export_speed.py --shape r1-qwen-7b --out "$OUT" \
              --work "$WORK/export" ;;
    grpo) part grpo-throughput-r1-qwen-7b-cap24 python bench/grpo_throughput.py --shape r1-qwen-7b --gpu-cap-gib 24 \
            --steps 2 --out "$OUT" --work "$WORK/grpo-tp" --tag "$(date +%H%M)" ;;  # issue #25: both sides, one run
    grpo-unsloth-rollouts) part grpo-throughput-r1-qwen-7b-cap24-unsloth-rollouts python bench/grpo_throughput.py \
            --shape r1-qwen-7b --gpu-cap-gib 24 --steps 2 --sides pipeline --rollouts hf --out "$OUT" \
            --work "$WORK/grpo-tp-hf" --tag unsloth-rollouts ;;  # the pipeline with Unsloth's own decode graphs
    dpo) part dpo-throughput-llama8b-b16 python bench/dpo_throughput.py --shape llama8b --seq 2048 --batch 16 \
           --warmup 2 --steps 3 --timeout-s 240 --out "$OUT" --tag b16 ;;  # issue #24: both sides, one run
    preference-tests) part gpu-tests-preference python -m pytest -m gpu -q -p no:cacheprovider \
                        tests/lib/training/test_gpu.py -k preference ;;  # ORPO's fused head on Unsloth, first time
    *) echo "unknown part $what (probe, 1.5b, 1.5b-grpo, 7b, 7b-grpo, 7b-cap24, 8b, evalgen, export, grpo," \
            "grpo-unsloth-rollouts, dpo, preference-tests)" >&2
       exit 2 ;;
  esac
done
