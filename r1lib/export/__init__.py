"""Export: merging an adapter into 16-bit weights, GGUF conversion and quantization, and the smoke checks."""
