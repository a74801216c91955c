"""Task heads: they train, generate, take video, load from pretraining and tower checkpoints, and reject bad labels.

Heads: MMForVisualQuestionAnswering, MMForImageTextClassification, MMForImageTextRetrieval,
MMForConditionalGeneration, each with every fusion style it supports.
"""

import copy
import logging

import pytest
import torch
from transformers.testing_utils import CaptureLogger, LoggingLevel
from transformers.utils import logging as hf_logging

from modeling_mm import (
    MMForConditionalGeneration,
    MMForImageTextClassification,
    MMForImageTextRetrieval,
    MMForPreTraining,
    MMForVisualQuestionAnswering,
    MMTextModel,
    MMVisionModel,
)
from mm_tester import FUSIONS, MMModelTester


# 16px images in 4px patches (16 patches, not 225): the same code paths, several times faster on a shared CPU.
tester = MMModelTester(image_size=16, patch_size=4)
NUM_LABELS = 5
CLASSIFIERS = (MMForVisualQuestionAnswering, MMForImageTextClassification)
HEADS = (*CLASSIFIERS, MMForImageTextRetrieval, MMForConditionalGeneration)
# (head, fusion) pairs that exist: captioning needs a vision tower to cross-attend to.
HEAD_FUSIONS = [(h, f) for h in HEADS for f in FUSIONS if not (h is MMForConditionalGeneration and f == "early")]


def _head(cls: type, fusion: str, seed: int = 0, init_range: float | None = None, **kwargs) -> torch.nn.Module:
    """A tiny head; `init_range` sets the init std of every part, the towers included."""
    config = tester.get_config(fusion, num_labels=NUM_LABELS, **kwargs)
    if init_range is not None:
        for sub_config in (config, config.vision_config, config.text_config):
            sub_config.initializer_range = init_range
    torch.manual_seed(seed)
    return cls(config)


# Training tests use a wider init than BERT's 0.02: with 0.02, the pre-LN [CLS] state of random texts is 0.99999
# cosine-similar across rows (it is mostly its own embedding), so ITC and ITM need hundreds of steps before the
# loss moves; with 0.2 every head learns the fixed batch within 20 steps.
TRAIN_INIT = 0.2


def _inputs_for(cls: type, fusion: str, video: bool = False) -> dict[str, torch.Tensor]:
    """A fixed tiny batch with the labels each head trains on."""
    inputs = tester.get_inputs(video=video)
    if cls in CLASSIFIERS:
        inputs["labels"] = torch.tensor([0, 3, 4])
    elif cls is MMForConditionalGeneration:
        inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    else:
        inputs["image_ids"] = torch.arange(tester.batch_size)
    return inputs


def _train(model: torch.nn.Module, inputs: dict[str, torch.Tensor], steps: int = 20, lr: float = 1e-3) -> list[float]:
    torch.manual_seed(0)  # ITM negatives are drawn from the global RNG
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**inputs).loss
        assert torch.isfinite(loss), losses
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _assert_falls(losses: list[float], factor: float = 0.8) -> None:
    # The mean of the last three steps, so one noisy ITM draw cannot decide the test.
    assert sum(losses[-3:]) / 3 < factor * losses[0], [round(x, 4) for x in losses]


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head, fusion", HEAD_FUSIONS, ids=lambda x: getattr(x, "__name__", x))
def test_head_trains_on_a_fixed_batch(head, fusion):
    """Retrieval trains with ITC (late), ITC + hard-negative ITM (hybrid) or ITM (early)."""
    model = _head(head, fusion, init_range=TRAIN_INIT)
    losses = _train(model, _inputs_for(head, fusion))
    _assert_falls(losses)


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_retrieval_head_holds_only_what_retrieval_uses(fusion):
    """No captioning decoder or MLM head: unused weights would waste memory and get no gradient (DDP)."""
    model = _head(MMForImageTextRetrieval, fusion)
    assert not hasattr(model, "text_decoder")
    assert not hasattr(model, "mlm_head")
    assert hasattr(model, "itm_head") == (fusion == "hybrid")


