"""attack5: copies of the shipped sample's test file that is_shipped_sample does not recognize (it compares whole-file
sha256): a copy re-saved with CRLF line ends, with a trailing blank line, with its rows shuffled, its first rows only,
or gzip-compressed. held_out_source then takes it for the user's own test file (kind test_file): the user's model is
scored on the shipped sample, which holdout.py exists to prevent.
Run: python bench/attack5/sample_copy.py"""

import gzip
import random
import tempfile
from pathlib import Path

from r1lib.config import DataConfig, DedupConfig
from r1lib.data.holdout import SHIPPED_SAMPLE, held_out_source, is_shipped_sample

original = (SHIPPED_SAMPLE / "test.jsonl").read_bytes()
lines = original.decode().splitlines(keepends=True)
random.seed(0)
shuffled = lines[:]
random.shuffle(shuffled)
work = Path(tempfile.mkdtemp(dir=Path(__file__).parent))
train = work / "my_train.jsonl"
train.write_text('{"prompt": "mine", "response": "<think>\\nx\\n</think>\\n\\ny"}\n')
copies = {
    "byte copy": original,
    "CRLF line ends": original.replace(b"\n", b"\r\n"),
    "trailing blank line": original + b"\n",
    "rows shuffled": "".join(shuffled).encode(),
    "first half of the rows": "".join(lines[: len(lines) // 2]).encode(),
    "gzip (test.jsonl.gz)": gzip.compress(original),
}
for name, content in copies.items():
    path = work / ("test.jsonl.gz" if "gzip" in name else "test.jsonl")
    path.write_bytes(content)
    data = DataConfig.model_validate({**DataConfig().model_dump(), "train_paths": [str(train)], "test_path": str(path)})
    kind = held_out_source(data, DedupConfig()).kind
    print(f"{name:24} recognized as the sample: {is_shipped_sample(str(path))!s:5}  held-out source: {kind}")
    path.unlink()
train.unlink()
work.rmdir()
