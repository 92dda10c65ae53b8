"""attack5: two pairs whose conversations differ only in an earlier assistant turn are taken for a contradiction and
both dropped: pair_orientation keys the prompt by prompt_text, which keeps the system and the user turns only.
Run: python bench/attack5/multiturn_contradiction.py"""

import numpy as np

from r1lib.data.duplicates import find_contradictions, pair_orientation
from r1lib.data.preference import normalize_preference, preference_record


def pair(number: str, chosen: str, rejected: str) -> dict:
    return {"messages": [{"role": "user", "content": "Pick a number below 10."},
                         {"role": "assistant", "content": number},
                         {"role": "user", "content": "Is your number prime?"}],
            "chosen": chosen, "rejected": rejected}  # fmt: skip


rows = [pair("7", "Yes, it is prime.", "No, it is not prime."), pair("9", "No, it is not prime.", "Yes, it is prime.")]
recs = [preference_record(normalize_preference(r), "f.jsonl", i + 1) for i, r in enumerate(rows)]
keys = np.array([pair_orientation(r)[0] for r in recs], dtype=np.uint64)
found = find_contradictions(keys, np.array([pair_orientation(r)[1] for r in recs]))
print("assistant turn '7' vs '9' earlier in the conversation; contradiction found:", found)
