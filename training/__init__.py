"""Training-side library shared by the command-line tools: the Trainer subclass, checkpoint completeness and resume,
argument parsing, LoRA helpers, gradient-cached ITC, ALBEF momentum distillation and training-curve plots. Unlike
`modeling_mm/`, this package may import peft and matplotlib: it is never copied into a Hub repo."""

from .gradcache import GradCacheOutput, gradcache_backward
from .momentum import MomentumDistillation, MomentumDistillationCallback
from .trainer import (
    COMPLETE_MARKER,
    CompleteCheckpointCallback,
    MMTrainer,
    check_trainer_flags,
    default_text_tower_path,
    fresh_output_dir,
    latest_complete_checkpoint,
    parse_args,
    plot_training_curves,
    resolve_resume,
    setup_logging,
)


__all__ = [
    "COMPLETE_MARKER",
    "CompleteCheckpointCallback",
    "GradCacheOutput",
    "MMTrainer",
    "MomentumDistillation",
    "MomentumDistillationCallback",
    "check_trainer_flags",
    "default_text_tower_path",
    "fresh_output_dir",
    "gradcache_backward",
    "latest_complete_checkpoint",
    "parse_args",
    "plot_training_curves",
    "resolve_resume",
    "setup_logging",
]