def test_retrieval_objectives_per_fusion():
    assert _head(MMForImageTextRetrieval, "late").retrieval_objectives == ["itc"]
    assert _head(MMForImageTextRetrieval, "hybrid").retrieval_objectives == ["itc", "itm"]
    assert _head(MMForImageTextRetrieval, "early").retrieval_objectives == ["itm"]
    config = tester.get_config("hybrid")
    MMForImageTextRetrieval(config)
    assert config.objectives == ["itc", "itm", "mlm", "lm"], "the head must not change the caller's config"


def test_early_fusion_captioning_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a vision tower to cross-attend to .fusion 'late' or 'hybrid'"):
        MMForConditionalGeneration(tester.get_config("early"))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_soft_score_vqa_labels(fusion):
    """VQAv2 soft scores (0.3 / 0.6 / 0.9 / 1.0 per agreeing annotator count) train through the scaled BCE."""
    model = _head(MMForVisualQuestionAnswering, fusion, init_range=TRAIN_INIT)
    inputs = tester.get_inputs()
    inputs["labels"] = torch.tensor(
        [[1.0, 0.3, 0.0, 0.0, 0.0], [0.0, 0.0, 0.6, 0.9, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]
    )
    losses = _train(model, inputs)
    _assert_falls(losses, factor=0.5)
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    assert logits.argmax(-1).tolist() == [0, 3, 4]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_multi_label_classification(fusion):
    model = _head(MMForImageTextClassification, fusion, init_range=TRAIN_INIT)
    inputs = tester.get_inputs()
    targets = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [1, 1, 1, 0, 0]], dtype=torch.float32)
    inputs["labels"] = targets
    _assert_falls(_train(model, inputs, steps=20), factor=0.5)
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    assert torch.equal((logits.sigmoid() > 0.5).float(), targets)


# ----------------------------------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head, fusion", HEAD_FUSIONS, ids=lambda x: getattr(x, "__name__", x))
def test_video_input_through_every_head(head, fusion):
    """Clips `(B, T, C, H, W)` run through each head, in eval and in a training step."""
    model = _head(head, fusion).eval()
    inputs = _inputs_for(head, fusion, video=True)
    assert inputs["pixel_values"].ndim == 5
    with torch.no_grad():
        out = model(**{k: v for k, v in inputs.items() if k not in ("labels", "image_ids")})
    b = tester.batch_size
    if head in CLASSIFIERS:
        assert out.logits.shape == (b, NUM_LABELS)
    elif head is MMForConditionalGeneration:
        assert out.logits.shape == (b, tester.seq_length, tester.vocab_size)
    elif fusion == "early":
        assert out.itm_logits.shape == (b, 2)
    else:
        assert out.logits_per_image.shape == (b, b)
    losses = _train(model, inputs, steps=2)
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_video_captioning_generates(fusion):
    model = _head(MMForConditionalGeneration, fusion, initializer_range=0.5).eval()
    pixel_values = tester.get_inputs(video=True)["pixel_values"]
    cached = model.generate(pixel_values=pixel_values, max_new_tokens=5, do_sample=False)
    uncached = model.generate(pixel_values=pixel_values, max_new_tokens=5, do_sample=False, use_cache=False)
    assert cached.shape == (tester.batch_size, 6)
    assert torch.equal(cached, uncached)


# ----------------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------------


