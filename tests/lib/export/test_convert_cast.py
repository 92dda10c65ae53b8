"""The converter's F16 cast on every core (r1lib/compat.py: ``threaded_f16_cast``) writes the same bits as gguf-py's
own numpy cast: rounding, subnormals, overflow to infinity, NaN, signed zero; eagerly and through the converter's
lazy tensors."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def values() -> np.ndarray:
    special = [0.0, -0.0, 65504.0, 65520.0, 70000.0, -70000.0, 6.1e-5, 5.96e-8, 3e-8, 1e-8, np.inf, -np.inf, np.nan]
    rng = np.random.default_rng(0)
    spread = rng.standard_normal(13 * 3000 - 13) * 10.0 ** rng.integers(-9, 6, 13 * 3000 - 13)
    return np.concatenate([special, spread]).astype(np.float32).reshape(-1, 13)


def test_the_threaded_cast_writes_gguf_pys_bits_eager_and_lazy(values, monkeypatch):
    import gguf
    from gguf.lazy import LazyNumpyTensor

    from r1lib.compat import threaded_f16_cast

    original = gguf.quants.quantize
    monkeypatch.setattr(gguf.quants, "quantize", original)  # put back after the test
    with np.errstate(over="ignore"):
        expected = original(values, gguf.GGMLQuantizationType.F16)
        threaded_f16_cast()
        assert gguf.quants.quantize is not original
        eager = gguf.quants.quantize(values, gguf.GGMLQuantizationType.F16)
        lazy = gguf.quants.quantize(LazyNumpyTensor.from_eager(values), gguf.GGMLQuantizationType.F16)
        lazy = LazyNumpyTensor.to_eager(lazy)
    for got in (eager, lazy):
        assert got.dtype == np.float16 and got.shape == values.shape
        assert np.array_equal(got.view(np.uint16), expected.view(np.uint16))
    # every other type still goes through gguf-py's own quantizer
    block = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    q8 = gguf.quants.quantize(block, gguf.GGMLQuantizationType.Q8_0)
    assert q8.dtype == np.uint8 and np.array_equal(q8, original(block, gguf.GGMLQuantizationType.Q8_0))
