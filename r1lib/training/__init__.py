"""Training: backends (Unsloth / HF), the fit loop, the launcher, the memory plan."""
