"""transformers' `ModelTesterMixin` and `ConfigTester` run against every MM model class and config.

The layout is transformers' own (`tests/models/clip/test_modeling_clip.py`): a `*ModelTester` per model builds a tiny
config (the sizes of tests/mm_tester.py: hidden 32, 2 layers, 4 heads, 30 px images, 2 px patches, vocab 99) and its
inputs; a `unittest.TestCase` per model combines it with the mixin. The common test files come from the sdist of the
installed transformers (see fetch.py).

Classes covered:

- towers: `MMVisionModel`, `MMTextModel`, `MMEfficientNetLiteModel` (one class each);
- per fusion (early, late, hybrid, coattention), one test class whose `all_model_classes` holds `MMModel` and representative heads.
  All 17 head x fusion pairs took ~5 min of CPU (~11 min wall on the shared 2-core machine), twice this step's
  budget, so each pair whose code path another pair already runs is left out:

  | head                            | early | late | hybrid | why                                                     |
  |---------------------------------|-------|------|--------|---------------------------------------------------------|
  | `MMModel`                       | x     | x    | x      | a different forward per fusion                          |
  | `MMForPreTraining`              | x     | x    | x      | different objectives per fusion                         |
  | `MMForImageTextRetrieval`       | x     |      | x      | late = its pretraining (ITC) path plus `MMModel`        |
  | `MMForVisualQuestionAnswering`  |       |      | x      | same `_MMClassifierBase` code as the next row; early    |
  | `MMForImageTextClassification`  |       | x    |        |   reads the fused `[CLS]` as hybrid does                |
  | `MMForConditionalGeneration`    | -     | x    | x      | early has no vision tower to caption from               |

  Co-attention runs `MMModel`, `MMForVisualQuestionAnswering` and `MMForConditionalGeneration`: its pretraining and
  retrieval heads go through the same objective methods as hybrid's, with the co-attention `fuse`.
- `ConfigTester` for `MMVisionConfig`, `MMTextConfig`, `MMEfficientNetLiteConfig` and `MMConfig` (each fusion).

Not run: `PipelineTesterMixin` (its per-task tests live in transformers' `tests/pipelines/`, which the sdist lacks),
the `generate()` suite (`tests/generation/`, also absent; see standins.py) and the export tests (`tests/exporters/`).

Every skip added here carries its reason; the mixin's own skips (GPU, flash attention, slow, ...) are transformers'.
"""

import copy
import re
import unittest

import torch
from mm_tester import MMModelTester as SharedSizes

from modeling_mm import (
    MMConfig,
    MMEfficientNetLiteConfig,
    MMEfficientNetLiteModel,
    MMForConditionalGeneration,
    MMForImageTextClassification,
    MMForImageTextRetrieval,
    MMForPreTraining,
    MMForVisualQuestionAnswering,
    MMModel,
    MMTextConfig,
    MMTextModel,
    MMVisionConfig,
    MMVisionModel,
)

from .fetch import load_common_tests
from .standins import GenerationTesterMixin


common = load_common_tests()
ModelTesterMixin = common.ModelTesterMixin
ConfigTester = common.ConfigTester

SIZES = SharedSizes()


def _floats(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _ids(shape: tuple[int, ...], vocab_size: int, seed: int, low: int = 3) -> torch.Tensor:
    return torch.randint(low, vocab_size, shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------------
# Testers
# ----------------------------------------------------------------------------------------------------------------------


class MMVisionModelTester:
    def __init__(self, parent, batch_size: int = SIZES.batch_size, is_training: bool = True):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = SIZES.image_size
        self.patch_size = SIZES.patch_size
        self.num_channels = 3
        self.hidden_size = SIZES.hidden_size
        self.num_hidden_layers = SIZES.num_layers
        self.num_attention_heads = SIZES.num_heads
        self.intermediate_size = 37
        self.is_training = is_training
        self.seq_length = (self.image_size // self.patch_size) ** 2 + 1  # patches + [CLS]

    def get_config(self) -> MMVisionConfig:
        return MMVisionConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
        )

    def prepare_config_and_inputs(self):
        pixel_values = _floats((self.batch_size, self.num_channels, self.image_size, self.image_size), seed=0)
        return self.get_config(), pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class MMTextModelTester:
    def __init__(self, parent, batch_size: int = SIZES.batch_size, is_training: bool = True):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = SIZES.seq_length
        self.vocab_size = SIZES.vocab_size
        self.hidden_size = SIZES.hidden_size
        self.num_hidden_layers = SIZES.num_layers
        self.num_attention_heads = SIZES.num_heads
        self.intermediate_size = 37
        self.max_position_embeddings = 64
        self.pad_token_id = 0
        self.is_training = is_training

    def get_config(self) -> MMTextConfig:
        return MMTextConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=self.pad_token_id,
            bos_token_id=1,
            eos_token_id=2,
        )

    def prepare_config_and_inputs(self):
        input_ids = _ids((self.batch_size, self.seq_length), self.vocab_size, seed=1)
        input_ids[:, 0] = 1  # [CLS]
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, -3:] = 0  # one padded row: padding must change nothing
        input_ids[1, -3:] = self.pad_token_id
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


