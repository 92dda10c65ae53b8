"""The GGUF header reader agrees with gguf-py's full reader, skips a large vocabulary quickly, and refuses a file cut
short anywhere: in the header, in the metadata or in the tensor data."""

from __future__ import annotations

import numpy as np
import pytest

from r1lib.export.gguf import check_gguf, gguf_metadata, read_layout


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    from gguf import GGUFWriter

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    writer = GGUFWriter(str(path), "qwen2")
    writer.add_string("tokenizer.ggml.pre", "deepseek-r1-qwen")
    writer.add_uint32("general.file_type", 7)
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(50_000)])
    writer.add_array("tokenizer.ggml.scores", [0.5] * 1000)
    writer.add_tensor("a", np.ones((64, 32), dtype=np.float32))
    writer.add_tensor("b", np.arange(100, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_header_reader_agrees_with_gguf_py(gguf_file):
    from gguf import GGUFReader

    reader, layout = GGUFReader(str(gguf_file)), read_layout(gguf_file)
    assert layout.tensors == len(reader.tensors) == 2
    assert layout.data_end == max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    assert layout.data_end <= gguf_file.stat().st_size  # the writer pads the last tensor to the alignment
    assert gguf_metadata(gguf_file, "tokenizer.ggml.pre") == reader.get_field("tokenizer.ggml.pre").contents()
    assert gguf_metadata(gguf_file, "general.file_type") == 7
    assert layout.metadata["tokenizer.ggml.tokens"] == "<array of 50000>"
    assert gguf_metadata(gguf_file, "no.such.key") is None
    check_gguf(gguf_file)


@pytest.mark.parametrize("keep", ["3 bytes", "40 bytes", "half", "all but the last tensor byte"])
def test_a_file_cut_short_anywhere_is_refused(gguf_file, tmp_path, keep):
    data = gguf_file.read_bytes()
    end = {"3 bytes": 3, "40 bytes": 40, "half": len(data) // 2}.get(keep, read_layout(gguf_file).data_end - 1)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:end])
    with pytest.raises(RuntimeError, match="is not a complete GGUF"):
        check_gguf(cut)


def test_a_file_that_is_not_a_gguf_is_refused(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(RuntimeError, match="no GGUF magic"):
        check_gguf(path)
