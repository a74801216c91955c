"""`mm evaluate`: evaluate an MM checkpoint (folder, LoRA adapter folder, or Hub id) on a task; writes JSON and a
Markdown table.

    mm evaluate --model_name_or_path outputs/pretrain --task zero_shot
    mm evaluate --model_name_or_path outputs/vqa --task vqa --output_file outputs/vqa/eval.json
    mm evaluate --model_name_or_path outputs/vqa-lora --task vqa     # adapter folder: merged on load

Tasks: `zero_shot` (easy-VQA colour x shape classes by ITC) and `retrieval` (recall@K both ways), `vqa`,
`captioning` (generate + BLEU/ROUGE-L/CIDEr-D), `classification`. The evaluation functions live in `evaluation.tasks`.
"""

from dataclasses import dataclass, field
import json
import os
import time

from evaluation.tasks import (
    TASK_MODELS,
    _load_split,
    evaluate_captioning,
    evaluate_classification,
    evaluate_vqa,
    evaluate_zero_shot_easy_vqa,
    load_for_task,
    results_markdown,
)
from training import parse_args, setup_logging
from training.defaults import CAPTION_MAX_NEW_TOKENS


__all__ = ["EvalArguments", "main"]


@dataclass
class EvalArguments:
    model_name_or_path: str = field(metadata={"help": "Checkpoint folder, LoRA adapter folder, or Hub id."})
    task: str = field(default="zero_shot", metadata={"help": "What to evaluate.", "choices": sorted(TASK_MODELS)})
    dataset: str = field(default="easy_vqa", metadata={"help": "'easy_vqa' or an image folder with metadata."})
    split: str = field(default="test", metadata={"help": "Split to evaluate."})
    batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N samples only."})
    max_new_tokens: int = field(default=CAPTION_MAX_NEW_TOKENS, metadata={"help": "Captioning: tokens to generate."})
    num_beams: int = field(default=1, metadata={"help": "Captioning: beam width."})
    output_file: str | None = field(default=None, metadata={"help": "JSON results (default: <model>/eval_<task>.json)."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (pin it for remote code)."})


def main(args: list[str] | None = None) -> dict:
    (eval_args,) = parse_args((EvalArguments,), args)
    setup_logging()
    start = time.time()
    model, processor = load_for_task(eval_args.model_name_or_path, eval_args.task, eval_args.revision)
    task = eval_args.task
    if task in ("zero_shot", "retrieval"):
        if eval_args.dataset != "easy_vqa":
            raise SystemExit("zero_shot/retrieval evaluation is implemented for --dataset easy_vqa.")
        images = _load_split(eval_args.dataset, eval_args.split, "images")
        results = evaluate_zero_shot_easy_vqa(model, processor, images, eval_args.batch_size, eval_args.max_samples)
    else:
        view = "questions" if task == "vqa" else "images"
        rows = _load_split(eval_args.dataset, eval_args.split, view)
        if eval_args.max_samples is not None:
            rows = rows.select(range(min(eval_args.max_samples, len(rows))))
        if task == "vqa":
            results = evaluate_vqa(model, processor, rows, eval_args.batch_size)
        elif task == "captioning":
            results = evaluate_captioning(
                model, processor, rows, eval_args.batch_size, eval_args.max_new_tokens, eval_args.num_beams
            )
        else:
            results = evaluate_classification(model, processor, rows, eval_args.batch_size)
    results["eval_seconds"] = round(time.time() - start, 1)
    payload = {
        "model": eval_args.model_name_or_path,
        "task": task,
        "dataset": eval_args.dataset,
        "split": eval_args.split,
        "results": results,
    }
    output_file = eval_args.output_file
    if output_file is None:
        folder = eval_args.model_name_or_path if os.path.isdir(eval_args.model_name_or_path) else "."
        output_file = os.path.join(folder, f"eval_{task}.json")
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    with open(output_file, "w") as f:
        json.dump(payload, f, indent=2)
    table = results_markdown(task, eval_args.model_name_or_path, results)
    with open(os.path.splitext(output_file)[0] + ".md", "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"Results: {os.path.abspath(output_file)}")
    return payload


if __name__ == "__main__":
    main()
