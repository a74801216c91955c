"""Evaluation and inspection of MM checkpoints, shared by the command-line tools: task evaluation over whole splits
(`evaluation.tasks`), explanation heatmaps and retrieval galleries (`evaluation.explain`), and the grounding check on
two-object composites (`evaluation.grounding`). Import the submodules; this package imports nothing on its own, so
importing one of them stays light."""

__all__ = ["explain", "grounding", "tasks"]