def _captioner(fusion: str) -> MMForConditionalGeneration:
    # A wide init makes an untrained decoder produce varied tokens, so that cache bugs change the output.
    return _head(MMForConditionalGeneration, fusion, initializer_range=0.5).eval()


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_greedy_generation_with_and_without_cache(fusion):
    model = _captioner(fusion)
    pixel_values = tester.get_inputs()["pixel_values"]
    cached = model.generate(pixel_values=pixel_values, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(pixel_values=pixel_values, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape == (tester.batch_size, 9)
    assert (cached[:, 0] == model.config.text_config.bos_token_id).all(), "generation starts from [CLS]"
    assert len(cached[:, 1:].unique()) > 2, "degenerate output would not exercise the cache"
    assert torch.equal(cached, uncached)


def test_logits_to_keep_and_the_decoding_vocab_projection():
    """`logits_to_keep` (what generate() passes) projects only the last positions, and the CPU decoding path of the
    vocabulary projection (`MMVocabProjection`: one position, few rows, no grad) gives what `nn.Linear` gives."""
    from modeling_mm.modeling_mm import MMVocabProjection

    model = _captioner("late")
    inputs = tester.get_inputs()
    with torch.no_grad():
        full = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]).logits
        last = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], logits_to_keep=1).logits
        picked = model(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], logits_to_keep=torch.tensor([0, 2])
        ).logits
    assert last.shape == (full.shape[0], 1, full.shape[-1])
    torch.testing.assert_close(last, full[:, -1:])
    torch.testing.assert_close(picked, full[:, [0, 2]])
    # With labels the loss needs every position, whatever logits_to_keep says.
    labels = inputs["input_ids"]
    out = model(input_ids=labels, pixel_values=inputs["pixel_values"], labels=labels, logits_to_keep=1)
    assert out.logits.shape == full.shape
    assert full.is_contiguous(), "only single-position (decoding) logits take the transposed path"
    head = model.text_decoder.lm_head
    hidden = torch.randn(3, 1, head.in_features)
    with torch.no_grad():
        fast = head(hidden)
    assert not fast.is_contiguous(), "the decoding step takes the transposed path"
    torch.testing.assert_close(fast, torch.nn.functional.linear(hidden, head.weight))
    assert fast.shape == (3, 1, head.out_features)
    biased = MMVocabProjection(head.in_features, 7)
    with torch.no_grad():
        torch.testing.assert_close(biased(hidden), torch.nn.functional.linear(hidden, biased.weight, biased.bias))
    # Forward hooks see the projection (profilers, LoRA and module breakdowns rely on them).
    seen = []
    handle = head.register_forward_hook(lambda *args: seen.append(True))
    model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=2)
    handle.remove()
    assert len(seen) == 2


def test_resize_token_embeddings_keeps_the_tied_projection_and_accepts_new_ids():
    from modeling_mm.modeling_mm import MMVocabProjection

    model = _captioner("late")
    old = model.config.text_config.vocab_size
    model.resize_token_embeddings(old + 3)
    head = model.get_output_embeddings()
    assert isinstance(head, MMVocabProjection) and head.out_features == old + 3
    assert head.weight is model.get_input_embeddings().weight, "the LM head stays tied to the word embeddings"
    inputs = tester.get_inputs()
    input_ids = inputs["input_ids"].clone()
    input_ids[:, 1] = old + 2  # a new token
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=inputs["pixel_values"]).logits
    assert logits.shape[-1] == old + 3
    loss = model(input_ids=input_ids, pixel_values=inputs["pixel_values"], labels=input_ids).loss
    assert torch.isfinite(loss), "labels with the new ids are accepted too"
    assert model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=2).shape[1] == 3


def test_pretraining_resize_reaches_the_captioning_decoder():
    """With the `lm` objective, a new token id must be valid for MLM and for the decoder's own embeddings and head."""
    model = _head(MMForPreTraining, "hybrid", initializer_range=0.2)
    old = model.config.text_config.vocab_size
    model.resize_token_embeddings(old + 2)
    decoder = model.text_decoder
    assert decoder.embeddings.word_embeddings.num_embeddings == old + 2 and decoder.lm_head.out_features == old + 2
    assert decoder.lm_head.weight is decoder.embeddings.word_embeddings.weight
    assert model.mlm_head.decoder.out_features == old + 2
    inputs = tester.get_pretraining_inputs()
    inputs["input_ids"][:, 2] = old + 1  # the new token, in the caption the decoder reads and predicts
    out = model(**inputs)
    assert torch.isfinite(out.loss) and out.lm_logits.shape[-1] == old + 2


