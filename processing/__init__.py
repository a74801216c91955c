"""Image and video processors, processor, collators and dataset loaders of the multimodal model.

The processors are imported eagerly; collators and the dataset loaders (which import `datasets` and the packages
embedding the default data) on first access.
"""

import importlib
from typing import Any

from transformers import AutoImageProcessor, AutoProcessor

# The real class, not the top-level placeholder transformers exports when torchvision is missing.
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from modeling_mm import MMConfig

from .image_processing_mm import MMImageError, MMImageProcessor
from .processing_mm import MMProcessor
from .video_processing_mm import MMVideoProcessor


_LAZY_ATTRIBUTES = {
    "BadSampleCounter": "collators",
    "DataCollatorForCaptioning": "collators",
    "DataCollatorForImageTextClassification": "collators",
    "DataCollatorForMMPretraining": "collators",
    "DataCollatorForRetrieval": "collators",
    "DataCollatorForVQA": "collators",
    "EASY_VQA_COLORS": "data",
    "EASY_VQA_SHAPES": "data",
    "build_default_processor": "data",
    "processor_for_model": "data",
    "check_images": "data",
    "default_tokenizer_path": "data",
    "easy_vqa_answers": "data",
    "easy_vqa_data_dir": "data",
    "load_easy_vqa": "data",
    "load_image_folder": "data",
    "build_easy_vqa_attribute_check": "entailment",
    "build_easy_vqa_entailment": "entailment",
    "build_openclipart_entailment": "entailment",
    "generate_moving_shapes": "moving_shapes",
    "load_moving_shapes": "moving_shapes",
    "MMDataArguments": "sources",
    "RowTransform": "sources",
    "load_mm_datasets": "sources",
    "prepare_dataset": "sources",
    "ShardStream": "shards",
    "expand_shard_patterns": "shards",
    "write_shards": "shards",
}

__all__ = ["MMImageError", "MMImageProcessor", "MMProcessor", "MMVideoProcessor", *_LAZY_ATTRIBUTES]


def _register() -> None:
    # Both backend keys: torchvision is not a dependency, so transformers resolves image processors to "pil".
    AutoImageProcessor.register(
        MMConfig, image_processor_classes={"pil": MMImageProcessor, "torchvision": MMImageProcessor}, exist_ok=True
    )
    AutoVideoProcessor.register(
        MMConfig, video_processor_classes={"pil": MMVideoProcessor, "torchvision": MMVideoProcessor}, exist_ok=True
    )
    AutoProcessor.register(MMConfig, MMProcessor, exist_ok=True)
    # save_pretrained then copies the processing code and writes `auto_map`, for trust_remote_code loading.
    MMImageProcessor.register_for_auto_class("AutoImageProcessor")
    MMVideoProcessor.register_for_auto_class("AutoVideoProcessor")
    MMProcessor.register_for_auto_class("AutoProcessor")


_register()


def __getattr__(name: str) -> Any:
    # PEP 562 lazy attributes: `import processing` stays light for code that only needs the processors.
    if name in _LAZY_ATTRIBUTES:
        module = importlib.import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
