"""ALBEF momentum distillation with a MoCo feature queue (`modeling_mm.losses.distilled_contrastive_loss`,
`training.momentum`): the loss against hand computations, the teacher's EMA, the alpha ramp, the queue ring, the
queue across gloo processes, MMTrainer runs, and exact resume of teacher and queue from a checkpoint."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState, TrainingArguments

from modeling_mm import MMForPreTraining
from modeling_mm.modeling_mm_pretraining import MMITCDistillation, MMITMNegatives
from modeling_mm.losses import contrastive_loss_and_logits, distilled_contrastive_loss
from tests.mm_tester import MMModelTester
from training.momentum import MOMENTUM_STATE_NAME, MomentumDistillation, MomentumDistillationCallback
from training.trainer import COMPLETE_MARKER, MMTrainer


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j targets_ij log softmax(logits)_ij, written out."""
    return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()


EMPTY = torch.zeros(0, 8)


# -- the loss ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ids", [None, torch.tensor([0, 1, 1, 2, 3])], ids=["distinct", "shared-ids"])
def test_alpha_0_empty_queue_and_teacher_equal_to_student_is_the_clip_loss(ids):
    images, texts, scale = _unit(5, 8, seed=0), _unit(5, 8, seed=1), torch.tensor(7.0)
    expected, expected_logits = contrastive_loss_and_logits(images, texts, scale, ids=ids)
    loss, logits = distilled_contrastive_loss(images, texts, images, texts, EMPTY, EMPTY, scale, 0.0, ids=ids)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits, expected_logits)


def test_alpha_1_targets_are_the_teachers_softmax_over_batch_and_queue():
    images, texts = _unit(4, 8, seed=0), _unit(4, 8, seed=1)
    teacher_images, teacher_texts = _unit(4, 8, seed=2), _unit(4, 8, seed=3)
    queue_images, queue_texts = _unit(3, 8, seed=4), _unit(3, 8, seed=5)
    scale = torch.tensor(5.0)
    loss, logits = distilled_contrastive_loss(
        images, texts, teacher_images, teacher_texts, queue_images, queue_texts, scale, 1.0
    )
    bank_texts, bank_images = torch.cat([teacher_texts, queue_texts]), torch.cat([teacher_images, queue_images])
    i2t = _soft_ce(scale * images @ bank_texts.t(), torch.softmax(scale * teacher_images @ bank_texts.t(), dim=1))
    t2i = _soft_ce(scale * texts @ bank_images.t(), torch.softmax(scale * teacher_texts @ bank_images.t(), dim=1))
    torch.testing.assert_close(loss, 0.5 * (i2t + t2i))
    # The logits reported (and mined for ITM) are the student's own, images against texts.
    torch.testing.assert_close(logits, scale * images @ texts.t())


def test_mixed_targets_with_same_id_queue_entries_as_positives():
    images, texts = _unit(3, 8, seed=0), _unit(3, 8, seed=1)
    teacher_images, teacher_texts = _unit(3, 8, seed=2), _unit(3, 8, seed=3)
    queue_images, queue_texts = _unit(2, 8, seed=4), _unit(2, 8, seed=5)
    ids, queue_ids = torch.tensor([10, 11, 12]), torch.tensor([11, 99])
    scale, alpha = torch.tensor(4.0), 0.3
    loss, _ = distilled_contrastive_loss(
        images, texts, teacher_images, teacher_texts, queue_images, queue_texts, scale, alpha, ids=ids,
        queue_ids=queue_ids,
    )
    # Row 1 (id 11) has two positives, its own pair and queue entry 0: half the hard target each.
    hard = torch.tensor([[1, 0, 0, 0, 0], [0, 0.5, 0, 0.5, 0], [0, 0, 1, 0, 0]])
    bank_texts, bank_images = torch.cat([teacher_texts, queue_texts]), torch.cat([teacher_images, queue_images])
    soft_i2t = torch.softmax(scale * teacher_images @ bank_texts.t(), dim=1)
    soft_t2i = torch.softmax(scale * teacher_texts @ bank_images.t(), dim=1)
    i2t = _soft_ce(scale * images @ bank_texts.t(), alpha * soft_i2t + (1 - alpha) * hard)
    t2i = _soft_ce(scale * texts @ bank_images.t(), alpha * soft_t2i + (1 - alpha) * hard)
    torch.testing.assert_close(loss, 0.5 * (i2t + t2i))
    # Without ids nothing in the queue is a positive: the loss changes.
    unmatched, _ = distilled_contrastive_loss(
        images, texts, teacher_images, teacher_texts, queue_images, queue_texts, scale, alpha
    )
    assert not torch.allclose(loss, unmatched)


