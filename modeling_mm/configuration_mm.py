"""Configuration classes for the MM multimodal model family (early, late, hybrid and co-attention fusion)."""

from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig


__all__ = [
    "MMConfig",
    "MMEfficientNetLiteConfig",
    "MMTextConfig",
    "MMVisionConfig",
    "CROSS_FUSIONS",
    "FUSION_OBJECTIVES",
    "DEFAULT_OBJECTIVES",
    "TOWER_FUSIONS",
    "CONTRASTIVE_LOSSES",
]


def _check_positive(config: PreTrainedConfig, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}.")


def _check_probability(config: PreTrainedConfig, names: tuple[str, ...], upper_inclusive: bool = True) -> None:
    for name in names:
        value = getattr(config, name)
        ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
        if not ok:
            bound = "[0, 1]" if upper_inclusive else "[0, 1)"
            raise ValueError(f"{type(config).__name__}.{name} must be in {bound}, got {value!r}.")


def _check_heads(config: PreTrainedConfig, prefix: str = "") -> None:
    if config.hidden_size % config.num_attention_heads != 0:
        raise ValueError(
            f"{prefix}{type(config).__name__}.hidden_size ({config.hidden_size}) must be divisible by "
            f"num_attention_heads ({config.num_attention_heads})."
        )


