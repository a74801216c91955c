"""Conversion between transformers' dual encoders (`CLIPModel`, `SiglipModel`) and late-fusion [`MMModel`]s, both ways.

A converted `MMModel` (`fusion="late"`, objectives `["itc"]`) holds transformers' own towers as its foreign towers
(`CLIPVisionModel` / `CLIPTextModel`, or `SiglipVisionModel` / `SiglipTextModel`) with the source weights, so its
L2-normalised `get_image_features` / `get_text_features` are the source's normalised features:

- CLIP: `visual_projection` / `text_projection` and `logit_scale` map one to one. The towers pool as CLIP does (the
  vision `[CLS]` after `post_layernorm`, the text EOS token), through their own `pooler_output`.
- SigLIP has no projections: its towers end in their own heads (a MAP head over the patches, a linear head over the
  last text token). The converted model gets identity projections of width `hidden_size`, which is exact (`x @ I`
  rounds nothing) and needs the vision width, the text width and the text head's `projection_size` to agree, as they
  do in every released SigLIP. Exporting back requires them to still be the identity, so freeze `visual_projection`
  and `text_projection` when fine-tuning a model that is to be exported to SigLIP.
- SigLIP's `logit_bias` has no parameter here (our ITC is a softmax, invariant to a constant shift): it travels in
  `MMConfig.logit_bias_init_value`, so `mm_to_siglip` restores it and `scale * cos + logit_bias_init_value` gives
  SigLIP's logits.
- `MMConfig.logit_scale_max` is raised to the source's `logit_scale` where that is above ln(100) (trained SigLIPs
  are), so the clamped temperature is the source's; exporting writes the clamped value.

Inputs are the source's: use the source folder's processor (`AutoProcessor.from_pretrained`, a `CLIPProcessor` or
`SiglipProcessor`), whose `input_ids`, `attention_mask` and `pixel_values` the converted model takes as they are.
`MMProcessor` does not fit: its WordPiece tokenizer and image pipeline are not the ones these towers learned. SigLIP
text must be padded with `padding="max_length"` (its tower pools the last position), as for `SiglipModel`.
"""

import copy
import os
from typing import Any

import torch
from torch import nn

from transformers import (
    AutoConfig,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    PreTrainedModel,
    SiglipConfig,
    SiglipModel,
    SiglipTextConfig,
    SiglipVisionConfig,
)
from transformers.configuration_utils import PreTrainedConfig
from transformers.utils import logging

from .configuration_mm import MMConfig
from .modeling_mm import MMModel, MMPreTrainedModel


logger = logging.get_logger(__name__)

__all__ = [
    "convert_from_mm",
    "convert_to_mm",
    "embedding_differences",
    "load_dual_encoder",
    "load_mm_model",
    "mm_from_clip",
    "mm_from_siglip",
    "mm_to_clip",
    "mm_to_siglip",
]

# SigLIP's initial logit bias (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", Sec. 3.2: b' = -10),
# written when a model without a carried bias is exported to SigLIP.
SIGLIP_LOGIT_BIAS_INIT = -10.0

ModelOrPath = PreTrainedModel | str | os.PathLike


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def _load_source(
    model_or_path: ModelOrPath, model_cls: type[PreTrainedModel], what: str, **from_pretrained_kwargs: Any
) -> PreTrainedModel:
    """The source model itself, or loaded from a folder after checking that the folder holds `model_cls`."""
    if isinstance(model_or_path, model_cls):
        return model_or_path
    if isinstance(model_or_path, nn.Module):
        raise ValueError(
            f"Expected a {model_cls.__name__} or a folder holding one, got a {type(model_or_path).__name__}."
        )
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise ValueError(f"Expected a {model_cls.__name__} or a folder path, got {type(model_or_path).__name__}.")
    config = AutoConfig.from_pretrained(model_or_path)
    if not isinstance(config, model_cls.config_class):
        model_type = getattr(config, "model_type", None)
        hint = ""
        if isinstance(config, (CLIPVisionConfig, CLIPTextConfig, SiglipVisionConfig, SiglipTextConfig)):
            hint = " It holds a single tower; conversion needs the dual encoder with both towers."
        raise ValueError(
            f"{os.fspath(model_or_path)} holds a {model_type!r} checkpoint ({type(config).__name__}), not a {what} "
            f"checkpoint (model_type {model_cls.config_class.model_type!r}).{hint}"
        )
    return model_cls.from_pretrained(model_or_path, config=config, **from_pretrained_kwargs)


