"""`mm evaluate`: evaluate an MM checkpoint (folder, LoRA adapter folder, or Hub id) on a task; writes JSON and a
Markdown table.

    mm evaluate --model_name_or_path outputs/pretrain --task zero_shot
    mm evaluate --model_name_or_path outputs/vqa --task vqa --output_file outputs/vqa/eval.json
    mm evaluate --model_name_or_path outputs/vqa-lora --task vqa     # adapter folder: merged on load

    torchrun --nproc_per_node 2 -m run_scripts.evaluate_model --model_name_or_path outputs/vqa --task vqa

Tasks: `zero_shot` (easy-VQA colour x shape classes by ITC) and `retrieval` (recall@K both ways), `vqa`,
`captioning` (generate + BLEU/ROUGE-L/CIDEr-D), `classification`. The evaluation functions live in `evaluation.tasks`.
The model runs on `--device` (default: the accelerator when there is one). Under `torchrun` / `accelerate launch` each
process evaluates its block of the split and the per-row results are gathered: the metrics equal one process's; only
rank 0 writes the files.
"""

from dataclasses import dataclass, field
import json
import os
import time

from evaluation.distributed import is_main_process, resolve_device
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
from processing.sources import MMDataArguments
from training import parse_args, setup_logging
from training.defaults import CAPTION_MAX_NEW_TOKENS


__all__ = ["EvalArguments", "main"]


@dataclass
class EvalArguments:
    model_name_or_path: str = field(metadata={"help": "Checkpoint folder, LoRA adapter folder, or Hub id."})
    task: str = field(default="zero_shot", metadata={"help": "What to evaluate.", "choices": sorted(TASK_MODELS)})
    split: str = field(
        default="test",
        metadata={"help": "Split to evaluate (easy-VQA, an image folder or --dataset_name; with --train_file, the "
                          "--validation_file when given, else the train file)."},
    )
    batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N samples only."})
    max_new_tokens: int = field(default=CAPTION_MAX_NEW_TOKENS, metadata={"help": "Captioning: tokens to generate."})
    num_beams: int = field(default=1, metadata={"help": "Captioning: beam width."})
    output_file: str | None = field(default=None, metadata={"help": "JSON results (default: <model>/eval_<task>.json)."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (pin it for remote code)."})
    device: str | None = field(
        default=None,
        metadata={"help": "Where the model runs, e.g. cuda, cuda:1, mps, cpu (default: the accelerator if present; "
                          "under a launcher, each process's own)."},
    )


# The canonical columns (`processing.sources`) each task reads from a --dataset_name / --train_file source.
TASK_COLUMNS = {"vqa": ("image", "question", "answer"), "captioning": ("image", "caption"),
                "classification": ("image", "caption", "label")}


def _canonical_rows(task: str, data_args: MMDataArguments, split: str):
    """The rows to evaluate from a `--dataset_name` or `--train_file` source, in the canonical columns."""
    from processing.sources import load_mm_datasets

    if data_args.source == "dataset_name":
        data_args.eval_split = split
    train, evaluation = load_mm_datasets(data_args, required=TASK_COLUMNS[task])
    return evaluation if evaluation is not None else train


def main(args: list[str] | None = None) -> dict:
    eval_args, data_args = parse_args((EvalArguments, MMDataArguments), args)
    setup_logging()
    start = time.time()
    task = eval_args.task
    source = data_args.source
    if source == "shards":
        raise SystemExit("mm evaluate reads map-style data: pass --dataset_name, --train_file or --dataset.")
    if task in ("zero_shot", "retrieval") and source != "easy_vqa":
        raise SystemExit("zero_shot/retrieval evaluation is implemented for --dataset easy_vqa.")
    model, processor = load_for_task(eval_args.model_name_or_path, task, eval_args.revision)
    model.to(resolve_device(eval_args.device))
    text_column = "text"
    if task in ("zero_shot", "retrieval"):
        images = _load_split(data_args.dataset, eval_args.split, "images")
        results = evaluate_zero_shot_easy_vqa(model, processor, images, eval_args.batch_size, eval_args.max_samples)
    else:
        view = "questions" if task == "vqa" else "images"
        if source in ("dataset_name", "files"):
            rows = _canonical_rows(task, data_args, eval_args.split)
            text_column = "caption"
        else:
            rows = _load_split(data_args.dataset, eval_args.split, view)
        if eval_args.max_samples is not None:
            rows = rows.select(range(min(eval_args.max_samples, len(rows))))
        if task == "vqa":
            results = evaluate_vqa(model, processor, rows, eval_args.batch_size)
        elif task == "captioning":
            results = evaluate_captioning(
                model, processor, rows, eval_args.batch_size, eval_args.max_new_tokens, eval_args.num_beams
            )
        else:
            results = evaluate_classification(model, processor, rows, eval_args.batch_size, text_column=text_column)
    results["eval_seconds"] = round(time.time() - start, 1)
    payload = {
        "model": eval_args.model_name_or_path,
        "task": task,
        "dataset": data_args.dataset_name or data_args.train_file or data_args.dataset,
        "split": eval_args.split,
        "results": results,
    }
    if not is_main_process():
        return payload  # every process holds the same gathered results; rank 0 writes them
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