class MMVisionConfig(PreTrainedConfig):
    r"""
    Configuration of the built-in ViT vision tower.

    Args:
        image_size (`int`): Training resolution (square). Other resolutions work through position-embedding interpolation.
        patch_size (`int`): Side of a square patch; must divide `image_size`.
        num_channels (`int`): Input channels.
        hidden_size (`int`): Width of the tower.
        num_hidden_layers (`int`): Number of Transformer layers.
        num_attention_heads (`int`): Attention heads; must divide `hidden_size`.
        intermediate_size (`int`): Width of the MLP.
        hidden_act (`str`): MLP activation.
        hidden_dropout_prob (`float`): Dropout after attention and MLP.
        attention_probs_dropout_prob (`float`): Dropout on attention probabilities.
        layer_norm_eps (`float`): LayerNorm epsilon.
        initializer_range (`float`): Std of the truncated-normal weight init.
        num_frames (`int`): Frames per video clip; > 1 adds learned temporal position embeddings.
        qkv_bias (`bool`): Bias on the query/key/value projections.
        patch_embedding_type (`str`): `"patchify"`, the ViT linear patch projection (one strided convolution), or
            `"conv_stem"`, a stack of 3x3 stride-2 convolutions (each followed by GroupNorm and GELU) before a smaller
            patchifying convolution (Xiao et al. 2021, "Early Convolutions Help Transformers See Better"). The conv
            stem gives the tower a locality prior that a ViT trained from scratch on little data lacks; it needs a
            power-of-two `patch_size` and costs about as much as one Transformer layer at 64x64 px.
        video_attention (`str`): How a clip's tokens attend to each other. `"joint"`: every patch of every frame to
            every other (the temporal embeddings alone carry the order). `"divided"`: TimeSformer's divided space-time
            attention (Bertasius et al. 2021, sec. 3): in each layer a temporal attention across the frames at each
            patch position, then the spatial attention within each frame (each frame with its own copy of `[CLS]`,
            averaged after); `T * (1 + N)^2` instead of `(1 + T * N)^2` attention scores. The temporal attention's
            output projection starts at zero and is skipped for one-frame inputs, so an image checkpoint loads into
            a divided video model and computes what it computed on images. FLIP masking is refused for clips then.
        tubelet_size (`int`): Consecutive frames per video token (ViViT's tubelet embedding, Arnab et al. 2021, sec.
            3.2; VideoMAE's `tubelet_size`). Each token is the patch projection of the tubelet's mean frame plus a
            zero-initialised `tubelet_embedding` (a linear map of the tubelet's frames, stacked), so a token sees how
            its patch changes from frame to frame (motion) before any attention, and an image checkpoint loads with
            only `tubelet_embedding` new and computes what it computed on images. A clip of `T` frames gives
            `T / tubelet_size` token frames (`T` must be a multiple); `num_frames` counts input frames and must be a
            multiple too. An image is embedded as a still clip of `tubelet_size` frames.
    """

    model_type = "mm_vision_model"
    base_config_key = "vision_config"

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    num_frames: int = 1
    qkv_bias: bool = True
    patch_embedding_type: str = "patchify"
    video_attention: str = "joint"
    tubelet_size: int = 1

    def __post_init__(self, **kwargs):
        _check_positive(
            self,
            (
                "image_size",
                "patch_size",
                "num_channels",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "num_frames",
                "tubelet_size",
            ),
        )
        _check_heads(self)
        if self.num_frames % self.tubelet_size != 0:
            raise ValueError(
                f"MMVisionConfig.num_frames ({self.num_frames}) must be a multiple of tubelet_size ({self.tubelet_size})."
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"MMVisionConfig.image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})."
            )
        _check_probability(self, ("hidden_dropout_prob", "attention_probs_dropout_prob"))
        if self.patch_embedding_type not in ("patchify", "conv_stem"):
            raise ValueError(
                f"MMVisionConfig.patch_embedding_type must be 'patchify' or 'conv_stem', got {self.patch_embedding_type!r}."
            )
        if self.patch_embedding_type == "conv_stem" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ValueError(
                f"MMVisionConfig.patch_embedding_type='conv_stem' needs a power-of-two patch_size >= 2, got {self.patch_size}."
            )
        if self.video_attention not in ("joint", "divided"):
            raise ValueError(
                f"MMVisionConfig.video_attention must be 'joint' or 'divided', got {self.video_attention!r}."
            )
        super().__post_init__(**kwargs)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class MMTextConfig(PreTrainedConfig):
    r"""
    Configuration of the built-in BERT-style text tower (and of the fusion and decoder layers, which share its width).
    Defaults fit the bert-base-uncased WordPiece vocabulary.

    Args:
        vocab_size (`int`): Vocabulary size of the WordPiece tokenizer.
        hidden_size (`int`): Width of the tower.
        num_hidden_layers (`int`): Number of Transformer layers.
        num_attention_heads (`int`): Attention heads; must divide `hidden_size`.
        intermediate_size (`int`): Width of the MLP.
        hidden_act (`str`): MLP activation.
        hidden_dropout_prob (`float`): Dropout after embeddings, attention and MLP.
        attention_probs_dropout_prob (`float`): Dropout on attention probabilities.
        max_position_embeddings (`int`): Longest text the position table covers.
        type_vocab_size (`int`): Token-type (segment) vocabulary.
        layer_norm_eps (`float`): LayerNorm epsilon.
        initializer_range (`float`): Std of the truncated-normal weight init.
        pad_token_id (`int`): `[PAD]` id. bos_token_id (`int`): `[CLS]`, used as decoder start. eos_token_id (`int`): `[SEP]`.
        use_cache (`bool`): Whether the captioning decoder (which shares this config's width) returns its key/value
            cache for generation.
    """

    model_type = "mm_text_model"
    base_config_key = "text_config"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | None = 101
    eos_token_id: int | None = 102
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        _check_positive(
            self,
            (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "max_position_embeddings",
                "type_vocab_size",
            ),
        )
        _check_heads(self)
        _check_probability(self, ("hidden_dropout_prob", "attention_probs_dropout_prob"))
        super().__post_init__(**kwargs)