def test_untied_lm_head_survives_save_load_and_resize(tmp_path):
    """An untied captioning head keeps its trained weights through from_pretrained (post_init must not re-randomise
    it) and through resizing (the new head keeps the decoder's projection class and its initialised flag)."""
    from modeling_mm.modeling_mm import MMVocabProjection

    model = _head(MMForConditionalGeneration, "late", tie_word_embeddings=False)
    with torch.no_grad():
        model.text_decoder.lm_head.weight.fill_(0.25)
    assert model.text_decoder.lm_head.weight is not model.get_input_embeddings().weight
    model.save_pretrained(tmp_path)
    reloaded = MMForConditionalGeneration.from_pretrained(tmp_path)
    assert torch.equal(reloaded.text_decoder.lm_head.weight, model.text_decoder.lm_head.weight)
    old = model.config.text_config.vocab_size
    reloaded.resize_token_embeddings(old + 4)
    head = reloaded.get_output_embeddings()
    assert isinstance(head, MMVocabProjection) and head.out_features == old + 4
    assert torch.equal(head.weight[:old], model.text_decoder.lm_head.weight)
    reloaded.post_init()
    assert torch.equal(reloaded.get_output_embeddings().weight[:old], model.text_decoder.lm_head.weight)


def test_past_key_values_is_accepted_as_the_former_name_of_cache():
    model = _captioner("hybrid")
    inputs = tester.get_inputs()
    prompt, pixel_values = inputs["input_ids"][:, :3], inputs["pixel_values"]
    with torch.no_grad():
        first = model(input_ids=prompt, pixel_values=pixel_values, use_cache=True)
        step = prompt[:, -1:] + 1
        by_new_name = model(input_ids=step, cache=copy.deepcopy(first.cache), use_cache=True)
        by_old_name = model(input_ids=step, past_key_values=copy.deepcopy(first.cache), use_cache=True)
    # A dropped cache would fail outright: no pixel_values are passed, so only the cached image keys make it work.
    torch.testing.assert_close(by_old_name.logits, by_new_name.logits)


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_captioning_output_carries_the_image_encoder_output(fusion):
    model = _captioner(fusion)
    inputs = tester.get_inputs()
    with torch.no_grad():
        out = model(**inputs, output_attentions=True, output_hidden_states=True)
    image = out.image_outputs
    assert image.last_hidden_state.shape[:2] == (tester.batch_size, 1 + (16 // 4) ** 2)
    assert len(image.hidden_states) == tester.num_layers + 1 and len(image.attentions) == tester.num_layers
    assert len(out.attentions) == len(out.cross_attentions) == model.config.num_decoder_layers
    assert len(out.hidden_states) == model.config.num_decoder_layers + 1


def test_generate_returns_dict_outputs_with_attentions_and_hidden_states():
    model = _captioner("hybrid")
    assert model.config.text_config.use_cache is True
    pixel_values = tester.get_inputs()["pixel_values"]
    out = model.generate(
        pixel_values=pixel_values, max_new_tokens=3, do_sample=False, return_dict_in_generate=True,
        output_attentions=True, output_hidden_states=True, output_scores=True,
    )
    assert out.sequences.shape == (tester.batch_size, 4)
    assert len(out.scores) == 3 and len(out.attentions) == 3 and len(out.hidden_states) == 3
    assert len(out.attentions[0]) == model.config.num_decoder_layers
    plain = model.generate(pixel_values=pixel_values, max_new_tokens=3, do_sample=False)
    assert torch.equal(out.sequences, plain)


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_assisted_decoding_matches_greedy(fusion):
    """With an assistant model (here a second copy), greedy assisted decoding must give greedy's tokens."""
    model = _captioner(fusion)
    assistant = _captioner(fusion)
    pixel_values = tester.get_inputs()["pixel_values"][:1]
    greedy = model.generate(pixel_values=pixel_values, max_new_tokens=6, do_sample=False)
    assisted = model.generate(pixel_values=pixel_values, max_new_tokens=6, do_sample=False, assistant_model=assistant)
    assert torch.equal(assisted, greedy)


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_beam_search_with_and_without_cache(fusion):
    model = _captioner(fusion)
    pixel_values = tester.get_inputs()["pixel_values"]
    kwargs = dict(pixel_values=pixel_values, max_new_tokens=8, num_beams=3, num_return_sequences=2, do_sample=False)
    cached = model.generate(**kwargs, use_cache=True)
    uncached = model.generate(**kwargs, use_cache=False)
    assert cached.shape[0] == tester.batch_size * 2, "num_return_sequences sequences per image"
    assert torch.equal(cached, uncached)
    # Sequences come grouped per image, best first, and the two returned beams of an image differ.
    beams = model.generate(**kwargs, output_scores=True, return_dict_in_generate=True)
    scores = beams.sequences_scores.view(tester.batch_size, 2)
    assert (scores[:, 0] >= scores[:, 1]).all()
    pairs = beams.sequences.view(tester.batch_size, 2, -1)
    assert all(not torch.equal(pair[0], pair[1]) for pair in pairs)


def test_sampling_is_reproducible_with_a_seed():
    model = _captioner("hybrid")
    pixel_values = tester.get_inputs()["pixel_values"]
    kwargs = dict(pixel_values=pixel_values, max_new_tokens=8, do_sample=True, top_k=0, temperature=1.0)
    torch.manual_seed(11)
    first = model.generate(**kwargs)
    torch.manual_seed(11)
    second = model.generate(**kwargs)
    torch.manual_seed(12)
    other = model.generate(**kwargs)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert first.shape == (tester.batch_size, 9)


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_prompt_is_continued(fusion):
    """A prompt (e.g. `[CLS] question`) is kept as the prefix, and the first new token is the forward pass's argmax."""
    model = _captioner(fusion)
    pixel_values = tester.get_inputs()["pixel_values"]
    prompt = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10], [1, 11, 12, 13]])
    out = model.generate(pixel_values=pixel_values, input_ids=prompt, max_new_tokens=4, do_sample=False)
    assert out.shape == (3, 8)
    assert torch.equal(out[:, :4], prompt)
    with torch.no_grad():
        logits = model(input_ids=prompt, pixel_values=pixel_values).logits
    assert torch.equal(out[:, 4], logits[:, -1].argmax(-1))
    assert torch.equal(out, model.generate(pixel_values=pixel_values, input_ids=prompt, max_new_tokens=4, use_cache=False))