def test_gradient_reaches_only_the_student():
    images, texts = _unit(3, 8, seed=0).requires_grad_(), _unit(3, 8, seed=1).requires_grad_()
    teacher_images, teacher_texts = _unit(3, 8, seed=2).requires_grad_(), _unit(3, 8, seed=3).requires_grad_()
    loss, _ = distilled_contrastive_loss(images, texts, teacher_images, teacher_texts, EMPTY, EMPTY,
                                         torch.tensor(3.0), 0.4)
    loss.backward()
    assert images.grad is not None and texts.grad is not None
    assert teacher_images.grad is None and teacher_texts.grad is None


def test_bad_alpha_raises():
    images = _unit(2, 8, seed=0)
    with pytest.raises(ValueError, match="alpha"):
        distilled_contrastive_loss(images, images, images, images, EMPTY, EMPTY, torch.tensor(1.0), 1.5)


# -- the teacher, the schedule and the queue ---------------------------------------------------------------------------


def _model(fusion: str = "hybrid", objectives=("itc", "itm"), **kwargs) -> MMForPreTraining:
    torch.manual_seed(0)
    return MMForPreTraining(MMModelTester().get_config(fusion, objectives=list(objectives), **kwargs))


def test_teacher_is_a_frozen_copy_of_towers_and_projections_only():
    model = _model()
    distillation = MomentumDistillation(model, queue_size=8)
    teacher = distillation.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.fusion_layers is None and getattr(teacher, "fusion_layer_norm", None) is None
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, model.mm.state_dict()[name])
        assert tensor.data_ptr() != model.mm.state_dict()[name].data_ptr()  # a copy, not the student's memory
    assert hasattr(model.mm, "fusion_layers") and model.mm.fusion_layers is not None  # the student keeps its own


def test_ema_update_is_momentum_times_teacher_plus_rest_times_student():
    model = _model()
    distillation = MomentumDistillation(model, momentum=0.9, queue_size=8)
    weight = model.mm.visual_projection.weight
    before = distillation.teacher.visual_projection.weight.clone()
    with torch.no_grad():
        weight.add_(1.0)
    distillation.update()
    expected = before.mul(0.9).add(weight.detach(), alpha=1 - 0.9)
    assert torch.equal(distillation.teacher.visual_projection.weight, expected)


def test_alpha_ramps_with_the_step_the_callback_reads_from_trainer_state():
    distillation = MomentumDistillation(_model(), alpha=0.4, warmup_steps=10, queue_size=8)
    callback = MomentumDistillationCallback(distillation)
    inputs = MMModelTester().get_inputs()
    for step, expected in ((0, 0.0), (5, 0.2), (10, 0.4), (25, 0.4)):
        callback.on_step_begin(None, TrainerState(global_step=step), TrainerControl())
        assert distillation.itc_distillation(inputs).alpha == pytest.approx(expected)
    assert MomentumDistillation(_model(), alpha=0.4, queue_size=8).alpha_at(0) == 0.4  # no warmup: constant


