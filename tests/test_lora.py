"""LoRA on the MM heads (training/lora.py): wrap, save, reload, merge, freeze modes, trainable fraction."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoModelForVisualQuestionAnswering

from modeling_mm import (
    MMConfig,
    MMForConditionalGeneration,
    MMForImageTextClassification,
    MMForImageTextRetrieval,
    MMForPreTraining,
    MMForVisualQuestionAnswering,
)
from mm_tester import FUSIONS, MMModelTester
from training.lora import (
    apply_lora,
    default_lora_target_modules,
    default_modules_to_save,
    freeze_parts,
    model_parts,
    resolve_freeze,
    trainable_parameter_report,
)


tester = MMModelTester(image_size=16, patch_size=4)  # 16 patches: fast on a shared CPU
NUM_LABELS = 5
HEAD_FUSIONS = [
    (h, f)
    for h in (MMForVisualQuestionAnswering, MMForImageTextClassification, MMForImageTextRetrieval, MMForConditionalGeneration)
    for f in FUSIONS
    if not (h is MMForConditionalGeneration and f == "early")
]


def _kwargs(head: type) -> dict:
    return {"num_labels": NUM_LABELS} if head in (MMForVisualQuestionAnswering, MMForImageTextClassification) else {}


def _inputs(head: type, video: bool = False) -> dict[str, torch.Tensor]:
    inputs = tester.get_inputs(video=video)
    if head in (MMForVisualQuestionAnswering, MMForImageTextClassification):
        inputs["labels"] = torch.tensor([0, 3, 4])
    elif head is MMForConditionalGeneration:
        inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    return inputs


def _outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inference outputs (no labels), for comparisons."""
    model.eval()
    with torch.no_grad():
        out = model(**{k: v for k, v in inputs.items() if k != "labels"})
    return {k: v for k, v in out.items() if torch.is_tensor(v) and k != "loss"}


def _train_steps(model: torch.nn.Module, inputs: dict[str, torch.Tensor], steps: int = 3) -> None:
    """A few large steps so that the LoRA B matrices (zero at init) and the head move away from their init."""
    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.fixture(scope="module")
def pretraining_checkpoints(tmp_path_factory) -> dict[str, str]:
    paths = {}
    for fusion in FUSIONS:
        objectives = {"early": ["itm", "mlm"], "late": ["itc", "lm"], "hybrid": ["itc", "itm", "mlm", "lm"]}[fusion]
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(f"pretrained_{fusion}")
        MMForPreTraining(tester.get_config(fusion, objectives=objectives)).save_pretrained(path)
        paths[fusion] = str(path)
    return paths


# ----------------------------------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head, fusion", HEAD_FUSIONS, ids=lambda x: getattr(x, "__name__", x))
def test_adapter_save_load_and_merge_round_trip(head, fusion, pretraining_checkpoints, tmp_path):
    checkpoint = pretraining_checkpoints[fusion]
    inputs = _inputs(head)
    torch.manual_seed(0)
    model = apply_lora(head.from_pretrained(checkpoint, **_kwargs(head)))
    _train_steps(model, inputs)
    expected = _outputs(model, inputs)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    # A fresh base: same pretrained towers, a *different* random head, which the adapter must overwrite.
    torch.manual_seed(1234)
    reloaded = PeftModel.from_pretrained(head.from_pretrained(checkpoint, **_kwargs(head)), tmp_path / "adapter")
    got = _outputs(reloaded, inputs)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key

    saved_heads = default_modules_to_save(model.get_base_model())
    for name in saved_heads:
        trained = model.get_base_model().get_submodule(name).modules_to_save["default"].state_dict()
        restored = reloaded.get_base_model().get_submodule(name).modules_to_save["default"].state_dict()
        assert trained.keys() == restored.keys()
        assert all(torch.equal(trained[k], restored[k]) for k in trained), name

    merged = reloaded.merge_and_unload()
    assert type(merged) is head
    assert not any("lora_" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path / "merged")
    auto = {MMForVisualQuestionAnswering: AutoModelForVisualQuestionAnswering,
            MMForConditionalGeneration: AutoModelForImageTextToText}.get(head, head)
    plain = auto.from_pretrained(tmp_path / "merged")
    assert type(plain) is head
    got = _outputs(plain, inputs)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=0, msg=key)


def test_merged_captioner_generates_like_the_adapter(pretraining_checkpoints, tmp_path):
    inputs = _inputs(MMForConditionalGeneration)
    model = apply_lora(MMForConditionalGeneration.from_pretrained(pretraining_checkpoints["hybrid"]))
    _train_steps(model, inputs, steps=5)
    model.eval()
    expected = model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=6, do_sample=False)
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path)
    plain = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert torch.equal(plain.generate(pixel_values=inputs["pixel_values"], max_new_tokens=6, do_sample=False), expected)