def _load_mm(model_or_path: MMPreTrainedModel | str | os.PathLike, **from_pretrained_kwargs: Any) -> MMModel:
    """The `MMModel` of an MM model or head (its `base_model`), or loaded from an MM folder."""
    if isinstance(model_or_path, (str, os.PathLike)):
        config = AutoConfig.from_pretrained(model_or_path)
        if not isinstance(config, MMConfig):
            raise ValueError(
                f"{os.fspath(model_or_path)} holds a {getattr(config, 'model_type', None)!r} checkpoint "
                f"({type(config).__name__}), not an MM checkpoint (model_type 'mm')."
            )
        return MMModel.from_pretrained(model_or_path, config=config, **from_pretrained_kwargs)
    if not isinstance(model_or_path, MMPreTrainedModel) or not isinstance(model_or_path.base_model, MMModel):
        raise ValueError(
            f"Expected an MM model (MMModel or an MM head) or its folder, got {type(model_or_path).__name__}."
        )
    return model_or_path.base_model


def _check_exportable(
    model: MMModel, vision_cls: type[PreTrainedConfig], text_cls: type[PreTrainedConfig], what: str
) -> None:
    if model.config.fusion != "late":
        raise ValueError(
            f"Only late-fusion MM models convert to {what}; this one has fusion={model.config.fusion!r} (its fusion "
            "layers have no counterpart there)."
        )
    vision, text = model.config.vision_config, model.config.text_config
    if not (isinstance(vision, vision_cls) and isinstance(text, text_cls)):
        raise ValueError(
            f"Converting to {what} needs {vision_cls.__name__} and {text_cls.__name__} towers; this model has "
            f"vision_config {type(vision).__name__} and text_config {type(text).__name__}."
        )


def _copy_weights(target: nn.Module, source: nn.Module, name: str) -> None:
    """Copies `source`'s parameters and buffers into `target` (same architecture), naming what does not fit."""
    try:
        missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
    except RuntimeError as err:  # a shape mismatch
        raise ValueError(f"Could not copy the {name} weights: {err}") from None
    if missing or unexpected:
        raise ValueError(f"Could not copy the {name} weights: missing {missing}, unexpected {unexpected}.")


def _mm_config(
    vision_config: PreTrainedConfig,
    text_config: PreTrainedConfig,
    projection_dim: int,
    logit_scale: float,
    logit_bias: float | None = None,
) -> MMConfig:
    return MMConfig(
        fusion="late",
        objectives=["itc"],
        vision_config=copy.deepcopy(vision_config),
        text_config=copy.deepcopy(text_config),
        projection_dim=projection_dim,
        logit_scale_init_value=logit_scale,
        # Our temperature is clamped at logit_scale_max; a trained SigLIP's exp(logit_scale) is above 100.
        logit_scale_max=max(MMConfig.logit_scale_max, logit_scale),
        logit_bias_init_value=logit_bias,
    )


def _clamped_logit_scale(model: MMModel) -> float:
    # What our forward uses; a dual encoder without the clamp then gives the same logits.
    return min(_scalar(model.logit_scale), model.config.logit_scale_max)


def _scalar(parameter: torch.Tensor) -> float:
    return parameter.detach().float().reshape(()).item()  # SigLIP keeps its scale and bias as shape (1,)


def _source_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


# ----------------------------------------------------------------------------------------------------------------------
# CLIP
# ----------------------------------------------------------------------------------------------------------------------


def mm_from_clip(model_or_path: CLIPModel | str | os.PathLike, **from_pretrained_kwargs: Any) -> MMModel:
    r"""
    Converts a transformers `CLIPModel` into a late-fusion [`MMModel`] with the same image and text embeddings.

    Args:
        model_or_path (`CLIPModel`, `str` or `os.PathLike`): The model, or a folder (or Hub id) holding one.
        from_pretrained_kwargs: Options for `CLIPModel.from_pretrained` when a folder is given (e.g. `dtype`).

    Returns:
        `MMModel`: with `CLIPVisionModel` / `CLIPTextModel` towers, CLIP's projections and `logit_scale`.
    """
    clip = _load_source(model_or_path, CLIPModel, "CLIP", **from_pretrained_kwargs)
    config = _mm_config(
        clip.config.vision_config, clip.config.text_config, clip.config.projection_dim, _scalar(clip.logit_scale)
    )
    model = MMModel(config)
    _copy_weights(model.vision_model, clip.vision_model, "vision_model")
    _copy_weights(model.text_model, clip.text_model, "text_model")
    _copy_weights(model.visual_projection, clip.visual_projection, "visual_projection")
    _copy_weights(model.text_projection, clip.text_projection, "text_projection")
    with torch.no_grad():
        model.logit_scale.copy_(clip.logit_scale)
    return model.to(_source_dtype(clip)).train(clip.training)


