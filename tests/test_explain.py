"""Explanations: grounding maps for every fusion style, planted signals they must find, overlays, retrieval
galleries, training-curve plots, and the explain / grounding_eval scripts end to end on a tiny saved checkpoint."""

import json

import numpy as np
from PIL import Image
import pytest
import torch
from transformers import BertTokenizerFast
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mm_tester import FUSIONS, MMModelTester
from modeling_mm import MMForPreTraining, MMModel
from processing import MMImageProcessor, MMProcessor
from processing.data import default_tokenizer_path
from evaluation import grounding
from run_scripts.cli import run_command
from training import plot_training_curves
from evaluation.explain import (
    METHOD_FUSIONS,
    attention_rollout,
    compute_relevance,
    normalize_map,
    relevance_map,
    retrieval_gallery,
    retrieval_scores,
    save_overlay,
    word_mask,
)


IMAGE_SIZE, PATCH = 16, 4  # a 4x4 patch grid, as in the default 64px / 16px model
GRID = IMAGE_SIZE // PATCH
TEXT = "a red circle"


@pytest.fixture(scope="module")
def processor() -> MMProcessor:
    tokenizer = BertTokenizerFast.from_pretrained(default_tokenizer_path())
    return MMProcessor(MMImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}), tokenizer, max_length=16)


def _tester(processor: MMProcessor) -> MMModelTester:
    # The real WordPiece vocabulary, so the real tokenizer's ids are in range.
    return MMModelTester(image_size=IMAGE_SIZE, patch_size=PATCH, vocab_size=processor.tokenizer.vocab_size)


def _model(processor: MMProcessor, fusion: str, seed: int = 0, **kwargs) -> MMForPreTraining:
    torch.manual_seed(seed)
    return MMForPreTraining(_tester(processor).get_config(fusion, objectives=None, **kwargs)).eval()


def _image(seed: int = 0, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(height, width, 3) * 255).astype(np.uint8))


def _inputs(processor: MMProcessor, texts: list[str], images: list) -> dict[str, torch.Tensor]:
    inputs = dict(processor(images=images, text=texts))
    inputs["words"] = word_mask(inputs["input_ids"], inputs["attention_mask"], processor.tokenizer.all_special_ids)
    return inputs


# ----------------------------------------------------------------------------------------------------------------------
# Maps of every fusion style
# ----------------------------------------------------------------------------------------------------------------------


FUSION_METHODS = [(fusion, method) for method, fusions in METHOD_FUSIONS.items() for fusion in fusions]


@pytest.mark.parametrize("fusion,method", FUSION_METHODS)
def test_relevance_map_shape_range_and_tokens(processor, fusion, method):
    model = _model(processor, fusion)
    # Per-word relevance of gradcam needs a layer below the last (see compute_relevance).
    patch_map, tokens = relevance_map(model, processor, _image(), TEXT, method=method, layer=0)
    assert patch_map.shape == (GRID, GRID)
    assert patch_map.dtype == np.float32 and np.isfinite(patch_map).all()
    assert patch_map.min() == 0.0 and patch_map.max() == 1.0  # min-max scaled, hence not constant
    assert [t for t, _ in tokens] == processor.tokenizer.tokenize(TEXT)  # words only, [CLS]/[SEP] left out
    scores = np.array([s for _, s in tokens])
    assert (scores >= 0).all() and scores.max() == pytest.approx(1.0)


