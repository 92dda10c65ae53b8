"""attack5: invisible characters visible_text keeps -> equal_sides and contradictory_pair evaded; column guesses."""

import json

import numpy as np

from r1lib.data.columns import mapping_hint, suggest_columns
from r1lib.data.duplicates import find_contradictions, pair_orientation
from r1lib.data.preference import normalize_preference, preference_record, visible_text
from r1lib.data.records import RecordError

INVISIBLE = {
    "U+034F combining grapheme joiner": "\u034f",
    "U+FE0F variation selector-16": "\ufe0f",
    "U+E0041 tag latin A": "\U000e0041",
    "U+061C arabic letter mark": "\u061c",
    "U+3164 hangul filler": "\u3164",
    "U+115F hangul choseong filler": "\u115f",
    "U+180B mongolian fvs1": "\u180b",
    "U+1D173 musical begin beam": "\U0001d173",
    "U+200B zero width space (handled)": "\u200b",
}
base = "The capital of France is Paris."
print("== equal_sides: chosen and rejected the same answer plus one invisible character ==")
for name, ch in INVISIBLE.items():
    row = {"prompt": "Capital of France?", "chosen": base, "rejected": base[:4] + ch + base[4:]}
    try:
        normalize_preference(row)
        print(f"ACCEPTED  {name}: visible_text equal? {visible_text(row['chosen']) == visible_text(row['rejected'])}")
    except RecordError as e:
        print(f"refused   {name}: {e.reason if hasattr(e, 'reason') else e}")

print("== contradictory_pair: the second row flips the first, with one invisible character ==")
for name, ch in INVISIBLE.items():
    a = {"prompt": "Is 7 prime?", "chosen": "Yes, 7 is prime.", "rejected": "No, 7 is not prime."}
    b = {"prompt": "Is 7 prime?", "chosen": "No, 7 is" + ch + " not prime.", "rejected": "Yes, 7 is prime."}
    recs = [preference_record(normalize_preference(r), "f.jsonl", i + 1) for i, r in enumerate((a, b))]
    keys = np.array([pair_orientation(r)[0] for r in recs], dtype=np.uint64)
    flip = np.array([pair_orientation(r)[1] for r in recs])
    found = find_contradictions(keys, flip)
    print(("caught    " if found else "MISSED    ") + name)

print("== homoglyph: Cyrillic 'о' (U+043E) for Latin 'o' in the flipped row ==")
a = {"prompt": "Is 7 prime?", "chosen": "Yes, 7 is prime.", "rejected": "No, 7 is not prime."}
b = {"prompt": "Is 7 prime?", "chosen": "N\u043e, 7 is not prime.", "rejected": "Yes, 7 is prime."}
recs = [preference_record(normalize_preference(r), "f.jsonl", i + 1) for i, r in enumerate((a, b))]
keys = np.array([pair_orientation(r)[0] for r in recs], dtype=np.uint64)
print("caught" if find_contradictions(keys, np.array([pair_orientation(r)[1] for r in recs])) else "MISSED homoglyph")

print("== suggest_columns on unknown layouts ==")
for row in (
    {"task": "arithmetic", "query": "What is 2+2?", "response": "4"},
    {"user_id": "u_8812", "question_text": "What is 2+2?", "response": "4"},
    {"subtask_name": "geometry", "problem_statement": "Area of a unit square?", "final": "1"},
    {"question": "What is 2+2?", "answer": "4", "solution": "Two plus two makes four, so the answer is 4."},
    {"prompt": "Classify: great movie", "sentiment_analysis": "positive", "output": "The review is positive."},
    {"instruction": "Translate to French", "input": "cat", "output": "chat"},
):
    print(json.dumps(row, ensure_ascii=False)[:90], "->", suggest_columns(row))

print("== mapping_hint with a quote in the file or column name: the pasted --set breaks the shell's quoting ==")
print(mapping_hint({"query": "a", "reply": "b"}, "bob's data.jsonl"))
