"""How a training run is shown: the loss curve image, the UI's progress line and its loss table."""

from __future__ import annotations

from pathlib import Path

from r1lib.io import atomic_path


def method_story(history: list[dict], reports: tuple[str, ...]) -> list[dict]:
    """One row per logging step of the metrics a method reports beyond the loss (``TrainingMethod.reports``: GRPO's
    mean reward per reward function, completion length, shares closing their think block and truncated), rounded;
    empty when the method reports nothing else or logged none of it."""
    rows = []
    for h in history:
        if "step" in h and any(h.get(name) is not None for name in reports[1:]):
            rows.append({"step": h["step"], **{name: _rounded(h.get(name)) for name in reports if name in h}})
    return rows


def _rounded(value):
    return round(value, 4) if isinstance(value, float) else value


def _story_panels(story: list[dict]) -> list[tuple[str, list[str]]]:
    """The story's plot panels: the rewards and shares (0..1 scale) in one, the lengths in tokens in another."""
    names = [n for n in dict.fromkeys(k for row in story for k in row) if n not in ("step", "loss")]
    lengths = [n for n in names if "length" in n]
    return [(title, group) for title, group in (("rewards and shares", [n for n in names if n not in lengths]),
                                                ("completion length (tokens)", lengths)) if group]  # fmt: skip


def loss_curve(history: list[dict], out_png: Path, reports: tuple[str, ...] = ("loss",)) -> Path | None:
    """Training loss (and eval loss, when training evaluated) per optimizer step, with a panel per group of the
    method's other reports when it logged any (``method_story``); None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    story = method_story(history, reports)
    panels = _story_panels(story)
    fig, axes = plt.subplots(1 + len(panels), 1, figsize=(7, 4 + 3 * len(panels)), dpi=100, squeeze=False)
    ax = axes[0][0]
    for (title, names), (other,) in zip(panels, axes[1:]):
        for name in names:
            points = [(row["step"], row[name]) for row in story if row.get(name) is not None]
            if points:
                other.plot(*zip(*points), marker=".", label=name)
        other.set_xlabel("optimizer step")
        other.set_title(title)
        other.grid(alpha=0.3)
        other.legend(fontsize=8)
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
