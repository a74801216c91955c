"""Exact resume: a run stopped at a checkpoint and resumed from it logs, step for step, the losses of the run that was
never interrupted, and ends with the same weights.

Each case trains the tiny model (`pretrain_tester`) for 8 optimizer steps three ways: uninterrupted; stopped at
`resume_at` (`--max_steps`); resumed from `checkpoint-<resume_at>`. The learning-rate schedule is constant, so
stopping early does not change the steps before the stop. Every source of randomness is on: FLIP patch dropping,
ALBEF hard-negative sampling, dropout in the fusion layer (all drawn in the forward pass from the global RNG, which
Trainer checkpoints) and BERT masking for MLM (drawn by the collator while the DataLoader builds the batch).
"""

import pytest
import torch
from pretrain_tester import save_tiny_text_tower, step_losses, tiny_pretrain_args
from safetensors.torch import load_file

# (name, gradient_accumulation_steps, per_device_train_batch_size, max_train_samples, resume_at)
RESUME_CASES = [
    # Checkpoint 4 falls between epochs: Trainer restores the RNG before the DataLoader draws anything.
    ("epoch-boundary-ga2", 2, 8, 64, 4),
    # Checkpoint 4 falls inside the first epoch: Trainer skips the consumed batches, the DataLoader collates the next
    # ones, and only then is the RNG restored.
    ("mid-epoch-ga1", 1, 8, 64, 4),
    ("mid-epoch-ga2", 2, 4, 64, 4),
    # Inside the second epoch (4 steps per epoch): the epoch's shuffle must be reproduced too.
    ("second-epoch-ga1", 1, 8, 32, 6),
]
MAX_STEPS = 8


@pytest.fixture(scope="module")
def text_tower(tmp_path_factory) -> str:
    return save_tiny_text_tower(str(tmp_path_factory.mktemp("tower")))


def _history(path) -> list[dict]:
    import json

    with open(path, encoding="utf-8") as f:
        return [row for row in json.load(f)["log_history"] if "loss" in row]


@pytest.mark.parametrize("name, accumulation, batch_size, samples, resume_at", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_resumed_run_matches_uninterrupted_run(name, accumulation, batch_size, samples, resume_at, text_tower, tmp_path):
    from run_scripts import pretrain

    common = {
        "gradient_accumulation_steps": accumulation,
        "per_device_train_batch_size": batch_size,
        "max_train_samples": samples,
        "save_steps": resume_at,
        "max_steps": MAX_STEPS,
        "lr_scheduler_type": "constant",
        "image_mask_ratio": 0.5,
    }
    full, part = tmp_path / "full", tmp_path / "part"
    pretrain.main(tiny_pretrain_args(text_tower, str(full), **common))
    pretrain.main(tiny_pretrain_args(text_tower, str(part), **dict(common, max_steps=resume_at)))
    checkpoint = part / f"checkpoint-{resume_at}"
    pretrain.main(tiny_pretrain_args(text_tower, str(part), **common, resume_from_checkpoint=str(checkpoint)))

    expected, got = step_losses(str(full / "trainer_state.json")), step_losses(str(part / "trainer_state.json"))
    assert sorted(expected) == sorted(got) == list(range(1, MAX_STEPS + 1))
    # Before the checkpoint: the resumed run's history is the checkpoint's, unchanged.
    assert {s: got[s] for s in got if s <= resume_at} == {s: expected[s] for s in expected if s <= resume_at}
    # After it: every step's total and per-objective losses are bit-identical to the uninterrupted run.
    mismatched = {s: (expected[s], got[s]) for s in expected if s > resume_at and expected[s] != got[s]}
    assert not mismatched, f"losses after resuming at step {resume_at} differ (uninterrupted, resumed): {mismatched}"
    for a, b in zip(_history(full / "trainer_state.json"), _history(part / "trainer_state.json")):
        assert {k: v for k, v in a.items() if k.endswith("_loss")} == {k: v for k, v in b.items() if k.endswith("_loss")}
    final_full, final_part = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert final_full.keys() == final_part.keys()
    different = [k for k in final_full if not torch.equal(final_full[k], final_part[k])]
    assert not different, f"final weights differ: {different[:5]}"