def test_gradcam_last_layer_image_map_is_the_cls_row_and_gradients_flow(processor):
    """In the last fusion layer only [CLS] reaches the ITM head, so the word rows carry no gradient; the image map
    comes from [CLS] and must be non-zero (gradients flow through the eager attention probabilities)."""
    model = _model(processor, "hybrid")
    inputs = _inputs(processor, [TEXT, "a blue square on the left"], [_image(0), _image(1)])
    relevance = compute_relevance(
        model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], inputs["words"], layer=-1
    )
    assert relevance.patch_maps.shape == (2, 1, GRID, GRID)
    assert (relevance.patch_maps >= 0).all() and (relevance.patch_maps.flatten(1).amax(1) > 0).all()
    assert torch.equal(relevance.token_scores, torch.zeros_like(relevance.token_scores))
    earlier = compute_relevance(
        model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], inputs["words"], layer=0
    )
    assert (earlier.token_scores[inputs["words"]] > 0).any()
    assert (earlier.token_scores[~inputs["words"]] == 0).all()  # [CLS], [SEP] and padding score nothing
    assert ((0 <= relevance.scores) & (relevance.scores <= 1)).all()  # ITM p(match)


def test_batched_relevance_equals_one_at_a_time(processor):
    """Padding and batching do not leak: row i of a padded batch explains pair i alone."""
    model = _model(processor, "hybrid")
    texts, images = [TEXT, "a blue square on the left"], [_image(0), _image(1)]
    batched = _inputs(processor, texts, images)
    both = compute_relevance(
        model, batched["input_ids"], batched["attention_mask"], batched["pixel_values"], batched["words"], layer=None
    )
    for i in range(2):
        one = _inputs(processor, texts[i : i + 1], images[i : i + 1])
        alone = compute_relevance(
            model, one["input_ids"], one["attention_mask"], one["pixel_values"], one["words"], layer=None
        )
        torch.testing.assert_close(both.patch_maps[i], alone.patch_maps[0], atol=1e-6, rtol=1e-4)


def test_gradcam_finds_the_planted_patch_and_ignores_a_harmful_one(processor):
    """Two patches share the cross-attention equally; attending to one raises the ITM match logit, to the other
    lowers it. Grad-CAM must point at the first only: that is what the gradient adds over raw attention."""
    model = _model(processor, "hybrid", num_fusion_layers=1)
    mm, dim = model.mm, 32
    helpful, harmful = 6, 9  # patch indices in the 4x4 grid
    text = torch.zeros(1, 3, dim)
    image = torch.zeros(1, 1 + GRID * GRID, dim)
    image[0, 1 + helpful, 0] = 5.0  # channel 0: "key" signal; channel 1 selects the value's sign
    image[0, 1 + harmful, 0] = 5.0
    image[0, 1 + harmful, 1] = 1.0
    # The towers are replaced by planted states; everything from the fusion layer on is real code.
    mm.encode_text = lambda *a, **k: BaseModelOutputWithPooling(last_hidden_state=text, pooler_output=text[:, 0])
    mm.encode_image = lambda *a, **k: BaseModelOutputWithPooling(last_hidden_state=image, pooler_output=image[:, 0])
    u = torch.zeros(dim)
    u[2], u[3] = 1.0, -1.0  # mean-zero direction the planted values write
    b0 = torch.zeros(dim)
    b0[4], b0[5] = 1.0, -1.0  # the [CLS] state before cross-attention, orthogonal to u
    layer = mm.fusion_layers[0]
    with torch.no_grad():
        for name, param in layer.named_parameters():
            param.fill_(1.0 if "layer_norm" in name and name.endswith("weight") else 0.0)
        layer.self_attn.out_proj.bias.copy_(b0)  # every text state becomes b0
        layer.cross_attn.q_proj.bias.fill_(1.0)  # one query for all tokens and heads
        layer.cross_attn.k_proj.weight[:, 0] = 1.0  # only the planted patches have keys: attention 1/2 each
        layer.cross_attn.v_proj.weight[:, 0] = u  # value 5u at both ...
        layer.cross_attn.v_proj.weight[:, 1] = -10.0 * u  # ... turned into -5u at the harmful one
        layer.cross_attn.out_proj.weight.copy_(torch.eye(dim))
        # logit = u . LN(b0 + 5u (a_helpful - a_harmful)): rises with a_helpful, falls with a_harmful.
        model.itm_head.weight.zero_()
        model.itm_head.bias.zero_()
        model.itm_head.weight[1] = u
    ids = torch.tensor([[101, 2417, 102]])
    words = torch.tensor([[False, True, False]])
    relevance = compute_relevance(model, ids, torch.ones_like(ids), torch.zeros(1, 3, 16, 16), words)
    cam = relevance.patch_maps.flatten()
    assert int(cam.argmax()) == helpful
    assert cam[helpful] > 0 and cam[harmful] == 0  # clamp(grad * attn, 0): the harmful patch scores nothing
    cross = mm.fuse(text, torch.ones_like(ids), image, output_attentions=True).cross_attentions
    attention = cross[0][0, :, 0, 1:].mean(0)  # raw attention of [CLS] over patches: a tie
    torch.testing.assert_close(attention[helpful], attention[harmful])


