"""attack5: rows in = accepted + quarantined for a data run's summary (per file and in all), and dedup's rows in =
rows out + rows dropped. Usage: python bench/attack5/check_accounting.py runs/<name>"""

import json
import sys
from pathlib import Path

run = Path(sys.argv[1])
summary = json.loads((run / "summary.json").read_text())
data, dedup = summary["data"], summary["dedup"]
files = data["per_file"]
accepted = sum(v["accepted"] for v in files.values())
quarantined = sum(v["quarantined"] for v in files.values())
lines = len((run / "validate" / "quarantine.jsonl").read_text().splitlines())
dropped = len((run / "dedup" / "quarantine.jsonl").read_text().splitlines())
checks = {
    "rows_read == accepted + quarantined": data["rows_read"] == accepted + quarantined,
    "quarantined == quarantine.jsonl lines": data["quarantined"] == quarantined == lines,
    "per-file reasons sum to quarantined": all(sum(v["reasons"].values()) == v["quarantined"] for v in files.values()),
    "dedup in == out + dropped": dedup["train_in"] + dedup["test_in"]
    == dedup["train_out"] + dedup["test_out"] + dropped,
    "dedup reasons == dedup quarantine lines": sum(dedup["reasons"].values()) == dropped,
}
print(
    f"{run}: read {data['rows_read']} = accepted {accepted} + quarantined {quarantined}; dedup "
    f"{dedup['train_in']}+{dedup['test_in']} -> {dedup['train_out']}+{dedup['test_out']} + {dropped} dropped"
)
for name, ok in checks.items():
    print(f"  {'ok  ' if ok else 'FAIL'} {name}")
