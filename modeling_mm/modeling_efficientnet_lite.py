"""EfficientNet-Lite: a pretrained convolutional vision tower for the MM family.

EfficientNet (Tan & Le 2019) stacks inverted-residual "MBConv" blocks (Sandler et al. 2018, MobileNetV2); the Lite
variants drop squeeze-excitation, use ReLU6 and keep the stem and head widths fixed, so that they quantise well.
The ImageNet checkpoints were trained in TensorFlow, whose "SAME" padding puts the odd pixel of a stride-2
convolution's padding at the right and bottom; `_pad_same` reproduces it, or the pretrained features are off.

Reading order: outputs -> padding -> batch norm -> stem -> block -> head -> `MMEfficientNetLitePreTrainedModel` ->
`MMEfficientNetLiteModel` (the tower: tokens and pooled features) -> `MMEfficientNetLiteForImageClassification`.
"""

from dataclasses import dataclass
import math

import torch
from torch import nn

from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_mm import MMEfficientNetLiteConfig


__all__ = [
    "MMEfficientNetLiteForImageClassification",
    "MMEfficientNetLiteModel",
    "MMEfficientNetLiteModelOutput",
    "MMEfficientNetLitePreTrainedModel",
]


@dataclass
class MMEfficientNetLiteModelOutput(ModelOutput):
    r"""
    Output of [`MMEfficientNetLiteModel`], shaped like a Transformer tower's so that fusion reads it unchanged.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, (H / 32) * (W / 32), hidden_size)`): The last
            feature map (after the head convolution), one token per position, row-major.
        pooler_output (`torch.FloatTensor` of shape `(batch, hidden_size)`): Mean of the tokens (global average pool).
        hidden_states (`tuple(torch.FloatTensor)`): With `output_hidden_states=True`, the stem output and each
            stage's output as feature maps `(batch, channels_i, H_i, W_i)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution (BatchNorm follows). A stride-1 odd kernel pads "SAME" by itself, symmetrically; a
    stride-2 one gets no padding of its own, its input is padded by `_pad_same`. Plain `nn.Conv2d` modules keep the
    weights in the layout peft's LoRA and quantisation tools expect."""
    padding = (kernel_size - 1) // 2 if stride == 1 else 0
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, bias=False)