def test_left_padded_prompts_match_unbatched_generation():
    model = _captioner("hybrid")
    pixel_values = tester.get_inputs()["pixel_values"][:2]
    prompts = torch.tensor([[1, 5, 6, 7], [0, 1, 8, 9]])  # row 1: one pad on the left
    attention_mask = (prompts != 0).long()
    batched = model.generate(
        pixel_values=pixel_values, input_ids=prompts, attention_mask=attention_mask, max_new_tokens=5, do_sample=False
    )
    alone = model.generate(pixel_values=pixel_values[1:], input_ids=prompts[1:, 1:], max_new_tokens=5, do_sample=False)
    assert torch.equal(batched[1, 1:], alone[0])


# ----------------------------------------------------------------------------------------------------------------------
# Loading: from a pretraining checkpoint, from tower checkpoints
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretraining_checkpoints(tmp_path_factory) -> dict[str, str]:
    """An MMForPreTraining checkpoint per fusion style (all objectives it supports, so all its heads exist)."""
    paths = {}
    for fusion in FUSIONS:
        torch.manual_seed(0)
        objectives = {"early": ["itm", "mlm"], "late": ["itc", "lm"], "hybrid": ["itc", "itm", "mlm", "lm"]}[fusion]
        model = MMForPreTraining(tester.get_config(fusion, objectives=objectives))
        path = tmp_path_factory.mktemp(f"pretrained_{fusion}")
        model.save_pretrained(path)
        paths[fusion] = str(path)
    return paths


