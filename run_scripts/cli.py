"""The `mm` command: one console script whose subcommands are the modules of `run_scripts/`.

    mm pretrain --output_dir outputs/pretrain
    mm finetune --task vqa --model_name_or_path outputs/pretrain --lora true
    mm evaluate --model_name_or_path outputs/vqa --task vqa
    mm <command> --help

Each subcommand is also `python -m run_scripts.<module>` (what `torchrun` needs: `torchrun -m run_scripts.pretrain`).
"""

import importlib
import os
import sys
from typing import Any


__all__ = ["COMMANDS", "main", "run_command"]

# subcommand -> (module under run_scripts/, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("pretrain", "Pretrain with ITC / ITM / MLM / captioning LM / FLIP."),
    "finetune": ("finetune", "Fine-tune a head (VQA, retrieval, captioning, classification), fully or with LoRA."),
    "evaluate": ("evaluate_model", "Evaluate a checkpoint or LoRA adapter on a task; JSON + Markdown results."),
    "publish": ("publish", "Write a Hub-ready folder (code, weights, processor, card, pipelines); --push uploads."),
    "space": ("space", "Serve the Gradio app of a published folder (the Space `mm publish --space_dir` writes)."),
    "explain": ("explain", "Relevance heatmaps and retrieval galleries."),
    "grounding-eval": ("grounding_eval", "Score the heatmaps on two-object composites."),
    "make-shards": ("make_shards", "Write WebDataset shards from easy-VQA, an image folder or a dataset."),
    "make-moving-shapes": ("make_moving_shapes", "Write moving-shapes MP4 clips whose questions need time."),
    "convert-efficientnet-lite": ("convert_efficientnet_lite", "Convert EfficientNet-Lite weights to a tower folder."),
    "convert-clip": ("convert_clip", "Convert CLIP / SigLIP checkpoints to and from the late-fusion model."),
    "real-benchmark": ("real_benchmark", "Pretrained vs from-scratch towers on real images (RESULTS.md table)."),
    "demo": ("demo", "The main job on the embedded easy-VQA data, end to end."),
    "make-results": ("make_results", "Run the experiments behind RESULTS.md and rewrite it."),
}


def _available() -> dict[str, tuple[str, str]]:
    here = os.path.dirname(os.path.abspath(__file__))
    return {name: entry for name, entry in COMMANDS.items() if os.path.isfile(os.path.join(here, f"{entry[0]}.py"))}


def run_command(name: str, args: list[str] | None = None) -> Any:
    """Runs subcommand `name` in this process with `args` (as `mm name args...` would) and returns its result.

    Args:
        name (`str`): A key of `COMMANDS`, e.g. `"pretrain"`.
        args (`list[str]`, *optional*): Its command-line arguments.
    """
    commands = _available()
    if name not in commands:
        raise SystemExit(f"mm: unknown command {name!r}; commands: {', '.join(commands)}")
    module = importlib.import_module(f"run_scripts.{commands[name][0]}")
    return module.main(list(args or []))


def _usage() -> str:
    lines = ["usage: mm <command> [arguments] (mm <command> --help for its arguments)", "", "commands:"]
    lines += [f"  {name:27s}{help_text}" for name, (_, help_text) in _available().items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, args = argv[0], argv[1:]
    # argparse names the program after sys.argv[0]: `mm pretrain --help` then reads "usage: mm pretrain ...".
    sys.argv = [f"mm {name}", *args]
    run_command(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