def mm_to_clip(model_or_path: MMPreTrainedModel | str | os.PathLike, **from_pretrained_kwargs: Any) -> CLIPModel:
    r"""
    Converts a late-fusion MM model with CLIP towers (e.g. one made by [`mm_from_clip`]) into a transformers
    `CLIPModel` with the same image and text embeddings and logits.

    Args:
        model_or_path (`MMPreTrainedModel`, `str` or `os.PathLike`): An `MMModel` or MM head (its `MMModel` is
            converted; head-only weights are left out), or a folder holding one.
        from_pretrained_kwargs: Options for `MMModel.from_pretrained` when a folder is given.

    Returns:
        `CLIPModel`
    """
    model = _load_mm(model_or_path, **from_pretrained_kwargs)
    _check_exportable(model, CLIPVisionConfig, CLIPTextConfig, "CLIP")
    config = CLIPConfig(
        vision_config=copy.deepcopy(model.config.vision_config),
        text_config=copy.deepcopy(model.config.text_config),
        projection_dim=model.config.projection_dim,
        logit_scale_init_value=_clamped_logit_scale(model),
    )
    clip = CLIPModel(config)
    _copy_weights(clip.vision_model, model.vision_model, "vision_model")
    _copy_weights(clip.text_model, model.text_model, "text_model")
    _copy_weights(clip.visual_projection, model.visual_projection, "visual_projection")
    _copy_weights(clip.text_projection, model.text_projection, "text_projection")
    with torch.no_grad():
        clip.logit_scale.fill_(_clamped_logit_scale(model))
    return clip.to(_source_dtype(model)).train(model.training)


# ----------------------------------------------------------------------------------------------------------------------
# SigLIP
# ----------------------------------------------------------------------------------------------------------------------


def _siglip_width(vision_config: SiglipVisionConfig, text_config: SiglipTextConfig) -> int:
    """The one width SigLIP's pooled features share, which the identity projections keep."""
    if not vision_config.vision_use_head:
        raise ValueError(
            "SiglipVisionConfig.vision_use_head is False: the vision tower has no MAP head, so it gives no pooled "
            "image embedding to convert."
        )
    widths = {
        "vision_config.hidden_size": vision_config.hidden_size,
        "text_config.hidden_size": text_config.hidden_size,
        "text_config.projection_size": text_config.projection_size,
    }
    if len(set(widths.values())) != 1:
        raise ValueError(
            f"SigLIP conversion needs equal widths (the pooled features are projected by the identity): got {widths}."
        )
    return vision_config.hidden_size


def mm_from_siglip(model_or_path: SiglipModel | str | os.PathLike, **from_pretrained_kwargs: Any) -> MMModel:
    r"""
    Converts a transformers `SiglipModel` into a late-fusion [`MMModel`] with the same image and text embeddings.
    The projections are identities of width `hidden_size`; `logit_bias` is kept in `config.logit_bias_init_value`.

    Args:
        model_or_path (`SiglipModel`, `str` or `os.PathLike`): The model, or a folder (or Hub id) holding one.
        from_pretrained_kwargs: Options for `SiglipModel.from_pretrained` when a folder is given (e.g. `dtype`).

    Returns:
        `MMModel`: with `SiglipVisionModel` / `SiglipTextModel` towers (their heads included).
    """
    siglip = _load_source(model_or_path, SiglipModel, "SigLIP", **from_pretrained_kwargs)
    vision_config, text_config = siglip.config.vision_config, siglip.config.text_config
    width = _siglip_width(vision_config, text_config)
    config = _mm_config(
        vision_config, text_config, width, _scalar(siglip.logit_scale), logit_bias=_scalar(siglip.logit_bias)
    )
    model = MMModel(config)
    _copy_weights(model.vision_model, siglip.vision_model, "vision_model")
    _copy_weights(model.text_model, siglip.text_model, "text_model")
    with torch.no_grad():
        model.visual_projection.weight.copy_(torch.eye(width))  # (D, D)
        model.text_projection.weight.copy_(torch.eye(width))
        model.logit_scale.copy_(siglip.logit_scale.reshape(()))  # SigLIP keeps it as shape (1,)
    return model.to(_source_dtype(siglip)).train(siglip.training)


