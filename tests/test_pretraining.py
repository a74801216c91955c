"""MMForPreTraining: objectives, hard negatives, FLIP, distributed ITC equivalence, Trainer steps."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_mm import MMForPreTraining
from modeling_mm.losses import contrastive_loss, sample_hard_negatives
from mm_tester import MMModelTester


tester = MMModelTester(batch_size=4)

OBJECTIVES = {"early": ["itm", "mlm"], "late": ["itc", "lm"], "hybrid": ["itc", "itm", "mlm", "lm"]}


@pytest.mark.parametrize("fusion", ["early", "late", "hybrid"])
def test_each_objective_is_finite_and_falls_when_overfitting(fusion):
    config = tester.get_config(fusion, objectives=OBJECTIVES[fusion])
    # A wider init than BERT's 0.02 (see test_heads.TRAIN_INIT): at 0.02 the [CLS] states of random texts are nearly
    # identical, and ITC/ITM need hundreds of steps before they move.
    for sub_config in (config, config.vision_config, config.text_config):
        sub_config.initializer_range = 0.2
    torch.manual_seed(0)
    model = MMForPreTraining(config).train()
    inputs = tester.get_pretraining_inputs()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(30):
        out = model(**inputs)
        history.append({name: float(getattr(out, f"{name}_loss").detach()) for name in OBJECTIVES[fusion]})
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name in OBJECTIVES[fusion]:
        assert all(torch.isfinite(torch.tensor(h[name])) for h in history), name
        first = sum(h[name] for h in history[:3]) / 3
        last = sum(h[name] for h in history[-3:]) / 3
        # ITM sees freshly drawn negatives every step, so it falls more slowly than the memorisable objectives.
        factor = 0.95 if name == "itm" else 0.7
        assert last < factor * first, f"{name} did not fall: {first:.3f} -> {last:.3f}"


def test_total_loss_is_the_weighted_sum():
    torch.manual_seed(0)
    config = tester.get_config("hybrid", itc_weight=0.5, itm_weight=2.0, mlm_weight=0.0, lm_weight=1.0)
    model = MMForPreTraining(config).eval()
    torch.manual_seed(1)
    out = model(**tester.get_pretraining_inputs())
    expected = 0.5 * out.itc_loss + 2.0 * out.itm_loss + 0.0 * out.mlm_loss + 1.0 * out.lm_loss
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("objectives", [["itc", "itm", "mlm"], ["itm"], ["mlm"]])
def test_hybrid_objectives_match_separate_full_passes(objectives):
    """The hybrid step shares passes (one text-tower call over [clean ; masked], one fusion call over ITM and MLM
    pairs) and computes the last fusion layer only at [CLS] / the masked tokens. Every output must equal the plain
    computation: separate passes, full fusion, heads read afterwards."""
    torch.manual_seed(0)
    model = MMForPreTraining(tester.get_config("hybrid", objectives=objectives)).eval()
    inputs = tester.get_pretraining_inputs()
    inputs["attention_mask"][1, -2:] = 0  # padding in the fused rows
    inputs["mlm_labels"][1, -2:] = -100
    torch.manual_seed(5)
    out = model(**inputs)

    mm, mask = model.mm, inputs["attention_mask"]
    with torch.no_grad():
        image = mm.encode_image(inputs["pixel_values"])
        rows = torch.arange(tester.batch_size)
        if "itm" in objectives:
            text = mm.encode_text(inputs["input_ids"], mask)
            similarity = mm.clamped_logit_scale() * (
                torch.nn.functional.normalize(mm.visual_projection(image.pooler_output), dim=-1)
                @ torch.nn.functional.normalize(mm.text_projection(text.pooler_output), dim=-1).t()
            )
            # In eval mode the hardest negatives are taken, not drawn.
            neg_text, neg_image = sample_hard_negatives(similarity, inputs["image_ids"], sample=False)
            image_idx = torch.cat([rows, rows[neg_text >= 0], neg_image[neg_image >= 0]])
            text_idx = torch.cat([rows, neg_text[neg_text >= 0], rows[neg_image >= 0]])
            fused = mm.fuse(
                text.last_hidden_state[text_idx], mask[text_idx], image.last_hidden_state, image_index=image_idx
            ).last_hidden_state
            torch.testing.assert_close(out.itm_logits, model.itm_head(fused[:, 0]), atol=1e-5, rtol=1e-4)
        if "mlm" in objectives:
            masked_text = mm.encode_text(inputs["mlm_input_ids"], mask)
            fused = mm.fuse(masked_text.last_hidden_state, mask, image.last_hidden_state).last_hidden_state
            where = inputs["mlm_labels"] != -100
            logits = model.mlm_head(fused[where])
            torch.testing.assert_close(out.mlm_logits, logits, atol=1e-5, rtol=1e-4)
            loss = torch.nn.functional.cross_entropy(logits, inputs["mlm_labels"][where])
            torch.testing.assert_close(out.mlm_loss, loss, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_itc_only_pretraining_matches_the_full_towers(fusion):
    """With ITC alone the towers compute just their pooled [CLS] states; the loss and logits must equal those from
    the full towers' outputs."""
    torch.manual_seed(0)
    model = MMForPreTraining(tester.get_config(fusion, objectives=["itc"])).eval()
    inputs = tester.get_pretraining_inputs()
    inputs["attention_mask"][2, -3:] = 0
    out = model(**inputs)
    mm = model.mm
    with torch.no_grad():
        image = mm.encode_image(inputs["pixel_values"]).last_hidden_state[:, 0]
        text = mm.encode_text(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state[:, 0]
        image_embeds = torch.nn.functional.normalize(mm.visual_projection(image), dim=-1)
        text_embeds = torch.nn.functional.normalize(mm.text_projection(text), dim=-1)
        scale = mm.clamped_logit_scale()
        expected = contrastive_loss(image_embeds, text_embeds, scale, ids=inputs["image_ids"])
    torch.testing.assert_close(out.logits_per_image, scale * image_embeds @ text_embeds.t())
    torch.testing.assert_close(out.itc_loss, expected)


def test_fusion_output_positions_match_the_full_fusion():
    torch.manual_seed(0)
    mm = MMForPreTraining(tester.get_config("hybrid")).eval().mm
    inputs = tester.get_inputs()
    mask = inputs["attention_mask"].clone()
    mask[0, -3:] = 0
    image = mm.encode_image(inputs["pixel_values"]).last_hidden_state
    text = mm.encode_text(inputs["input_ids"], mask).last_hidden_state
    positions = torch.tensor([[0, 2], [1, 1], [3, 0], [0, 0]])
    full_out = mm.fuse(text, mask, image, output_attentions=True)
    part_out = mm.fuse(text, mask, image, output_attentions=True, output_positions=positions)
    full, full_cross = full_out.last_hidden_state, full_out.cross_attentions
    part, part_cross = part_out.last_hidden_state, part_out.cross_attentions
    assert part.shape == (4, 2, full.shape[-1])
    torch.testing.assert_close(part, full.gather(1, positions[..., None].expand(-1, -1, full.shape[-1])))
    # The last layer's cross-attention maps cover the kept queries only.
    torch.testing.assert_close(part_cross[-1], full_cross[-1][torch.arange(4)[:, None], :, positions].transpose(1, 2))


def test_mlm_needs_masked_inputs():
    model = MMForPreTraining(tester.get_config("hybrid"))
    with pytest.raises(ValueError, match="mlm_input_ids and mlm_labels"):
        model(**tester.get_inputs())


def test_hard_negatives_never_share_an_image_id():
    torch.manual_seed(0)
    image_ids = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    for trial in range(200):
        similarity = torch.randn(8, 8) * 5
        neg_text, neg_image = sample_hard_negatives(similarity, image_ids)
        for row in range(8):
            assert neg_text[row] >= 0 and image_ids[neg_text[row]] != image_ids[row]
            assert neg_image[row] >= 0 and image_ids[neg_image[row]] != image_ids[row]


def test_hard_negatives_follow_the_similarity():
    """ALBEF: negatives are drawn in proportion to softmax(similarity); the hardest dominates."""
    similarity = torch.zeros(3, 3)
    similarity[0, 2] = 10.0  # text 2 is very similar to image 0
    counts = torch.zeros(3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        neg_text, _ = sample_hard_negatives(similarity, torch.arange(3), generator)
        counts[neg_text[0]] += 1
    assert counts[0] == 0 and counts[2] > 280


def test_rows_without_any_negative_are_dropped():
    neg_text, neg_image = sample_hard_negatives(torch.randn(3, 3), torch.tensor([7, 7, 7]))
    assert (neg_text == -1).all() and (neg_image == -1).all()
    model = MMForPreTraining(tester.get_config("hybrid", objectives=["itc", "itm"])).eval()
    inputs = tester.get_inputs()
    out = model(**inputs, image_ids=torch.full((tester.batch_size,), 5))
    assert out.itm_labels.tolist() == [1] * tester.batch_size and torch.isfinite(out.itm_loss)


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_flip_keeps_the_asked_fraction_in_training_only(ratio):
    torch.manual_seed(0)
    model = MMForPreTraining(tester.get_config("late", objectives=["itc"], image_mask_ratio=ratio))
    patches = (tester.image_size // tester.patch_size) ** 2
    seen = {}

    def hook(module, args, output):
        seen["tokens"] = output[0].shape[1]  # (embeddings (B, 1 + kept, D), frames)

    model.mm.vision_model.embeddings.register_forward_hook(hook)
    inputs = tester.get_inputs()
    model.train()
    model(**inputs)
    assert seen["tokens"] - 1 == round(patches * (1 - ratio))
    model.eval()
    model(**inputs)
    assert seen["tokens"] - 1 == patches


def test_random_keep_indices_are_sorted_unique_subsets():
    from modeling_mm.modeling_mm_pretraining import random_keep_indices as keep

    indices = keep(16, 100, 0.75, torch.device("cpu"))
    assert indices.shape == (16, 25)
    for row in indices:
        assert row.unique().numel() == 25 and torch.equal(row, row.sort().values) and row.max() < 100


@pytest.mark.parametrize("stem", ["patchify", "conv_stem", "wrapped"])
@pytest.mark.parametrize("video", [False, True])
def test_flip_embeds_only_the_kept_patches_and_matches_the_full_embedding(stem, video):
    """FLIP projects just the kept patches' pixels (the patch convolution as a linear map; a wrapped projection,
    e.g. LoRA, runs whole); the result must be the full embedding's rows at those indices, positions (and frame
    embeddings) included, gradients too."""
    from modeling_mm.modeling_mm import MMVisionEmbeddings
    from modeling_mm.configuration_mm import MMVisionConfig

    torch.manual_seed(0)
    config = MMVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, num_attention_heads=4, num_frames=2,
        patch_embedding_type="patchify" if stem == "wrapped" else stem,
    )
    embeddings = MMVisionEmbeddings(config).eval()
    conv = embeddings.patch_embedding
    if stem == "wrapped":

        class Wrapped(torch.nn.Module):  # exposes .weight, as peft's LoRA layers do
            def __init__(self):
                super().__init__()
                self.base_layer = conv
                self.weight = conv.weight

            def forward(self, x):
                return self.base_layer(x)

        embeddings.patch_embedding = Wrapped()
    for p in (embeddings.position_embedding, embeddings.temporal_embedding):
        torch.nn.init.normal_(p)
    pixel_values = torch.randn(3, 2, 3, 32, 32) if video else torch.randn(3, 3, 32, 32)
    tokens = 32 if video else 16
    keep = torch.stack([torch.randperm(tokens)[:5].sort().values for _ in range(3)])
    full, frames = embeddings(pixel_values)
    kept, kept_frames = embeddings(pixel_values, keep)
    assert frames == kept_frames == (2 if video else 1)
    expected = torch.cat([full[:, :1], full[:, 1:].gather(1, keep[..., None].expand(-1, -1, 32))], dim=1)
    torch.testing.assert_close(kept, expected)
    weight = conv.weight
    (grad_kept,) = torch.autograd.grad(kept.square().sum(), weight)
    (grad_full,) = torch.autograd.grad(expected.square().sum(), weight)
    torch.testing.assert_close(grad_kept, grad_full)


def test_collator_keep_indices_are_used():
    model = MMForPreTraining(tester.get_config("late", objectives=["itc"])).train()
    keep = torch.tensor([[0, 5, 7]] * tester.batch_size)
    seen = {}

    def hook(module, args, output):
        seen["tokens"] = output[0].shape[1]  # (embeddings (B, 1 + kept, D), frames)

    model.mm.vision_model.embeddings.register_forward_hook(hook)
    model(**tester.get_inputs(), image_keep_indices=keep)
    assert seen["tokens"] == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _encoders() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return torch.nn.Linear(12, 6), torch.nn.Linear(10, 6)


def _itc(image_enc, text_enc, images, texts, scale, rank, world):
    image_embeds = torch.nn.functional.normalize(image_enc(images), dim=-1)
    text_embeds = torch.nn.functional.normalize(text_enc(texts), dim=-1)
    return contrastive_loss(image_embeds, text_embeds, scale, rank, world)


def _worker(rank: int, world: int, port: int, images, texts, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    image_enc, text_enc = _encoders()
    per = images.shape[0] // world
    local = slice(rank * per, (rank + 1) * per)
    loss = _itc(image_enc, text_enc, images[local], texts[local], torch.tensor(10.0), rank, world)
    loss.backward()
    grads = [p.grad.clone() for p in (*image_enc.parameters(), *text_enc.parameters())]
    for g in grads:  # what DDP does: average the gradients over ranks
        dist.all_reduce(g)
        g /= world
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    torch.save({"loss": mean_loss / world, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_processes_match_one_process(tmp_path):
    """2 processes x batch 4 give the loss and gradients of 1 process x batch 8 (real gloo all-gather)."""
    g = torch.Generator().manual_seed(0)
    images, texts = torch.randn(8, 12, generator=g), torch.randn(8, 10, generator=g)
    image_enc, text_enc = _encoders()
    loss = _itc(image_enc, text_enc, images, texts, torch.tensor(10.0), 0, 1)
    loss.backward()
    reference = [p.grad for p in (*image_enc.parameters(), *text_enc.parameters())]
    mp.spawn(_worker, args=(2, _free_port(), images, texts, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["loss"], loss.detach(), atol=1e-6, rtol=1e-6)
        for got, want in zip(result["grads"], reference):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_world_size_one_is_plain_clip_loss():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)
    logits = 3.0 * a @ b.t()
    labels = torch.arange(5)
    expected = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(contrastive_loss(a, b, torch.tensor(3.0)), expected)


@pytest.fixture(scope="module")
def tiny_text_tower(tmp_path_factory) -> str:
    """A 1-layer BERT with the real MiniLM WordPiece tokenizer files, so run scripts work at toy size."""
    import shutil

    from transformers import BertConfig, BertModel

    from processing.data import default_tokenizer_path

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    BertModel(
        BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37),
        add_pooling_layer=False,
    ).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(default_tokenizer_path(), name), folder / name)
    return str(folder)


def tiny_pretrain_args(text_tower: str, output_dir: str, *extra: str) -> list[str]:
    return [
        "--text_model_name_or_path", text_tower, "--output_dir", output_dir,
        "--image_size", "32", "--patch_size", "8", "--vision_hidden_size", "32", "--vision_num_layers", "1",
        "--vision_num_heads", "4", "--num_fusion_layers", "1", "--projection_dim", "16",
        "--max_train_samples", "32", "--per_device_train_batch_size", "8", "--max_steps", "4",
        "--logging_steps", "1", "--save_steps", "2", "--zero_shot_eval", "false", "--learning_rate", "1e-3",
        *extra,
    ]


def test_trainer_steps_log_every_objective_and_save_a_loadable_checkpoint(tiny_text_tower, tmp_path):
    from transformers import AutoModelForPreTraining

    from run_scripts.pretrain import main

    summary = main(tiny_pretrain_args(tiny_text_tower, str(tmp_path), "--objectives", "itc", "itm", "mlm", "lm"))
    for key in ("loss", "itc_loss", "itm_loss", "mlm_loss", "lm_loss"):
        assert key in summary["final_losses"], key
    assert (tmp_path / "checkpoint-2" / "checkpoint_complete.json").exists()
    assert (tmp_path / "training_curves.png").stat().st_size > 1000
    model = AutoModelForPreTraining.from_pretrained(tmp_path)
    assert isinstance(model, MMForPreTraining) and model.config.objectives == ["itc", "itm", "mlm", "lm"]
    assert not any(p.name.endswith(".bin") for p in tmp_path.rglob("*"))


def test_contrastive_loss_with_shared_ids_spreads_the_target():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    # All ids distinct: exactly the CLIP loss.
    torch.testing.assert_close(contrastive_loss(a, b, torch.tensor(5.0), ids=torch.arange(4)),
                               contrastive_loss(a, b, torch.tensor(5.0)))
    # Rows 0 and 1 share an id: identical pairs are not pushed apart, so swapping them changes nothing.
    ids = torch.tensor([7, 7, 1, 2])
    swapped = b[[1, 0, 2, 3]]
    torch.testing.assert_close(contrastive_loss(a, b, torch.tensor(5.0), ids=ids),
                               contrastive_loss(a, swapped, torch.tensor(5.0), ids=ids))
    assert not torch.allclose(contrastive_loss(a, b, torch.tensor(5.0)), contrastive_loss(a, swapped, torch.tensor(5.0)))


def test_torchrun_on_cpu_trains_with_ddp(tmp_path):
    """Under `torchrun` on a machine without an accelerator, the run scripts' argument parsing makes Trainer use
    multi-process CPU training (DDP over gloo, gradients synchronised), not one unsynchronised model per process."""
    import subprocess
    import sys

    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})\n"
        "from transformers import TrainingArguments\n"
        "from training.trainer import parse_args\n"
        f"(args,) = parse_args((TrainingArguments,), ['--output_dir', {str(tmp_path / 'out')!r}, '--ddp_backend', 'gloo',"
        " '--report_to', 'none'])\n"
        # One file per rank: two ranks printing to one pipe can interleave within a line.
        f"open({str(tmp_path)!r} + f'/probe{{args.process_index}}.txt', 'w').write(' '.join(map(str, ("
        "args.process_index, args.world_size, args.parallel_mode.value,"
        " args.distributed_state.distributed_type.value))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "CUDA_VISIBLE_DEVICES")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         str(script)],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    probes = sorted(path.read_text().split() for path in tmp_path.glob("probe*.txt"))
    assert probes == [["0", "2", "distributed", "MULTI_CPU"], ["1", "2", "distributed", "MULTI_CPU"]], probes


def test_output_positions_under_flex_attention_match_the_full_computation():
    """Flex attention's BlockMask cannot be cut down to the kept queries; the layer then runs every position and keeps
    the asked ones, so pooled-only features and pruned fusion still equal the full computation."""
    torch.manual_seed(0)
    config = tester.get_config("hybrid")
    for sub_config in (config, config.text_config, config.vision_config):
        sub_config._attn_implementation = "flex_attention"
    model = MMForPreTraining(config).eval()
    mm = model.mm
    inputs = tester.get_inputs()
    mask = inputs["attention_mask"].clone()
    mask[0, -3:] = 0
    with torch.no_grad():
        text = mm.encode_text(inputs["input_ids"], mask)
        image = mm.encode_image(inputs["pixel_values"]).last_hidden_state
        torch.testing.assert_close(
            mm.encode_text(inputs["input_ids"], mask, pooled_only=True).pooler_output, text.pooler_output
        )
        positions = torch.tensor([[0, 2], [1, 1], [3, 0], [0, 0]])
        full = mm.fuse(text.last_hidden_state, mask, image).last_hidden_state
        part = mm.fuse(text.last_hidden_state, mask, image, output_positions=positions).last_hidden_state
    torch.testing.assert_close(part, full.gather(1, positions[..., None].expand(-1, -1, full.shape[-1])))


def test_report_to_tensorboard_receives_every_objective_loss(tmp_path, monkeypatch):
    """Experiment tracking, offline: `--report_to tensorboard` gets the total loss and each objective's loss."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretrain_tester import save_tiny_text_tower, tiny_pretrain_args
    from run_scripts.cli import run_command

    tower = save_tiny_text_tower(str(tmp_path / "tower"))
    logs = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logs))  # transformers 5's place for the event files
    run_command("pretrain", tiny_pretrain_args(tower, str(tmp_path / "run"), max_steps=2, save_steps=2,
                                               report_to="tensorboard"))
    events = [os.path.join(root, name) for root, _, names in os.walk(logs) for name in names if "tfevents" in name]
    assert events, f"no event file under {logs}"
    tags = set()
    for path in events:
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/itc_loss", "train/itm_loss", "train/mlm_loss"} <= tags, tags
    for path in events:
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        if "train/itc_loss" in accumulator.Tags()["scalars"]:
            assert [e.step for e in accumulator.Scalars("train/itc_loss")] == [1, 2]


def test_freeze_vision_tower_keeps_a_loaded_tower_fixed(tmp_path):
    """LiT with a pretrained image tower: `--freeze_vision_tower` trains everything but the loaded vision weights."""
    from modeling_mm import MMVisionConfig, MMVisionModel
    from pretrain_tester import save_tiny_text_tower, tiny_pretrain_args
    from run_scripts.cli import run_command

    torch.manual_seed(0)
    tower_dir = tmp_path / "vision"
    MMVisionModel(MMVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=4, intermediate_size=37)).save_pretrained(tower_dir)
    text = save_tiny_text_tower(str(tmp_path / "text"))
    out = tmp_path / "run"
    run_command("pretrain", tiny_pretrain_args(text, str(out), max_steps=2, save_steps=2, fusion="late",
                                               objectives=["itc"], vision_model_name_or_path=str(tower_dir),
                                               freeze_vision_tower="true", freeze_text_tower="false"))
    trained = MMForPreTraining.from_pretrained(out)
    before = MMVisionModel.from_pretrained(tower_dir).state_dict()
    after = trained.mm.vision_model.state_dict()
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)
    untrained = MMForPreTraining.from_vision_text_pretrained(str(tower_dir), text, fusion="late", objectives=["itc"])
    changed = [n for n, p in trained.mm.text_model.state_dict().items()
               if not torch.equal(p, untrained.mm.text_model.state_dict()[n])]
    assert changed, "the unlocked text tower did not train"
    with pytest.raises(ValueError, match="--freeze_vision_tower needs a vision tower"):
        run_command("pretrain", tiny_pretrain_args(text, str(tmp_path / "early"), fusion="early",
                                                   objectives=["itm"], freeze_vision_tower="true"))
