"""The orpo method: ORPOTrainer (trl.experimental, through r1lib/compat.py) gets our pre-tokenized pairs in its own
layout, labels -100 on the prompt and on shown-only reasoning. Training itself:
tests/lib/training/test_preference_training.py."""

from __future__ import annotations

from tests.lib.training.test_dpo import ROWS
from tests.lib.training.test_methods import spec


def test_pairs_in_orpos_layout():
    from r1lib.training.methods.orpo import orpo_columns

    row = orpo_columns(ROWS[0])
    assert row["chosen_input_ids"] == [1, 2, 3, 4, 5] and row["chosen_labels"] == [-100, -100, -100, 4, 5]
    assert row["rejected_input_ids"] == [1, 2, 6, 7, 8] and row["rejected_labels"] == [-100, -100, 6, 7, 8]
    assert row["prompt_input_ids"] == [1, 2] and row["chosen_attention_mask"] == [1] * 5


def test_orpo_arguments_come_from_the_spec_and_its_section():
    from datasets import Dataset

    from r1lib.compat import orpo_classes
    from r1lib.config import TrainConfig
    from r1lib.training.methods.base import trainer_arguments

    cfg = TrainConfig(method="orpo", max_steps=3, orpo={"beta": 0.25})
    ORPOConfig, _ = orpo_classes()
    args = trainer_arguments(spec(Dataset.from_list(ROWS), cfg=cfg), ORPOConfig, beta=cfg.orpo.beta, max_length=64)
    assert (args.beta, args.max_length, args.max_steps) == (0.25, 64, 3)


def orpo_trainer(tmp_path, **orpo):
    """The orpo method's trainer on a random Qwen2 model with a trained LoRA adapter (so the policy is not the base),
    and a batch of three pairs of unequal lengths (padding) with shown-only reasoning (-100 inside a side)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from r1lib.compat import install_torch_chunked_logprob
    from r1lib.config import TrainConfig
    from r1lib.training.methods.orpo import build

    install_torch_chunked_logprob()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)  # fmt: skip
    model = get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.5)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({f"w{i}": i for i in range(300)}, unk_token="w1")),
        pad_token="w0", eos_token="w2",
    )  # fmt: skip
    rows = ROWS + [{"prompt_ids": [5, 6, 7], "chosen_ids": [20, 21, 22, 23], "chosen_labels": [-100, -100, 22, 23],
                    "rejected_ids": [30], "rejected_labels": [30]}]  # fmt: skip
    cfg = TrainConfig(method="orpo", max_steps=1, orpo={"beta": 0.3, **orpo})
    trainer = build(spec(Dataset.from_list(rows), cfg=cfg, output_dir=tmp_path, micro_batch=3, accumulation=1),
                    model, tokenizer)  # fmt: skip
    return trainer, model, trainer.data_collator([trainer.train_dataset[i] for i in range(3)])


def test_orpos_loss_through_the_fused_lm_head_equals_trls_over_the_whole_logits(tmp_path):
    """The same log-probabilities, NLL (every non-pad chosen token, ORPO's definition) and LoRA gradients as
    ORPOTrainer's own forward, which builds the batch x sequence x vocabulary logits."""
    import torch

    from r1lib.compat import orpo_classes

    trainer, model, batch = orpo_trainer(tmp_path)
    _, ORPOTrainer = orpo_classes()
    ours = trainer.concatenated_forward(model, batch)
    theirs = ORPOTrainer.concatenated_forward(trainer, model, batch)
    for name, a, b in zip(("chosen logps", "rejected logps"), ours[:2], theirs[:2]):
        assert torch.allclose(a, b, atol=1e-5), (name, a, b)
    assert torch.allclose(ours[4], theirs[4], atol=1e-5)
    assert torch.isfinite(ours[2]) and torch.isfinite(ours[3])
    trained = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(ours[0].sum() + ours[4], trained)
    expected = torch.autograd.grad(theirs[0].sum() + theirs[4], trained)
    assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(grads, expected))


def test_nll_tokens_scored_trains_only_what_the_tokenize_stage_scores(tmp_path):
    """train.orpo.nll_tokens = scored: the NLL is the mean negative log-probability of the chosen side's scored tokens
    (the prompt and shown-only reasoning left out), the odds-ratio inputs unchanged."""
    import torch

    from r1lib.compat import orpo_classes

    trainer, model, batch = orpo_trainer(tmp_path, nll_tokens="scored")
    _, ORPOTrainer = orpo_classes()
    ours = trainer.concatenated_forward(model, batch)
    theirs = ORPOTrainer.concatenated_forward(trainer, model, batch)
    assert torch.allclose(ours[0], theirs[0], atol=1e-5) and torch.allclose(ours[1], theirs[1], atol=1e-5)
    # theirs[0] is each chosen row's mean log-prob over its scored tokens: their token-weighted mean is our NLL
    scored = (batch["chosen_labels"][:, 1:] != -100).sum(-1).float()
    assert torch.allclose(ours[4], -(theirs[0] * scored).sum() / scored.sum(), atol=1e-5)
    assert not torch.allclose(ours[4], theirs[4], atol=1e-3)  # ORPO's own NLL covers the prompt too