class MMEfficientNetLiteConfig(PreTrainedConfig):
    r"""
    Configuration of the EfficientNet-Lite convolutional vision tower (Tan & Le 2019, "EfficientNet: Rethinking Model
    Scaling for Convolutional Neural Networks"; the Lite variants drop squeeze-excitation, use ReLU6 and keep the stem
    and head widths fixed across sizes, so that they quantise well). Defaults are EfficientNet-Lite0 (4.7M parameters
    with its ImageNet classifier, 224 px). Convolutions pad TensorFlow-"SAME", computed per input size.

    As a tower it gives one token per position of its last feature map, `(H / 32) * (W / 32)` of them, `hidden_size`
    wide, and their mean as the pooled output. Early fusion cannot use it: its joint Transformer embeds patches itself.

    Args:
        image_size (`int`): Training resolution (square); other sizes run too, with more or fewer tokens.
        num_channels (`int`): Input channels.
        stem_channels (`int`): Width of the 3x3 stride-2 stem convolution.
        stage_channels (`list[int]`): Output width of each stage of inverted-residual (MBConv) blocks.
        stage_depths (`list[int]`): Blocks in each stage.
        stage_strides (`list[int]`): Stride (1 or 2) of the first block of each stage; the others have stride 1.
        stage_kernel_sizes (`list[int]`): Odd depthwise kernel size of each stage.
        stage_expand_ratios (`list[int]`): Width multiplier of the 1x1 expansion before the depthwise convolution
            (1: no expansion convolution).
        hidden_size (`int`): Width of the 1x1 head convolution, i.e. of every token and of the pooled output.
        hidden_act (`str`): Activation after the stem, expansion, depthwise and head convolutions.
        batch_norm_eps (`float`): BatchNorm epsilon; 1e-3 as in the TensorFlow original.
        batch_norm_momentum (`float`): BatchNorm running-statistics momentum in PyTorch's convention (1 - TF's 0.99).
        classifier_dropout (`float`): Dropout before the classifier of [`MMEfficientNetLiteForImageClassification`].
        initializer_range (`float`): Std of the classifier's weight init.
    """

    model_type = "mm_efficientnet_lite"
    base_config_key = "vision_config"

    image_size: int = 224
    num_channels: int = 3
    stem_channels: int = 32
    stage_channels: list[int] | tuple[int, ...] = (16, 24, 40, 80, 112, 192, 320)
    stage_depths: list[int] | tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
    stage_strides: list[int] | tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)
    stage_kernel_sizes: list[int] | tuple[int, ...] = (3, 3, 5, 3, 5, 5, 3)
    stage_expand_ratios: list[int] | tuple[int, ...] = (1, 6, 6, 6, 6, 6, 6)
    hidden_size: int = 1280
    hidden_act: str = "relu6"
    batch_norm_eps: float = 1e-3
    batch_norm_momentum: float = 0.01
    classifier_dropout: float = 0.2
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        _check_positive(self, ("image_size", "num_channels", "stem_channels", "hidden_size"))
        stages = ("stage_channels", "stage_depths", "stage_strides", "stage_kernel_sizes", "stage_expand_ratios")
        for name in stages:
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"MMEfficientNetLiteConfig.{name} must be a non-empty list, got {value!r}.")
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                raise ValueError(f"MMEfficientNetLiteConfig.{name} must hold positive integers, got {value!r}.")
            setattr(self, name, list(value))
        lengths = {name: len(getattr(self, name)) for name in stages}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"MMEfficientNetLiteConfig: the stage_* lists must have one entry per stage, got {lengths}.")
        if any(s not in (1, 2) for s in self.stage_strides):
            raise ValueError(f"MMEfficientNetLiteConfig.stage_strides must be 1 or 2, got {self.stage_strides}.")
        if any(k % 2 == 0 for k in self.stage_kernel_sizes):
            raise ValueError(f"MMEfficientNetLiteConfig.stage_kernel_sizes must be odd, got {self.stage_kernel_sizes}.")
        if not self.batch_norm_eps > 0:
            raise ValueError(f"MMEfficientNetLiteConfig.batch_norm_eps must be > 0, got {self.batch_norm_eps!r}.")
        _check_probability(self, ("batch_norm_momentum",))
        _check_probability(self, ("classifier_dropout",), upper_inclusive=False)
        super().__post_init__(**kwargs)

    @property
    def num_stages(self) -> int:
        return len(self.stage_channels)


