#!/usr/bin/env bash
# attack5: the three data-only runs (stop_after=tokenize) and the row accounting of each. From the repo root, after
# `source scripts/env.sh`. Logs: bench/attack5/data/run_*.log.
set -euo pipefail
D=bench/attack5/data
run() { name=$1; shift; python -m flows.finetune --preset tiny --stop-after tokenize --set run_name=$name "$@" \
  --set data.max_rejected_fraction=0.9 > $D/run_${name#attack5-}.log 2>&1; python bench/attack5/check_accounting.py runs/$name; }
run attack5-pref --set train.method=dpo --set "data.train_paths=[\"$D/pref_train.jsonl\"]" --set data.test_path=$D/pref_test.jsonl
run attack5-copy --set "data.train_paths=[\"$D/qa_train.jsonl\",\"$D/unknown_layout.jsonl\"]" --set data.test_path=$D/test_crlf.jsonl
run attack5-odd --set "data.train_paths=[\"$D/qa_train.jsonl\",\"$D/unknown_userid.jsonl\",\"$D/array.json\",\"$D/bom.csv\",\"$D/utf16.jsonl\"]" \
  --set data.holdout_fraction=0.1
