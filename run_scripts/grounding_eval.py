"""`mm grounding-eval`: does the heatmap point at the thing the text names? Scores every explanation method on
two-object easy-VQA composites (`evaluation.grounding`).

    mm grounding-eval --model_name_or_path outputs/pretrain
    mm grounding-eval --model_name_or_path outputs/pretrain --num_composites 400 --seed 1
"""

from dataclasses import dataclass, field
import json
import os
import time

import torch

from evaluation.distributed import is_main_process, resolve_device
from evaluation.explain import METHODS, load_explainer
from evaluation.grounding import evaluate_grounding, make_composites
from processing.data import load_easy_vqa
from training import parse_args, setup_logging


__all__ = ["GroundingArguments", "main"]


@dataclass
class GroundingArguments:
    model_name_or_path: str = field(default="outputs/pretrain", metadata={"help": "MM checkpoint folder."})
    device: str | None = field(
        default=None, metadata={"help": "Where the model runs, e.g. cuda, mps, cpu (default: the accelerator if present)."}
    )
    num_composites: int = field(default=200, metadata={"help": "Composites; each is queried for both objects."})
    seed: int = field(default=0, metadata={"help": "Seed of the pair sampling and placement."})
    batch_size: int = field(default=50, metadata={"help": "Queries per forward/backward pass."})
    output_file: str | None = field(
        default=None, metadata={"help": "JSON results (default: <model>/grounding_eval.json)."}
    )


def main(args: list[str] | None = None) -> dict:
    (grounding_args,) = parse_args((GroundingArguments,), args)
    setup_logging()
    torch.manual_seed(grounding_args.seed)
    start = time.time()

    # 1. Model, processor and composites
    model, processor = load_explainer(grounding_args.model_name_or_path)
    model.to(resolve_device(grounding_args.device))
    size = model.config.vision_config.image_size
    test = load_easy_vqa(split="test", view="images")
    composites = make_composites(test, grounding_args.num_composites, grounding_args.seed, size)

    # 2. Score every method
    results = evaluate_grounding(model, processor, composites, grounding_args.batch_size)
    default = METHODS[model.config.fusion]
    headline = f"gradcam_layer{len(model.mm.fusion_layers) - 1}" if default == "gradcam" else default
    results.update(
        model=grounding_args.model_name_or_path,
        seed=grounding_args.seed,
        composite_size=[size, 2 * size],
        default_method=headline,
        eval_seconds=round(time.time() - start, 1),
    )

    # 3. Write and summarise (under a launcher every process holds the same summed counts; rank 0 writes)
    if not is_main_process():
        return results
    output_file = grounding_args.output_file or os.path.join(
        grounding_args.model_name_or_path if os.path.isdir(grounding_args.model_name_or_path) else ".",
        "grounding_eval.json",
    )
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    with open(output_file, "w") as f:
        json.dump(results, f, indent=2)
    rates = ", ".join(
        f"{name} {r['peak_hit_rate']:.1%}/{r['mass_hit_rate']:.1%}" for name, r in results["methods"].items()
    )
    print(
        f"grounding (peak/mass hit rate, chance 50%) on {results['num_queries']} queries / "
        f"{results['num_composites']} composites, default {headline}: {rates}; half_recognition "
        f"{results['half_recognition']}; {results['eval_seconds']}s -> {output_file}"
    )
    return results


if __name__ == "__main__":
    main()