def _load_logged(load, *args, **kwargs) -> tuple[torch.nn.Module, str]:
    """Runs a loading function and returns `(model, captured transformers warnings)`."""
    loggers = [hf_logging.get_logger("transformers.modeling_utils"), hf_logging.get_logger("modeling_mm.modeling_mm")]
    with LoggingLevel(logging.WARNING), CaptureLogger(loggers[0]) as log_a, CaptureLogger(loggers[1]) as log_b:
        model = load(*args, **kwargs)
    return model, log_a.out + log_b.out


# Per head: modules that a pretraining checkpoint does not have, so the load log must name them as new.
NEW_HEAD_MODULES = {
    MMForVisualQuestionAnswering: ["classifier"],
    MMForImageTextClassification: ["classifier"],
    MMForImageTextRetrieval: [],  # ITC projections and itm_head come from pretraining
    MMForConditionalGeneration: [],  # the LM objective trained text_decoder
}


@pytest.mark.parametrize("head, fusion", HEAD_FUSIONS, ids=lambda x: getattr(x, "__name__", x))
def test_from_pretraining_checkpoint(head, fusion, pretraining_checkpoints):
    path = pretraining_checkpoints[fusion]
    pretrained = MMForPreTraining.from_pretrained(path).state_dict()
    kwargs = {"num_labels": NUM_LABELS} if head in CLASSIFIERS else {}
    model, log = _load_logged(head.from_pretrained, path, **kwargs)
    state = model.state_dict()
    shared = [k for k in state if k.startswith("mm.")]
    assert shared and all(torch.equal(state[k], pretrained[k]) for k in shared)
    reused = [k for k in state if k.split(".")[0] in ("itm_head", "text_decoder")]
    assert all(torch.equal(state[k], pretrained[k]) for k in reused)
    missing = [line for line in log.splitlines() if "| MISSING" in line]  # rows of the load report's table
    for name in NEW_HEAD_MODULES[head]:
        assert any(line.strip().startswith(name) for line in missing), log
    assert all(line.split(".")[0].strip() in NEW_HEAD_MODULES[head] for line in missing), log
    if head in CLASSIFIERS:
        assert model.config.num_labels == NUM_LABELS
        assert len(model.classifier[-1].bias) == NUM_LABELS


def test_captioning_from_checkpoint_without_lm_reports_a_new_decoder(tmp_path):
    """A late pretraining run with the default objectives (ITC only) has no decoder: the captioning head must say
    that its decoder is newly initialised rather than load an untrained one silently."""
    MMForPreTraining(tester.get_config("late")).save_pretrained(tmp_path)
    model, log = _load_logged(MMForConditionalGeneration.from_pretrained, tmp_path)
    missing = [line for line in log.splitlines() if "| MISSING" in line]
    assert any(line.strip().startswith("text_decoder.") for line in missing), log


@pytest.fixture(scope="module")
def tower_checkpoints(tmp_path_factory) -> dict[str, str]:
    config = tester.get_config("late")
    folder = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    MMVisionModel(config.vision_config).save_pretrained(folder / "vision")
    MMTextModel(config.text_config).save_pretrained(folder / "text")
    return {"vision": str(folder / "vision"), "text": str(folder / "text")}


