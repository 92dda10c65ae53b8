"""The run summary says in plain words whether fine-tuning kept the model's general ability."""

from tasks.evaluate import Evaluation, ModelScores

SCORES = dict(
    perplexity=3.0,
    replay_perplexity=1.47,
    accuracy=0.0,
    accuracy_normalized=0.0,
    format_ok=1.0,
    repetition_rate=0.0,
    generated=4,
    stopped_by_time_limit=False,
)


def evaluation(replay_after: float, exceeded: bool, limit: float | None = 1.5) -> Evaluation:
    return Evaluation(
        base=ModelScores(**SCORES),
        tuned=ModelScores(**{**SCORES, "replay_perplexity": replay_after, "accuracy": 0.9}),
        forgetting_ratio=round(replay_after / 1.47, 4),
        forgetting_limit=limit,
        forgetting_exceeded=exceeded,
        samples="generations.jsonl",
    )


def test_kept_and_forgot_read_as_such():
    kept = dict(evaluation(1.62, False).summary_lines())["forgetting"]
    assert "1.47 -> 1.62 (1.102x, within the limit 1.5x): general ability kept" in kept
    forgot = dict(evaluation(3.79, True).summary_lines())["forgetting"]
    assert "over the limit 1.5x): it forgot general data" in forgot and "augment.replay_ratio" in forgot


def test_no_limit_and_no_replay_say_so():
    assert dict(evaluation(1.62, False, limit=None).summary_lines())["forgetting"].endswith("no limit set)")
    missing = evaluation(1.62, False).model_copy(update={"forgetting_ratio": None})
    assert dict(missing.summary_lines())["forgetting"] == "forgetting not measured (no replay set)"