# ----------------------------------------------------------------------------------------------------------------------
# Defaults and freeze modes
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head, fusion", HEAD_FUSIONS, ids=lambda x: getattr(x, "__name__", x))
def test_default_targets_per_fusion(head, fusion):
    torch.manual_seed(0)
    base = head(tester.get_config(fusion, **_kwargs(head)))
    assert default_lora_target_modules(base) == ["q_proj", "v_proj"]
    model = apply_lora(base)
    adapted = {n.rsplit(".lora_A", 1)[0].removeprefix("base_model.model.") for n, _ in model.named_parameters()
               if ".lora_A." in n}
    expected_roots = {"early": ["mm.text_model."], "late": ["mm.vision_model.", "mm.text_model."],
                      "hybrid": ["mm.vision_model.", "mm.text_model.", "mm.fusion_layers."]}[fusion]
    if head is MMForConditionalGeneration:
        # Captioning runs the vision tower and the decoder only; the text tower and fusion layers stay frozen.
        expected_roots = ["mm.vision_model.", "text_decoder."]
    for root in expected_roots:
        assert any(n.startswith(root) for n in adapted), root
    assert all(any(n.startswith(root) for root in expected_roots) for n in adapted)
    assert all(n.rsplit(".", 1)[-1] in ("q_proj", "v_proj") for n in adapted)
    if fusion == "hybrid" and head is not MMForConditionalGeneration:
        # The fusion layers' cross-attention to the image is adapted too.
        assert "mm.fusion_layers.0.cross_attn.q_proj" in adapted and "mm.fusion_layers.0.cross_attn.v_proj" in adapted
    saved = default_modules_to_save(base)
    expected_saved = {
        MMForVisualQuestionAnswering: ["classifier"],
        MMForImageTextClassification: ["classifier"],
        MMForImageTextRetrieval: {"early": ["itm_head"], "late": ["mm.visual_projection", "mm.text_projection"],
                                  "hybrid": ["itm_head", "mm.visual_projection", "mm.text_projection"]}[fusion],
        MMForConditionalGeneration: [],
    }[head]
    assert saved == expected_saved


def test_captioning_holds_no_part_it_never_runs():
    """The captioning head builds only the vision tower and its decoder, so nothing it holds goes untrained, and
    asking to train a part it does not have is an error naming the part."""
    base = MMForConditionalGeneration(tester.get_config("hybrid"))
    parts = model_parts(base)
    assert parts["text"] == [] and parts["fusion"] == [] and parts["vision"] and parts["decoder"]
    with pytest.raises(ValueError, match="has no text part"):
        apply_lora(base, freeze={"text": "full"})


def test_bert_text_tower_targets_query_and_value():
    from transformers import BertConfig

    config = MMConfig(
        fusion="hybrid",
        vision_config=tester.get_config("late").vision_config,
        text_config=BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=37),
        projection_dim=16, num_fusion_layers=1, num_decoder_layers=1, num_labels=NUM_LABELS,
    )
    base = MMForVisualQuestionAnswering(config)
    assert default_lora_target_modules(base) == ["q_proj", "query", "v_proj", "value"]
    model = apply_lora(base)
    adapted = {n for n, _ in model.named_parameters() if ".lora_A." in n}
    assert any(".text_model.encoder.layer.0.attention.self.query.lora_A" in n for n in adapted)
    assert any(".text_model.encoder.layer.0.attention.self.value.lora_A" in n for n in adapted)
    assert any(".vision_model.layers.0.self_attn.q_proj.lora_A" in n for n in adapted)
    _train_steps(model, _inputs(MMForVisualQuestionAnswering), steps=1)


ROOTS = {"vision": "mm.vision_model", "text": "mm.text_model", "fusion": "mm.fusion_layers"}


