"""The data-only run (``python -m flows.finetune --stop-after tokenize``): the data stages write their outputs and
the summary's data lines, then the run stops; nothing is dropped in silence, and refusals say what to type."""

import json
from pathlib import Path

import pytest
from conftest import r1, write_lines

from flows.finetune import main
from r1lib.presets import config_from_args
from r1lib.stages import STAGES, out_dir

DATA_STAGES = [s.name for s in STAGES if s.group == "data" and s.folder]  # validate ... tokenize
LATER_STAGES = [s.name for s in STAGES if s.group != "data" and s.folder]  # train ... card

SHAPES = "tests/fixtures/shapes"


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def summary_of(stdout: str) -> dict:
    path = stdout.strip().splitlines()[-1].removeprefix("summary: ")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def test_stop_after_shares_the_run_folder_of_the_full_run():
    data_only = config_from_args(["--stop-after", "tokenize", "--set", "train.max_steps=7"])
    full = config_from_args(["--set", "train.max_steps=7"])
    assert data_only.stop_after == "tokenize" and full.stop_after is None
    assert data_only.run_dir() == full.run_dir()


@pytest.mark.slow  # the data flow, whole
def test_data_only_run_writes_the_prepared_data_and_the_data_summary(prefect_harness, tmp_path, capsys):
    code, out, err = run_main(capsys, "--stop-after", "tokenize", "--set", f"runs_dir={json.dumps(str(tmp_path))}")
    assert code == 0, err
    summary = summary_of(out)
    assert {"data", "dedup", "augment", "debias", "tokenize", "tokenize_test", "tokenize_replay"} <= set(summary)
    assert not {"train", "evaluate", "fairness", "gguf"} & set(summary)
    run = Path(summary["run_dir"])
    assert (Path(out_dir(run, "tokenize")) / "train" / "dataset" / "state.json").exists()
    assert all(Path(out_dir(run, name)).is_dir() for name in DATA_STAGES)
    assert not [name for name in LATER_STAGES if Path(out_dir(run, name)).exists()]
    assert summary["debias"]["counterfactual"] is False and summary["debias"]["counterfactuals"] == 0
    for label in ("data", *DATA_STAGES[1:]):  # the validate stage's line is "data"
        assert f"\n  {label}" in out


@pytest.mark.slow  # the data flow, whole
def test_rows_all_longer_than_max_seq_length_fail_the_data_only_run_naming_the_setting(
    prefect_harness, tmp_path, capsys
):
    long = [
        {"instruction": f"Add the numbers 1 to {n}.", "output": r1(" + ".join(map(str, range(1, n))), str(n))}
        for n in range(200, 206)
    ]
    path = write_lines(tmp_path / "long.jsonl", long)
    code, _, err = run_main(
        capsys,
        "--stop-after",
        "tokenize",
        "--set",
        f"runs_dir={json.dumps(str(tmp_path / 'runs'))}",
        "--set",
        f"data.train_paths={json.dumps([str(path)])}",
        "--set",
        f"data.allowed_roots={json.dumps(['{project}/data', str(tmp_path)])}",
    )
    assert code == 1
    assert "tokenize.max_seq_length=256" in err and "tokenize.truncation=truncate" in err
    # One of the 6 rows is held out (data.holdout_fraction); 5 rows and their 5 prompt variants are too long, only
    # the 5 replay rows fit: no training on those.
    assert "train: 10 of 15 rows" in err and "tokenize.max_dropped_fraction=0.1" in err


@pytest.mark.slow  # the data flow, whole
def test_preference_rows_and_unfilled_placeholders_never_reach_the_prepared_data(prefect_harness, tmp_path, capsys):
    files = [
        "data/sample/train.jsonl",
        f"{SHAPES}/llamafactory_dpo_en_demo.json",
        f"{SHAPES}/llamafactory_kto_en_demo.json",
        f"{SHAPES}/llamafactory_identity_placeholders.json",
    ]
    code, out, err = run_main(
        capsys,
        "--stop-after",
        "tokenize",
        "--set",
        f"runs_dir={json.dumps(str(tmp_path))}",
        "--set",
        f"data.train_paths={json.dumps(files)}",
    )
    assert code == 0, err
    summary = summary_of(out)
    per_file = summary["data"]["per_file"]
    assert per_file[files[1]]["reasons"] == {"preference_data": 2}
    assert per_file[files[2]]["reasons"] == {"preference_data": 5}
    assert per_file[files[3]]["reasons"] == {"placeholder": 24}
    run = Path(summary["run_dir"])
    prepared = "".join(p.read_text(encoding="utf-8") for p in (run / "debias" / "shards").glob("train-*[0-9].jsonl"))
    assert "{{name}}" not in prepared and "{{author}}" not in prepared
    kto = json.loads(Path(files[2]).read_text(encoding="utf-8"))
    assert kto[4]["messages"][-1]["content"] not in prepared  # the undesirable (label false) answer
    assert summary["tokenize"]["rows"] == summary["debias"]["rows_in"] - summary["debias"]["blocked"]


def test_allowed_roots_refusal_prints_the_exact_fix_once_without_a_traceback(tmp_path, capsys):
    outside = tmp_path / "mine" / "train.jsonl"
    outside.parent.mkdir()
    write_lines(outside, [{"instruction": "1 + 1?", "output": "2"}])
    code, out, err = run_main(capsys, "--set", f"data.train_paths={json.dumps([str(outside)])}")
    assert code == 2 and "Traceback" not in err + out
    assert err.count("configuration refused") == 1
    fix = err.split("to allow it: ", 1)[1].strip()
    assert fix == f'--set \'data.allowed_roots=["{{project}}/data", ".", "{outside.parent}"]\''
    import shlex

    from r1lib.preflight import check_config

    config = config_from_args(["--set", f"data.train_paths={json.dumps([str(outside)])}", *shlex.split(fix)])
    check_config(config)  # the printed fix is enough


@pytest.mark.parametrize(
    ("challenger", "champion", "promote"),
    [
        (
            {"accuracy": 0.9, "base_accuracy": 0.1, "fairness_agreement": 0.6, "base_fairness_agreement": 0.9},
            None,
            False,
        ),
        (
            {"accuracy": 0.9, "base_accuracy": 0.1, "fairness_agreement": 0.85, "base_fairness_agreement": 0.9},
            None,
            True,
        ),
        ({"accuracy": 0.9, "fairness_agreement": 0.7}, {"accuracy": 0.8, "fairness_agreement": 0.95}, False),
        ({"accuracy": 0.9}, {"accuracy": 0.8, "fairness_agreement": 0.95}, True),  # not measured: not judged
        (  # 6 of 8 twins vs 7 of 8: one answer, too few twins to judge
            {"accuracy": 0.9, "fairness_agreement": 0.75, "base_fairness_agreement": 0.88, "fairness_prompts": 8},
            None,
            True,
        ),
        (
            {"accuracy": 0.9, "fairness_agreement": 0.6, "base_fairness_agreement": 0.9, "fairness_prompts": 40},
            None,
            False,
        ),
    ],
)
def test_promotion_refuses_a_challenger_whose_counterfactual_agreement_drops(challenger, champion, promote):
    from tasks.promote import PromotionPolicy, decide

    ok, reason = decide(challenger, champion, PromotionPolicy())
    assert ok is promote, reason
    if not promote:
        assert "counterfactual agreement" in reason and "max_fairness_drop 0.1" in reason
