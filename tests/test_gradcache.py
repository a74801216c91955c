"""Gradient-cached ITC (`training.gradcache`, `MMTrainer(itc_accumulation_steps=k)`): k micro-batches of b give the loss
and every parameter gradient of one batch of k·b; the RNG replay makes dropout and FLIP masks match; through Trainer,
the parameters after two optimizer steps match a plain run, with and without Trainer's gradient accumulation, and
under DDP (2 gloo processes by torchrun) they match one process.

The file is also the DDP worker (`python tests/test_gradcache.py OUT_DIR`)."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import TrainingArguments

from modeling_mm import MMForPreTraining
from modeling_mm.modeling_mm_pretraining import random_keep_indices
from tests.mm_tester import MMModelTester
from training import gradcache
from training.gradcache import gradcache_backward, split_micro_batches
from training.trainer import MMTrainer


BATCH, STEPS = 8, 4  # k = 4 micro-batches of b = 2


def _model(fusion: str, objectives: list[str], dropout: float = 0.0, **kwargs) -> MMForPreTraining:
    config = MMModelTester().get_config(fusion, objectives=objectives, **kwargs)
    for sub in (config.vision_config, config.text_config):
        sub.hidden_dropout_prob = sub.attention_probs_dropout_prob = dropout
    torch.manual_seed(0)
    return MMForPreTraining(config).train()


def _inputs(model: MMForPreTraining, seed: int = 3) -> dict[str, torch.Tensor]:
    inputs = MMModelTester(batch_size=BATCH).get_pretraining_inputs(seed=seed)
    inputs["image_ids"][5] = inputs["image_ids"][1]  # a duplicate image across micro-batches: positives of each other
    if model.config.image_mask_ratio > 0:
        # The same FLIP masks for the one-batch reference and for the micro-batches.
        patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
        g = torch.Generator().manual_seed(seed)
        inputs["image_keep_indices"] = random_keep_indices(BATCH, patches, model.config.image_mask_ratio, "cpu", g)
    return inputs


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _assert_same_grads(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    """Equal within `atol` times each tensor's scale (its largest entry, at least 1)."""
    assert got.keys() == want.keys()
    for name in want:
        scale = max(1.0, float(want[name].abs().max()))
        torch.testing.assert_close(got[name], want[name], atol=atol * scale, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize(
    "fusion, objectives, kwargs",
    [
        ("late", ["itc"], {"image_mask_ratio": 0.5}),
        ("late", ["itc", "lm"], {"contrastive_loss": "sigmoid"}),
        ("hybrid", ["itc", "mlm"], {"image_mask_ratio": 0.5}),
        ("hybrid", ["itc", "mlm"], {"contrastive_loss": "sigmoid"}),
        # The fused token losses return no logits: the items they average over are counted from the inputs.
        ("hybrid", ["itc", "mlm", "lm"], {"loss_chunk_size": 3}),
    ],
)
def test_gradcache_step_equals_one_batch_of_kb(fusion, objectives, kwargs):
    """In float64 the gradients are one batch's to 1e-9 (the algebra is exact; the token losses stay float32, as
    `token_cross_entropy` computes them, hence 1e-6 on the losses). In float32 loss and gradients are within 1e-5 of
    that one-batch step; a float32 batch of 8 is itself ~2e-5 from it for the sigmoid loss, so float32 against
    float32 would measure rounding, not the method."""
    model = _model(fusion, objectives, **kwargs).double()
    inputs = _inputs(model)
    inputs["pixel_values"] = inputs["pixel_values"].double()
    reference = model(**inputs)
    reference.loss.backward()
    want = _grads(model)
    for dtype, atol, loss_atol in ((torch.float64, 1e-9, 1e-6), (torch.float32, 1e-5, 1e-5)):
        model.to(dtype)
        out = gradcache_backward(model, dict(inputs, pixel_values=inputs["pixel_values"].to(dtype)), STEPS)
        got = {name: grad.double() for name, grad in _grads(model).items()}
        for key in ("loss", "itc_loss", "mlm_loss", "lm_loss"):
            if key in reference:
                torch.testing.assert_close(out[key].double(), reference[key].detach().double(), atol=loss_atol, rtol=0)
        _assert_same_grads(got, want, atol)
    assert "mm.logit_scale" in got and (kwargs.get("contrastive_loss") != "sigmoid" or "mm.logit_bias" in got)


@pytest.mark.parametrize("fusion", ["hybrid", "coattention"])
def test_itm_hard_negatives_are_mined_over_all_kb_rows(fusion):
    """ITM's negatives come from the k·b similarity and partners in other micro-batches are encoded where they are
    needed: in eval mode (the hardest negative, no sampling) loss and gradients are one k·b batch's, with the
    duplicate image of rows 1 and 5 (different micro-batches) never a negative of either."""
    model = _model(fusion, ["itc", "itm", "mlm"]).double().eval()
    inputs = _inputs(model)
    inputs["pixel_values"] = inputs["pixel_values"].double()
    reference = model(**inputs)
    reference.loss.backward()
    want = _grads(model)
    out = gradcache_backward(model, inputs, STEPS)
    for key in ("loss", "itc_loss", "itm_loss", "mlm_loss"):
        torch.testing.assert_close(out[key].double(), reference[key].detach().double(), atol=1e-6, rtol=0)
    _assert_same_grads(_grads(model), want, 1e-9)


def test_itm_partners_from_other_micro_batches_are_used_in_training(monkeypatch):
    """In training the negatives are sampled over k·b: with micro-batches of 2 most partners live elsewhere, and they
    reach the model as partner rows; the ITM head trains."""
    model = _model("hybrid", ["itc", "itm", "mlm"])
    inputs = _inputs(model)
    seen = []
    build = gradcache._micro_batch_negatives

    def spy(*args):
        negatives = build(*args)
        seen.append(negatives.input_ids.shape[0] + negatives.pixel_values.shape[0])
        return negatives

    monkeypatch.setattr(gradcache, "_micro_batch_negatives", spy)
    torch.manual_seed(0)
    out = gradcache_backward(model, inputs, STEPS)
    assert len(seen) == STEPS and sum(seen) > 0
    assert torch.isfinite(out.itm_loss) and out.itm_loss > 0
    assert model.itm_head.weight.grad.abs().sum() > 0


def _naive_accumulation(model: MMForPreTraining, inputs: dict, steps: int) -> torch.Tensor:
    """What gradient caching computes, with every micro-batch's graph held at once: the micro-batches run one after
    the other from the same RNG stream, then one loss over all their embeddings."""
    outs = [model(**micro) for micro in split_micro_batches(inputs, steps)]
    itc, _ = model.mm.itc_loss_and_logits(
        torch.cat([o.image_embeds for o in outs]), torch.cat([o.text_embeds for o in outs]), inputs["image_ids"]
    )
    masked = [o.mlm_logits.shape[0] for o in outs]
    mlm = sum(n / sum(masked) * o.mlm_loss for n, o in zip(masked, outs))
    loss = model.config.itc_weight * itc + model.config.mlm_weight * mlm
    loss.backward()
    return loss.detach()


def test_rng_replay_reproduces_dropout_and_flip_masks(monkeypatch):
    """With dropout and FLIP masks drawn by the model, pass 2 must redraw pass 1's: then the step equals the naive
    accumulation that keeps every graph (same RNG stream), and leaves the RNG where that one leaves it."""
    model = _model("hybrid", ["itc", "mlm"], dropout=0.1, image_mask_ratio=0.5)
    inputs = _inputs(model)
    inputs.pop("image_keep_indices")  # drawn by the model, from the global RNG
    torch.manual_seed(7)
    want_loss = _naive_accumulation(model, inputs, STEPS)
    want, want_rng = _grads(model), torch.get_rng_state()
    torch.manual_seed(7)
    out = gradcache_backward(model, inputs, STEPS)
    torch.testing.assert_close(out.loss, want_loss, atol=1e-5, rtol=1e-5)
    _assert_same_grads(_grads(model), want)
    assert torch.equal(torch.get_rng_state(), want_rng)
    # The randomness is real: without the replay the gradients are not those of the k·b batch.
    monkeypatch.setattr(gradcache.RNGState, "restore", lambda self: None)
    torch.manual_seed(7)
    gradcache_backward(model, inputs, STEPS)
    unreplayed = _grads(model)
    assert max((unreplayed[n] - want[n]).abs().max() for n in want) > 1e-3


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, size: int = 16):
        self.rows = MMModelTester(batch_size=size).get_pretraining_inputs(seed=1)

    def __len__(self) -> int:
        return self.rows["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[i] for key, value in self.rows.items()}


def _train(tmp_path, batch: int, accumulation: int = 1, itc_steps: int = 1) -> tuple[dict, list[dict]]:
    model = _model("hybrid", ["itc", "mlm"])
    args = TrainingArguments(
        output_dir=str(tmp_path / f"b{batch}-ga{accumulation}-k{itc_steps}"), per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, max_steps=2, logging_steps=1, optim="sgd", learning_rate=0.5,
        report_to=[], save_strategy="no", use_cpu=True, remove_unused_columns=False,
    )
    trainer = MMTrainer(model=model, args=args, train_dataset=_Pairs(), itc_accumulation_steps=itc_steps)
    trainer.train()
    logged = [row for row in trainer.state.log_history if "loss" in row and "itc_loss" in row]
    return {name: p.detach().clone() for name, p in model.named_parameters()}, logged


def _assert_same_parameters(got: dict, want: dict) -> None:
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_trainer_itc_accumulation_matches_plain_batch_and_composes_with_gradient_accumulation(tmp_path, monkeypatch):
    """k=2 on batches of 8 trains as plain batches of 8 (same parameters after two SGD steps, same logged losses).
    Trainer's gradient_accumulation_steps=2 then accumulates two such batches, each with its own 8 negatives: it
    matches plain batch 8 with GA 2, not one batch of 16 (whose ITC would pool 16 negatives)."""
    calls = []
    spy = lambda *args, **kwargs: calls.append(args[2]) or gradcache_backward(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(gradcache, "gradcache_backward", spy)
    plain, plain_logs = _train(tmp_path, 8)
    assert calls == []
    cached, cached_logs = _train(tmp_path, 8, itc_steps=2)
    assert calls == [2, 2]  # one gradient-cached step of k=2 per Trainer batch
    _assert_same_parameters(cached, plain)
    assert len(cached_logs) == len(plain_logs) == 2
    for got, want in zip(cached_logs, plain_logs):
        for key in ("loss", "itc_loss", "mlm_loss"):
            assert got[key] == pytest.approx(want[key], abs=1e-4)
    plain_ga, _ = _train(tmp_path, 8, accumulation=2)
    cached_ga, _ = _train(tmp_path, 8, accumulation=2, itc_steps=2)
    _assert_same_parameters(cached_ga, plain_ga)
    pooled, _ = _train(tmp_path, 16)
    assert max((pooled[n] - cached_ga[n]).abs().max() for n in pooled) > 1e-4


def test_bad_itc_accumulation_steps_are_refused_naming_the_flag_and_sizes(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=6, report_to=[], use_cpu=True)
    model = _model("hybrid", ["itc", "mlm"])
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match=r"itc_accumulation_steps must be an integer >= 1"):
            MMTrainer(model=model, args=args, itc_accumulation_steps=bad)
    with pytest.raises(ValueError, match=r"itc_accumulation_steps=4 must divide the per-device train batch size \(6\)"):
        MMTrainer(model=model, args=args, itc_accumulation_steps=4)
    early = _model("early", ["itm", "mlm"])
    with pytest.raises(ValueError, match=r"itc_accumulation_steps=2 caches ITC embeddings.*no 'itc'"):
        MMTrainer(model=early, args=args, itc_accumulation_steps=2)
    MMTrainer(model=model, args=args, itc_accumulation_steps=3)  # 3 divides 6


def test_pretrain_cli_passes_the_flag_to_the_trainer(tmp_path, monkeypatch):
    from run_scripts.pretrain import main
    from tests.pretrain_tester import save_tiny_text_tower, tiny_pretrain_args

    calls = []
    spy = lambda *args, **kwargs: calls.append(args[2]) or gradcache_backward(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(gradcache, "gradcache_backward", spy)
    tower = save_tiny_text_tower(str(tmp_path / "tower"))
    args = tiny_pretrain_args(tower, str(tmp_path / "run"), objectives=["itc", "mlm"], max_steps=2, save_steps=2,
                              max_train_samples=16, itc_accumulation_steps=4)
    summary = main(args)
    assert calls == [4, 4]
    assert {"loss", "itc_loss", "mlm_loss"} <= set(summary["final_losses"])
    with pytest.raises(ValueError, match=r"itc_accumulation_steps=3 must divide the per-device train batch size \(8\)"):
        main(tiny_pretrain_args(tower, str(tmp_path / "bad"), max_steps=1, itc_accumulation_steps=3))


# ----------------------------------------------------------------------------------------------------------------------
# DDP: 2 gloo processes x 4 rows, k = 2, against one process with plain batches of 8
# ----------------------------------------------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ddp_run(out: str, itc_steps: int) -> None:
    from tests.test_distributed import _PairData, _tiny_pretraining_model
    from training.trainer import _use_cpu_processes_under_launcher

    _use_cpu_processes_under_launcher()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=8 // world, max_steps=2, optim="sgd", learning_rate=0.5,
        lr_scheduler_type="constant", logging_steps=1, save_strategy="no", train_sampling_strategy="sequential",
        remove_unused_columns=False, label_names=[], report_to="none", ddp_backend="gloo" if world > 1 else None,
        disable_tqdm=True, dataloader_pin_memory=False, seed=0, use_cpu=True,
    )
    model = _tiny_pretraining_model()  # hybrid itc + mlm + lm; equal token counts per row
    trainer = MMTrainer(model=model, args=args, train_dataset=_PairData(size=16), itc_accumulation_steps=itc_steps)
    trainer.train()
    assert trainer.accelerator.distributed_type.value == ("MULTI_CPU" if world > 1 else "NO")
    state = {name: p.detach().clone() for name, p in model.named_parameters()}
    torch.save(state, os.path.join(out, f"params{trainer.args.process_index}.pt"))


@pytest.mark.slow
def test_ddp_gradcache_matches_one_process_plain_batch(tmp_path):
    """Each rank's cached ITC loss gathers the other rank's embeddings; gradients are averaged once per step: the
    parameters of both ranks after two steps equal one process training on the same batches of 8."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               os.path.abspath(__file__), str(ddp)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _ddp_run(str(tmp_path / "one"), itc_steps=1)
    want = torch.load(tmp_path / "one" / "params0.pt", weights_only=True)
    for rank in range(2):
        _assert_same_parameters(torch.load(ddp / f"params{rank}.pt", weights_only=True), want)


if __name__ == "__main__":
    _ddp_run(sys.argv[1], itc_steps=2)