@pytest.mark.parametrize(
    "head, fusion", [*HEAD_FUSIONS, *((h, "coattention") for h in HEADS)], ids=lambda x: getattr(x, "__name__", x)
)
def test_from_vision_text_pretrained_on_every_head(head, fusion, tower_checkpoints):
    kwargs = dict(fusion=fusion, projection_dim=16, num_fusion_layers=1, num_decoder_layers=1)
    if head in CLASSIFIERS:
        kwargs["num_labels"] = NUM_LABELS
    vision_path = tower_checkpoints["vision"]
    if fusion == "early":
        # The joint encoder embeds patches itself: only the text tower is loaded, the patch geometry comes from config.
        vision_path, kwargs["vision_config"] = None, tester.get_config("early").vision_config
    model, log = _load_logged(head.from_vision_text_pretrained, vision_path, tower_checkpoints["text"], **kwargs)
    assert isinstance(model, head)
    text = MMTextModel.from_pretrained(tower_checkpoints["text"]).state_dict()
    if head is MMForConditionalGeneration:
        # Captioning builds no text tower: its decoder starts from the tower's word embeddings.
        assert not hasattr(model.mm, "text_model")
        assert torch.equal(model.text_decoder.embeddings.word_embeddings.weight, text["embeddings.word_embeddings.weight"])
    else:
        for name, value in text.items():
            assert torch.equal(model.mm.text_model.state_dict()[name], value), name
    if fusion != "early":
        vision = MMVisionModel.from_pretrained(tower_checkpoints["vision"]).state_dict()
        for name, value in vision.items():
            assert torch.equal(model.mm.vision_model.state_dict()[name], value), name
    assert "newly initialized" in log
    new_head = {
        MMForVisualQuestionAnswering: "classifier",
        MMForImageTextClassification: "classifier",
        MMForImageTextRetrieval: "itm_head" if fusion != "late" else "mm.visual_projection",
        MMForConditionalGeneration: "text_decoder",
    }[head]
    assert new_head in log, log
    model.eval()
    inputs = _inputs_for(head, fusion)
    with torch.no_grad():
        out = model(**{k: v for k, v in inputs.items() if k not in ("labels", "image_ids")})
    assert all(torch.isfinite(v).all() for v in out.values() if torch.is_tensor(v))


# ----------------------------------------------------------------------------------------------------------------------
# Retrieval scoring
# ----------------------------------------------------------------------------------------------------------------------


def test_itm_rerank_puts_top_k_above_the_rest():
    model = _head(MMForImageTextRetrieval, "hybrid").eval()
    texts = MMModelTester(batch_size=6, image_size=16, patch_size=4).get_inputs(seed=1)
    pixel_values = tester.get_inputs()["pixel_values"][:2]
    top_k = 3
    scores = model.rank_texts(pixel_values, texts["input_ids"], texts["attention_mask"], top_k=top_k)
    assert scores.shape == (2, 6)
    with torch.no_grad():
        cosine = model.embed_image(pixel_values) @ model.embed_text(
            texts["input_ids"], texts["attention_mask"]
        ).t()
    for row in range(2):
        top = set(cosine[row].topk(top_k).indices.tolist())
        rest = [j for j in range(6) if j not in top]
        top = sorted(top)
        assert scores[row, top].min() > scores[row, rest].max()
        torch.testing.assert_close(scores[row, rest], cosine[row, rest], atol=1e-5, rtol=0)
        # Inside the top-k the order is ITM's: 1 + p(match) of each pair.
        match = model.itm_scores(texts["input_ids"][top], pixel_values[row].expand(top_k, -1, -1, -1),
                                 texts["attention_mask"][top])
        torch.testing.assert_close(scores[row, top], 1.0 + match, atol=1e-5, rtol=0)


