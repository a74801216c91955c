"""Publishing MM checkpoints to the Hub: model cards (`model_card`) and the custom `pipeline()` tasks that a published
repo ships (`pipelines_mm`, copied into the repo by `run_scripts/publish.py`)."""

import os

from .model_card import (
    CARD_TEMPLATE,
    EVAL_TASKS,
    build_model_card,
    check_model_card,
    eval_results_from_files,
    tower_base_models,
)


# The custom pipeline code a published repo ships; self-contained, as it runs without this package.
PIPELINES_FILE = "pipelines_mm.py"
PIPELINES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), PIPELINES_FILE)

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