def test_gradcam_needs_the_itm_head(processor):
    model = MMModel(_tester(processor).get_config("hybrid"))
    with pytest.raises(ValueError, match="itm_head|ITM head"):
        relevance_map(model, processor, _image(), TEXT)
    patch_map, _ = relevance_map(model, processor, _image(), TEXT, method="similarity")  # the bare model can do this
    assert patch_map.shape == (GRID, GRID)
    with pytest.raises(ValueError, match="needs fusion"):
        relevance_map(_model(processor, "late"), processor, _image(), TEXT, method="gradcam")


def test_attention_rollout_is_row_stochastic_and_composes_layers():
    g = torch.Generator().manual_seed(0)
    attentions = [torch.rand(2, 4, 6, 6, generator=g).softmax(-1) for _ in range(3)]
    rollout = attention_rollout(attentions)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 6))
    # By hand: (0.5 A + 0.5 I) per layer, heads averaged, applied from the first layer up.
    step = [0.5 * a.mean(1) + 0.5 * torch.eye(6) for a in attentions]
    torch.testing.assert_close(rollout, step[2] @ step[1] @ step[0])
    identity = [torch.eye(6).expand(2, 4, 6, 6)] * 2
    torch.testing.assert_close(attention_rollout(identity), torch.eye(6).expand(2, 6, 6))


def test_rollout_follows_a_planted_attention_path(processor):
    """[CLS] attends to a word, the word to one patch: the rollout from [CLS] must peak at that patch, even though
    [CLS] never attends to an image token directly."""
    model = _model(processor, "early")
    inputs = _inputs(processor, [TEXT], [_image()])
    length = inputs["input_ids"].shape[1]
    seq, target = length + 1 + GRID * GRID, 11
    first = torch.eye(seq)
    first[2] = 0.0
    first[2, length + 1 + target] = 1.0  # layer 1: token 2 reads patch `target`
    second = torch.eye(seq)
    second[0] = 0.0
    second[0, 2] = 1.0  # layer 2: [CLS] reads token 2
    planted = (first.expand(1, 4, seq, seq), second.expand(1, 4, seq, seq))
    real = model.mm.joint_encode
    model.mm.joint_encode = lambda *a, **k: type(out := real(*a, **k))(last_hidden_state=out.last_hidden_state,
                                                                        attentions=planted)
    relevance = compute_relevance(
        model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], inputs["words"]
    )
    assert int(relevance.patch_maps.flatten().argmax()) == target
    assert relevance.token_scores[0, 2] > relevance.token_scores[0, 1]


def test_early_rollout_on_the_model_sums_to_one(processor):
    model = _model(processor, "early")
    inputs = _inputs(processor, [TEXT], [_image()])
    attentions = model.mm.joint_encode(
        inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], output_attentions=True
    ).attentions
    rollout = attention_rollout(attentions)
    torch.testing.assert_close(rollout.sum(-1), torch.ones_like(rollout[..., 0]))
    relevance = compute_relevance(
        model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], inputs["words"]
    )
    length = inputs["input_ids"].shape[1]
    torch.testing.assert_close(relevance.patch_maps.flatten(), rollout[0, 0, length + 1 :])


