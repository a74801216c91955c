"""The sigmoid (SigLIP) ITC loss: its definition, its ring across gloo processes (same loss and gradients as one process
holding the global batch), and the model and Trainer plumbing around it (the learned bias, the initial temperature,
no weight decay on either)."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_mm import MMConfig, MMForPreTraining, MMModel
from modeling_mm.losses import contrastive_loss_and_logits, sigmoid_loss, sigmoid_loss_and_logits
from tests.mm_tester import MMModelTester


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _naive_sigmoid_loss(images, texts, scale, bias, ids):
    """The SigLIP loss written pair by pair, as the paper's equation 1."""
    total = 0.0
    for i in range(images.shape[0]):
        for j in range(texts.shape[0]):
            z = 1.0 if ids[i] == ids[j] else -1.0
            total = total - torch.nn.functional.logsigmoid(z * (scale * images[i] @ texts[j] + bias))
    return total / images.shape[0]


def test_sigmoid_loss_is_the_papers_pairwise_sum_with_shared_ids_as_positives():
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=-1)
    ids = torch.tensor([0, 1, 1, 2, 3, 3])
    scale, bias = torch.tensor(10.0), torch.tensor(-3.0)
    loss, logits = sigmoid_loss_and_logits(images, texts, scale, bias, ids=ids)
    torch.testing.assert_close(loss, _naive_sigmoid_loss(images, texts, scale, bias, ids))
    torch.testing.assert_close(logits, scale * images @ texts.t() + bias)
    # Without ids only the diagonal is positive: the same as distinct ids.
    torch.testing.assert_close(sigmoid_loss(images, texts, scale, bias), sigmoid_loss(images, texts, scale, bias,
                                                                                        ids=torch.arange(6)))
    with pytest.raises(ValueError, match="paired embeddings"):
        sigmoid_loss(images, texts[:5], scale, bias)


def _encoders() -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Parameter, torch.nn.Parameter]:
    torch.manual_seed(0)
    return torch.nn.Linear(12, 6), torch.nn.Linear(10, 6), torch.nn.Parameter(torch.tensor(2.0)), \
        torch.nn.Parameter(torch.tensor(-4.0))


def _loss(parts, images, texts, ids, rank, world):
    image_enc, text_enc, log_scale, bias = parts
    image_embeds = torch.nn.functional.normalize(image_enc(images), dim=-1)
    text_embeds = torch.nn.functional.normalize(text_enc(texts), dim=-1)
    return sigmoid_loss(image_embeds, text_embeds, log_scale.exp(), bias, rank, world, ids=ids)


def _parameters(parts):
    image_enc, text_enc, log_scale, bias = parts
    return [*image_enc.parameters(), *text_enc.parameters(), log_scale, bias]


