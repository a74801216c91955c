"""Defaults shared by more than one command-line tool, in one place (the model's own defaults live in its configs)."""

from processing.processing_mm import DEFAULT_MAX_LENGTH


__all__ = [
    "CAPTION_MAX_NEW_TOKENS",
    "IMAGE_SIZE",
    "MAX_TEXT_LENGTH",
    "PATCH_EMBEDDING_TYPE",
    "PATCH_SIZE",
]

# The built-in ViT the tools build when no vision checkpoint is given: 64 px images (easy-VQA's size) in 16 px patches
# (a 4x4 grid) behind the convolutional stem, which learns shapes from a few thousand images (MMVisionConfig).
IMAGE_SIZE = 64
PATCH_SIZE = 16
PATCH_EMBEDDING_TYPE = "conv_stem"
# Token budget of every text (captions, questions, prompts), [CLS] and [SEP] included: the processor's own default.
MAX_TEXT_LENGTH = DEFAULT_MAX_LENGTH
# Tokens a generated caption may take: in evaluation, in the published generation_config.json and in the pipelines.
CAPTION_MAX_NEW_TOKENS = 20