def test_late_similarity_matches_a_manual_computation(processor):
    model = _model(processor, "late")
    mm = model.mm
    inputs = _inputs(processor, [TEXT], [_image()])
    relevance = compute_relevance(
        model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], inputs["words"]
    )
    with torch.no_grad():
        patches = mm.vision_model(inputs["pixel_values"]).last_hidden_state[0, 1:]  # (16, D) after post-LN
        patch_embeds = torch.nn.functional.normalize(mm.visual_projection(patches), dim=-1)
        text_embeds = mm.embed_text(inputs["input_ids"], inputs["attention_mask"])[0]
    torch.testing.assert_close(relevance.patch_maps.flatten(), patch_embeds @ text_embeds)
    torch.testing.assert_close(
        relevance.scores, mm.embed_image(inputs["pixel_values"]) @ text_embeds, atol=1e-5, rtol=1e-5
    )


def test_itc_gradcam_matches_a_manual_computation(processor):
    """Chefer et al.'s rule by hand: R = I; R += mean_heads(clamp(grad * A, 0)) @ R per vision layer; [CLS] row."""
    model = _model(processor, "late")
    mm = model.mm
    inputs = _inputs(processor, [TEXT, "a blue square on the left"], [_image(0), _image(1)])
    relevance = compute_relevance(
        model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], inputs["words"], "itc_gradcam"
    )
    text_embeds = mm.embed_text(inputs["input_ids"], inputs["attention_mask"]).detach()
    for i in range(2):
        out = mm.vision_model(inputs["pixel_values"][i : i + 1], output_attentions=True)
        score = torch.nn.functional.normalize(mm.visual_projection(out.pooler_output), dim=-1)[0] @ text_embeds[i]
        grads = torch.autograd.grad(score, out.attentions)
        r = torch.eye(1 + GRID * GRID)
        for a, g in zip(out.attentions, grads):
            r = r + (a * g).clamp(min=0).mean(1)[0] @ r
        torch.testing.assert_close(relevance.patch_maps[i].flatten(), r[0, 1:].detach())
        torch.testing.assert_close(relevance.scores[i], score.detach())
    with pytest.raises(ValueError, match="needs fusion"):
        relevance_map(_model(processor, "early"), processor, _image(), TEXT, method="itc_gradcam")


def test_occlusion_matches_dropping_each_patch_by_hand(processor):
    model = _model(processor, "hybrid")
    mm = model.mm
    inputs = _inputs(processor, [TEXT], [_image(0)])
    relevance = compute_relevance(
        model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], inputs["words"], "occlusion"
    )
    text_embeds = mm.embed_text(inputs["input_ids"], inputs["attention_mask"])[0]
    full = mm.embed_image(inputs["pixel_values"])[0] @ text_embeds
    patch = 5
    keep = torch.tensor([[i for i in range(GRID * GRID) if i != patch]])
    occluded = mm.embed_image(inputs["pixel_values"], image_keep_indices=keep)[0] @ text_embeds
    torch.testing.assert_close(relevance.patch_maps.flatten()[patch], (full - occluded).detach())
    torch.testing.assert_close(relevance.scores[0], full.detach())
    # One image with two texts: the vision passes are shared, each row still explains its own pair.
    pair = _inputs(processor, [TEXT, "a blue square on the left"], [_image(0), _image(0)])
    both = compute_relevance(
        model, pair["input_ids"], pair["attention_mask"], pair["pixel_values"], pair["words"], "occlusion"
    )
    torch.testing.assert_close(both.patch_maps[0], relevance.patch_maps[0])
    assert not torch.allclose(both.patch_maps[1], relevance.patch_maps[0])


