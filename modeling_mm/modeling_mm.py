"""MM: one multimodal Transformer family with early, late, hybrid and co-attention fusion.

Reading order: outputs -> attention -> layers -> embeddings -> towers (vision, text) -> captioning decoder ->
`MMPreTrainedModel` -> `MMModel`. Pretraining lives in `modeling_mm_pretraining.py`, the task heads in
`modeling_mm_heads.py`, losses in `losses.py`.
"""

from collections.abc import Callable
from dataclasses import dataclass
import inspect
import json
import os
import shutil

import torch
from torch import nn

from transformers import AutoConfig, AutoModel, SiglipTextConfig, SiglipTextModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithCrossAttentions, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import ModelOutput, logging
from transformers.utils.generic import can_return_tuple

from .configuration_mm import CROSS_FUSIONS, TOWER_FUSIONS, MMConfig, MMEfficientNetLiteConfig, MMTextConfig, MMVisionConfig
from .losses import (
    contrastive_loss_and_logits,
    distributed_info,
    next_token_targets,
    sigmoid_loss_and_logits,
    token_cross_entropy,
)
from .modeling_efficientnet_lite import MMEfficientNetLiteModel


logger = logging.get_logger(__name__)

__all__ = [
    "MMCoAttentionLayer",
    "MMDividedSpaceTimeLayer",
    "MMFrameTemporalEncoder",
    "MMDecoderOutput",
    "MMFusionOutput",
    "MMModel",
    "MMModelOutput",
    "MMPreTrainedModel",
    "MMTextDecoder",
    "MMTextModel",
    "MMVisionModel",
]


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------


class MMOutput(ModelOutput):
    """A `ModelOutput` whose nested outputs (the towers') become tuples too, so `return_dict=False` gives plain
    tuples all the way down (as CLIP's output does)."""

    def to_tuple(self) -> tuple:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


