"""Publishing MM checkpoints to the Hub: model cards (`model_card`), where the custom `pipeline()` code a published
repo ships lives (`modeling_mm/pipelines_mm.py`), and the Hub-ready folder and its upload (`publishing.hub`, which
`mm publish` and `MMTrainer.push_to_hub` run; import it directly, it loads torch and the model code)."""

from .model_card import (
    CARD_TEMPLATE,
    EVAL_TASKS,
    build_model_card,
    check_model_card,
    eval_results_from_files,
    tower_base_models,
)
from .paths import PIPELINES_FILE, PIPELINES_PATH


__all__ = [
    "CARD_TEMPLATE",
    "EVAL_TASKS",
    "PIPELINES_FILE",
    "PIPELINES_PATH",
    "build_model_card",
    "check_model_card",
    "eval_results_from_files",
    "tower_base_models",
]