def test_queue_fills_then_wraps_and_never_hands_out_empty_slots():
    distillation = MomentumDistillation(_model(), queue_size=5)
    inputs = MMModelTester().get_inputs()
    assert distillation.itc_distillation(inputs).queue_image_embeds.shape == (0, 16)
    rows = [_unit(3, 16, seed=s) for s in range(3)]
    distillation.enqueue(rows[0], rows[0], torch.tensor([0, 1, 2]))
    handed = distillation.itc_distillation(inputs)
    assert handed.queue_image_embeds.shape == (3, 16) and handed.queue_ids.tolist() == [0, 1, 2]
    distillation.enqueue(rows[1], rows[1], torch.tensor([3, 4, 5]))  # fills 3, 4, then wraps to 0
    assert (distillation.pointer, distillation.filled) == (1, 5)
    assert distillation.queue_ids.tolist() == [5, 1, 2, 3, 4]
    assert torch.equal(distillation.queue_image[0], rows[1][2]) and torch.equal(distillation.queue_text[4], rows[1][1])
    distillation.enqueue(rows[2], rows[2])  # no image_ids: -1, never a positive of a real id
    assert distillation.queue_ids.tolist() == [5, -1, -1, -1, 4]
    assert distillation.itc_distillation(inputs).queue_image_embeds.shape == (5, 16)


@pytest.mark.parametrize(
    "kwargs, flag",
    [({"momentum": 1.0}, "--momentum"), ({"momentum": -0.1}, "--momentum"), ({"queue_size": 0}, "--queue_size"),
     ({"alpha": 2.0}, "--distillation_alpha"), ({"warmup_steps": -1}, "--distillation_warmup_steps")],
)
def test_bad_values_raise_naming_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        MomentumDistillation(_model(), **kwargs)


@pytest.mark.parametrize(
    "fusion, objectives, kwargs, message",
    [("hybrid", ("itc", "itm"), {"contrastive_loss": "sigmoid"}, "infonce"),
     ("hybrid", ("itm", "mlm"), {}, "'itc' objective"),
     ("early", ("itm", "mlm"), {}, "'itc' objective")],
)
def test_models_without_a_softmax_itc_are_refused(fusion, objectives, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MomentumDistillation(_model(fusion, objectives, **kwargs))


def test_the_model_refuses_distillation_with_the_sigmoid_loss():
    distillation = MomentumDistillation(_model(), queue_size=4)
    inputs = MMModelTester().get_inputs()
    sigmoid = _model(contrastive_loss="sigmoid")
    with pytest.raises(ValueError, match="infonce"):
        sigmoid(**inputs, itc_distillation=distillation.itc_distillation(inputs))


# -- ITM hard negatives from the queue ---------------------------------------------------------------------------------


def _queue_case(batch: int = 4, ids: torch.Tensor | None = None):
    """A hybrid ITC + ITM model in eval mode (the hardest negative is taken), a batch, and a queue of `batch` other
    pairs whose text features are the batch's image embeddings (and image features its text embeddings): queue entry
    i is the most similar candidate of image i and of text i."""
    model = _model().eval()
    tester = MMModelTester(batch_size=batch)
    inputs, others = tester.get_inputs(seed=1), tester.get_inputs(seed=2)
    with torch.no_grad():
        image = model.mm.embed_image(inputs["pixel_values"])
        text = model.mm.embed_text(inputs["input_ids"], inputs["attention_mask"])
    distillation = MMITCDistillation(
        momentum_image_embeds=image, momentum_text_embeds=text, queue_image_embeds=text, queue_text_embeds=image,
        alpha=0.4, queue_ids=ids, queue_input_ids=others["input_ids"], queue_attention_mask=others["attention_mask"],
        queue_pixel_values=others["pixel_values"],
    )
    return model, inputs, others, distillation


def _spy_on_mining(monkeypatch) -> list:
    import modeling_mm.modeling_mm_pretraining as pretraining

    picks, original = [], pretraining.sample_hard_negatives

    def spy(*args, **kwargs):
        picks.append(original(*args, **kwargs))
        return picks[-1]

    monkeypatch.setattr(pretraining, "sample_hard_negatives", spy)
    return picks


def test_queue_negatives_are_fused_like_the_same_partners_given_from_outside(monkeypatch):
    """Every image's hardest candidate is queue entry i (and every text's): the model picks them, encodes them with
    its towers and fuses them; the loss, ITM logits and gradients equal those of the same partners handed in as
    `MMITMNegatives`."""
    model, inputs, others, distillation = _queue_case()
    picks = _spy_on_mining(monkeypatch)
    out = model(**inputs, itc_distillation=distillation)
    batch = inputs["input_ids"].shape[0]
    assert [p.tolist() for p in picks[0]] == [list(range(batch, 2 * batch))] * 2  # [batch ; queue]: entry i
    grads = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)

    plain = MMITCDistillation(**{**distillation.__dict__, "queue_input_ids": None, "queue_attention_mask": None,
                                 "queue_pixel_values": None})
    given = MMITMNegatives(
        text_for_image=torch.arange(batch) + batch, image_for_text=torch.arange(batch) + batch,
        input_ids=others["input_ids"], attention_mask=others["attention_mask"], pixel_values=others["pixel_values"],
    )
    expected = model(**inputs, itc_distillation=plain, itm_negatives=given)
    torch.testing.assert_close(out.itm_logits, expected.itm_logits)
    torch.testing.assert_close(out.loss, expected.loss)
    expected_grads = torch.autograd.grad(expected.loss, list(model.parameters()), allow_unused=True)
    for (name, _), got, want in zip(model.named_parameters(), grads, expected_grads):
        assert (got is None) == (want is None), name
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    # The text tower receives gradient through the queue partners' rows too (they were encoded with gradient).
    assert grads[[n for n, _ in model.named_parameters()].index("mm.text_model.embeddings.word_embeddings.weight")] \
        is not None