@dataclass
class MMModelOutput(MMOutput):
    r"""
    Output of [`MMModel`]. Fields a fusion style does not produce stay `None`.

    Args:
        loss (`torch.FloatTensor` of shape `()`): ITC loss, when `return_loss=True` (late and hybrid).
        logits_per_image (`torch.FloatTensor` of shape `(image_batch, text_batch)`): Scaled cosine similarities.
        logits_per_text (`torch.FloatTensor` of shape `(text_batch, image_batch)`): Transpose of `logits_per_image`.
        text_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`): L2-normalised projected text embedding.
        image_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`): L2-normalised projected image embedding.
        last_hidden_state (`torch.FloatTensor` of shape `(batch, seq, hidden)`): The fused sequence: the joint
            [text ; image] sequence (early) or the text stream after cross-attention (hybrid).
        pooler_output (`torch.FloatTensor` of shape `(batch, hidden)`): The fused `[CLS]` state (early, hybrid).
        text_last_hidden_state (`torch.FloatTensor` of shape `(batch, text_len, text_hidden)`): Text tower output.
        image_last_hidden_state (`torch.FloatTensor` of shape `(batch, patches, vision_hidden)`): Vision tower output
            (for video, `patches = 1 + frames * patches_per_frame`).
        hidden_states (`tuple(torch.FloatTensor)`): The fused stream's input and the output of each of its layers,
            `(batch, seq, hidden)` (early: joint layers; hybrid: fusion layers), with `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`): Per fused layer, `(batch, heads, seq, seq)` self-attention (early,
            hybrid), with `output_attentions=True`.
        cross_attentions (`tuple(torch.FloatTensor)`): Per fusion layer, `(batch, heads, text_len, patches)`
            attention of text over image (hybrid, with `output_attentions=True`).
        text_model_output (`BaseModelOutputWithPooling`): The text tower's output (late, hybrid, coattention), with
            its own `hidden_states` / `attentions` when asked for.
        vision_model_output (`BaseModelOutputWithPooling`): The vision tower's output, likewise.
        fused_image_last_hidden_state (`torch.FloatTensor` of shape `(batch, patches, text_hidden)`): The image stream
            after co-attention (coattention), in the text width.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    text_last_hidden_state: torch.FloatTensor | None = None
    image_last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    fused_image_last_hidden_state: torch.FloatTensor | None = None


@dataclass
class MMFusionOutput(ModelOutput):
    r"""
    Output of [`MMModel.fuse`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, text_len, hidden)`): The fused text stream (or
            `(batch, Q, hidden)` at the asked `output_positions`).
        hidden_states, attentions (`tuple(torch.FloatTensor)`): The text stream's, per fusion layer, when asked for.
        cross_attentions (`tuple(torch.FloatTensor)`): Text over image, `(batch, heads, text_len, patches)` per layer.
        image_last_hidden_state (`torch.FloatTensor` of shape `(batch, patches, hidden)`): The fused image stream
            (coattention).
        image_hidden_states, image_attentions, image_cross_attentions (`tuple(torch.FloatTensor)`): The image stream's
            states, self-attention and attention over the text, per layer (coattention, when asked for).
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_last_hidden_state: torch.FloatTensor | None = None
    image_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    image_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MMDecoderOutput(ModelOutput):
    r"""
    Output of [`MMTextDecoder`].

    Args:
        logits (`torch.FloatTensor` of shape `(batch, text_len, vocab)`): Next-token scores.
        cache (`Cache`): Self- and cross-attention key/values for fast generation.
        last_hidden_state (`torch.FloatTensor` of shape `(batch, text_len, hidden)`): Final decoder states.
        hidden_states, attentions, cross_attentions (`tuple(torch.FloatTensor)`): Per decoder layer, when asked for.
    """

    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Attention and layers
# ----------------------------------------------------------------------------------------------------------------------


def _is(config: PreTrainedConfig, config_cls: type[PreTrainedConfig]) -> bool:
    # Compared by model_type, not class: under trust_remote_code the config and model code can be imported as two
    # copies of configuration_mm, whose classes are not identical.
    return getattr(config, "model_type", None) == config_cls.model_type


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    # query (B, H, Lq, d), key/value (B, H, Lk, d); mask is additive (B, 1, Lq, Lk) from masking_utils.
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.where(attention_mask, 0.0, torch.finfo(attn_weights.dtype).min)
        attn_weights = attn_weights + attention_mask[..., : key.shape[-2]]
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    return attn_output.transpose(1, 2).contiguous(), attn_weights  # (B, Lq, H, d)


class MMAttention(nn.Module):
    """Multi-head attention; self-attention, or cross-attention when `key_value_states` is given."""

    def __init__(
        self,
        config: PreTrainedConfig,
        kv_hidden_size: int | None = None,
        is_causal: bool = False,
        is_cross_attention: bool = False,
        layer_idx: int | None = None,
    ):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        self.is_causal = is_causal
        self.is_cross_attention = is_cross_attention
        self.layer_idx = layer_idx
        bias = getattr(config, "qkv_bias", True)
        kv_dim = kv_hidden_size or self.embed_dim
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=bias)
        self.k_proj = nn.Linear(kv_dim, self.embed_dim, bias=bias)
        self.v_proj = nn.Linear(kv_dim, self.embed_dim, bias=bias)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        kv_index: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        query = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)  # (B, H, Lq, d)

        # Cross-attention keys/values depend only on the image: computed once, then read from the cache while decoding.
        if self.is_cross_attention and isinstance(cache, EncoderDecoderCache) and cache.is_updated.get(self.layer_idx):
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            key, value = layer.keys, layer.values
        else:
            # Self-attention may take its keys/values from more positions than it has queries (`MMLayer`'s
            # `query_positions`), passed as `key_value_states`.
            source = key_value_states if self.is_cross_attention or key_value_states is not None else hidden_states
            if source is None:
                raise ValueError("Cross-attention needs image states (pixel_values), and none are cached.")
            kv_shape = (*source.shape[:-1], -1, self.head_dim)
            key = self.k_proj(source).view(kv_shape).transpose(1, 2)  # (B_src, H, Lk, d)
            value = self.v_proj(source).view(kv_shape).transpose(1, 2)
            if kv_index is not None:
                # Several queries rows share one image (ITM negatives): project each image once, then gather.
                key, value = key.index_select(0, kv_index), value.index_select(0, kv_index)  # (B, H, Lk, d)
            if isinstance(cache, EncoderDecoderCache):
                if self.is_cross_attention:
                    key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                    cache.is_updated[self.layer_idx] = True
                else:
                    key, value = cache.self_attention_cache.update(key, value, self.layer_idx)

        # Attention maps are only materialised by the eager kernel; asking for them selects it for this call.
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.dropout,
            scaling=self.scaling,
            is_causal=self.is_causal and attention_mask is None and query.shape[2] > 1,
        )
        attn_output = self.out_proj(attn_output.reshape(*input_shape, -1).contiguous())
        return attn_output, (attn_weights if output_attentions else None)


class MMMLP(nn.Module):
    def __init__(self, config: PreTrainedConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class MMLayer(GradientCheckpointingLayer):
    """Pre-LN Transformer layer: self-attention, optional cross-attention to another modality, MLP.

    One class serves the vision and text towers, the early-fusion joint encoder, the hybrid fusion layers and the
    captioning decoder, so attention kernels, checkpointing and LoRA target names are the same everywhere.
    """

    def __init__(
        self,
        config: PreTrainedConfig,
        cross_attention_hidden_size: int | None = None,
        is_causal: bool = False,
        layer_idx: int | None = None,
    ):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = MMAttention(config, is_causal=is_causal, layer_idx=layer_idx)
        self.has_cross_attention = cross_attention_hidden_size is not None
        if self.has_cross_attention:
            self.layer_norm_cross = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.cross_attn = MMAttention(
                config, kv_hidden_size=cross_attention_hidden_size, is_cross_attention=True, layer_idx=layer_idx
            )
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MMMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        encoder_index: torch.LongTensor | None = None,
        query_positions: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """`query_positions` `(B, Q)`: compute the layer's output only at those positions (`(B, Q, D)`); every position
        is still attended to. A last layer whose other outputs nobody reads skips most of its work this way."""
        if query_positions is not None and attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
            # A mask that is not a tensor (flex attention's BlockMask) cannot be cut down to the kept queries: run
            # every position, then keep the asked ones.
            hidden_states, self_weights, cross_weights = self.forward(
                hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask, cache,
                output_attentions, encoder_index,
            )
            index = query_positions.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1])
            return hidden_states.gather(1, index), self_weights, cross_weights
        normed = self.layer_norm1(hidden_states)
        if query_positions is None:
            attn_out, self_weights = self.self_attn(
                normed, attention_mask, cache=cache, output_attentions=output_attentions
            )
        else:
            index = query_positions.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1])
            if attention_mask is not None and attention_mask.shape[-2] > 1:  # (B, 1, L, L) -> kept rows (B, 1, Q, L)
                attention_mask = torch.take_along_dim(attention_mask, query_positions[:, None, :, None], dim=2)
            attn_out, self_weights = self.self_attn(
                normed.gather(1, index), attention_mask, key_value_states=normed, output_attentions=output_attentions
            )
            hidden_states = hidden_states.gather(1, index)
        hidden_states = hidden_states + self.dropout(attn_out)
        cross_weights = None
        if self.has_cross_attention:
            cross_out, cross_weights = self.cross_attn(
                self.layer_norm_cross(hidden_states),
                encoder_attention_mask,
                key_value_states=encoder_hidden_states,
                cache=cache,
                output_attentions=output_attentions,
                kv_index=encoder_index,
            )
            hidden_states = hidden_states + self.dropout(cross_out)
        hidden_states = hidden_states + self.dropout(self.mlp(self.layer_norm2(hidden_states)))
        return hidden_states, self_weights, cross_weights


class MMDividedSpaceTimeLayer(GradientCheckpointingLayer):
    """TimeSformer's divided space-time layer (Bertasius et al. 2021, sec. 3, "T+S"), pre-LN: a temporal attention
    across the frames at each patch position, then a spatial attention within each frame, then the MLP.

    The spatial attention, the MLP and their norms carry `MMLayer`'s names (`self_attn`, `layer_norm1`, `mlp`,
    `layer_norm2`), so an image tower's weights load into it; `temporal_attn` is new, its output projection
    initialised to zero (marked `_zero_init` for `_init_weights`): the layer starts as the image layer applied per frame.
    A one-frame input skips the temporal attention, so images are encoded exactly as by `MMLayer`."""

    def __init__(self, config: PreTrainedConfig, layer_idx: int | None = None):
        super().__init__()
        self.layer_norm_temporal = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.temporal_attn = MMAttention(config, layer_idx=layer_idx)
        self.temporal_attn.out_proj._zero_init = True
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = MMAttention(config, layer_idx=layer_idx)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MMMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.has_cross_attention = False

    def forward(
        self, hidden_states: torch.Tensor, frames: int = 1, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """`hidden_states` `(B, 1 + T*N, D)`: `[CLS]`, then frame-major patches. Returns the states and the spatial
        and temporal attention maps, `(B*T, H, 1+N, 1+N)` and `(B*N, H, T, T)` (None unless `output_attentions`)."""
        batch, tokens, width = hidden_states.shape
        cls, patches = hidden_states[:, :1], hidden_states[:, 1:]  # (B, 1, D), (B, T*N, D)
        per_frame = (tokens - 1) // frames
        temporal_weights = None
        if frames > 1:
            # Each patch position attends over its T frames.
            along_time = patches.reshape(batch, frames, per_frame, width).transpose(1, 2).reshape(-1, frames, width)
            update, temporal_weights = self.temporal_attn(
                self.layer_norm_temporal(along_time), output_attentions=output_attentions
            )  # (B*N, T, D)
            update = update.reshape(batch, per_frame, frames, width).transpose(1, 2).reshape(batch, -1, width)
            patches = patches + self.dropout(update)
        # Each frame attends within itself, with its own copy of [CLS]; the copies are averaged afterwards.
        in_frame = torch.cat(
            [cls.unsqueeze(1).expand(-1, frames, -1, -1), patches.reshape(batch, frames, per_frame, width)], dim=2
        ).reshape(batch * frames, 1 + per_frame, width)  # (B*T, 1+N, D)
        update, spatial_weights = self.self_attn(self.layer_norm1(in_frame), output_attentions=output_attentions)
        update = update.reshape(batch, frames, 1 + per_frame, width)
        cls = cls + self.dropout(update[:, :, :1].mean(1))
        patches = patches + self.dropout(update[:, :, 1:].reshape(batch, frames * per_frame, width))
        hidden_states = torch.cat([cls, patches], dim=1)
        hidden_states = hidden_states + self.dropout(self.mlp(self.layer_norm2(hidden_states)))
        return hidden_states, spatial_weights, temporal_weights


class MMCoAttentionLayer(GradientCheckpointingLayer):
    """LXMERT's cross-modality layer (Tan & Bansal 2019, Sec. 2.2), pre-LN: the text attends to the image and the image
    to the text, both from the layer's input states, then each stream attends to itself and runs its MLP. ViLBERT's
    co-attention block is the same exchange. Built from `MMAttention` / `MMMLP`, so attention kernels, checkpointing
    and LoRA target names (`q_proj`, `v_proj`) are those of every other layer. Both streams have the text width.

    `update_image=False` builds a layer that updates only the text (the image is still read): the last layer of the
    stack is built so, because every head reads the fused text ([CLS], masked tokens) and nothing would read (or
    train) the last image update."""

    def __init__(self, config: PreTrainedConfig, layer_idx: int | None = None, update_image: bool = True):
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.update_image = update_image
        self.text_cross_norm = nn.LayerNorm(width, eps=eps)
        self.text_cross_attn = MMAttention(config, is_cross_attention=True, layer_idx=layer_idx)
        self.image_cross_norm = nn.LayerNorm(width, eps=eps)
        self.text_self_norm = nn.LayerNorm(width, eps=eps)
        self.text_self_attn = MMAttention(config, layer_idx=layer_idx)
        self.text_mlp_norm = nn.LayerNorm(width, eps=eps)
        self.text_mlp = MMMLP(config)
        if update_image:
            self.image_cross_attn = MMAttention(config, is_cross_attention=True, layer_idx=layer_idx)
            self.image_self_norm = nn.LayerNorm(width, eps=eps)
            self.image_self_attn = MMAttention(config, layer_idx=layer_idx)
            self.image_mlp_norm = nn.LayerNorm(width, eps=eps)
            self.image_mlp = MMMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        image_to_text_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...]]:
        """`text` `(B, L, D)`, `image` `(B, N, D)`; `text_mask` the text self-attention mask, `image_to_text_mask`
        the image queries' mask over text keys (padding). Returns both streams and the four attention maps
        `(text self, image self, text over image, image over text)` (None unless `output_attentions`)."""
        text_normed, image_normed = self.text_cross_norm(text), self.image_cross_norm(image)
        # Each cross-attention reads the other stream's input to this layer, so neither sees the other's update first.
        text_cross, text_over_image = self.text_cross_attn(
            text_normed, None, key_value_states=image_normed, output_attentions=output_attentions
        )
        text = text + self.dropout(text_cross)
        text_self, text_weights = self.text_self_attn(
            self.text_self_norm(text), text_mask, output_attentions=output_attentions
        )
        text = text + self.dropout(text_self)
        text = text + self.dropout(self.text_mlp(self.text_mlp_norm(text)))
        if not self.update_image:
            return text, image, (text_weights, None, text_over_image, None)
        image_cross, image_over_text = self.image_cross_attn(
            image_normed, image_to_text_mask, key_value_states=text_normed, output_attentions=output_attentions
        )
        image = image + self.dropout(image_cross)
        image_self, image_weights = self.image_self_attn(
            self.image_self_norm(image), None, output_attentions=output_attentions
        )
        image = image + self.dropout(image_self)
        image = image + self.dropout(self.image_mlp(self.image_mlp_norm(image)))
        return text, image, (text_weights, image_weights, text_over_image, image_over_text)


def run_layers(
    layers: nn.ModuleList,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    cache: Cache | None = None,
    output_attentions: bool = False,
    output_hidden_states: bool = False,
    encoder_index: torch.LongTensor | None = None,
    last_positions: torch.LongTensor | None = None,
) -> BaseModelOutputWithCrossAttentions:
    """Runs a stack of `MMLayer`s (every tower, fusion stack and decoder uses this loop). `hidden_states` collects the
    stack's input and each layer's output (before any final LayerNorm, as CLIP's encoder does); `last_positions`
    `(B, Q)` makes the last layer compute only those positions (see `MMLayer.forward`)."""
    all_hidden = () if output_hidden_states else None
    self_attentions = () if output_attentions else None
    cross_attentions = () if output_attentions and len(layers) and layers[0].has_cross_attention else None
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        if output_hidden_states:
            all_hidden += (hidden_states,)
        hidden_states, self_weights, cross_weights = layer(
            hidden_states,
            attention_mask,
            encoder_hidden_states,
            None,
            cache,
            output_attentions,
            encoder_index,
            last_positions if i == last else None,
        )
        if output_attentions:
            self_attentions += (self_weights,)
            if cross_attentions is not None:
                cross_attentions += (cross_weights,)
    if output_hidden_states:
        all_hidden += (hidden_states,)
    return BaseModelOutputWithCrossAttentions(
        last_hidden_state=hidden_states,
        hidden_states=all_hidden,
        attentions=self_attentions,
        cross_attentions=cross_attentions,
    )


def _flag(value: bool | None, config: PreTrainedConfig, name: str) -> bool:
    """An `output_*` argument, defaulting to the config's field (transformers' convention)."""
    return bool(getattr(config, name, False)) if value is None else bool(value)


# ----------------------------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------------------------


class MMVisionEmbeddings(nn.Module):
    """ViT patch embeddings with a [CLS] token, spatial and (for video) temporal position embeddings. The patches come
    from one strided convolution, or from a convolutional stem followed by a smaller one (`patch_embedding_type`)."""

    def __init__(self, config: MMVisionConfig, hidden_size: int | None = None):
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size or config.hidden_size
        self.patch_size = config.patch_size
        self.grid = config.image_size // config.patch_size
        self.stem = None
        in_channels, patch = config.num_channels, config.patch_size
        if config.patch_embedding_type == "conv_stem":
            # log2(patch) - 1 stride-2 3x3 convolutions, widths doubling up to hidden/2, then a 2x2 patchify.
            depth = patch.bit_length() - 2
            layers = []
            for i in range(depth):
                width = max(self.hidden_size >> (depth - i), 8)
                layers += [
                    nn.Conv2d(in_channels, width, kernel_size=3, stride=2, padding=1),
                    nn.GroupNorm(1, width),
                    nn.GELU(),
                ]
                in_channels = width
            self.stem = nn.Sequential(*layers)
            patch = patch >> depth
        self.patch_embedding = nn.Conv2d(in_channels, self.hidden_size, kernel_size=patch, stride=patch)
        self.tubelet_size = getattr(config, "tubelet_size", 1)
        self.tubelet_embedding = None
        if self.tubelet_size > 1:
            # ViViT's tubelet embedding as a correction to the image projection of the tubelet's mean frame: it starts
            # at zero, so an image checkpoint loads and embeds the mean frame as before.
            self.tubelet_embedding = nn.Conv2d(
                self.tubelet_size * in_channels, self.hidden_size, kernel_size=patch, stride=patch, bias=False
            )
            self.tubelet_embedding._zero_init = True
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + self.grid**2, self.hidden_size))
        token_frames = config.num_frames // self.tubelet_size
        self.temporal_embedding = (
            nn.Parameter(torch.zeros(1, token_frames, 1, self.hidden_size)) if token_frames > 1 else None
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def _patch_positions(self, height: int, width: int) -> torch.Tensor:
        """Spatial position embeddings for a (height/patch) x (width/patch) grid, interpolated when it differs."""
        pos = self.position_embedding[:, 1:]
        new_h, new_w = height // self.patch_size, width // self.patch_size
        if new_h == self.grid and new_w == self.grid:
            return pos
        pos = pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
        pos = nn.functional.interpolate(pos, size=(new_h, new_w), mode="bicubic", align_corners=False)
        return pos.permute(0, 2, 3, 1).reshape(1, new_h * new_w, -1)

    def forward(
        self, pixel_values: torch.Tensor, keep_indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, int]:
        """Returns `(embeddings (B, 1 + kept_tokens, D), token frames)`; `keep_indices` (B, K) selects patch tokens
        (FLIP). Token frames are the clip's frames over `tubelet_size` (1 for an image)."""
        video = pixel_values.ndim == 5
        tubelet = self.tubelet_size
        if video:
            batch, frames = pixel_values.shape[:2]
            pixel_values = pixel_values.flatten(0, 1)  # (B*T, C, H, W)
        else:
            batch, frames = pixel_values.shape[0], 1
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"pixel_values height and width ({height}x{width}) must be multiples of patch_size {self.patch_size}."
            )
        # A tower without temporal embeddings takes no clips, unless one tubelet is the whole clip.
        supported = self.config.num_frames if self.temporal_embedding is not None or tubelet > 1 else 0
        if video and frames > supported:
            raise ValueError(
                f"pixel_values has {frames} frames but vision_config.num_frames is {self.config.num_frames}; set "
                "num_frames to at least the clip length."
            )
        if video and frames % tubelet:
            raise ValueError(
                f"pixel_values has {frames} frames, not a multiple of vision_config.tubelet_size ({tubelet}); sample "
                f"a multiple of {tubelet} frames per clip."
            )
        pixel_values = pixel_values.to(self.patch_embedding.weight.dtype)
        if self.stem is not None:
            pixel_values = self.stem(pixel_values)
        tubelets = None
        if self.tubelet_embedding is not None:
            if video:
                pixel_values = pixel_values.unflatten(0, (batch * frames // tubelet, tubelet))  # (B*T/k, k, C, H, W)
                tubelets, pixel_values = pixel_values.flatten(1, 2), pixel_values.mean(1)
            else:  # an image is a still clip of one tubelet
                tubelets = pixel_values.repeat(1, tubelet, 1, 1)
            frames = max(frames // tubelet, 1)
        positions = self._patch_positions(height, width)  # (1, N, D)
        if self.temporal_embedding is not None:
            # An image is a one-frame clip: it gets frame 0's embedding (zero-initialised, so an image checkpoint
            # loads unchanged), which also keeps the parameter in use when a video model trains on images.
            positions = (positions.unsqueeze(1) + self.temporal_embedding[:, :frames]).flatten(1, 2)  # (1, T*N, D)
        tokens = positions.shape[1]
        if keep_indices is None or tubelets is not None:
            patches = self.patch_embedding(pixel_values)
            if tubelets is not None:
                patches = patches + self.tubelet_embedding(tubelets)
            patches = patches.flatten(2).transpose(1, 2).reshape(batch, tokens, self.hidden_size)  # (B, T*N, D)
            if keep_indices is None:
                return self._with_cls(patches + positions), frames
        valid = keep_indices.ndim == 2 and keep_indices.shape[0] == batch and keep_indices.numel() > 0
        if not valid or (_eager_checks() and (int(keep_indices.min()) < 0 or int(keep_indices.max()) >= tokens)):
            span = f", values in [{int(keep_indices.min())}, {int(keep_indices.max())}]" if keep_indices.numel() else ""
            raise ValueError(
                f"image_keep_indices must be a non-empty (batch={batch}, K) tensor of patch indices in "
                f"[0, {tokens}); got shape {tuple(keep_indices.shape)}{span}."
            )
        # FLIP (Li et al. 2023): only the kept patches are embedded and encoded, so compute falls with the mask ratio.
        # The patch projection is a convolution with kernel = stride, i.e. a linear map of each patch's pixels.
        index = keep_indices.unsqueeze(-1).expand(-1, -1, self.hidden_size)
        if tubelets is not None:  # embedded above, whole
            patches = patches.gather(1, index)
        elif type(self.patch_embedding) is nn.Conv2d:
            kernel = self.patch_embedding.kernel_size
            pixels = nn.functional.unfold(pixel_values, kernel, stride=kernel).transpose(1, 2)  # (B*T, N, C*k*k)
            pixels = pixels.reshape(batch, tokens, -1)
            pixels = pixels.gather(1, keep_indices.unsqueeze(-1).expand(-1, -1, pixels.shape[-1]))
            patches = nn.functional.linear(pixels, self.patch_embedding.weight.flatten(1), self.patch_embedding.bias)
        else:  # a wrapped projection (e.g. LoRA on the convolution) runs as given, on every patch
            patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2).reshape(batch, tokens, -1)
            patches = patches.gather(1, index)
        return self._with_cls(patches + positions.expand(batch, -1, -1).gather(1, index)), frames

    def _with_cls(self, patches: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.position_embedding[:, :1]).expand(patches.shape[0], -1, -1)
        return self.dropout(torch.cat([cls, patches], dim=1))


class MMTextEmbeddings(nn.Module):
    """BERT-style word + position + token-type embeddings."""

    def __init__(self, config: MMTextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.max_positions = config.max_position_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor,
        token_type_ids: torch.LongTensor | None = None,
        past_length: int = 0,
        position_ids: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        length = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + length, device=input_ids.device)[None]
        if past_length + length > self.max_positions or (
            _eager_checks() and int(position_ids.max()) >= self.max_positions
        ):
            raise ValueError(
                f"Text of {past_length + length} tokens exceeds max_position_embeddings={self.max_positions}; "
                "truncate it in the processor (truncation=True, max_length=...)."
            )
        embeddings = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.layer_norm(embeddings))


def _eager_checks() -> bool:
    """Value checks read tensor contents on the host (a device sync, and a graph break under `torch.compile`). Eager
    calls always run them; a graph being captured by `torch.compile` skips them, as transformers' own models do."""
    return not torch.compiler.is_compiling()


def _check_input_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    if not torch.is_tensor(input_ids) or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be an integer tensor, got {getattr(input_ids, 'dtype', type(input_ids))}.")
    if input_ids.ndim != 2 or 0 in input_ids.shape:
        raise ValueError(f"input_ids must be a non-empty (batch, sequence) tensor, got shape {tuple(input_ids.shape)}.")
    if not _eager_checks():
        return
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        bad = ((input_ids < 0) | (input_ids >= vocab_size)).nonzero()[0].tolist()
        raise ValueError(
            f"input_ids[{bad[0]}, {bad[1]}] = {int(input_ids[bad[0], bad[1]])} is outside the vocabulary "
            f"[0, {vocab_size}); is the tokenizer the one of this model?"
        )


def _check_text_inputs(
    text_config: PreTrainedConfig,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
) -> None:
    """Ids in the vocabulary; mask and segment ids of the same `(B, L)` shape; segment ids within the type table."""
    _check_input_ids(input_ids, text_config.vocab_size)
    for name, tensor in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if tensor is not None and tuple(tensor.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but input_ids has shape {tuple(input_ids.shape)}; they must match."
            )
    types = getattr(text_config, "type_vocab_size", None)
    if token_type_ids is not None and types is not None and _eager_checks():
        if int(token_type_ids.min()) < 0 or int(token_type_ids.max()) >= types:
            raise ValueError(
                f"token_type_ids must be in [0, {types}), got values in [{int(token_type_ids.min())}, "
                f"{int(token_type_ids.max())}]."
            )


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained model base
# ----------------------------------------------------------------------------------------------------------------------


# Every class a published folder exposes to `trust_remote_code` loading, whichever head was saved.
REMOTE_CODE_AUTO_MAP: dict[str, str] = {
    "AutoConfig": "configuration_mm.MMConfig",
    "AutoModel": "modeling_mm.MMModel",
    "AutoModelForPreTraining": "modeling_mm_pretraining.MMForPreTraining",
    "AutoModelForVisualQuestionAnswering": "modeling_mm_heads.MMForVisualQuestionAnswering",
    "AutoModelForImageTextToText": "modeling_mm_heads.MMForConditionalGeneration",
    "AutoModelForZeroShotImageClassification": "modeling_mm.MMModel",
    "AutoModelForSequenceClassification": "modeling_mm_heads.MMForImageTextClassification",
}
REMOTE_CODE_FILES = (
    "configuration_mm.py",
    "modeling_mm.py",
    "modeling_mm_heads.py",
    "modeling_mm_pretraining.py",
    "losses.py",
    "modeling_efficientnet_lite.py",
)


def write_remote_code(save_directory: str | os.PathLike) -> None:
    """Copies the self-contained model code next to a checkpoint and lists every head in `config.json`'s `auto_map`,
    so any Auto class loads the folder with `trust_remote_code=True` in a process without this package."""
    here = os.path.dirname(os.path.abspath(__file__))
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(os.path.join(here, name), os.path.join(save_directory, name))
    config_file = os.path.join(save_directory, "config.json")
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    config["auto_map"] = {**config.get("auto_map", {}), **REMOTE_CODE_AUTO_MAP}
    with open(config_file, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


class MMPreTrainedModel(PreTrainedModel):
    config: MMConfig
    config_class = MMConfig
    base_model_prefix = "mm"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # Co-attention models add "MMCoAttentionLayer" (in `__init__`): accelerate's FSDP wrap refuses a listed class the
    # model does not contain.
    _no_split_modules = ["MMLayer", "MMDividedSpaceTimeLayer", "MMVisionEmbeddings", "MMTextEmbeddings"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Losses are means over the batch: Trainer must still divide by gradient accumulation steps.
    accepts_loss_kwargs = False

    # -- composition from pretrained towers ---------------------------------------------------------------------------

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str | None = None,
        text_model_name_or_path: str | None = None,
        vision_config: PreTrainedConfig | dict | None = None,
        text_config: PreTrainedConfig | dict | None = None,
        **kwargs,
    ) -> "MMPreTrainedModel":
        r"""
        Builds a model (or any MM head, when called on it) whose towers are loaded from transformers checkpoints;
        fusion, projection, decoder and head weights are newly initialised (and reported in the log).

        Args:
            vision_model_name_or_path (`str`): Folder or Hub id of a vision model (ViT, DeiT, CLIPVision...,
                an `MMVisionModel`, or an EfficientNet-Lite folder from `run_scripts/convert_efficientnet_lite.py`,
                whose last feature map gives the patch tokens and its average the pooled state). If `None`, a fresh
                tower from `vision_config`.
            text_model_name_or_path (`str`): Folder or Hub id of a text encoder (BERT, RoBERTa..., or `MMTextModel`).
            vision_config / text_config: Configs for towers that are not loaded.
            kwargs: `MMConfig` fields (`fusion`, `num_fusion_layers`, ...) and `from_pretrained` options
                (`attn_implementation`, `dtype`).
        """
        load_kwargs = {k: kwargs.pop(k) for k in ("attn_implementation", "dtype", "revision", "local_files_only") if k in kwargs}
        towers: dict[str, PreTrainedModel] = {}
        configs = {"vision_config": vision_config, "text_config": text_config}
        for key, path in (("vision_config", vision_model_name_or_path), ("text_config", text_model_name_or_path)):
            if path is None:
                continue
            sub_config = AutoConfig.from_pretrained(path, **{k: v for k, v in load_kwargs.items() if k != "dtype"})
            if getattr(sub_config, "model_type", None) == "mm":
                sub_config = getattr(sub_config, key)
            if hasattr(sub_config, "vision_config") and key == "vision_config":
                # A CLIP/SigLIP-style dual checkpoint: take its vision part.
                sub_config = sub_config.vision_config
            configs[key] = sub_config
            if _is(sub_config, MMVisionConfig):
                towers[key] = MMVisionModel.from_pretrained(path, **load_kwargs)
            elif _is(sub_config, MMTextConfig):
                towers[key] = MMTextModel.from_pretrained(path, **load_kwargs)
            elif _is(sub_config, MMEfficientNetLiteConfig):
                # A converted folder holds the ImageNet classifier too; only the tower is kept.
                towers[key] = MMEfficientNetLiteModel.from_pretrained(path, **load_kwargs)
            else:
                towers[key] = _load_foreign_tower(sub_config, path, load_kwargs)
                configs[key] = towers[key].config
        config = MMConfig(**configs, **kwargs)
        if "attn_implementation" in load_kwargs:
            config._attn_implementation = load_kwargs["attn_implementation"]
        model = cls(config)
        base = model.base_model
        for key, tower in towers.items():
            name = "vision_model" if key == "vision_config" else "text_model"
            if name == "vision_model" and config.fusion == "early":
                raise ValueError("fusion='early' embeds patches itself; load a text tower only.")
            target = getattr(base, name, None)
            if target is None:
                continue  # a head built without this tower (captioning: the decoder has its own embeddings)
            missing, unexpected = target.load_state_dict(tower.state_dict(), strict=False)
            if missing or unexpected:
                raise ValueError(f"Could not load the {name} weights: missing {missing}, unexpected {unexpected}.")
        # The captioning decoder starts from the text tower's word embeddings when the shapes agree.
        decoder = getattr(model, "text_decoder", None)
        if decoder is not None and "text_config" in towers:
            source = towers["text_config"].get_input_embeddings().weight
            if source.shape == decoder.embeddings.word_embeddings.weight.shape:
                with torch.no_grad():
                    decoder.embeddings.word_embeddings.weight.copy_(source)
        new = [n for n, _ in model.named_parameters() if not n.startswith(("mm.vision_model", "mm.text_model", "vision_model", "text_model"))]
        logger.warning(
            f"Some weights of {cls.__name__} were not initialized from the tower checkpoints and are newly "
            f"initialized: {sorted({'.'.join(n.split('.')[:3]) for n in new})}\n"
            "You should probably TRAIN this model on a down-stream task to be able to use it for predictions and inference."
        )
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        super().save_pretrained(save_directory, *args, **kwargs)
        if self._auto_class is not None and _is(self.config, MMConfig) and kwargs.get("is_main_process", True):
            write_remote_code(save_directory)

    def __init__(self, config: PreTrainedConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        if getattr(config, "fusion", None) == "coattention":
            self._no_split_modules = [*type(self)._no_split_modules, "MMCoAttentionLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            # Residual branches that must start as the identity (new temporal parts) are marked `_zero_init`.
            if getattr(module, "_zero_init", False):
                init.zeros_(module.weight)
            else:
                init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, MMFrameTemporalEncoder):
            init.zeros_(module.frame_embedding)
            if module.spatial_embedding is not None:
                init.zeros_(module.spatial_embedding)
        elif isinstance(module, MMVisionEmbeddings):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.position_embedding, std=std)
            if module.temporal_embedding is not None:
                init.zeros_(module.temporal_embedding)
        elif isinstance(module, MMModel):
            if module.logit_scale is not None:
                init.constant_(module.logit_scale, self.config.itc_init_value("logit_scale_init_value"))
            if module.logit_bias is not None:
                init.constant_(module.logit_bias, self.config.itc_init_value("logit_bias_init_value"))
            if module.modality_type_embeddings is not None:
                init.normal_(module.modality_type_embeddings.weight, std=std)


# ----------------------------------------------------------------------------------------------------------------------
# Towers
# ----------------------------------------------------------------------------------------------------------------------


class MMVisionModel(MMPreTrainedModel):
    """The built-in ViT tower. Accepts images `(B, C, H, W)` or video frames `(B, T, C, H, W)`."""

    config: MMVisionConfig
    config_class = MMVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: MMVisionConfig):
        super().__init__(config)
        self.embeddings = MMVisionEmbeddings(config)
        layer = MMDividedSpaceTimeLayer if config.video_attention == "divided" else MMLayer
        self.layers = nn.ModuleList([layer(config, layer_idx=i) for i in range(config.num_hidden_layers)])
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        image_keep_indices: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        pooled_only: bool = False,
        pixel_values_videos: torch.FloatTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values (`(B, C, H, W)` or `(B, T, C, H, W)`): Images, or video frames.
            image_keep_indices (`(B, K)`): Patch indices to keep (FLIP).
            pooled_only (`bool`): Compute only `pooler_output` (the `[CLS]` state): the last layer then runs its
                queries, attention output and MLP for `[CLS]` alone, and `last_hidden_state` is `None`. Ignored when
                hidden states are asked for.
            pixel_values_videos (`(B, T, C, H, W)`): Video frames (the processor's key for videos).
        """
        pixel_values = visual_input(pixel_values, pixel_values_videos)
        output_attentions = _flag(output_attentions, self.config, "output_attentions")
        output_hidden_states = _flag(output_hidden_states, self.config, "output_hidden_states")
        pooled_only = pooled_only and not output_hidden_states
        if self.config.video_attention == "divided":
            return self._divided_forward(pixel_values, image_keep_indices, output_attentions, output_hidden_states)
        hidden_states, _ = self.embeddings(pixel_values, keep_indices=image_keep_indices)  # (B, 1+N, D)
        out = run_layers(
            self.layers,
            hidden_states,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            last_positions=_cls_positions(hidden_states) if pooled_only else None,
        )
        hidden_states = self.post_layernorm(out.last_hidden_state)
        return BaseModelOutputWithPooling(
            last_hidden_state=None if pooled_only else hidden_states,
            pooler_output=hidden_states[:, 0],
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


    def _divided_forward(
        self,
        pixel_values: torch.Tensor,
        image_keep_indices: torch.LongTensor | None,
        output_attentions: bool,
        output_hidden_states: bool,
    ) -> BaseModelOutputWithPooling:
        """`forward` with divided space-time layers. `attentions` holds each layer's spatial maps
        `(B*T, H, 1+N, 1+N)`; the temporal ones are not returned."""
        if image_keep_indices is not None and pixel_values.ndim == 5:
            raise ValueError(
                "FLIP masking (image_mask_ratio / image_keep_indices) drops different patches in each frame, which "
                "divided space-time attention cannot pair across frames: train clips with video_attention='divided' "
                "with image_mask_ratio=0."
            )
        hidden_states, frames = self.embeddings(pixel_values, keep_indices=image_keep_indices)  # (B, 1+T*N, D)
        all_hidden = () if output_hidden_states else None
        attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            hidden_states, spatial_weights, _ = layer(hidden_states, frames, output_attentions)
            if output_attentions:
                attentions += (spatial_weights,)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        hidden_states = self.post_layernorm(hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states, pooler_output=hidden_states[:, 0], hidden_states=all_hidden,
            attentions=attentions,
        )


class MMTextModel(MMPreTrainedModel):
    """The built-in BERT-style text tower (pre-LN). Its layers also form the early-fusion joint encoder."""

    config: MMTextConfig
    config_class = MMTextConfig
    input_modalities = ("text",)

    def __init__(self, config: MMTextConfig):
        super().__init__(config)
        self.embeddings = MMTextEmbeddings(config)
        self.layers = nn.ModuleList([MMLayer(config, layer_idx=i) for i in range(config.num_hidden_layers)])
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.word_embeddings = value

    def encode(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_attentions: bool = False,
        output_positions: torch.LongTensor | None = None,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithCrossAttentions:
        """Runs the layers over already-embedded tokens with a 2D `(B, L)` padding mask; with `output_positions`
        `(B, Q)`, only those positions are returned and the last layer computes nothing else. `last_hidden_state` is
        after the final LayerNorm; `hidden_states` (when asked for) before it."""
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask)
        out = run_layers(
            self.layers,
            hidden_states,
            mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            last_positions=output_positions,
        )
        out.last_hidden_state = self.final_layer_norm(out.last_hidden_state)
        return out

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        pooled_only: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            input_ids, attention_mask, token_type_ids (`(B, L)`): Tokens from the processor.
            pooled_only (`bool`): Compute only `pooler_output` (the `[CLS]` state); `last_hidden_state` is `None`.
                Ignored when hidden states are asked for.
        """
        if input_ids is None:
            raise ValueError("MMTextModel needs input_ids.")
        output_attentions = _flag(output_attentions, self.config, "output_attentions")
        output_hidden_states = _flag(output_hidden_states, self.config, "output_hidden_states")
        pooled_only = pooled_only and not output_hidden_states
        _check_input_ids(input_ids, self.config.vocab_size)
        embedded = self.embeddings(input_ids, token_type_ids)
        out = self.encode(
            embedded,
            attention_mask,
            output_attentions,
            _cls_positions(embedded) if pooled_only else None,
            output_hidden_states,
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=None if pooled_only else out.last_hidden_state,
            pooler_output=out.last_hidden_state[:, 0],
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


def _cls_positions(hidden_states: torch.Tensor) -> torch.LongTensor:
    """`(B, 1)` zeros: the `[CLS]` position of every row, as `query_positions` for a pooled-only last layer."""
    return torch.zeros(hidden_states.shape[0], 1, dtype=torch.long, device=hidden_states.device)


def _text_layer_config(config: MMConfig) -> PreTrainedConfig:
    """Fusion and decoder layers take the text tower's width; for a foreign text config, an MMTextConfig copy of it."""
    text = config.text_config
    if _is(text, MMTextConfig):
        return text
    fields = {
        name: getattr(text, name)
        for name in (
            "vocab_size",
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "max_position_embeddings",
            "layer_norm_eps",
        )
        if getattr(text, name, None) is not None
    }
    fields["pad_token_id"] = getattr(text, "pad_token_id", 0)
    layer_config = MMTextConfig(**fields)
    layer_config._attn_implementation = text._attn_implementation
    return layer_config


class MMFrameTemporalEncoder(nn.Module):
    """Time for a vision tower that encodes a clip frame by frame (CLIP, SigLIP, the CNN tower): learned frame
    embeddings, then `config.video_temporal_layers` pre-LN Transformer layers over the T per-frame pooled states
    `(B, T, Dv)`; their mean is the clip's pooled state. The frame embeddings are also added to each frame's token
    states, so fusion layers reading them know the frame order.

    With `config.video_temporal_tokens = N`, the layers run over all `T * N` token states instead, each with its
    frame's embedding and a learned spatial embedding of its place in the frame (a pooled state no longer says where
    a shape is, which the direction of a motion needs); their outputs are the tokens fusion reads, and the clip's
    pooled state is the frame average plus the layers' update averaged over all tokens.

    With `config.video_temporal_hidden_size = d` below the tower's width, the layers run at width `d` between a
    linear map `down` and a map `up` back to the tower's width, whose output is added to the layers' inputs.

    With `config.video_motion_embedding`, the layers' input tokens also get `motion_embedding` of the pixel difference
    between their frame and the previous one (none for the first frame), average-pooled to `MOTION_CELL x MOTION_CELL`
    per token cell of a square token grid (a leading `[CLS]` token gets none).

    The embeddings and every residual branch (`out_proj`, `fc2`, `up`) start at zero (`MMPreTrainedModel._init_weights`),
    so an untrained encoder returns the frame average and the tokens unchanged, what the model computes without one."""

    MOTION_CELL = 8  # pooled pixels per side of a token's cell that the motion embedding reads

    def __init__(self, config: MMConfig):
        super().__init__()
        width = config.vision_config.hidden_size
        inner = config.video_temporal_hidden_size or width
        heads = inner // 64 if inner % 64 == 0 else 1
        layer_config = MMVisionConfig(
            hidden_size=inner, num_attention_heads=heads, intermediate_size=4 * inner,
            num_hidden_layers=config.video_temporal_layers,
            layer_norm_eps=getattr(config.vision_config, "layer_norm_eps", 1e-12),
        )
        layer_config._attn_implementation = config._attn_implementation or "sdpa"
        self.max_frames = config.video_max_frames
        self.frame_embedding = nn.Parameter(torch.zeros(1, config.video_max_frames, width))
        self.tokens_per_frame = config.video_temporal_tokens
        self.spatial_embedding = (
            nn.Parameter(torch.zeros(1, 1, self.tokens_per_frame, width)) if self.tokens_per_frame else None
        )
        self.layers = nn.ModuleList([MMLayer(layer_config, layer_idx=i) for i in range(config.video_temporal_layers)])
        for layer in self.layers:
            layer.self_attn.out_proj._zero_init = layer.mlp.fc2._zero_init = True
        self.down = self.up = None
        if inner != width:
            self.down, self.up = nn.Linear(width, inner), nn.Linear(inner, width)
            self.up._zero_init = True
        self.motion_embedding = None
        if config.video_motion_embedding:
            tokens = self.tokens_per_frame
            self.grid, self.leading = _token_grid(tokens)
            if self.grid is None:
                raise ValueError(
                    f"MMConfig.video_motion_embedding needs the tower's {tokens} tokens per frame to form a square grid "
                    "(optionally after one [CLS] token)."
                )
            # No bias: a cell that does not change gets no embedding, so a still clip encodes as without one.
            self.motion_embedding = nn.Linear(3 * self.MOTION_CELL**2, inner, bias=False)
            self.motion_embedding._zero_init = True

    def _motion(self, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """`(B, T * N, inner)` embeddings of each token cell's change since the previous frame."""
        if pixel_values is None or pixel_values.ndim != 5 or pixel_values.shape[2] != 3:
            raise ValueError(
                "config.video_motion_embedding needs the clip's pixel values (B, T, 3, H, W) to embed the motion of "
                f"each token's cell; got {None if pixel_values is None else tuple(pixel_values.shape)}."
            )
        batch, frames = pixel_values.shape[:2]
        change = torch.zeros_like(pixel_values)
        change[:, 1:] = pixel_values[:, 1:] - pixel_values[:, :-1]
        side = self.grid * self.MOTION_CELL
        cells = nn.functional.adaptive_avg_pool2d(change.flatten(0, 1), side)  # (B*T, 3, g*c, g*c)
        cells = cells.reshape(batch * frames, 3, self.grid, self.MOTION_CELL, self.grid, self.MOTION_CELL)
        cells = cells.permute(0, 2, 4, 1, 3, 5).reshape(batch, frames, self.grid**2, -1)  # (B, T, g*g, 3*c*c)
        motion = self.motion_embedding(cells.to(self.motion_embedding.weight.dtype))
        if self.leading:
            motion = nn.functional.pad(motion, (0, 0, 1, 0))  # the [CLS] token: no cell, no motion
        return motion.flatten(1, 2)

    def _run(self, inputs: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """The temporal layers over `(B, L, Dv)` inputs (plus `extra` at the layers' width), through the bottleneck
        when there is one."""
        if self.down is None:
            return run_layers(self.layers, inputs if extra is None else inputs + extra).last_hidden_state
        hidden = self.down(inputs)
        return inputs + self.up(run_layers(self.layers, hidden if extra is None else hidden + extra).last_hidden_state)

    def forward(
        self, frame_states: torch.Tensor, tokens: torch.Tensor, pixel_values: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`frame_states` `(B, T, Dv)`, `tokens` `(B, T, N, Dv)` (and, for the motion embedding, the clip's
        `pixel_values` `(B, T, 3, H, W)`) -> the clip's pooled state `(B, Dv)` and the tokens with their frame's
        embedding."""
        frames = frame_states.shape[1]
        if frames > self.max_frames:
            raise ValueError(
                f"The clip has {frames} frames but config.video_max_frames is {self.max_frames}; raise video_max_frames."
            )
        embedding = self.frame_embedding[:, :frames]  # (1, T, Dv)
        if self.spatial_embedding is None:
            states = self._run(frame_states + embedding)  # (B, T, Dv)
            return states.mean(1), tokens + embedding.unsqueeze(2)
        batch, _, count, width = tokens.shape
        if count != self.tokens_per_frame:
            raise ValueError(
                f"The vision tower gives {count} tokens per frame but config.video_temporal_tokens is "
                f"{self.tokens_per_frame}; set video_temporal_tokens={count} (the count depends on the tower and the "
                "image size) or 0 to run the temporal layers over pooled frame states."
            )
        inputs = tokens + embedding.unsqueeze(2) + self.spatial_embedding  # (B, T, N, Dv)
        motion = None if self.motion_embedding is None else self._motion(pixel_values)
        states = self._run(inputs.flatten(1, 2), motion).reshape(batch, frames, count, width)
        update = (states - inputs).mean(dim=(1, 2))  # (B, Dv): what the layers added, over all tokens
        return frame_states.mean(1) + update, states


def _token_grid(count: int) -> tuple[int | None, bool]:
    """The side of the square grid that `count` tokens per frame form, and whether one `[CLS]` token leads them;
    `(None, False)` when they form none."""
    for leading in (False, True):
        cells = count - leading
        side = round(max(cells, 0) ** 0.5)
        if cells > 0 and side * side == cells:
            return side, leading
    return None, False


def _build_tower(sub_config: PreTrainedConfig) -> PreTrainedModel:
    if _is(sub_config, MMVisionConfig):
        return MMVisionModel._from_config(sub_config)
    if _is(sub_config, MMTextConfig):
        return MMTextModel._from_config(sub_config)
    if _is(sub_config, MMEfficientNetLiteConfig):
        # Built from our own code, not through AutoModel, so that `trust_remote_code` loading finds it too.
        return MMEfficientNetLiteModel._from_config(sub_config)
    if isinstance(sub_config, SiglipTextConfig):
        # AutoModel maps no model to SigLIP's text config (transformers reaches it through SiglipModel only).
        return SiglipTextModel._from_config(sub_config)
    # Foreign towers (ViT, CLIPVision, BERT, RoBERTa...) come from transformers itself; their randomly initialised
    # poolers are left out where the class allows it, as we pool the [CLS] state ourselves.
    try:
        return AutoModel.from_config(sub_config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(sub_config)


# ----------------------------------------------------------------------------------------------------------------------
# Captioning decoder
# ----------------------------------------------------------------------------------------------------------------------


class MMVocabProjection(nn.Linear):
    """`nn.Linear` onto the vocabulary. On CPU, for a decoding step (one position `(B, 1, D)`, at most 64 rows, no
    grad), the same product is computed as `(W @ h^T)^T`: with a wide vocabulary that orientation of the skinny matmul
    runs about twice as fast there (see BENCHMARKS.md); the result is then a transposed view, not a contiguous tensor.
    Other devices, training and longer inputs take `nn.Linear`'s path."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if (
            hidden_states.ndim != 3
            or hidden_states.shape[1] != 1
            or not 0 < hidden_states.shape[0] <= 64
            or hidden_states.device.type != "cpu"
            or torch.is_grad_enabled()
            or hidden_states.dtype != self.weight.dtype
        ):
            return super().forward(hidden_states)
        flat = hidden_states[:, 0].t()  # (D, B)
        logits = self.weight @ flat if self.bias is None else torch.addmm(self.bias.unsqueeze(1), self.weight, flat)
        return logits.t().unsqueeze(1)  # (B, 1, V)


class MMTextDecoder(nn.Module):
    """Image-conditioned causal text decoder (BLIP-style): causal self-attention, cross-attention to image patches,
    an LM head tied to its word embeddings. Shared by the pretraining LM objective and the captioning head."""

    def __init__(self, config: MMConfig):
        super().__init__()
        self.config = _text_layer_config(config)
        if self.config._attn_implementation is None:
            # No text tower resolved the kernel for this config (the captioning head builds none): the model's applies.
            self.config._attn_implementation_internal = config._attn_implementation
        vision_hidden = config.vision_config.hidden_size
        self.embeddings = MMTextEmbeddings(self.config)
        self.layers = nn.ModuleList(
            [
                MMLayer(self.config, cross_attention_hidden_size=vision_hidden, is_causal=True, layer_idx=i)
                for i in range(config.num_decoder_layers)
            ]
        )
        self.final_layer_norm = nn.LayerNorm(self.config.hidden_size, eps=self.config.layer_norm_eps)
        self.lm_head = MMVocabProjection(self.config.hidden_size, self.config.vocab_size, bias=False)
        self.gradient_checkpointing = False

    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        compute_logits: bool = True,
        position_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool = False,
    ) -> MMDecoderOutput:
        """`compute_logits=False` returns only the hidden states, for callers that score a subset of positions;
        `logits_to_keep` (transformers' convention) projects only the last N positions (0: all) or the given ones."""
        _check_input_ids(input_ids, self.config.vocab_size)
        if use_cache:
            # Generation hands us a plain DynamicCache; we also need a slot for the image keys/values.
            if cache is None:
                cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            elif not isinstance(cache, EncoderDecoderCache):
                cache = EncoderDecoderCache(cache, DynamicCache())
        else:
            cache = None
        past_length = cache.get_seq_length() if cache is not None else 0
        batch, length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, past_length + length, dtype=torch.long, device=input_ids.device)
        if position_ids is None:
            # Count only real tokens, so left-padded prompts in a batch get the positions they would have alone.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
        hidden_states = self.embeddings(input_ids, position_ids=position_ids)  # (B, L, D)
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            cache=cache.self_attention_cache if cache is not None else None,
            position_ids=torch.arange(past_length, past_length + length, device=input_ids.device)[None],
        )
        out = run_layers(
            self.layers,
            hidden_states,
            causal_mask,
            encoder_hidden_states,
            cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = self.final_layer_norm(out.last_hidden_state)
        logits = None
        if compute_logits:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, keep])
        return MMDecoderOutput(
            logits=logits,
            cache=cache,
            last_hidden_state=hidden_states,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            cross_attentions=out.cross_attentions,
        )

    def lm_loss(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.LongTensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Captioning loss of `labels` `(B, L)` (-100 ignored) and the logits `(N_targets, V)` of the positions that
        have a next-token target, in row-major order: only those rows are projected onto the vocabulary."""
        hidden = self(input_ids, encoder_hidden_states, attention_mask, compute_logits=False).last_hidden_state
        targets = next_token_targets(labels)  # (B, L)
        scored = targets != -100
        logits = self.lm_head(hidden[scored])  # (N_targets, V)
        return token_cross_entropy(logits, targets[scored]), logits


# ----------------------------------------------------------------------------------------------------------------------
# MMModel
# ----------------------------------------------------------------------------------------------------------------------


class MMModel(MMPreTrainedModel):
    r"""
    The bare MM model. Its parts depend on `config.fusion`:

    - **late**: `vision_model` + `text_model` + `visual_projection` / `text_projection` + learnable temperature.
    - **hybrid**: the late parts plus `fusion_layers`, text layers that cross-attend to the image patches.
    - **coattention**: the late parts plus `fusion_layers`, two-stream LXMERT layers (text and image attend to each
      other, then to themselves).
    - **early**: `vision_embeddings` (patches projected into the text width) + `text_model`, whose layers run over
      the joint `[text ; image]` sequence with modality-type embeddings (ViLT / VisualBERT style).

    Inputs: `input_ids` / `attention_mask` `(B, L)` and `pixel_values` `(B, C, H, W)` or video `(B, T, C, H, W)`.
    Late and hybrid models also run text-only or image-only and then return just that side's features.
    """

    _checkpoint_conversion_mapping = {}

    def __init__(
        self,
        config: MMConfig,
        add_text_model: bool = True,
        add_projections: bool = True,
        add_fusion_layers: bool = True,
    ):
        r"""
        Args:
            config ([`MMConfig`]): The model configuration.
            add_text_model, add_projections, add_fusion_layers (`bool`): Build the text tower, the ITC projections and
                temperature, and the hybrid fusion layers. A head that never reads a part leaves it out (the
                captioning head needs only the vision tower; the classifiers no projections), so it carries no
                parameter its loss does not train. Early fusion always needs its text layers.
        """
        super().__init__(config)
        self.fusion = config.fusion
        text_hidden = config.text_config.hidden_size
        vision_hidden = config.vision_config.hidden_size
        if add_text_model or config.fusion == "early":
            # Left unset otherwise (not None): code that looks for a `text_model` sub-model finds none.
            self.text_model = _build_tower(config.text_config)
        self.logit_scale = self.logit_bias = None
        self.modality_type_embeddings = None
        self.visual_projection = self.text_projection = None
        self.fusion_layers = None
        if config.fusion == "early":
            self.vision_embeddings = MMVisionEmbeddings(config.vision_config, hidden_size=text_hidden)
            self.modality_type_embeddings = nn.Embedding(2, text_hidden)
        else:
            self.vision_model = _build_tower(config.vision_config)
            self.temporal_encoder = MMFrameTemporalEncoder(config) if config.video_temporal_layers else None
            if add_projections:
                self.visual_projection = nn.Linear(vision_hidden, config.projection_dim, bias=False)
                self.text_projection = nn.Linear(text_hidden, config.projection_dim, bias=False)
                self.logit_scale = nn.Parameter(torch.tensor(config.itc_init_value("logit_scale_init_value")))
                if config.contrastive_loss == "sigmoid":
                    self.logit_bias = nn.Parameter(torch.tensor(config.itc_init_value("logit_bias_init_value")))
        if config.fusion in CROSS_FUSIONS and add_fusion_layers:
            layer_config = _text_layer_config(config)
            if config.fusion == "hybrid":
                layers = [MMLayer(layer_config, cross_attention_hidden_size=vision_hidden, layer_idx=i)
                          for i in range(config.num_fusion_layers)]
            else:
                last = config.num_fusion_layers - 1
                layers = [MMCoAttentionLayer(layer_config, layer_idx=i, update_image=i < last)
                          for i in range(config.num_fusion_layers)]
                # The image stream runs in the text width; a wider or narrower tower is projected into it first, as
                # LXMERT projects its visual features.
                self.fusion_image_projection = (
                    nn.Linear(vision_hidden, text_hidden) if vision_hidden != text_hidden else None
                )
            self.fusion_layers = nn.ModuleList(layers)
            self.fusion_layer_norm = nn.LayerNorm(text_hidden, eps=layer_config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        if not hasattr(self, "text_model"):
            return None
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    # -- unimodal encoders ------------------------------------------------------------------------------------------

    def _require(self, fusion_styles: tuple[str, ...], what: str) -> None:
        if self.fusion not in fusion_styles:
            raise ValueError(f"{what} needs fusion in {fusion_styles}; this model has fusion={self.fusion!r}.")

    def _require_part(self, part: nn.Module | None, name: str, what: str) -> None:
        if part is None:
            raise ValueError(f"{what} needs the {name}, which this model was built without.")

    def encode_image(
        self,
        pixel_values: torch.FloatTensor,
        image_keep_indices: torch.LongTensor | None = None,
        output_attentions: bool = False,
        pooled_only: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        """Runs the vision tower on images `(B, C, H, W)` or frames `(B, T, C, H, W)`. `pooled_only`: the caller
        reads only `pooler_output`, which lets the built-in tower skip most of its last layer (`last_hidden_state`
        is then `None`; other towers run whole)."""
        self._require(TOWER_FUSIONS, "encode_image")
        _check_pixel_values(pixel_values, getattr(self.config.vision_config, "num_channels", None))
        if isinstance(self.vision_model, MMVisionModel):
            return self.vision_model(
                pixel_values,
                image_keep_indices=image_keep_indices,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                pooled_only=pooled_only,
                return_dict=True,
            )
        if image_keep_indices is not None:
            raise ValueError("image_keep_indices (FLIP) needs the built-in MMVisionModel tower.")
        flags = _tower_flags(self.vision_model, output_attentions, output_hidden_states)
        if pixel_values.ndim == 5:
            # Foreign image towers see a clip as T images; their tokens are concatenated and their pooled states averaged
            # (time-blind) or, with config.video_temporal_layers, run through the temporal encoder.
            batch, frames = pixel_values.shape[:2]
            out = self.vision_model(pixel_values=pixel_values.flatten(0, 1), **flags)
            width = out.last_hidden_state.shape[-1]
            hidden = out.last_hidden_state.reshape(batch, frames, -1, width)  # (B, T, N, Dv)
            pooled = _pooled(out).reshape(batch, frames, -1)  # (B, T, Dv)
            if self.temporal_encoder is not None:
                pooled, hidden = self.temporal_encoder(pooled, hidden, pixel_values)
            else:
                pooled = pooled.mean(1)
            hidden = hidden.reshape(batch, -1, width)
            return BaseModelOutputWithPooling(
                last_hidden_state=hidden, pooler_output=pooled, hidden_states=out.get("hidden_states"),
                attentions=out.get("attentions"),
            )
        out = self.vision_model(pixel_values=pixel_values, **flags)
        return BaseModelOutputWithPooling(
            last_hidden_state=out.last_hidden_state, pooler_output=_pooled(out),
            hidden_states=out.get("hidden_states"), attentions=out.get("attentions"),
        )

    def encode_text(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pooled_only: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        """Runs the text tower. The pooled state is the tower's own `pooler_output` where it makes one (CLIP's EOS
        token, SigLIP's head over the last token); else the `[CLS]` token (BERT-style towers, built without their
        randomly initialised pooler). `pooled_only` as in `encode_image`."""
        self._require(TOWER_FUSIONS, "encode_text")
        self._require_part(getattr(self, "text_model", None), "text tower", "encode_text")
        _check_text_inputs(self.config.text_config, input_ids, attention_mask, token_type_ids)
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        kwargs.update(_tower_flags(self.text_model, output_attentions, output_hidden_states))
        if isinstance(self.text_model, MMTextModel):
            kwargs["pooled_only"] = pooled_only
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        if isinstance(self.text_model, MMTextModel):
            return out
        return BaseModelOutputWithPooling(
            last_hidden_state=out.last_hidden_state, pooler_output=_pooled(out),
            hidden_states=out.get("hidden_states"), attentions=out.get("attentions"),
        )

    def project_image(self, pooled: torch.Tensor) -> torch.FloatTensor:
        """L2-normalised ITC embedding `(B, projection_dim)` of pooled vision states `(B, Dv)`."""
        self._require_part(self.visual_projection, "ITC projections", "project_image")
        return nn.functional.normalize(self.visual_projection(pooled), dim=-1)

    def project_text(self, pooled: torch.Tensor) -> torch.FloatTensor:
        """L2-normalised ITC embedding `(B, projection_dim)` of pooled text states `(B, Dt)`."""
        self._require_part(self.text_projection, "ITC projections", "project_text")
        return nn.functional.normalize(self.text_projection(pooled), dim=-1)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor | None = None,
        image_keep_indices: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """The vision tower's output with `pooler_output` replaced by the L2-normalised projected image embedding
        `(B, projection_dim)` (transformers 5.x returns the tower output this way; ours is already normalised, so
        normalising again, as CLIP users do, changes nothing)."""
        pixel_values = visual_input(pixel_values, pixel_values_videos)
        out = self.encode_image(
            pixel_values,
            image_keep_indices,
            output_attentions=_flag(output_attentions, self.config, "output_attentions"),
            output_hidden_states=_flag(output_hidden_states, self.config, "output_hidden_states"),
        )
        out.pooler_output = self.project_image(out.pooler_output)
        return out

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """The text tower's output with `pooler_output` replaced by the L2-normalised projected text embedding
        `(B, projection_dim)`."""
        out = self.encode_text(
            input_ids,
            attention_mask,
            token_type_ids,
            output_attentions=_flag(output_attentions, self.config, "output_attentions"),
            output_hidden_states=_flag(output_hidden_states, self.config, "output_hidden_states"),
        )
        out.pooler_output = self.project_text(out.pooler_output)
        return out

    def embed_image(
        self, pixel_values: torch.FloatTensor, image_keep_indices: torch.LongTensor | None = None
    ) -> torch.FloatTensor:
        """Just the L2-normalised ITC image embeddings `(B, projection_dim)`, the fast way: the built-in tower's last
        layer computes only the `[CLS]` state (retrieval galleries, zero-shot, explanations)."""
        return self.project_image(self.encode_image(pixel_values, image_keep_indices, pooled_only=True).pooler_output)

    def embed_text(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
    ) -> torch.FloatTensor:
        """Just the L2-normalised ITC text embeddings `(B, projection_dim)`, computed as in `embed_image`."""
        pooled = self.encode_text(input_ids, attention_mask, token_type_ids, pooled_only=True).pooler_output
        return self.project_text(pooled)

    def clamped_logit_scale(self) -> torch.Tensor:
        # CLIP clamps the learned temperature at 100 so the logits cannot blow up.
        return self.logit_scale.clamp(max=self.config.logit_scale_max).exp()

    def similarity(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """`(N_image, N_text)` ITC logits of L2-normalised embeddings: `t * cos` (+ the learned bias of the sigmoid
        loss, so that `sigmoid(logits)` is the model's match probability, as SigLIP's)."""
        logits = self.clamped_logit_scale() * image_embeds @ text_embeds.t()
        return logits + self.logit_bias if self.logit_bias is not None else logits

    def itc_loss_and_logits(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, ids: torch.LongTensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ITC loss of `config.contrastive_loss` over the global batch (every rank of torch.distributed) and the
        local `(B, B)` image-to-text logits, from `(B, D)` L2-normalised embeddings; items sharing an `ids` value are
        positives of each other. Every ITC in the package (heads, gradient caching) goes through here."""
        rank, world_size = distributed_info()
        scale = self.clamped_logit_scale()
        if self.config.contrastive_loss == "sigmoid":
            return sigmoid_loss_and_logits(image_embeds, text_embeds, scale, self.logit_bias, rank, world_size, ids)
        return contrastive_loss_and_logits(image_embeds, text_embeds, scale, rank, world_size, ids)

    # -- fusion -------------------------------------------------------------------------------------------------------

    def fuse(
        self,
        text_hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_hidden: torch.Tensor,
        output_attentions: bool = False,
        image_index: torch.LongTensor | None = None,
        output_positions: torch.LongTensor | None = None,
        output_hidden_states: bool = False,
    ) -> MMFusionOutput:
        """Fusion of text states `(B, L, Dt)` with image states `(B, N, Dv)`; `last_hidden_state` `(B, L, Dt)`.
        Hybrid: the text cross-attends to the image. Coattention: both streams attend to each other (the image stream
        is returned too). With `image_index` `(B,)`, text row i is paired with `image_hidden[image_index[i]]` (images
        projected once). With `output_positions` `(B, Q)`, only those text positions are returned, `(B, Q, Dt)`; in
        hybrid fusion the last layer then computes nothing else (e.g. `[CLS]` for ITM, the masked tokens for MLM)."""
        self._require(CROSS_FUSIONS, "fuse")
        self._require_part(self.fusion_layers, "fusion layers", "fuse")
        if self.fusion == "coattention":
            return self._coattend(
                text_hidden, attention_mask, image_hidden, output_attentions, image_index, output_positions,
                output_hidden_states,
            )
        mask = create_bidirectional_mask(
            config=self.fusion_layers[0].self_attn.config, inputs_embeds=text_hidden, attention_mask=attention_mask
        )
        out = run_layers(
            self.fusion_layers,
            text_hidden,
            mask,
            image_hidden,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            encoder_index=image_index,
            last_positions=output_positions,
        )
        return MMFusionOutput(
            last_hidden_state=self.fusion_layer_norm(out.last_hidden_state),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            cross_attentions=out.cross_attentions,
        )

    def _coattend(
        self,
        text: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image: torch.Tensor,
        output_attentions: bool,
        image_index: torch.LongTensor | None,
        output_positions: torch.LongTensor | None,
        output_hidden_states: bool,
    ) -> MMFusionOutput:
        if self.fusion_image_projection is not None:
            image = self.fusion_image_projection(image)  # (B_img, N, Dv) -> (B_img, N, Dt), once per image
        if image_index is not None:
            image = image.index_select(0, image_index)  # (B, N, Dt): each pair's own image stream
        config = self.fusion_layers[0].text_self_attn.config
        text_mask = create_bidirectional_mask(config=config, inputs_embeds=text, attention_mask=attention_mask)
        image_to_text_mask = create_bidirectional_mask(
            config=config, inputs_embeds=image, attention_mask=attention_mask, encoder_hidden_states=text
        )
        maps: dict[str, tuple] = {k: () for k in ("text", "image", "text_cross", "image_cross")}
        text_states, image_states = ((text,), (image,)) if output_hidden_states else (None, None)
        for layer in self.fusion_layers:
            text, image, weights = layer(text, image, text_mask, image_to_text_mask, output_attentions)
            if output_attentions:
                for key, value in zip(maps, weights):
                    if value is not None:
                        maps[key] += (value,)
            if output_hidden_states:
                text_states += (text,)
                if layer.update_image:
                    image_states += (image,)
        text = self.fusion_layer_norm(text)
        if output_positions is not None:
            text = text.gather(1, output_positions.unsqueeze(-1).expand(-1, -1, text.shape[-1]))  # (B, Q, Dt)
        return MMFusionOutput(
            last_hidden_state=text,
            hidden_states=text_states,
            attentions=maps["text"] if output_attentions else None,
            cross_attentions=maps["text_cross"] if output_attentions else None,
            # The image states the last layer's text attended to (that layer does not update the image).
            image_last_hidden_state=self.fusion_layers[-1].image_cross_norm(image),
            image_hidden_states=image_states,
            image_attentions=maps["image"] if output_attentions else None,
            image_cross_attentions=maps["image_cross"] if output_attentions else None,
        )

    def joint_encode(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        output_positions: torch.LongTensor | None = None,
    ) -> BaseModelOutputWithCrossAttentions:
        """Early fusion: one Transformer over `[text ; image]`; `last_hidden_state` `(B, L + 1 + patches, D)` (or
        `(B, Q, D)` at `output_positions`)."""
        self._require(("early",), "joint_encode")
        _check_text_inputs(self.config.text_config, input_ids, attention_mask, token_type_ids)
        _check_pixel_values(pixel_values, self.config.vision_config.num_channels)
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"input_ids has batch {input_ids.shape[0]} but pixel_values has batch {pixel_values.shape[0]}."
            )
        text = self.text_model.embeddings(input_ids, token_type_ids)  # (B, L, D)
        image, _ = self.vision_embeddings(pixel_values)  # (B, 1+N, D)
        text = text + self.modality_type_embeddings.weight[0]
        image = image + self.modality_type_embeddings.weight[1]
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        image_mask = torch.ones(image.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        return self.text_model.encode(
            torch.cat([text, image], dim=1),
            torch.cat([attention_mask, image_mask], dim=1),
            output_attentions,
            output_positions,
            output_hidden_states,
        )

    # -- forward ------------------------------------------------------------------------------------------------------

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        image_keep_indices: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        **kwargs,
    ) -> MMModelOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(B, L)`): Token ids from the processor.
            pixel_values (`torch.FloatTensor` of shape `(B, C, H, W)` or `(B, T, C, H, W)`): Images, or video frames
                (a 5-D `pixel_values` is accepted as an alias of `pixel_values_videos`).
            attention_mask (`torch.Tensor` of shape `(B, L)`): 1 for real tokens, 0 for padding.
            token_type_ids (`torch.LongTensor` of shape `(B, L)`): Optional segment ids.
            image_keep_indices (`torch.LongTensor` of shape `(B, K)`): Patch indices to keep (FLIP); built-in tower only.
            return_loss (`bool`): Return the ITC loss over the batch (late and hybrid).
            output_attentions (`bool`): Return the attention maps (fused stream here, towers in their outputs).
            output_hidden_states (`bool`): Return every layer's hidden states (likewise).
            pixel_values_videos (`torch.FloatTensor` of shape `(B, T, C, H, W)`): Video frames (the processor's key).
        """
        pixel_values = visual_input(pixel_values, pixel_values_videos)
        output_attentions = _flag(output_attentions, self.config, "output_attentions")
        output_hidden_states = _flag(output_hidden_states, self.config, "output_hidden_states")
        if self.fusion == "early":
            if input_ids is None or pixel_values is None:
                raise ValueError(
                    "fusion='early' encodes text and image jointly: pass both input_ids and pixel_values "
                    "(for unimodal features use a late or hybrid model)."
                )
            joint = self.joint_encode(
                input_ids, pixel_values, attention_mask, token_type_ids, output_attentions, output_hidden_states
            )
            return MMModelOutput(
                last_hidden_state=joint.last_hidden_state,
                pooler_output=joint.last_hidden_state[:, 0],
                hidden_states=joint.hidden_states,
                attentions=joint.attentions,
            )

        if input_ids is None and pixel_values is None:
            raise ValueError("Pass input_ids, pixel_values, or both.")
        flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        text_out = image_out = None
        if input_ids is not None:
            text_out = self.encode_text(input_ids, attention_mask, token_type_ids, **flags)
        if pixel_values is not None:
            image_out = self.encode_image(pixel_values, image_keep_indices, **flags)
        text_embeds = image_embeds = logits_per_image = logits_per_text = loss = None
        if self.text_projection is not None:
            if text_out is not None:
                text_embeds = self.project_text(text_out.pooler_output)
            if image_out is not None:
                image_embeds = self.project_image(image_out.pooler_output)
        if text_embeds is not None and image_embeds is not None:
            logits_per_image = self.similarity(image_embeds, text_embeds)  # (B_image, B_text)
            logits_per_text = logits_per_image.t()
            if return_loss:
                loss = self.itc_loss_and_logits(image_embeds, text_embeds)[0]
        fused = None
        # Fusion pairs text i with image i, so it runs only on paired batches; a gallery of different sizes (one image
        # against N candidate labels, as the zero-shot-image-classification pipeline sends) gets the ITC outputs only.
        paired = text_out is not None and image_out is not None and (
            text_out.last_hidden_state.shape[0] == image_out.last_hidden_state.shape[0]
        )
        if self.fusion_layers is not None and paired:
            fused = self.fuse(
                text_out.last_hidden_state,
                attention_mask,
                image_out.last_hidden_state,
                output_attentions,
                output_hidden_states=output_hidden_states,
            )
        return MMModelOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            last_hidden_state=fused.last_hidden_state if fused is not None else None,
            pooler_output=fused.last_hidden_state[:, 0] if fused is not None else None,
            text_last_hidden_state=text_out.last_hidden_state if text_out is not None else None,
            image_last_hidden_state=image_out.last_hidden_state if image_out is not None else None,
            hidden_states=fused.hidden_states if fused is not None else None,
            attentions=fused.attentions if fused is not None else None,
            cross_attentions=fused.cross_attentions if fused is not None else None,
            text_model_output=text_out,
            vision_model_output=image_out,
            fused_image_last_hidden_state=fused.image_last_hidden_state if fused is not None else None,
        )


def _tower_flags(tower: nn.Module, output_attentions: bool, output_hidden_states: bool) -> dict[str, bool]:
    """`output_*` flags for a tower's forward: passed explicitly so that the composite config decides, and only the
    ones a foreign tower's signature takes (some CNN towers have no attentions)."""
    params = inspect.signature(tower.forward).parameters
    takes_kwargs = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
    return {k: v for k, v in flags.items() if k in params or takes_kwargs}


def visual_input(
    pixel_values: torch.FloatTensor | None, pixel_values_videos: torch.FloatTensor | None
) -> torch.FloatTensor | None:
    """One visual tensor from the two input names: `pixel_values_videos` `(B, T, C, H, W)` is the processor's key for
    video (transformers' convention); a 5-D `pixel_values` stays accepted as its alias."""
    if pixel_values_videos is None:
        return pixel_values
    if pixel_values is not None:
        raise ValueError(
            "Pass images as pixel_values or videos as pixel_values_videos, not both in one call (a pair has one "
            "visual input)."
        )
    if not torch.is_tensor(pixel_values_videos) or pixel_values_videos.ndim != 5:
        raise ValueError(
            "pixel_values_videos must be a (B, T, C, H, W) tensor of video frames, got "
            f"{tuple(getattr(pixel_values_videos, 'shape', ())) or type(pixel_values_videos).__name__}."
        )
    return pixel_values_videos


def _load_foreign_tower(sub_config: PreTrainedConfig, path: str, load_kwargs: dict) -> PreTrainedModel:
    if isinstance(sub_config, SiglipTextConfig):
        model_cls = SiglipTextModel  # not in AutoModel's mapping, as in `_build_tower`
    else:
        model_cls = AutoModel._model_mapping[type(sub_config)]
    try:
        return model_cls.from_pretrained(path, config=sub_config, add_pooling_layer=False, **load_kwargs)
    except TypeError:
        return model_cls.from_pretrained(path, config=sub_config, **load_kwargs)


def _pooled(out: ModelOutput) -> torch.Tensor:
    pooled = getattr(out, "pooler_output", None)
    return pooled if pooled is not None else out.last_hidden_state[:, 0]


def _check_pixel_values(pixel_values: torch.Tensor, num_channels: int | None = None) -> None:
    if not torch.is_tensor(pixel_values) or not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be a float tensor, got {getattr(pixel_values, 'dtype', type(pixel_values))}.")
    if pixel_values.ndim not in (4, 5):
        raise ValueError(
            f"pixel_values must be (B, C, H, W) images or (B, T, C, H, W) video, got shape {tuple(pixel_values.shape)}."
        )
    if 0 in pixel_values.shape:
        raise ValueError(f"pixel_values is empty, shape {tuple(pixel_values.shape)}.")
    if num_channels is not None and pixel_values.shape[-3] != num_channels:
        raise ValueError(
            f"pixel_values has {pixel_values.shape[-3]} channels (dim -3 of shape {tuple(pixel_values.shape)}) but "
            f"vision_config.num_channels is {num_channels}; the processor converts every image to RGB."
        )