# Which pretraining objectives each fusion style can serve. ITM and MLM need a fused representation (early, hybrid,
# coattention); ITC needs separate unimodal embeddings (every style but early); captioning LM needs a vision tower to
# cross-attend to.
FUSION_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "early": ("itm", "mlm"),
    "late": ("itc", "lm"),
    "hybrid": ("itc", "itm", "mlm", "lm"),
    "coattention": ("itc", "itm", "mlm", "lm"),
}
DEFAULT_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "early": ("itm", "mlm"),
    "late": ("itc",),
    "hybrid": ("itc", "itm", "mlm", "lm"),
    "coattention": ("itc", "itm", "mlm", "lm"),
}
# Styles with two towers (unimodal features, ITC, a captioning decoder), and those of them with fusion layers after
# the towers: one-way text-to-image cross-attention (hybrid) or two-way co-attention (LXMERT / ViLBERT).
TOWER_FUSIONS: tuple[str, ...] = ("late", "hybrid", "coattention")
CROSS_FUSIONS: tuple[str, ...] = ("hybrid", "coattention")
# The ITC loss of each `contrastive_loss` and its initial log temperature (and logit bias): CLIP's ln(1/0.07) for the
# softmax; SigLIP's ln(10) and -10 for the sigmoid (Zhai et al. 2023, sec. 3.2: the bias keeps the many negatives' loss
# near zero at the start).
CONTRASTIVE_LOSSES: dict[str, dict[str, float | None]] = {
    "infonce": {"logit_scale_init_value": 2.6592, "logit_bias_init_value": None},
    "sigmoid": {"logit_scale_init_value": 2.3026, "logit_bias_init_value": -10.0},
}


def _build_sub_config(value, default_cls: type[PreTrainedConfig], key: str) -> PreTrainedConfig:
    """A sub-config may be ours or any transformers config; foreign ones are rebuilt through AutoConfig by model_type."""
    if value is None:
        return default_cls()
    if isinstance(value, PreTrainedConfig):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"MMConfig.{key} must be a dict or a PreTrainedConfig, got {type(value).__name__}.")
    value = dict(value)
    model_type = value.pop("model_type", default_cls.model_type)
    if model_type == default_cls.model_type:
        return default_cls(**value)
    if model_type == MMEfficientNetLiteConfig.model_type:
        # Built here, not through AutoConfig: a `trust_remote_code` process has not registered it.
        return MMEfficientNetLiteConfig(**value)
    try:
        return AutoConfig.for_model(model_type, **value)
    except ValueError as err:
        raise ValueError(f"MMConfig.{key}: unknown model_type {model_type!r} ({err}).") from None