def _pad_same(hidden_states: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """TensorFlow "SAME" padding of `(B, C, H, W)` for a strided convolution: the output is `ceil(size / stride)` and an
    odd padding puts its extra pixel right/bottom. Computed per input size: at 224 px it is the static padding the
    checkpoints were exported with, at any other size the static padding computed for that size."""
    conv = getattr(conv, "base_layer", conv)  # under LoRA, the wrapped convolution
    if conv.stride[0] == 1:
        return hidden_states
    pads = []
    for size, kernel, stride in zip(hidden_states.shape[:-3:-1], conv.kernel_size[::-1], conv.stride[::-1]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]  # F.pad order: (left, right, top, bottom)
    return nn.functional.pad(hidden_states, pads)


class MMEfficientNetLiteBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` whose statistics are locked with its weights: once `weight.requires_grad` is False (a locked
    tower, LiT-style; or the base weights under LoRA), training mode too normalizes with the running statistics and
    leaves them unchanged. A frozen tower then gives the same features in training as in evaluation, independent of the
    batch, as a frozen Transformer tower does."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.training and not self.weight.requires_grad:
            return nn.functional.batch_norm(
                hidden_states, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(hidden_states)


class MMEfficientNetLiteEmbeddings(nn.Module):
    """The stem: a 3x3 stride-2 convolution, BatchNorm, activation. `(B, C, H, W)` -> `(B, stem, H/2, W/2)`."""

    def __init__(self, config: MMEfficientNetLiteConfig):
        super().__init__()
        self.convolution = _conv(config.num_channels, config.stem_channels, 3, stride=2)
        self.batch_norm = MMEfficientNetLiteBatchNorm2d(
            config.stem_channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum
        )
        self.act = ACT2FN[config.hidden_act]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.act(self.batch_norm(self.convolution(_pad_same(pixel_values, self.convolution))))


class MMEfficientNetLiteBlock(GradientCheckpointingLayer):
    """Inverted residual without squeeze-excitation: 1x1 expansion (skipped when `expand_ratio` is 1), kxk depthwise
    convolution, 1x1 linear projection (no activation, as in MobileNetV2); the input is added back when the block keeps
    its shape. The 1x1 convolutions `expand_conv` / `project_conv` are natural LoRA `target_modules`."""

    def __init__(
        self,
        config: MMEfficientNetLiteConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
    ):
        super().__init__()
        hidden = in_channels * expand_ratio
        eps, momentum = config.batch_norm_eps, config.batch_norm_momentum
        self.expand_conv = self.expand_bn = None
        if expand_ratio != 1:
            self.expand_conv = _conv(in_channels, hidden, 1)
            self.expand_bn = MMEfficientNetLiteBatchNorm2d(hidden, eps=eps, momentum=momentum)
        self.depthwise_conv = _conv(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self.depthwise_bn = MMEfficientNetLiteBatchNorm2d(hidden, eps=eps, momentum=momentum)
        self.project_conv = _conv(hidden, out_channels, 1)
        self.project_bn = MMEfficientNetLiteBatchNorm2d(out_channels, eps=eps, momentum=momentum)
        self.act = ACT2FN[config.hidden_act]
        self.has_residual = stride == 1 and in_channels == out_channels

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states  # (B, C_in, H, W)
        if self.expand_conv is not None:
            hidden_states = self.act(self.expand_bn(self.expand_conv(hidden_states)))  # (B, C_in * e, H, W)
        hidden_states = self.depthwise_conv(_pad_same(hidden_states, self.depthwise_conv))
        hidden_states = self.act(self.depthwise_bn(hidden_states))  # (B, C_in * e, H/s, W/s)
        hidden_states = self.project_bn(self.project_conv(hidden_states))  # (B, C_out, H/s, W/s)
        return hidden_states + residual if self.has_residual else hidden_states


class MMEfficientNetLiteHead(nn.Module):
    """1x1 convolution to `hidden_size`, BatchNorm, activation: the last feature map."""

    def __init__(self, config: MMEfficientNetLiteConfig):
        super().__init__()
        self.convolution = _conv(config.stage_channels[-1], config.hidden_size, 1)
        self.batch_norm = MMEfficientNetLiteBatchNorm2d(
            config.hidden_size, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum
        )
        self.act = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(self.batch_norm(self.convolution(hidden_states)))


class MMEfficientNetLitePreTrainedModel(PreTrainedModel):
    config: MMEfficientNetLiteConfig
    config_class = MMEfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MMEfficientNetLiteBlock"]
    # No attention here: whichever kernel a composite model picks for its Transformer layers is valid for this tower.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            # He init on fan-out, as the TensorFlow original (variance scaling, mode fan_out).
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=self.config.initializer_range)
            init.zeros_(module.bias)


class MMEfficientNetLiteModel(MMEfficientNetLitePreTrainedModel):
    r"""
    The EfficientNet-Lite tower: stem, MBConv stages, head convolution; no classifier. Its `last_hidden_state` is the
    last feature map as `(H / 32) * (W / 32)` tokens `hidden_size` wide (what hybrid fusion cross-attends to and the
    captioning decoder reads), its `pooler_output` their mean (what late fusion projects to the ITC space).

    Args:
        config ([`MMEfficientNetLiteConfig`]): The architecture.
    """

    def __init__(self, config: MMEfficientNetLiteConfig):
        super().__init__(config)
        self.embeddings = MMEfficientNetLiteEmbeddings(config)
        blocks, stage_ends = [], []
        in_channels = config.stem_channels
        for out_channels, depth, stride, kernel, expand in zip(
            config.stage_channels,
            config.stage_depths,
            config.stage_strides,
            config.stage_kernel_sizes,
            config.stage_expand_ratios,
        ):
            for i in range(depth):  # only the first block of a stage changes width and resolution
                blocks.append(
                    MMEfficientNetLiteBlock(config, in_channels, out_channels, kernel, stride if i == 0 else 1, expand)
                )
                in_channels = out_channels
            stage_ends.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self.stage_ends = frozenset(stage_ends)
        self.head = MMEfficientNetLiteHead(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.convolution

    @can_return_tuple
    def forward(
        self, pixel_values: torch.FloatTensor, output_hidden_states: bool | None = None, **kwargs
    ) -> MMEfficientNetLiteModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, C, H, W)`): Normalized images (video clips go through
                `MMModel`, which runs their frames as images).
            output_hidden_states (`bool`): Also return the stem's and every stage's feature map.
        """
        _check_images(pixel_values, self.config.num_channels)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        hidden_states = self.embeddings(pixel_values.to(self.embeddings.convolution.weight.dtype))  # (B, stem, H/2, W/2)
        feature_maps = (hidden_states,)
        for i, block in enumerate(self.blocks):
            hidden_states = block(hidden_states)
            if i in self.stage_ends:
                feature_maps += (hidden_states,)
        hidden_states = self.head(hidden_states)  # (B, D, H/32, W/32)
        tokens = hidden_states.flatten(2).transpose(1, 2)  # (B, N, D), N = (H/32) * (W/32), row-major
        return MMEfficientNetLiteModelOutput(
            last_hidden_state=tokens,
            pooler_output=tokens.mean(1),  # (B, D)
            hidden_states=feature_maps if output_hidden_states else None,
        )


class MMEfficientNetLiteForImageClassification(MMEfficientNetLitePreTrainedModel):
    r"""
    EfficientNet-Lite with its classifier (dropout, then a linear layer on the pooled features), e.g. the ImageNet one
    of a converted checkpoint. `AutoModel.from_pretrained` on its folder gives the bare tower.

    Args:
        config ([`MMEfficientNetLiteConfig`]): The architecture; `num_labels` / `id2label` set the classes.
    """

    def __init__(self, config: MMEfficientNetLiteConfig):
        super().__init__(config)
        self.efficientnet_lite = MMEfficientNetLiteModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, C, H, W)`): Normalized images.
            labels (`torch.LongTensor` of shape `(B,)`): Class indices in `[0, num_labels)`; the cross-entropy loss
                is returned when given.
            output_hidden_states (`bool`): Also return the stem's and every stage's feature map.
        """
        outputs = self.efficientnet_lite(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.pooler_output))  # (B, num_labels)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:1] or labels.dtype not in (torch.int64, torch.int32):
                raise ValueError(
                    f"labels must be integer class indices of shape ({logits.shape[0]},), got "
                    f"{labels.dtype} of shape {tuple(labels.shape)}."
                )
            if not torch.compiler.is_compiling() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[-1]):
                raise ValueError(
                    f"labels must be in [0, {logits.shape[-1]}), got values in [{int(labels.min())}, "
                    f"{int(labels.max())}]."
                )
            loss = nn.functional.cross_entropy(logits, labels.long())
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


def _check_images(pixel_values: torch.Tensor, num_channels: int) -> None:
    if not torch.is_tensor(pixel_values) or not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be a float tensor, got {getattr(pixel_values, 'dtype', type(pixel_values))}.")
    if pixel_values.ndim != 4 or 0 in pixel_values.shape:
        raise ValueError(
            f"pixel_values must be non-empty (B, C, H, W) images, got shape {tuple(pixel_values.shape)}; MMModel runs "
            "the frames of a (B, T, C, H, W) clip through this tower as images."
        )
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values has {pixel_values.shape[1]} channels (dim 1 of shape {tuple(pixel_values.shape)}) but the "
            f"EfficientNet-Lite config's num_channels is {num_channels}."
        )
