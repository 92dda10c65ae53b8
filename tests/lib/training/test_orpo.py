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


def test_orpos_loss_through_the_fused_lm_head_equals_trls_over_the_whole_logits(tmp_path):
    """The same log-probabilities, NLL and odds-ratio inputs as ORPOTrainer's own forward (which builds the batch x
    sequence x vocabulary logits), on a random model with LoRA, pairs of unequal lengths (padding) and shown-only
    reasoning (-100 inside a side)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from r1lib.compat import install_torch_chunked_logprob, orpo_classes
    from r1lib.config import TrainConfig
    from r1lib.training.methods.orpo import build

    install_torch_chunked_logprob()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)  # fmt: skip
    model = get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, weight in model.named_parameters():
        if "lora_B" in name:  # a trained adapter, so the policy is not the base
            torch.nn.init.normal_(weight, std=0.5)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({f"w{i}": i for i in range(300)}, unk_token="w1")),
        pad_token="w0", eos_token="w2",
    )  # fmt: skip
    rows = ROWS + [{"prompt_ids": [5, 6, 7], "chosen_ids": [20, 21, 22, 23], "chosen_labels": [-100, -100, 22, 23],
                    "rejected_ids": [30], "rejected_labels": [30]}]  # fmt: skip
    cfg = TrainConfig(method="orpo", max_steps=1, orpo={"beta": 0.3})
    trainer = build(spec(Dataset.from_list(rows), cfg=cfg, output_dir=tmp_path, micro_batch=3, accumulation=1),
                    model, tokenizer)  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    _, ORPOTrainer = orpo_classes()
    ours = trainer.concatenated_forward(model, batch)
    theirs = ORPOTrainer.concatenated_forward(trainer, model, batch)
    for name, a, b in zip(("chosen logps", "rejected logps"), ours[:2], theirs[:2]):
        assert torch.allclose(a, b, atol=1e-5), (name, a, b)
    assert torch.allclose(ours[4], theirs[4], atol=1e-5)  # the NLL over every non-pad chosen token
    assert torch.isfinite(ours[2]) and torch.isfinite(ours[3])
    grads = torch.autograd.grad(ours[0].sum() + ours[4], [p for p in model.parameters() if p.requires_grad])
    expected = torch.autograd.grad(theirs[0].sum() + theirs[4], [p for p in model.parameters() if p.requires_grad])
    assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(grads, expected))