class MMConfig(PreTrainedConfig):
    r"""
    Composite configuration of an MM model: a vision tower, a text tower and how they are fused.

    Args:
        vision_config (`dict` or `PreTrainedConfig`): The vision tower: an [`MMVisionConfig`], an
            [`MMEfficientNetLiteConfig`] (convolutional; late and hybrid fusion) or any transformers vision config
            (ViT, DeiT, CLIPVision, SiglipVision...), kept with its `model_type` and rebuilt through `AutoConfig` when
            loaded.
        text_config (`dict` or `PreTrainedConfig`): The text tower: an [`MMTextConfig`] or any transformers BERT-like
            encoder config (Bert, Roberta...).
        fusion (`str`): `"early"` (one joint Transformer over text tokens and image patches, ViLT-style; uses the text
            config's layers and the vision config's patch geometry), `"late"` (dual encoder, CLIP-style), `"hybrid"`
            (both towers, then `num_fusion_layers` text layers that cross-attend to the image, ALBEF-style) or
            `"coattention"` (both towers, then `num_fusion_layers` two-stream layers in which text attends to the
            image and the image to the text, then each stream to itself: LXMERT's cross-modality encoder).
        num_fusion_layers (`int`): Fusion layers (hybrid, coattention).
        num_decoder_layers (`int`): Layers of the image-conditioned captioning decoder (late and hybrid).
        projection_dim (`int`): Width of the shared ITC embedding space (late and hybrid).
        contrastive_loss (`str`): The ITC loss: `"infonce"` (CLIP's symmetric softmax over the global batch) or
            `"sigmoid"` (SigLIP's pairwise sigmoid with a learned `logit_bias`, exchanged around a ring of ranks
            instead of gathered; better at small batch). Tower fusions only.
        logit_scale_init_value (`float`, *optional*): Initial log temperature of ITC; default per loss: ln(1/0.07) for
            `infonce` (CLIP), ln(10) for `sigmoid` (SigLIP).
        logit_scale_max (`float`): Clamp for the log temperature; ln(100) as in CLIP, keeps the loss stable.
        logit_bias_init_value (`float`, *optional*): The logit bias `b` (SigLIP: `logits = exp(logit_scale) * cos + b`).
            With `contrastive_loss="sigmoid"` the model learns a `logit_bias` parameter initialised here (default -10,
            as SigLIP). With `infonce` the model has no bias (a softmax is invariant to one); a checkpoint converted
            from SigLIP keeps its trained bias here so that converting back restores it.
        image_mask_ratio (`float`): FLIP: fraction of image patches dropped per sample during pretraining (0 = off).
        objectives (`list[str]`): Pretraining objectives among `itc`, `itm`, `mlm`, `lm`; default per fusion.
        itc_weight, itm_weight, mlm_weight, lm_weight (`float`): Weights of each objective in the total loss.
        initializer_range (`float`): Std of the init of fusion, projection and head weights.
        tie_word_embeddings (`bool`): Tie MLM/LM output layers to the input word embeddings.
        loss_chunk_size (`int`, *optional*): When set, the MLM and LM losses (pretraining and captioning, with labels)
            are computed by `losses.fused_linear_cross_entropy` over chunks of this many rows, so the `(rows, V)`
            logits and their gradient are never held whole; the outputs' `mlm_logits` / `lm_logits` / `logits` are
            then `None`. `None` (default): project all rows at once and return the logits.
        video_temporal_layers (`int`): For a vision tower other than the built-in ViT (CLIP, SigLIP, the CNN tower),
            which encodes a clip frame by frame: Transformer layers over the T per-frame pooled states (plus learned
            frame embeddings) whose mean is the clip's pooled state; the per-frame token states handed to fusion get
            the frame embeddings too. The layers' residual branches and the embeddings start at zero, so a new model
            starts from the frame average. 0 (default): the pooled state is the frame average (time-blind). The
            built-in ViT models time itself (`vision_config.num_frames`, `vision_config.video_attention`).
        video_max_frames (`int`): Frames the temporal layers' frame embeddings cover (with `video_temporal_layers`).
        video_temporal_tokens (`int`): With `video_temporal_layers`: 0 (default) runs the layers over each frame's
            pooled state only. N > 0 runs them over all N tokens of every frame (`T * N` tokens, joint space-time
            attention), each with its frame's embedding and a learned embedding of its place in the frame, so they
            can follow *where* things are from frame to frame (a frame's pooled state has lost that); the fusion layers
            then read the layers' output tokens, and the clip's pooled state is the frame average plus the layers'
            mean update. N must equal the tower's tokens per frame (e.g. `(image_size / 32) ** 2` for the CNN tower;
            a frame with another count raises, naming both). Its embeddings start at zero like the frame embeddings.
        video_temporal_hidden_size (`int`, *optional*): Width of the temporal layers. `None` (default): the vision
            tower's width. A smaller width `d` makes them a bottleneck adapter: a linear map down to `d`, the layers,
            and a zero-initialised linear map back up whose output is added to their inputs, so a new model still
            starts from the frame average and the unchanged tokens. Over all tokens at a CNN tower's width (1280) a
            layer costs about as much as the frozen tower's forward pass; at `d = 128`, a few percent of it
            (`benchmarks/video_temporal_cost.py`).
        video_motion_embedding (`bool`): With `video_temporal_tokens`: add to each token a zero-initialised linear
            embedding of how its cell of the frame changed since the previous frame (the pixel difference, pooled to
            8x8 per cell), the way a tubelet token sees motion. A CNN's stride-32 features hold little of where in
            its cell a shape is, so the direction of a small motion is hard to read from them; the pixel difference
            holds it linearly. The tokens must form a square grid over the frame, optionally after one leading
            `[CLS]` token (which gets none). Default `False`.
    """

    model_type = "mm"
    sub_configs_defaults = {"vision_config": MMVisionConfig, "text_config": MMTextConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    fusion: str = "hybrid"
    num_fusion_layers: int = 2
    num_decoder_layers: int = 2
    projection_dim: int = 256
    contrastive_loss: str = "infonce"
    logit_scale_init_value: float | None = None
    logit_scale_max: float = 4.6052
    logit_bias_init_value: float | None = None
    image_mask_ratio: float = 0.0
    objectives: list[str] | None = None
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    mlm_weight: float = 1.0
    lm_weight: float = 1.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    loss_chunk_size: int | None = None
    video_temporal_layers: int = 0
    video_max_frames: int = 16
    video_temporal_tokens: int = 0
    video_temporal_hidden_size: int | None = None
    video_motion_embedding: bool = False

    def __post_init__(self, **kwargs):
        self.vision_config = _build_sub_config(self.vision_config, MMVisionConfig, "vision_config")
        self.text_config = _build_sub_config(self.text_config, MMTextConfig, "text_config")
        self._validate()
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        if self.fusion not in FUSION_OBJECTIVES:
            raise ValueError(f"MMConfig.fusion must be one of {sorted(FUSION_OBJECTIVES)}, got {self.fusion!r}.")
        _check_positive(self, ("projection_dim",))
        for name in ("num_fusion_layers", "num_decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"MMConfig.{name} must be a non-negative integer, got {value!r}.")
        if self.fusion in CROSS_FUSIONS and self.num_fusion_layers < 1:
            raise ValueError(f"MMConfig.num_fusion_layers must be >= 1 with fusion={self.fusion!r}.")
        _check_probability(self, ("image_mask_ratio",), upper_inclusive=False)
        if self.contrastive_loss not in CONTRASTIVE_LOSSES:
            raise ValueError(
                f"MMConfig.contrastive_loss must be one of {sorted(CONTRASTIVE_LOSSES)}, got {self.contrastive_loss!r}."
            )
        if self.contrastive_loss != "infonce" and self.fusion not in TOWER_FUSIONS:
            raise ValueError(
                f"MMConfig.contrastive_loss={self.contrastive_loss!r} needs a fusion with towers {TOWER_FUSIONS}; "
                f"fusion={self.fusion!r} has no ITC."
            )
        for name, default in CONTRASTIVE_LOSSES[self.contrastive_loss].items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        scale = self.logit_scale_init_value
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale != scale:
            raise ValueError(f"MMConfig.logit_scale_init_value must be a number, got {scale!r}.")
        bias = self.logit_bias_init_value
        if bias is not None and (not isinstance(bias, (int, float)) or isinstance(bias, bool) or bias != bias):
            raise ValueError(f"MMConfig.logit_bias_init_value must be a number or None, got {bias!r}.")
        if not isinstance(self.video_temporal_layers, int) or self.video_temporal_layers < 0:
            raise ValueError(
                f"MMConfig.video_temporal_layers must be a non-negative integer, got {self.video_temporal_layers!r}."
            )
        _check_positive(self, ("video_max_frames",))
        tokens = self.video_temporal_tokens
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise ValueError(f"MMConfig.video_temporal_tokens must be a non-negative integer, got {tokens!r}.")
        if tokens and not self.video_temporal_layers:
            raise ValueError(
                f"MMConfig.video_temporal_tokens={tokens} needs video_temporal_layers >= 1 (the layers that read them)."
            )
        width = self.video_temporal_hidden_size
        if width is not None and (not isinstance(width, int) or isinstance(width, bool) or width < 1):
            raise ValueError(f"MMConfig.video_temporal_hidden_size must be a positive integer or None, got {width!r}.")
        if width is not None and not self.video_temporal_layers:
            raise ValueError(
                f"MMConfig.video_temporal_hidden_size={width} needs video_temporal_layers >= 1 (the layers it sizes)."
            )
        if not isinstance(self.video_motion_embedding, bool):
            raise ValueError(f"MMConfig.video_motion_embedding must be True or False, got {self.video_motion_embedding!r}.")
        if self.video_motion_embedding and not tokens:
            raise ValueError(
                "MMConfig.video_motion_embedding needs video_temporal_tokens > 0: it embeds the motion in each token's "
                "cell of the frame."
            )
        if self.video_temporal_layers and (isinstance(self.vision_config, MMVisionConfig) or self.fusion == "early"):
            raise ValueError(
                "MMConfig.video_temporal_layers is for vision towers that encode clips frame by frame (CLIP, SigLIP, "
                "the CNN tower); the built-in ViT models time itself: set vision_config.num_frames and "
                "vision_config.video_attention instead."
            )
        for tower, cfg in (("vision_config", self.vision_config), ("text_config", self.text_config)):
            if getattr(cfg, "hidden_size", None) is None:
                raise ValueError(f"MMConfig.{tower} ({type(cfg).__name__}) has no hidden_size; it cannot serve as a tower.")
        if getattr(self.text_config, "vocab_size", None) is None:
            raise ValueError(f"MMConfig.text_config ({type(self.text_config).__name__}) has no vocab_size.")
        builtin_vision = isinstance(self.vision_config, MMVisionConfig)
        if self.fusion == "early":
            if getattr(self.vision_config, "model_type", None) == MMEfficientNetLiteConfig.model_type:
                raise ValueError(
                    "MMConfig.fusion='early' cannot use an MMEfficientNetLiteConfig tower: the joint Transformer embeds "
                    "pixel patches itself, and a CNN's stride-32 feature map is a whole tower, not a patch embedding. "
                    "Use fusion='late' or 'hybrid' with it, or MMVisionConfig(patch_embedding_type='conv_stem') for a "
                    "convolutional stem in early fusion."
                )
            if not (builtin_vision and isinstance(self.text_config, MMTextConfig)):
                raise ValueError(
                    "MMConfig.fusion='early' needs the built-in towers (MMVisionConfig and MMTextConfig): the joint "
                    f"Transformer embeds patches itself; got {type(self.vision_config).__name__} and "
                    f"{type(self.text_config).__name__}."
                )
            if self.vision_config.hidden_size != self.text_config.hidden_size:
                raise ValueError(
                    "MMConfig.fusion='early' needs vision_config.hidden_size == text_config.hidden_size "
                    f"(got {self.vision_config.hidden_size} and {self.text_config.hidden_size})."
                )
        if self.image_mask_ratio > 0 and not builtin_vision:
            raise ValueError(
                "MMConfig.image_mask_ratio > 0 (FLIP) needs the built-in MMVisionConfig tower, got "
                f"{type(self.vision_config).__name__}."
            )
        if self.objectives is None:
            self.objectives = list(DEFAULT_OBJECTIVES[self.fusion])
        self.objectives = list(self.objectives)
        allowed = FUSION_OBJECTIVES[self.fusion]
        for objective in self.objectives:
            if objective not in ("itc", "itm", "mlm", "lm"):
                raise ValueError(f"MMConfig.objectives: unknown objective {objective!r}; use itc, itm, mlm or lm.")
            if objective not in allowed:
                raise ValueError(
                    f"MMConfig.objectives: {objective!r} is not possible with fusion={self.fusion!r} "
                    f"(it supports {list(allowed)})."
                )
        if "lm" in self.objectives and self.num_decoder_layers < 1:
            raise ValueError("MMConfig.objectives includes 'lm' but num_decoder_layers is 0.")
        for name in ("itc_weight", "itm_weight", "mlm_weight", "lm_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"MMConfig.{name} must be >= 0, got {getattr(self, name)!r}.")
        chunk = self.loss_chunk_size
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"MMConfig.loss_chunk_size must be a positive integer or None, got {chunk!r}.")

    def itc_init_value(self, name: str) -> float | None:
        """`logit_scale_init_value` / `logit_bias_init_value`, or the default of `contrastive_loss` when it is unset
        (e.g. `contrastive_loss` changed after the config was built, as `from_pretrained(..., contrastive_loss=...)`
        does)."""
        value = getattr(self, name)
        return CONTRASTIVE_LOSSES[self.contrastive_loss][name] if value is None else value

    @property
    def vocab_size(self) -> int:
        """The text vocabulary (`text_config.vocab_size`); setting it sets the text config's, as
        `resize_token_embeddings` does on composite configs."""
        return self.text_config.vocab_size

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        self.text_config.vocab_size = value