class MMEfficientNetLiteModelTester:
    """The tiny EfficientNet-Lite of tests/test_efficientnet_lite.py: 8-wide stem, three stages, 32-wide head."""

    def __init__(self, parent, batch_size: int = SIZES.batch_size, is_training: bool = True):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = SIZES.image_size
        self.num_channels = 3
        self.hidden_size = SIZES.hidden_size
        self.stage_channels = [8, 12, 16]
        # `output_hidden_states` gives the stem's feature map and one per stage.
        self.expected_num_hidden_layers = len(self.stage_channels) + 1
        self.is_training = is_training

    def get_config(self) -> MMEfficientNetLiteConfig:
        return MMEfficientNetLiteConfig(
            image_size=self.image_size,
            stem_channels=8,
            stage_channels=self.stage_channels,
            stage_depths=[1, 2, 1],
            stage_strides=[1, 2, 2],
            stage_kernel_sizes=[3, 5, 3],
            stage_expand_ratios=[1, 3, 2],
            hidden_size=self.hidden_size,
        )

    def prepare_config_and_inputs_for_common(self):
        pixel_values = _floats((self.batch_size, self.num_channels, self.image_size, self.image_size), seed=2)
        return self.get_config(), {"pixel_values": pixel_values}


class MMModelTester:
    """A composite MMConfig (`fusion` early, late or hybrid) over the two tower testers' configs."""

    def __init__(self, parent, fusion: str, batch_size: int = SIZES.batch_size, is_training: bool = True):
        self.parent = parent
        self.fusion = fusion
        self.vision_model_tester = MMVisionModelTester(parent, batch_size)
        self.text_model_tester = MMTextModelTester(parent, batch_size)
        self.vision_config = self.vision_model_tester.get_config().to_dict()
        self.text_config = self.text_model_tester.get_config().to_dict()
        self.batch_size = batch_size
        self.seq_length = self.text_model_tester.seq_length
        self.vocab_size = self.text_model_tester.vocab_size
        self.hidden_size = SIZES.hidden_size
        self.num_hidden_layers = SIZES.num_layers
        self.num_attention_heads = SIZES.num_heads
        self.image_size = SIZES.image_size
        self.patch_size = SIZES.patch_size
        self.pad_token_id = self.text_model_tester.pad_token_id
        self.is_training = is_training
        if fusion == "early":
            # One Transformer over [text ; image]: text tokens, then [CLS] and the patches of the image.
            self.encoder_seq_length = self.seq_length + self.vision_model_tester.seq_length

    def get_config(self) -> MMConfig:
        return MMConfig(
            fusion=self.fusion,
            vision_config=self.vision_model_tester.get_config(),
            text_config=self.text_model_tester.get_config(),
            projection_dim=16,
            num_fusion_layers=2,
            num_decoder_layers=2,
        )

    def prepare_config_and_inputs_for_common(self):
        _, input_ids, attention_mask = self.text_model_tester.prepare_config_and_inputs()
        _, pixel_values = self.vision_model_tester.prepare_config_and_inputs()
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
        return self.get_config(), inputs


# ----------------------------------------------------------------------------------------------------------------------
# Model tests
# ----------------------------------------------------------------------------------------------------------------------


class _PixelTowerTests:
    """What the two vision towers (ViT, CNN) share: they take pixel_values only, and their input "embeddings" are the
    patch / stem convolution."""

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="A tower on pixel_values has no input_ids, so no inputs_embeds either.")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="A tower on pixel_values has no input_ids, so no inputs_embeds either.")
    def test_inputs_embeds_matches_input_ids(self):
        pass

    def test_model_get_set_embeddings(self):
        # Overridden as transformers does for its vision towers: the input "embeddings" are the patch convolution,
        # not an nn.Embedding, and there is no output embedding.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), torch.nn.Conv2d)
            self.assertIsNone(model.get_output_embeddings())


class MMVisionModelTest(_PixelTowerTests, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MMVisionModel,)
    test_resize_embeddings = False  # no token embeddings

    def setUp(self):
        self.model_tester = MMVisionModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=MMVisionConfig, has_text_modality=False, hidden_size=32, num_attention_heads=4
        )


class MMTextModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MMTextModel,)

    def setUp(self):
        self.model_tester = MMTextModelTester(self)
        self.config_tester = ConfigTester(self, config_class=MMTextConfig, hidden_size=32, num_attention_heads=4)

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="MMTextModel.forward takes input_ids only; it has no inputs_embeds argument.")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="MMTextModel.forward takes input_ids only; it has no inputs_embeds argument.")
    def test_inputs_embeds_matches_input_ids(self):
        pass


class MMEfficientNetLiteModelTest(_PixelTowerTests, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MMEfficientNetLiteModel,)
    test_resize_embeddings = False  # no token embeddings
    has_attentions = False  # a CNN

    def setUp(self):
        self.model_tester = MMEfficientNetLiteModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=MMEfficientNetLiteConfig, has_text_modality=False, common_properties=["hidden_size"]
        )


    def test_hidden_states_output(self):
        # Overridden as transformers does for its CNNs (ResNet, EfficientNet): the hidden states are feature maps
        # (B, C, H, W), one after the stem and one per stage, not (B, seq, hidden) token states.
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        expected_channels = [config.stem_channels, *config.stage_channels]
        for model_class in self.all_model_classes:
            for via_config in (False, True):
                config.output_hidden_states = via_config
                model = model_class(copy.deepcopy(config)).eval()
                with torch.no_grad():
                    outputs = model(**inputs_dict, **({} if via_config else {"output_hidden_states": True}))
                hidden_states = outputs.hidden_states
                self.assertIsNotNone(hidden_states, f"no hidden_states (output_hidden_states via config: {via_config})")
                self.assertEqual(len(hidden_states), self.model_tester.expected_num_hidden_layers)
                self.assertEqual([h.shape[1] for h in hidden_states], expected_channels)
                self.assertTrue(all(h.ndim == 4 and h.shape[0] == self.model_tester.batch_size for h in hidden_states))


class _MMFusionModelTestBase(ModelTesterMixin):
    """MMModel and its heads for one `fusion`; concrete classes below set `fusion` and `all_model_classes`."""

    fusion: str = ""
    _is_composite = True
    # The tests that build their own inputs from `main_input_name` (input_ids) add these, as for transformers' VLMs.
    additional_model_inputs = ["pixel_values"]

    def setUp(self):
        self.model_tester = MMModelTester(self, self.fusion)
        self.config_tester = ConfigTester(
            self, config_class=MMConfig, has_text_modality=False, fusion=self.fusion, projection_dim=16
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        batch = inputs_dict["input_ids"].shape[0]
        if issubclass(model_class, MMForPreTraining) and not issubclass(model_class, MMForImageTextRetrieval):
            config = self.model_tester.get_config()
            if "mlm" in config.objectives:
                # The mlm objective needs its masked copy of the text: every second real token masked ([MASK] = 3).
                masked = inputs_dict["input_ids"].clone()
                choose = torch.zeros_like(masked, dtype=torch.bool)
                choose[:, 1::2] = True
                if inputs_dict.get("attention_mask") is not None:  # some tests pass attention_mask=None
                    choose &= inputs_dict["attention_mask"].bool()
                labels = torch.where(choose, masked, torch.full_like(masked, -100))
                inputs_dict["mlm_input_ids"] = masked.masked_fill(choose, 3)
                inputs_dict["mlm_labels"] = labels
        if return_labels and model_class is MMForVisualQuestionAnswering:
            # transformers' mapping-driven labels cover the classification and captioning heads, not VQA (as for
            # its own ViLT, whose tests add them too): one answer id per pair.
            inputs_dict["labels"] = torch.zeros(batch, dtype=torch.long)
        return inputs_dict

    @unittest.skip(reason="MM models take input_ids (and pixel_values); there is no inputs_embeds argument.")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="MM models take input_ids (and pixel_values); there is no inputs_embeds argument.")
    def test_inputs_embeds_matches_input_ids(self):
        pass

    @unittest.skip(
        reason="Time budget: loading with torch_dtype= is PreTrainedModel.from_pretrained through "
        "MMPreTrainedModel, which MMVisionModelTest and MMTextModelTest check; here it costs ~40 s per fusion."
    )
    def test_bc_torch_dtype(self):
        pass


# Time budget: eager vs SDPA runs 24 cases per model class; the fusion classes keep the 8 fp32 ones (padding left and
# right, with and without mask, with and without SDPA kernels). The fp16 / bf16 cases run on the tower classes, whose
# attention layers are the ones the fusion models use; on CPU half precision only adds time.
_HALF_PRECISION_SDPA_CASES = [
    name for name in dir(ModelTesterMixin) if re.match(r"test_eager_matches_sdpa_inference_\d+_(fp16|bf16)_", name)
]
for _name in _HALF_PRECISION_SDPA_CASES:
    setattr(
        _MMFusionModelTestBase,
        _name,
        unittest.skip(reason="Time budget: half-precision eager/SDPA cases run on the tower classes only.")(
            lambda self: None
        ),
    )