def mm_to_siglip(model_or_path: MMPreTrainedModel | str | os.PathLike, **from_pretrained_kwargs: Any) -> SiglipModel:
    r"""
    Converts a late-fusion MM model with SigLIP towers and identity projections (e.g. one made by
    [`mm_from_siglip`]) into a transformers `SiglipModel` with the same embeddings and logits. `logit_bias` is
    `config.logit_bias_init_value`, or SigLIP's initial -10 (with a warning) when the model carries none.

    Args:
        model_or_path (`MMPreTrainedModel`, `str` or `os.PathLike`): An `MMModel` or MM head, or a folder holding one.
        from_pretrained_kwargs: Options for `MMModel.from_pretrained` when a folder is given.

    Returns:
        `SiglipModel`
    """
    model = _load_mm(model_or_path, **from_pretrained_kwargs)
    _check_exportable(model, SiglipVisionConfig, SiglipTextConfig, "SigLIP")
    width = _siglip_width(model.config.vision_config, model.config.text_config)
    if model.config.projection_dim != width:
        raise ValueError(
            f"MMConfig.projection_dim is {model.config.projection_dim} but SigLIP's features are {width} wide: "
            "SigLIP has no projection to carry ours."
        )
    for name in ("visual_projection", "text_projection"):
        weight = getattr(model, name).weight
        identity = torch.eye(width, dtype=weight.dtype, device=weight.device)
        if not torch.equal(weight, identity):
            deviation = (weight.detach() - identity).abs().max().item()
            raise ValueError(
                f"{name} is not the identity (max deviation {deviation:.3g}); SigLIP has no projection to carry it. "
                "Freeze the projections when fine-tuning a model that is to be exported to SigLIP."
            )
    bias = model.config.logit_bias_init_value
    if bias is None:
        logger.warning(
            f"The model carries no logit bias (config.logit_bias_init_value); SigLIP's logit_bias is set to "
            f"{SIGLIP_LOGIT_BIAS_INIT}, its initial value."
        )
        bias = SIGLIP_LOGIT_BIAS_INIT
    config = SiglipConfig(
        vision_config=copy.deepcopy(model.config.vision_config), text_config=copy.deepcopy(model.config.text_config)
    )
    siglip = SiglipModel(config)
    _copy_weights(siglip.vision_model, model.vision_model, "vision_model")
    _copy_weights(siglip.text_model, model.text_model, "text_model")
    with torch.no_grad():
        siglip.logit_scale.fill_(_clamped_logit_scale(model))
        siglip.logit_bias.fill_(bias)
    return siglip.to(_source_dtype(model)).train(model.training)


# ----------------------------------------------------------------------------------------------------------------------
# Either
# ----------------------------------------------------------------------------------------------------------------------


def load_dual_encoder(path: str | os.PathLike, **from_pretrained_kwargs: Any) -> CLIPModel | SiglipModel:
    r"""
    Loads the `CLIPModel` or `SiglipModel` of a folder, after checking its `config.json` names one.

    Args:
        path (`str` or `os.PathLike`): The folder (or Hub id).
        from_pretrained_kwargs: Options for `from_pretrained` (e.g. `dtype`).
    """
    config = AutoConfig.from_pretrained(path)
    if isinstance(config, SiglipConfig):
        return _load_source(path, SiglipModel, "SigLIP", **from_pretrained_kwargs)
    if isinstance(config, CLIPConfig):
        return _load_source(path, CLIPModel, "CLIP", **from_pretrained_kwargs)
    raise ValueError(
        f"{os.fspath(path)} holds a {getattr(config, 'model_type', None)!r} checkpoint ({type(config).__name__}); only "
        "CLIP ('clip') and SigLIP ('siglip') dual encoders convert to MM."
    )


def load_mm_model(path: str | os.PathLike, **from_pretrained_kwargs: Any) -> MMModel:
    r"""
    Loads the `MMModel` of an MM folder (of any head), after checking its `config.json` is an MM one.

    Args:
        path (`str` or `os.PathLike`): The folder (or Hub id).
        from_pretrained_kwargs: Options for `MMModel.from_pretrained`.
    """
    return _load_mm(path, **from_pretrained_kwargs)