def test_queue_entries_sharing_an_image_id_are_never_mined(monkeypatch):
    batch = 4
    ids = torch.arange(batch)
    model, inputs, _, distillation = _queue_case(batch, ids=ids)  # queue entry i has row i's id
    picks = _spy_on_mining(monkeypatch)
    model(**inputs, image_ids=ids, itc_distillation=distillation)
    for pick in picks[0]:
        assert (pick != torch.arange(batch) + batch).all() and (pick != torch.arange(batch)).all()
    # Without ids in the queue the same entries are the hardest negatives.
    picks.clear()
    distillation.queue_ids = torch.full((batch,), -1)
    model(**inputs, image_ids=ids, itc_distillation=distillation)
    assert picks[0][0].tolist() == list(range(batch, 2 * batch))


def test_picked_queue_entries_are_encoded_once_each():
    from modeling_mm.modeling_mm_pretraining import _remap_picks

    picked, index = _remap_picks(torch.tensor([0, 7, 5, 7, 2]), rows=4)
    assert picked.tolist() == [1, 3] and index.tolist() == [0, 5, 4, 5, 2]  # entries 1, 3 appended as rows 4, 5


def test_queue_inputs_are_checked():
    model, inputs, _, distillation = _queue_case()
    distillation.queue_pixel_values = None
    with pytest.raises(ValueError, match="queue_pixel_values"):
        model(**inputs, itc_distillation=distillation)
    model, inputs, _, distillation = _queue_case()
    distillation.queue_input_ids = distillation.queue_input_ids[:2]
    with pytest.raises(ValueError, match="queue holds 4 features"):
        model(**inputs, itc_distillation=distillation)
    with pytest.raises(ValueError, match="--queue_itm_negatives"):
        MomentumDistillation(_model("late", ("itc",)), queue_itm_negatives=True)