class MMEarlyFusionModelTest(_MMFusionModelTestBase, unittest.TestCase):
    fusion = "early"
    # No MMForConditionalGeneration: captioning needs a vision tower to cross-attend to, which early fusion lacks.
    all_model_classes = (MMModel, MMForPreTraining, MMForImageTextRetrieval)

    # The three `*_output` tests are parameterized over return_dict (True, False, None): cases _0, _1, _2.
    @unittest.skip(reason="Early fusion encodes text and image jointly: it has no separate get_text_features.")
    def test_get_text_features_output_0(self):
        pass

    @unittest.skip(reason="Early fusion encodes text and image jointly: it has no separate get_text_features.")
    def test_get_text_features_output_1(self):
        pass

    @unittest.skip(reason="Early fusion encodes text and image jointly: it has no separate get_text_features.")
    def test_get_text_features_output_2(self):
        pass

    @unittest.skip(reason="Early fusion encodes text and image jointly: it has no separate get_text_features.")
    def test_get_text_features_hidden_states(self):
        pass

    @unittest.skip(reason="Early fusion encodes text and image jointly: it has no separate get_text_features.")
    def test_get_text_features_attentions(self):
        pass

    @unittest.skip(reason="Early fusion encodes text and image jointly: it has no separate get_image_features.")
    def test_get_image_features_output_0(self):
        pass

    @unittest.skip(reason="Early fusion encodes text and image jointly: it has no separate get_image_features.")
    def test_get_image_features_output_1(self):
        pass

    @unittest.skip(reason="Early fusion encodes text and image jointly: it has no separate get_image_features.")
    def test_get_image_features_output_2(self):
        pass

    @unittest.skip(reason="Early fusion encodes text and image jointly: it has no separate get_image_features.")
    def test_get_image_features_hidden_states(self):
        pass

    @unittest.skip(reason="Early fusion encodes text and image jointly: it has no separate get_image_features.")
    def test_get_image_features_attentions(self):
        pass


# `GenerationTesterMixin` is the stand-in marker (standins.py): transformers' generate() suite is not in the sdist.
class MMLateFusionModelTest(_MMFusionModelTestBase, GenerationTesterMixin, unittest.TestCase):
    fusion = "late"
    all_model_classes = (MMModel, MMForPreTraining, MMForImageTextClassification, MMForConditionalGeneration)

    # Late fusion is a dual encoder: there is no fused stream whose hidden states or attentions the top-level output
    # could hold. Each tower's are in `text_model_output` / `vision_model_output` and are tested by MMTextModelTest and
    # MMVisionModelTest (transformers' CLIPModelTest skips these three for its dual encoder the same way).
    @unittest.skip(reason="Dual encoder: hidden states are per tower (text_model_output, vision_model_output).")
    def test_hidden_states_output(self):
        pass

    @unittest.skip(reason="Dual encoder: attentions are per tower (text_model_output, vision_model_output).")
    def test_attention_outputs(self):
        pass

    @unittest.skip(reason="Dual encoder: retain_grad of the hidden states is tested on the tower classes.")
    def test_retain_grad_hidden_states_attentions(self):
        pass


class MMHybridFusionModelTest(_MMFusionModelTestBase, GenerationTesterMixin, unittest.TestCase):
    fusion = "hybrid"
    all_model_classes = (
        MMModel,
        MMForPreTraining,
        MMForVisualQuestionAnswering,
        MMForImageTextRetrieval,
        MMForConditionalGeneration,
    )

    @unittest.skip(
        reason="all_model_classes[0] is MMModel, whose first output is the ITC logits: the fused stream whose "
        "hidden states and attentions it returns does not feed them. The heads' gradients through the fused stream "
        "are checked in tests/test_mm_common.py."
    )
    def test_retain_grad_hidden_states_attentions(self):
        pass


class MMCoAttentionFusionModelTest(_MMFusionModelTestBase, GenerationTesterMixin, unittest.TestCase):
    fusion = "coattention"
    all_model_classes = (MMModel, MMForVisualQuestionAnswering, MMForConditionalGeneration)

    @unittest.skip(
        reason="all_model_classes[0] is MMModel, whose first output is the ITC logits: the fused stream whose "
        "hidden states and attentions it returns does not feed them. The heads' gradients through the fused stream "
        "are checked in tests/test_mm_common.py."
    )
    def test_retain_grad_hidden_states_attentions(self):
        pass