@pytest.mark.parametrize("fusion,method", FUSION_METHODS)
def test_video_gives_one_map_per_frame(processor, fusion, method):
    model = _model(processor, fusion)  # the tester's configs take 2-frame clips
    patch_map, _ = relevance_map(model, processor, [_image(0), _image(1)], TEXT, method=method)
    assert patch_map.shape == (2, GRID, GRID)
    assert patch_map.min() == 0.0 and patch_map.max() == 1.0  # scaled jointly over both frames


@pytest.mark.parametrize("fusion,method", [("early", "rollout"), ("late", "occlusion"), ("hybrid", "gradcam")])
def test_a_tubelet_video_model_gives_one_map_per_token_frame(processor, fusion, method):
    config = _tester(processor).get_config(fusion, objectives=None)
    config.vision_config.num_frames, config.vision_config.tubelet_size = 4, 2
    torch.manual_seed(0)
    model = MMForPreTraining(config).eval()
    patch_map, _ = relevance_map(model, processor, [_image(i) for i in range(4)], TEXT, method=method)
    assert patch_map.shape == (2, GRID, GRID)  # frames 0-1 and 2-3 are one token frame each


def test_wide_images_keep_their_aspect(processor):
    model = _model(processor, "hybrid")
    patch_map, _ = relevance_map(model, processor, _image(0, IMAGE_SIZE, 2 * IMAGE_SIZE), TEXT,
                                 image_size=(IMAGE_SIZE, 2 * IMAGE_SIZE))
    assert patch_map.shape == (GRID, 2 * GRID)


def test_normalize_map_of_a_constant_map_is_zero():
    assert not normalize_map(np.full((2, 2), 3.0)).any()
    np.testing.assert_allclose(normalize_map(torch.tensor([[1.0, 3.0]])), [[0.0, 1.0]])


# ----------------------------------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------------------------------


def test_save_overlay_writes_a_readable_png(tmp_path):
    path = save_overlay(_image(), np.eye(GRID, dtype=np.float32), str(tmp_path / "sub" / "heat.png"),
                        [("a", 0.2), ("red", 1.0), ("circle", 0.6)], title=TEXT)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.width > 50 and png.height > 50
        assert len(set(png.convert("RGB").getdata())) > 10  # something was drawn


@pytest.mark.parametrize("fusion", FUSIONS)
def test_retrieval_gallery_ranks_by_the_scores(processor, tmp_path, fusion):
    model = _model(processor, fusion)
    candidates = [_image(i) for i in range(7)]
    scores = retrieval_scores(model, processor, TEXT, candidates)
    assert scores.shape == (7,)
    ranked = retrieval_gallery(model, processor, TEXT, candidates, k=5, path=str(tmp_path / "gallery.png"))
    assert [i for i, _ in ranked] == scores.topk(5).indices.tolist()
    assert [s for _, s in ranked] == pytest.approx(scores.topk(5).values.tolist())
    with Image.open(tmp_path / "gallery.png") as png:
        assert png.format == "PNG" and png.width > png.height  # query + 5 in a row
    if fusion == "late":
        # ITC cosine, by hand; and an image query ranks texts.
        text_inputs = processor(text=[TEXT])
        text_embeds = model.mm.embed_text(text_inputs["input_ids"], text_inputs["attention_mask"])
        image_embeds = model.mm.embed_image(processor(images=candidates)["pixel_values"])
        torch.testing.assert_close(scores, (image_embeds @ text_embeds.t())[:, 0].detach())
        ranked = retrieval_gallery(model, processor, _image(0), ["a red circle", "a blue square", "x"], k=2,
                                   path=str(tmp_path / "g2.png"))
        assert len(ranked) == 2


def test_plot_training_curves_from_a_trainer_state(tmp_path):
    history = [
        {"step": s, "loss": 5.0 / s, "itc_loss": 2.0 / s, "itm_loss": 0.7, "learning_rate": 1e-4 * s / 30}
        for s in range(10, 40, 10)
    ] + [{"step": 30, "train_loss": 1.0, "train_runtime": 3.0}]
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": history}))
    png = plot_training_curves(str(state), str(tmp_path / "plots" / "curves.png"))
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 100
    with pytest.raises(ValueError, match="no logged losses"):
        plot_training_curves({"log_history": [{"step": 1, "epoch": 0.1}]}, str(tmp_path / "none.png"))