def test_the_queue_keeps_its_entries_inputs_padded_to_the_longest_text():
    distillation = MomentumDistillation(_model(), queue_size=5, queue_itm_negatives=True)
    tester = MMModelTester(batch_size=3)
    first, second = tester.get_inputs(seed=1), tester.get_inputs(seed=2)
    first = {**first, "input_ids": first["input_ids"][:, :4], "attention_mask": first["attention_mask"][:, :4]}
    for batch in (first, second):
        image, text = distillation.teacher_features(batch)
        distillation.enqueue(image, text, None, batch)
    handed = distillation.itc_distillation(first)
    assert handed.queue_pixel_values.shape == (5, *first["pixel_values"].shape[1:])
    assert handed.queue_input_ids.shape == (5, second["input_ids"].shape[1])
    # Slots 0-2: the first batch (padded with 0s), 3-4 then 0: the second batch, wrapped.
    assert torch.equal(handed.queue_input_ids[1, :4], first["input_ids"][1])
    assert handed.queue_attention_mask[1, 4:].sum() == 0
    assert torch.equal(handed.queue_input_ids[0], second["input_ids"][2])
    assert torch.equal(handed.queue_pixel_values[3], second["pixel_values"][0])
    with pytest.raises(ValueError, match="inputs"):
        distillation.enqueue(image, text)
    other_size = {**second, "pixel_values": torch.zeros(3, 3, 20, 20)}
    with pytest.raises(ValueError, match="one buffer"):
        distillation.enqueue(image, text, None, other_size)