@pytest.mark.parametrize(
    "fusion, freeze",
    [
        ("hybrid", {"vision": "frozen", "text": "full", "fusion": "lora"}),
        ("hybrid", {"vision": "lora", "text": "frozen", "fusion": "full"}),
        ("late", {"vision": "full", "text": "lora"}),
        ("late", {"vision": "lora", "text": "frozen"}),
    ],
)
def test_freeze_modes_do_what_they_say(fusion, freeze):
    torch.manual_seed(0)
    base = MMForVisualQuestionAnswering(tester.get_config(fusion, num_labels=NUM_LABELS))
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = apply_lora(base, freeze=freeze)
    params = {n.removeprefix("base_model.model."): p.requires_grad for n, p in model.named_parameters()}

    for part, mode in freeze.items():
        flags = {n: f for n, f in params.items() if n.startswith(ROOTS[part] + ".")}
        assert flags, part
        if mode == "frozen":
            assert not any(flags.values()) and not any("lora_" in n for n in flags), part
        elif mode == "lora":
            assert any("lora_" in n for n in flags), part
            assert all(f == ("lora_" in n) for n, f in flags.items()), f"{part}: only the adapters train"
        else:  # full: a trained copy of every weight (peft's modules_to_save), originals frozen, no adapters
            assert not any("lora_" in n for n in flags), part
            copies = {n.replace(".modules_to_save.default.", "."): f for n, f in flags.items() if ".modules_to_save." in n}
            assert all(copies.values()) and not any(f for n, f in flags.items() if ".original_module." in n)
            assert set(copies) == {n for n in before if n.startswith(ROOTS[part] + ".")}, "every weight trains"
    head = {n: f for n, f in params.items() if n.startswith("classifier.modules_to_save.")}
    assert head and all(head.values())

    _train_steps(model, _inputs(MMForVisualQuestionAnswering), steps=2)
    after = dict(model.merge_and_unload().named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    for part, mode in freeze.items():
        moved = {n for n in changed if n.startswith(ROOTS[part] + ".")}
        assert bool(moved) == (mode != "frozen"), part
    assert any(n.startswith("classifier.") for n in changed)


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("freeze", [{}, {"vision": "full"}, {"vision": "frozen", "text": "lora"}])
def test_wrapping_keeps_outputs_for_every_freeze_mode(fusion, freeze):
    """Before training, a wrapped model (LoRA B = 0, saved copies equal to the originals) computes exactly what the
    base model computes, on video too: the `full` towers keep their class, so the video path is unchanged."""
    torch.manual_seed(0)
    base = MMForVisualQuestionAnswering(tester.get_config(fusion, num_labels=NUM_LABELS))
    inputs = tester.get_inputs(video=True)
    expected = _outputs(base, inputs)
    model = apply_lora(base, freeze=freeze)
    got = _outputs(model, inputs)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_freeze_parts_without_lora(fusion):
    model = MMForVisualQuestionAnswering(tester.get_config(fusion, num_labels=NUM_LABELS))
    freeze_parts(model, {"vision": "frozen", "text": "full"})
    vision_root = "mm.vision_embeddings." if fusion == "early" else "mm.vision_model."
    for name, param in model.named_parameters():
        assert param.requires_grad == (not name.startswith(vision_root)), name
    with pytest.raises(ValueError, match="without LoRA a part is 'frozen' or 'full'"):
        freeze_parts(model, {"text": "lora"})
    if fusion == "late":
        with pytest.raises(ValueError, match="has no fusion part"):
            freeze_parts(model, {"fusion": "frozen"})


def test_freeze_validation():
    with pytest.raises(ValueError, match="unknown part 'audio'"):
        resolve_freeze({"audio": "lora"})
    with pytest.raises(ValueError, match=r"freeze\['vision'\] must be one of"):
        resolve_freeze({"vision": "partial"})
    assert resolve_freeze({"vision": "frozen"}) == {"vision": "frozen", "text": "lora", "fusion": "lora", "decoder": "lora"}
    late = MMForVisualQuestionAnswering(tester.get_config("late", num_labels=NUM_LABELS))
    with pytest.raises(ValueError, match="has no fusion part"):
        apply_lora(late, freeze={"fusion": "full"})
    with pytest.raises(ValueError, match="nothing to adapt"):
        apply_lora(late, freeze={"vision": "frozen", "text": "full"})
    assert model_parts(late)["fusion"] == [] and model_parts(late)["vision"] == ["mm.vision_model"]


# ----------------------------------------------------------------------------------------------------------------------
# Trainable fraction at a realistic width
# ----------------------------------------------------------------------------------------------------------------------


def _mid_config(fusion: str) -> MMConfig:
    """Hidden 256, 4 layers per tower, 2 fusion and 2 decoder layers, the BERT vocabulary (30,522)."""
    vision = dict(image_size=32, patch_size=4, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=1024)
    text = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                max_position_embeddings=64)
    return MMConfig(fusion=fusion, vision_config=vision, text_config=text, num_fusion_layers=2, num_decoder_layers=2,
                    projection_dim=256, num_labels=13)


@pytest.mark.parametrize("head, fusion", HEAD_FUSIONS, ids=lambda x: getattr(x, "__name__", x))
def test_default_trainable_fraction_is_small(head, fusion):
    torch.manual_seed(0)
    model = apply_lora(head(_mid_config(fusion)))
    report = trainable_parameter_report(model)
    print(f"{head.__name__} {fusion}: {report['trainable']:,} / {report['total']:,} = {report['fraction']:.2%}")
    assert report["fraction"] <= 0.05
    assert report["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_trainable_parameter_report_counts_tied_weights_once():
    model = MMForConditionalGeneration(tester.get_config("late"))
    report = trainable_parameter_report(model)
    assert report["total"] == sum(p.numel() for p in model.parameters())  # parameters() dedups the tied LM head
    assert report["trainable"] == report["total"] and report["fraction"] == 1.0
