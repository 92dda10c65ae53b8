"""Models: loading base models and tokenizers, their shapes, the embedded tiny model, generation, GPU memory caps."""