# -- across processes --------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, tensors: dict, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    per = tensors["images"].shape[0] // world
    local = {k: v[rank * per : (rank + 1) * per] for k, v in tensors.items() if not k.startswith("queue")}
    loss, _ = distilled_contrastive_loss(
        local["images"], local["texts"], local["teacher_images"], local["teacher_texts"], tensors["queue_images"],
        tensors["queue_texts"], torch.tensor(4.0), 0.4, rank, world, ids=local["ids"], queue_ids=tensors["queue_ids"],
    )
    distillation = MomentumDistillation(_model(), queue_size=6, queue_itm_negatives=True)
    length = 5 if rank == 0 else 7  # each rank's collator pads to its own longest text
    batch = {"input_ids": local["input_ids"][:, :length], "attention_mask": local["attention_mask"][:, :length],
             "pixel_values": local["pixel_values"]}
    distillation.enqueue(local["teacher_images"], local["teacher_texts"], local["ids"], batch)
    torch.save({"loss": loss, "queue_image": distillation.queue_image, "queue_ids": distillation.queue_ids,
                "queue_input_ids": distillation.queue_input_ids, "queue_pixels": distillation.queue_pixel_values},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_processes_match_one_and_fill_the_queue_from_gathered_features(tmp_path):
    """2 gloo processes x batch 2: the mean of the ranks' losses is one process's loss over the batch of 4 (the bank
    holds every rank's teacher features), and both ranks' queues hold all 4 rows in rank order, with their inputs."""
    tensors = {
        "images": _unit(4, 16, seed=0), "texts": _unit(4, 16, seed=1), "teacher_images": _unit(4, 16, seed=2),
        "teacher_texts": _unit(4, 16, seed=3), "ids": torch.tensor([0, 1, 1, 2]), "queue_images": _unit(2, 16, seed=4),
        "queue_texts": _unit(2, 16, seed=5), "queue_ids": torch.tensor([2, 7]),
        **MMModelTester(batch_size=4).get_inputs(seed=6),
    }
    expected, _ = distilled_contrastive_loss(
        tensors["images"], tensors["texts"], tensors["teacher_images"], tensors["teacher_texts"],
        tensors["queue_images"], tensors["queue_texts"], torch.tensor(4.0), 0.4, ids=tensors["ids"],
        queue_ids=tensors["queue_ids"],
    )
    mp.spawn(_ddp_worker, args=(2, _free_port(), tensors, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    torch.testing.assert_close((results[0]["loss"] + results[1]["loss"]) / 2, expected)
    # The entries' inputs too: rank 0's texts padded from 5 to rank 1's 7 tokens.
    texts = tensors["input_ids"].clone()
    texts[:2, 5:] = 0
    for result in results:
        assert torch.equal(result["queue_image"][:4], tensors["teacher_images"])
        assert result["queue_ids"].tolist() == [0, 1, 1, 2, -1, -1]
        assert torch.equal(result["queue_input_ids"][:4], texts)
        assert torch.equal(result["queue_pixels"][:4], tensors["pixel_values"])


# -- with MMTrainer ----------------------------------------------------------------------------------------------------


class _Pairs(torch.utils.data.Dataset):
    """12 image-text pairs; pairs 2k and 2k+1 share an image id (two captions of one image)."""

    def __init__(self, size: int = 12):
        tester = MMModelTester(batch_size=size)
        self.rows = dict(tester.get_inputs(seed=1), image_ids=torch.arange(size) // 2)

    def __len__(self) -> int:
        return self.rows["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[i] for key, value in self.rows.items()}


class _RecordingTrainer(MMTrainer):
    """Keeps every training loss exactly (the logged ones are rounded) and the alpha each forward received."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses, self.alphas = [], []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self.losses.append(float((loss[0] if return_outputs else loss).detach()))
            self.alphas.append(self.momentum_distillation.alpha_at(self.momentum_distillation.step))
        return loss


def _train(output_dir, fusion: str = "hybrid", max_steps: int = 8, resume: str | None = None,
           queue_itm_negatives: bool = False, **kwargs):
    objectives = ("itc", "itm") if fusion == "hybrid" else ("itc",)
    model = _model(fusion, objectives, image_mask_ratio=0.5)  # FLIP masks and ITM draws: randomness to restore
    distillation = MomentumDistillation(model, momentum=0.9, queue_size=10, alpha=0.4, warmup_steps=4,
                                        queue_itm_negatives=queue_itm_negatives)
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=max_steps, logging_steps=1,
        learning_rate=1e-2, lr_scheduler_type="constant", report_to=[], save_strategy="steps", save_steps=4,
        use_cpu=True, remove_unused_columns=False, seed=0, disable_tqdm=True, **kwargs,
    )
    trainer = _RecordingTrainer(model=model, args=args, train_dataset=_Pairs(), momentum_distillation=distillation)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_trainer_trains_with_distillation_and_publishes_a_clean_model(fusion, tmp_path):
    trainer = _train(tmp_path / "run", fusion)
    distillation = trainer.momentum_distillation
    assert len(trainer.losses) == 8 and all(torch.isfinite(torch.tensor(trainer.losses)))
    # alpha ramps over the first 4 optimizer steps, from the step Trainer's state gives the callback.
    assert trainer.alphas == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4])
    # 8 batches of 4 through a queue of 10: full, and wrapped (32 mod 10).
    assert (distillation.filled, distillation.pointer) == (10, 2)
    assert set(distillation.queue_ids.tolist()) <= set(range(6))
    # The teacher moved (EMA of a training student) but lags behind it.
    student, teacher = trainer.model.mm.visual_projection.weight, distillation.teacher.visual_projection.weight
    assert not torch.equal(student, teacher)
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert all("itc_loss" in row for row in logged)

    checkpoint = tmp_path / "run" / "checkpoint-4"
    assert (checkpoint / MOMENTUM_STATE_NAME).is_file() and (checkpoint / COMPLETE_MARKER).is_file()
    saved = load_file(checkpoint / MOMENTUM_STATE_NAME)
    assert {"queue.image", "queue.text", "queue.ids", "queue.position"} <= set(saved)
    assert any(k.startswith("teacher.vision_model.") for k in saved)
    assert not any(k.startswith("teacher.fusion") for k in saved)
    assert not any("teacher" in k or "queue" in k for k in load_file(checkpoint / "model.safetensors"))

    final = tmp_path / "final"
    trainer.save_model(str(final))
    assert not (final / MOMENTUM_STATE_NAME).exists()
    weights = load_file(final / "model.safetensors")
    assert not any("teacher" in k or "queue" in k or "momentum" in k for k in weights)
    loaded, info = MMForPreTraining.from_pretrained(str(final), output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, trainer.model.state_dict()[name])


@pytest.mark.parametrize("queue_itm_negatives", [False, True], ids=["itc-queue", "itc-and-itm-queue"])
def test_resumed_run_is_bit_identical_to_the_uninterrupted_run(queue_itm_negatives, tmp_path):
    """8 steps uninterrupted vs resumed from its checkpoint-4 (in the second epoch of 3 steps, the queue wrapped,
    alpha still ramping): same losses, student, teacher and queue (with its entries' inputs), to the bit."""
    full = _train(tmp_path / "full", queue_itm_negatives=queue_itm_negatives)
    resumed = _train(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-4"),
                     queue_itm_negatives=queue_itm_negatives)
    assert resumed.losses == full.losses[4:]
    assert resumed.alphas == full.alphas[4:]
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    a, b = full.momentum_distillation.state_dict(), resumed.momentum_distillation.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"teacher / queue differ after resuming: {different[:5]}"


def test_training_mines_itm_negatives_from_the_queue(monkeypatch, tmp_path):
    import modeling_mm.modeling_mm_pretraining as pretraining

    picked, original = [], pretraining._remap_picks

    def spy(index, rows):
        picked.append(original(index, rows)[0].numel())
        return original(index, rows)

    monkeypatch.setattr(pretraining, "_remap_picks", spy)
    trainer = _train(tmp_path / "run", max_steps=4, queue_itm_negatives=True)
    distillation = trainer.momentum_distillation
    assert len(trainer.losses) == 4 and all(torch.isfinite(torch.tensor(trainer.losses)))
    # Step 1 mines from the batch alone (the queue is still empty); later steps fused queue entries too.
    assert len(picked) == 2 * 3 and sum(picked) > 0
    # 4 shuffled batches of 4 through 10 slots: every slot holds one dataset pair, its pixels, text and id together.
    rows = _Pairs().rows
    assert distillation.filled == 10
    for slot in range(10):
        match = [r for r in range(12) if torch.equal(distillation.queue_pixel_values[slot], rows["pixel_values"][r])]
        assert len(match) == 1, slot
        assert torch.equal(distillation.queue_input_ids[slot], rows["input_ids"][match[0]])
        assert distillation.queue_ids[slot] == rows["image_ids"][match[0]]
    saved = load_file(tmp_path / "run" / "checkpoint-4" / MOMENTUM_STATE_NAME)
    assert {"queue.input_ids", "queue.attention_mask", "queue.pixel_values"} <= set(saved)
    # A run without the flag cannot resume into one that needs the entries' inputs.
    _train(tmp_path / "plain", max_steps=4)
    with pytest.raises(ValueError, match="--queue_itm_negatives"):
        MomentumDistillation(_model(), queue_size=10, queue_itm_negatives=True).load(
            str(tmp_path / "plain" / "checkpoint-4"))


def test_resume_checks_the_queue_size(tmp_path):
    _train(tmp_path / "run", "late", max_steps=4)
    distillation = MomentumDistillation(_model("late", ("itc",)), queue_size=7)
    with pytest.raises(ValueError, match="--queue_size"):
        distillation.load(str(tmp_path / "run" / "checkpoint-4"))


def test_trainer_refuses_gradient_cached_itc(tmp_path):
    model = _model("late", ("itc",))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                             remove_unused_columns=False)
    with pytest.raises(ValueError, match="itc_accumulation_steps"):
        MMTrainer(model=model, args=args, train_dataset=_Pairs(), itc_accumulation_steps=2,
                  momentum_distillation=MomentumDistillation(model, queue_size=8))


def test_pretrain_script_resumes_distillation_exactly(tmp_path):
    """`mm pretrain --momentum_distillation` (hybrid ITC + ITM + MLM, FLIP, BERT masking in the collator): resumed
    from checkpoint-3 of a 6-step run, it logs the same losses and ends with the same weights."""
    from tests.pretrain_tester import save_tiny_text_tower, step_losses, tiny_pretrain_args

    from run_scripts import pretrain

    tower = save_tiny_text_tower(str(tmp_path / "tower"))
    common = dict(max_steps=6, save_steps=3, lr_scheduler_type="constant", image_mask_ratio=0.5,
                  momentum_distillation="true", queue_size=20, distillation_warmup_steps=2)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    pretrain.main(tiny_pretrain_args(tower, str(full), **common))
    assert (full / "checkpoint-3" / MOMENTUM_STATE_NAME).is_file()
    pretrain.main(tiny_pretrain_args(tower, str(resumed), **common, resume_from_checkpoint=str(full / "checkpoint-3")))
    expected, got = step_losses(str(full / "trainer_state.json")), step_losses(str(resumed / "trainer_state.json"))
    assert got == expected and sorted(got) == list(range(1, 7))
    final_full, final_resumed = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert final_full.keys() == final_resumed.keys()
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)
    assert not (full / MOMENTUM_STATE_NAME).exists()


# -- under DDP (torchrun, 2 gloo processes) ----------------------------------------------------------------------------

GLOBAL_BATCH, DDP_STEPS = 8, 4


def _ddp_run(out: str) -> None:
    """Late-fusion ITC with distillation, global batch 8 (sequential, no FLIP: nothing random differs by world size);
    every rank saves its teacher and queue, rank 0 its exact losses."""
    import json

    from training.trainer import _use_cpu_processes_under_launcher

    _use_cpu_processes_under_launcher()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    model = _model("late", ("itc",))
    distillation = MomentumDistillation(model, momentum=0.9, queue_size=12, alpha=0.4, warmup_steps=2)
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=GLOBAL_BATCH // world, max_steps=DDP_STEPS, learning_rate=1e-2,
        lr_scheduler_type="constant", logging_steps=1, save_strategy="no", train_sampling_strategy="sequential",
        remove_unused_columns=False, label_names=[], report_to="none", ddp_backend="gloo" if world > 1 else None,
        disable_tqdm=True, dataloader_pin_memory=False, seed=0,
    )
    trainer = MMTrainer(model=model, args=args, train_dataset=_Pairs(16), momentum_distillation=distillation)
    trainer.train()
    distillation.save(os.path.join(out, f"rank{args.process_index}"))
    if trainer.is_world_process_zero():
        with open(os.path.join(out, "losses.json"), "w") as f:
            json.dump([row["itc_loss"] for row in trainer.state.log_history if "itc_loss" in row], f)


def test_ddp_fills_every_ranks_queue_from_the_global_batch_like_one_process(tmp_path):
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _ddp_run(str(tmp_path / "single"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONPATH=root)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), os.path.abspath(__file__), str(tmp_path / "ddp")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    with open(tmp_path / "single" / "losses.json") as f, open(tmp_path / "ddp" / "losses.json") as g:
        assert json.load(g) == pytest.approx(json.load(f), rel=2e-4, abs=2e-4)
    single = load_file(tmp_path / "single" / "rank0" / MOMENTUM_STATE_NAME)
    ranks = [load_file(tmp_path / "ddp" / f"rank{r}" / MOMENTUM_STATE_NAME) for r in range(2)]
    # Both ranks hold one queue (4 steps x 8 gathered rows through 12 slots: wrapped), in the one-process order.
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert ranks[0]["queue.position"].tolist() == single["queue.position"].tolist() == [8, 12]
    assert torch.equal(ranks[0]["queue.ids"], single["queue.ids"])
    for key in single:  # DDP's gradient reduction rounds differently: the students (so the teachers) drift by ~1e-5
        torch.testing.assert_close(ranks[0][key], single[key], rtol=1e-3, atol=1e-4)


if __name__ == "__main__":  # the torchrun worker of the DDP test
    import sys

    _ddp_run(sys.argv[1])
