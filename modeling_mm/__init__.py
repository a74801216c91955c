"""The MM model family. Importing this package registers it with transformers' Auto classes."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
)

from .configuration_mm import DEFAULT_OBJECTIVES, FUSION_OBJECTIVES, MMConfig, MMTextConfig, MMVisionConfig
from .losses import contrastive_loss, sample_hard_negatives
from .modeling_mm import MMModel, MMModelOutput, MMPreTrainedModel, MMTextDecoder, MMTextModel, MMVisionModel
from .modeling_mm_heads import (
    MMForConditionalGeneration,
    MMForImageTextClassification,
    MMForImageTextRetrieval,
    MMForPreTraining,
    MMForPreTrainingOutput,
    MMForVisualQuestionAnswering,
    MMImageTextClassifierOutput,
    MMRetrievalOutput,
)


__all__ = [
    "DEFAULT_OBJECTIVES",
    "FUSION_OBJECTIVES",
    "MMConfig",
    "MMForConditionalGeneration",
    "MMForImageTextClassification",
    "MMForImageTextRetrieval",
    "MMForPreTraining",
    "MMForPreTrainingOutput",
    "MMForVisualQuestionAnswering",
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
    ):
        AutoConfig.register(model_type, config_cls, exist_ok=True)
    AutoModel.register(MMConfig, MMModel, exist_ok=True)
    AutoModel.register(MMVisionConfig, MMVisionModel, exist_ok=True)
    AutoModel.register(MMTextConfig, MMTextModel, exist_ok=True)
    AutoModelForPreTraining.register(MMConfig, MMForPreTraining, exist_ok=True)
    AutoModelForVisualQuestionAnswering.register(MMConfig, MMForVisualQuestionAnswering, exist_ok=True)
    AutoModelForImageTextToText.register(MMConfig, MMForConditionalGeneration, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(MMConfig, MMModel, exist_ok=True)
    MMConfig.register_for_auto_class()
    for model_cls, auto_name in AUTO_CLASSES.items():
        if model_cls is not MMForImageTextRetrieval:
            model_cls.register_for_auto_class(auto_name)


_register()
