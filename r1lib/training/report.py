"""How a training run is shown: the loss curve image, the UI's progress line and its loss table."""

from __future__ import annotations

from pathlib import Path

from r1lib.io import atomic_path


def loss_curve(history: list[dict], out_png: Path) -> Path | None:
    """Training loss (and eval loss, when training evaluated) per optimizer step; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), marker=".", label="training loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss (held-out, during training)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out_png)


def progress_line(step: int, max_steps: int, logs: dict, origin: tuple[int, float], now: float) -> str:
    """One line for the UI's progress artifact: step, loss, learning rate, step rate and time left. The rate counts
    from ``origin`` (this attempt's first report), so steps a resumed run skipped do not inflate it."""
    parts = [f"step {step}/{max_steps}"]
    if "loss" in logs:
        parts.append(f"loss {logs['loss']:.4f}")
    if logs.get("learning_rate") is not None:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    steps, seconds = step - origin[0], now - origin[1]
    if steps > 0 and seconds > 0:
        rate = steps / seconds
        left = (max_steps - step) / rate
        parts += [f"{rate:.3g} steps/s", f"ETA {left:.0f} s" if left < 120 else f"ETA {left / 60:.1f} min"]
    return " · ".join(parts)


def loss_markdown(result, curve: list[dict]) -> str:
    """The training-loss artifact: method, backend, steps and rate, OOM retries, and the logged losses by step.
    ``result`` is the train stage's result; ``curve`` the {step, loss, lr} reports seen during training."""
    rows = "\n".join(f"| {c['step']} | {c['loss']} | {c['lr']:.2e} |" for c in curve if c["lr"] is not None)
    return (
        f"**{result.method}** with the **{result.backend}** backend, {result.steps} steps in {result.seconds} s "
        f"({result.tokens_per_second} tokens/s)"
        + (f", resumed from `{result.resumed_from}`" if result.resumed_from else "")
        + ("\n\n" + "\n".join(f"- {m}" for m in result.oom_retries) if result.oom_retries else "")
        + f"\n\n| step | loss | learning rate |\n|---|---|---|\n{rows}"
    )
