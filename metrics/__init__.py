"""Evaluation metrics: local `evaluate` modules and `compute_metrics` factories for `transformers.Trainer`.

Every metric is an `evaluate` module in its own folder (`metrics/<name>/<name>.py`, evaluate's local-module
layout), loaded from its file path so that nothing is fetched from the Hugging Face Hub:

    >>> from metrics import load_metric
    >>> load_metric("vqa_accuracy").compute(predictions=["2"], references=[["two"] * 10])
    {'vqa_accuracy': 1.0, 'exact_match': 1.0}

Modules: `vqa_accuracy`, `retrieval_recall`, `captioning`, `classification`. All scores are fractions in [0, 1]
except `cider` (pycocoevalcap's 0-10 scale).
"""

from pathlib import Path

import evaluate

from .compute_metrics import (
    captioning_compute_metrics,
    classification_compute_metrics,
    retrieval_compute_metrics,
    vqa_compute_metrics,
)

__all__ = [
    "METRICS_DIR",
    "captioning_compute_metrics",
    "classification_compute_metrics",
    "load_metric",
    "retrieval_compute_metrics",
    "vqa_compute_metrics",
]

# Resolved from this file, not the working directory, so it also works when installed as a package
# (setup.py ships `metrics/*/*.py` as package data).
METRICS_DIR = Path(__file__).resolve().parent


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """Load one of this folder's evaluate modules by short name, offline.

    The absolute folder path is passed to `evaluate.load`, which then takes its local-module branch; a bare name
    would make evaluate look the module up on the Hub.

    Args:
        name: module name, e.g. "vqa_accuracy", "retrieval_recall", "captioning" or "classification".
        **kwargs: forwarded to `evaluate.load` (e.g. `config_name="multilabel"`, `keep_in_memory=True`).

    Returns:
        The loaded `evaluate.EvaluationModule`.
    """
    script = METRICS_DIR / name / f"{name}.py"
    if not script.is_file():
        available = sorted(p.parent.name for p in METRICS_DIR.glob("*/*.py") if p.stem == p.parent.name)
        raise ValueError(f"Unknown metric {name!r}; available: {available}.")
    return evaluate.load(str(script.parent), **kwargs)