def test_rank_texts_per_fusion():
    texts = tester.get_inputs()
    late = _head(MMForImageTextRetrieval, "late").eval()
    scores = late.rank_texts(texts["pixel_values"], texts["input_ids"], texts["attention_mask"], top_k=2)
    assert scores.abs().max() <= 1.0 + 1e-5, "late fusion has no ITM: plain cosine similarities"
    with pytest.raises(ValueError, match="ITM scores need fusion='hybrid' or 'early'"):
        late.itm_scores(texts["input_ids"], texts["pixel_values"], texts["attention_mask"])
    early = _head(MMForImageTextRetrieval, "early").eval()
    with pytest.raises(ValueError, match="rank_texts needs unimodal embeddings"):
        early.rank_texts(texts["pixel_values"], texts["input_ids"])
    probabilities = early.itm_scores(texts["input_ids"], texts["pixel_values"], texts["attention_mask"])
    assert probabilities.shape == (tester.batch_size,) and ((0 <= probabilities) & (probabilities <= 1)).all()


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", CLASSIFIERS)
@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.tensor([0, 1, NUM_LABELS]), r"labels must be class ids in \[0, 5\)"),
        (torch.tensor([0, -1, 2]), r"labels must be class ids in \[0, 5\)"),
        (torch.zeros(3, NUM_LABELS + 1), r"must have shape \(3, 5\), got \(3, 6\)"),
        (torch.tensor([0.0, 1.0, 2.0]), r"must have shape \(3, 5\), got \(3,\)"),
    ],
)
def test_classifier_bad_labels_are_clear_errors(head, labels, match):
    model = _head(head, "hybrid")
    with pytest.raises(ValueError, match=match):
        model(**tester.get_inputs(), labels=labels)


@pytest.mark.parametrize("head", CLASSIFIERS)
def test_classifier_needs_both_modalities_and_equal_batches(head):
    model = _head(head, "late")
    inputs = tester.get_inputs()
    with pytest.raises(ValueError, match="needs both input_ids and pixel_values"):
        model(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="Batch sizes differ"):
        model(**dict(inputs, pixel_values=inputs["pixel_values"][:2]))


@pytest.mark.parametrize(
    "make_labels",
    [
        lambda ids: torch.zeros(ids.shape[0], ids.shape[1] + 2, dtype=torch.long),  # wrong length
        lambda ids: ids.float(),  # not token ids
        lambda ids: ids.masked_fill(ids == ids[0, 1], 500),  # outside the vocabulary
    ],
    ids=["shape", "dtype", "range"],
)
def test_captioning_bad_labels_are_clear_errors(make_labels):
    model = _head(MMForConditionalGeneration, "late")
    inputs = tester.get_inputs()
    with pytest.raises(ValueError, match="labels"):
        model(**inputs, labels=make_labels(inputs["input_ids"]))


def test_captioning_needs_an_image():
    model = _head(MMForConditionalGeneration, "hybrid")
    with pytest.raises(ValueError, match="needs pixel_values"):
        model(input_ids=tester.get_inputs()["input_ids"])


def test_retrieval_mismatched_pairs_are_clear_errors():
    model = _head(MMForImageTextRetrieval, "hybrid").train()
    inputs = tester.get_inputs()
    with pytest.raises(ValueError, match="Batch sizes differ"):
        model(**dict(inputs, pixel_values=inputs["pixel_values"][:2]))


# ----------------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------------


def _stack(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def test_gradient_accumulation_does_not_scale_the_loss(tmp_path):
    from transformers import Trainer, TrainingArguments

    inputs = MMModelTester(batch_size=4, image_size=16, patch_size=4).get_inputs()
    inputs["labels"] = torch.tensor([0, 1, 2, 3])
    rows = [{key: value[i] for key, value in inputs.items()} for i in range(4)]
    logged = {}
    for accumulation, batch_size in ((1, 4), (2, 2)):
        args = TrainingArguments(
            str(tmp_path), per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
            max_steps=1, logging_steps=1, learning_rate=0.0, report_to="none", save_strategy="no", use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(model=_head(MMForVisualQuestionAnswering, "late"), args=args, train_dataset=rows,
                          data_collator=_stack)
        trainer.train()
        logged[accumulation] = trainer.state.log_history[0]["loss"]
    # Two half batches of two rows average to the loss of the full batch of four.
    assert logged[2] == pytest.approx(logged[1], rel=1e-4)