# ----------------------------------------------------------------------------------------------------------------------
# Scripts, end to end on a tiny saved checkpoint
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(processor, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny_hybrid")
    _model(processor, "hybrid").save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_explain_cli_heatmap_and_gallery(checkpoint, tmp_path, capsys):
    image_file = tmp_path / "shape.png"
    _image().save(image_file)
    heatmap = str(tmp_path / "heatmap.png")
    run_command("explain", ["--model_name_or_path", checkpoint, "--image", str(image_file), "--text", TEXT, "--output", heatmap])
    assert Image.open(heatmap).format == "PNG"
    wide_file = tmp_path / "wide.png"
    _image(0, IMAGE_SIZE, 2 * IMAGE_SIZE + 3).save(wide_file)  # cropped to whole patches
    run_command("explain", ["--model_name_or_path", checkpoint, "--image", str(wide_file), "--text", TEXT, "--keep_size",
                  "--method", "itc_gradcam", "--output", heatmap])
    assert Image.open(heatmap).format == "PNG"
    gallery = str(tmp_path / "gallery.png")
    run_command("explain", ["--model_name_or_path", checkpoint, "--gallery", "--text", TEXT, "--max_candidates", "12",
                  "--output", gallery])
    assert Image.open(gallery).format == "PNG"
    assert "#5: test image" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_command("explain", ["--model_name_or_path", checkpoint, "--text", TEXT])  # a heatmap needs an image


def test_grounding_eval_runs_and_is_deterministic(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "grounding.json")
    args = ["--model_name_or_path", checkpoint, "--num_composites", "3", "--batch_size", "4", "--output_file", out]
    first = run_command("grounding-eval", args)
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("grounding (peak/mass hit rate, chance 50%) on 6 queries / 3 composites")
    assert "default gradcam_layer1: gradcam_layer0 " in summary
    assert first["num_queries"] == 6 and first["chance_hit_rate"] == 0.5
    assert 0.0 <= first["half_recognition"] <= 1.0
    assert set(first["methods"]) == {
        "gradcam_layer0", "gradcam_layer1", "gradcam_mean_layers", "similarity", "itc_gradcam", "occlusion"
    }
    second = run_command("grounding-eval", args)
    assert second["methods"] == first["methods"]
    with open(out) as f:
        assert json.load(f)["methods"] == first["methods"]


def test_composites_pair_different_colours_and_shapes():
    from processing.data import load_easy_vqa

    test = load_easy_vqa(split="test", view="images").select(range(60))
    composites = grounding.make_composites(test, 8, seed=0, size=IMAGE_SIZE)
    assert len(composites) == 8
    lefts = set()
    for item in composites:
        assert item["image"].size == (2 * IMAGE_SIZE, IMAGE_SIZE)
        (c1, s1), (c2, s2) = (caption.split()[1:] for caption in item["captions"])
        assert c1 != c2 and s1 != s2
        lefts.add(item["ids"][0] < item["ids"][1])
    assert lefts == {True, False}  # placement is random, not ordered by index
    assert [c["ids"] for c in grounding.make_composites(test, 8, 0, IMAGE_SIZE)] == [c["ids"] for c in composites]


def test_half_hits():
    maps = torch.zeros(3, 1, 2, 4)
    maps[0, 0, 1, 0] = 1.0  # peak on the left
    maps[1, 0, 0, 3] = 1.0  # peak on the right
    hits = grounding.half_hits(maps, torch.tensor([True, True, False]))
    assert hits["peak"].tolist() == [True, False, False]  # the all-zero map points nowhere: a miss
    assert hits["mass"].tolist() == [True, False, False]