def _worker(rank: int, world: int, port: int, images, texts, ids, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    parts = _encoders()
    per = images.shape[0] // world
    local = slice(rank * per, (rank + 1) * per)
    loss = _loss(parts, images[local], texts[local], ids[local], rank, world)
    loss.backward()
    grads = [p.grad.clone() for p in _parameters(parts)]
    for grad in grads:  # what DDP does: average the gradients over ranks
        dist.all_reduce(grad)
        grad /= world
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    torch.save({"loss": mean_loss / world, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_ring_across_processes_matches_one_process(tmp_path, world):
    """2 processes x batch 4 (one shift around the ring) and 4 x 2 (one two-way exchange, then a shift) give the loss
    and the gradients, of the encoders, the temperature and the bias, of 1 process x batch 8. Ids shared across
    ranks are positives wherever they sit."""
    g = torch.Generator().manual_seed(0)
    images, texts = torch.randn(8, 12, generator=g), torch.randn(8, 10, generator=g)
    ids = torch.tensor([0, 1, 2, 3, 1, 5, 6, 0])  # 0 and 1 repeat on another rank
    parts = _encoders()
    loss = _loss(parts, images, texts, ids, 0, 1)
    loss.backward()
    reference = [p.grad for p in _parameters(parts)]
    mp.spawn(_worker, args=(world, _free_port(), images, texts, ids, str(tmp_path)), nprocs=world, join=True)
    for rank in range(world):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["loss"], loss.detach(), atol=1e-6, rtol=1e-6)
        for got, want in zip(result["grads"], reference):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_config_picks_each_losses_initial_temperature_and_bias():
    infonce, sigmoid = MMConfig(), MMConfig(contrastive_loss="sigmoid")
    assert infonce.logit_scale_init_value == pytest.approx(math.log(1 / 0.07), abs=1e-4)
    assert infonce.logit_bias_init_value is None
    assert sigmoid.logit_scale_init_value == pytest.approx(math.log(10), abs=1e-4)
    assert sigmoid.logit_bias_init_value == -10.0
    explicit = MMConfig(contrastive_loss="sigmoid", logit_scale_init_value=1.0, logit_bias_init_value=-2.0)
    assert (explicit.logit_scale_init_value, explicit.logit_bias_init_value) == (1.0, -2.0)
    reloaded = MMConfig.from_dict(sigmoid.to_dict())
    assert (reloaded.contrastive_loss, reloaded.logit_bias_init_value) == ("sigmoid", -10.0)
    with pytest.raises(ValueError, match="contrastive_loss must be one of"):
        MMConfig(contrastive_loss="triplet")
    with pytest.raises(ValueError, match="fusion='early' has no ITC"):
        MMConfig(fusion="early", contrastive_loss="sigmoid")


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_sigmoid_pretraining_learns_its_bias_and_reports_sigmoid_logits(fusion, tmp_path):
    tester = MMModelTester()
    config = tester.get_config(fusion, objectives=["itc"], contrastive_loss="sigmoid")
    model = MMForPreTraining(config)
    assert model.mm.logit_bias.item() == -10.0
    assert model.mm.clamped_logit_scale().item() == pytest.approx(10.0, rel=1e-4)
    inputs = tester.get_inputs()
    image_ids = torch.arange(inputs["input_ids"].shape[0])
    out = model(**inputs, image_ids=image_ids)
    expected = sigmoid_loss(out.image_embeds, out.text_embeds, model.mm.clamped_logit_scale(), model.mm.logit_bias,
                            ids=image_ids)
    torch.testing.assert_close(out.itc_loss, expected)
    torch.testing.assert_close(out.logits_per_image, model.mm.similarity(out.image_embeds, out.text_embeds))
    out.loss.backward()
    assert model.mm.logit_bias.grad is not None and model.mm.logit_bias.grad.abs() > 0
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        model.mm.logit_bias.fill_(-3.5)
    model.save_pretrained(tmp_path)
    loaded = MMModel.from_pretrained(tmp_path)
    assert loaded.logit_bias.item() == -3.5
    # MMModel's logits carry the bias too, so sigmoid(logits) is the match probability.
    loaded.eval()
    with torch.no_grad():
        mm_out = loaded(**inputs, return_loss=True)
    torch.testing.assert_close(mm_out.logits_per_image, loaded.similarity(mm_out.image_embeds, mm_out.text_embeds))
    assert (mm_out.logits_per_image < 0).all()  # a -3.5 bias with cosines times 10 near 0


def test_infonce_models_have_no_bias_and_keep_the_clip_loss():
    tester = MMModelTester()
    model = MMForPreTraining(tester.get_config("late", objectives=["itc"]))
    assert model.mm.logit_bias is None
    out = model(**tester.get_inputs())
    expected = contrastive_loss_and_logits(out.image_embeds, out.text_embeds, model.mm.clamped_logit_scale())[0]
    torch.testing.assert_close(out.itc_loss, expected)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, tester: MMModelTester):
        self.rows = dict(tester.get_inputs(seed=1), image_ids=torch.arange(tester.batch_size))

    def __len__(self) -> int:
        return self.rows["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[i] for key, value in self.rows.items()}


def test_trainer_never_decays_the_temperature_or_bias_and_logs_both(tmp_path):
    from transformers import TrainingArguments

    from training.trainer import MMTrainer

    tester = MMModelTester(batch_size=4)
    model = MMForPreTraining(tester.get_config("late", objectives=["itc"], contrastive_loss="sigmoid"))
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, logging_steps=1, weight_decay=0.1,
        learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, remove_unused_columns=False,
    )
    trainer = MMTrainer(model=model, args=args, train_dataset=_Pairs(tester))
    optimizer = trainer.create_optimizer()
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay_of[id(model.mm.logit_scale)] == 0.0
    assert decay_of[id(model.mm.logit_bias)] == 0.0
    assert decay_of[id(model.mm.visual_projection.weight)] == 0.1
    trainer.train()
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert len(logged) == 2
    for row in logged:
        assert {"itc_loss", "logit_scale", "logit_bias"} <= set(row)
    # The values logged are the parameters' own (the scale as the loss sees it: exponentiated).
    assert logged[-1]["logit_bias"] == pytest.approx(model.mm.logit_bias.item(), abs=1e-4)
    assert logged[-1]["logit_scale"] == pytest.approx(model.mm.clamped_logit_scale().item(), rel=1e-3)
    assert logged[0]["logit_bias"] != -10.0  # it trains