def convert_to_mm(
    model_or_path: CLIPModel | SiglipModel | str | os.PathLike, **from_pretrained_kwargs: Any
) -> MMModel:
    r"""
    [`mm_from_clip`] or [`mm_from_siglip`], whichever the model (or the folder's `config.json`) is.

    Args:
        model_or_path (`CLIPModel`, `SiglipModel`, `str` or `os.PathLike`): The model, or a folder holding one.
        from_pretrained_kwargs: Options for `from_pretrained` when a folder is given.
    """
    source = model_or_path
    if isinstance(model_or_path, (str, os.PathLike)):
        source = load_dual_encoder(model_or_path, **from_pretrained_kwargs)
    if isinstance(source, CLIPModel):
        return mm_from_clip(source)
    if isinstance(source, SiglipModel):
        return mm_from_siglip(source)
    raise ValueError(
        f"Only CLIP and SigLIP dual encoders (CLIPModel, SiglipModel) convert to MM; got a {type(source).__name__}."
    )


def convert_from_mm(
    model_or_path: MMPreTrainedModel | str | os.PathLike, **from_pretrained_kwargs: Any
) -> CLIPModel | SiglipModel:
    r"""
    [`mm_to_clip`] or [`mm_to_siglip`], whichever the model's towers are.

    Args:
        model_or_path (`MMPreTrainedModel`, `str` or `os.PathLike`): An MM model or head, or a folder holding one.
        from_pretrained_kwargs: Options for `MMModel.from_pretrained` when a folder is given.
    """
    model = _load_mm(model_or_path, **from_pretrained_kwargs)
    vision, text = model.config.vision_config, model.config.text_config
    if isinstance(vision, SiglipVisionConfig):
        return mm_to_siglip(model)
    if isinstance(vision, CLIPVisionConfig):
        return mm_to_clip(model)
    raise ValueError(
        "Only MM models with CLIP or SigLIP towers convert to a dual encoder; this one has vision_config "
        f"{type(vision).__name__} and text_config {type(text).__name__}."
    )


@torch.no_grad()
def embedding_differences(
    mm_model: MMModel, dual_model: CLIPModel | SiglipModel, batch_size: int = 2, seed: int = 0
) -> dict[str, float]:
    r"""
    Largest absolute differences between a converted pair on random inputs: the L2-normalised image and text
    embeddings, and the logits (ours plus `config.logit_bias_init_value`, which SigLIP adds). A faithful conversion
    gives zeros up to float rounding.

    Args:
        mm_model (`MMModel`): The late-fusion MM model.
        dual_model (`CLIPModel` or `SiglipModel`): Its transformers counterpart.
        batch_size (`int`): Images and texts to compare.
        seed (`int`): Seed of the random inputs.

    Returns:
        `dict[str, float]`: `image_embeds`, `text_embeds` and `logits_per_image` differences.
    """
    vision, text = dual_model.config.vision_config, dual_model.config.text_config
    generator = torch.Generator().manual_seed(seed)
    device, dtype = next(dual_model.parameters()).device, _source_dtype(dual_model)
    pixel_values = torch.randn(
        batch_size, vision.num_channels, vision.image_size, vision.image_size, generator=generator
    ).to(device, dtype)
    input_ids = torch.randint(
        0, text.vocab_size, (batch_size, min(8, text.max_position_embeddings)), generator=generator
    ).to(device)
    if getattr(text, "eos_token_id", None) is not None and 0 <= text.eos_token_id < text.vocab_size:
        input_ids[:, -1] = text.eos_token_id  # CLIP's text tower pools the first EOS
    ours = mm_model(input_ids=input_ids, pixel_values=pixel_values)
    theirs = dual_model(input_ids=input_ids, pixel_values=pixel_values)
    bias = mm_model.config.logit_bias_init_value or 0.0
    pairs = {
        "image_embeds": (ours.image_embeds, theirs.image_embeds),
        "text_embeds": (ours.text_embeds, theirs.text_embeds),
        "logits_per_image": (ours.logits_per_image + bias, theirs.logits_per_image),
    }
    return {name: (a.float() - b.float()).abs().max().item() for name, (a, b) in pairs.items()}
