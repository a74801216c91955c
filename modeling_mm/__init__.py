"""The MM model family. Importing this package registers it with transformers' Auto classes."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
)

from .configuration_mm import (
    DEFAULT_OBJECTIVES,
    FUSION_OBJECTIVES,
    MMConfig,
    MMEfficientNetLiteConfig,
    MMTextConfig,
    MMVisionConfig,
)
from .conversion_clip import (
    convert_from_mm,
    convert_to_mm,
    embedding_differences,
    load_dual_encoder,
    load_mm_model,
    mm_from_clip,
    mm_from_siglip,
    mm_to_clip,
    mm_to_siglip,
)
from .losses import contrastive_loss, sample_hard_negatives
from .modeling_efficientnet_lite import (
    MMEfficientNetLiteForImageClassification,
    MMEfficientNetLiteModel,
    MMEfficientNetLiteModelOutput,
)
from .modeling_mm import MMModel, MMModelOutput, MMPreTrainedModel, MMTextDecoder, MMTextModel, MMVisionModel
from .modeling_mm_heads import (
    MMForConditionalGeneration,
    MMForImageTextClassification,
    MMForImageTextRetrieval,
    MMForVisualQuestionAnswering,
    MMImageTextClassifierOutput,
    MMRetrievalOutput,
)
from .modeling_mm_pretraining import MMForPreTraining, MMForPreTrainingOutput, MMITCDistillation, MMITMNegatives


__all__ = [
    "DEFAULT_OBJECTIVES",
    "LOCAL_VQA_TASK",
    "PEFT_TARGET_MODULES",
    "FUSION_OBJECTIVES",
    "MMConfig",
    "MMEfficientNetLiteConfig",
    "MMEfficientNetLiteForImageClassification",
    "MMEfficientNetLiteModel",
    "MMEfficientNetLiteModelOutput",
    "MMForConditionalGeneration",
    "MMForImageTextClassification",
    "MMForImageTextRetrieval",
    "MMForPreTraining",
    "MMForPreTrainingOutput",
    "MMForVisualQuestionAnswering",
    "MMITCDistillation",
    "MMITMNegatives",
    "MMImageTextClassifierOutput",
    "MMModel",
    "MMModelOutput",
    "MMPreTrainedModel",
    "MMRetrievalOutput",
    "MMTextConfig",
    "MMTextDecoder",
    "MMTextModel",
    "MMVisionConfig",
    "MMVisionModel",
    "contrastive_loss",
    "convert_from_mm",
    "convert_to_mm",
    "embedding_differences",
    "load_dual_encoder",
    "load_mm_model",
    "mm_from_clip",
    "mm_from_siglip",
    "mm_to_clip",
    "mm_to_siglip",
    "sample_hard_negatives",
]

# Auto-class names each model is registered under (locally, and in the `auto_map` written by save_pretrained).
AUTO_CLASSES: dict[type, str] = {
    MMModel: "AutoModel",
    MMForPreTraining: "AutoModelForPreTraining",
    MMForVisualQuestionAnswering: "AutoModelForVisualQuestionAnswering",
    MMForConditionalGeneration: "AutoModelForImageTextToText",
    MMForImageTextClassification: "AutoModelForSequenceClassification",
    MMForImageTextRetrieval: "AutoModel",
}


def _register() -> None:
    for model_type, config_cls in (
        (MMConfig.model_type, MMConfig),
        (MMVisionConfig.model_type, MMVisionConfig),
        (MMTextConfig.model_type, MMTextConfig),
        (MMEfficientNetLiteConfig.model_type, MMEfficientNetLiteConfig),
    ):
        AutoConfig.register(model_type, config_cls, exist_ok=True)
    AutoModel.register(MMConfig, MMModel, exist_ok=True)
    AutoModel.register(MMVisionConfig, MMVisionModel, exist_ok=True)
    AutoModel.register(MMTextConfig, MMTextModel, exist_ok=True)
    AutoModel.register(MMEfficientNetLiteConfig, MMEfficientNetLiteModel, exist_ok=True)
    AutoModelForImageClassification.register(
        MMEfficientNetLiteConfig, MMEfficientNetLiteForImageClassification, exist_ok=True
    )
    AutoModelForPreTraining.register(MMConfig, MMForPreTraining, exist_ok=True)
    AutoModelForVisualQuestionAnswering.register(MMConfig, MMForVisualQuestionAnswering, exist_ok=True)
    AutoModelForImageTextToText.register(MMConfig, MMForConditionalGeneration, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(MMConfig, MMModel, exist_ok=True)
    AutoModelForSequenceClassification.register(MMConfig, MMForImageTextClassification, exist_ok=True)
    MMConfig.register_for_auto_class()
    for model_cls, auto_name in AUTO_CLASSES.items():
        if model_cls is not MMForImageTextRetrieval:
            model_cls.register_for_auto_class(auto_name)



# LoRA targets peft picks for `model_type="mm"` when `LoraConfig` names none: the query and value projections (Hu et
# al. 2021 adapt W_q and W_v), under both spellings, since an MM model mixes our layers (`q_proj` / `v_proj`) with
# transformers towers (BERT, ViT: `query` / `value`; CLIP, SigLIP: `q_proj` / `v_proj`). Every fusion style has at
# least one of them; `training.lora.apply_lora` has the finer per-part presets.
PEFT_TARGET_MODULES = ["q_proj", "v_proj", "query", "value"]


def _register_peft() -> None:
    try:
        from peft.utils import constants
    except ImportError:  # peft is optional for the model code
        return
    for mapping in (constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,):
        mapping.setdefault(MMConfig.model_type, list(PEFT_TARGET_MODULES))


def _register_pipelines() -> None:
    """`pipeline(task, model=<local folder>)` for the custom tasks a published repo lists in `custom_pipelines`.
    transformers 5 refuses `visual-question-answering` as a local name (a removed task), hence the `mm-` prefix."""
    from transformers.pipelines import PIPELINE_REGISTRY

    from .pipelines_mm import MMImageTextRetrievalPipeline, MMVisualQuestionAnsweringPipeline

    for task, pipeline_class, model_class in (
        (LOCAL_VQA_TASK, MMVisualQuestionAnsweringPipeline, AutoModelForVisualQuestionAnswering),
        ("image-text-retrieval", MMImageTextRetrievalPipeline, AutoModelForPreTraining),
    ):
        PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=pipeline_class, pt_model=model_class, type="multimodal")


# The local name of the VQA pipeline (a published repo also answers to `visual-question-answering`).
LOCAL_VQA_TASK = "mm-visual-question-answering"

_register()
_register_peft()
_register_pipelines()
