"""Evaluation of MM checkpoints over whole splits: loading a checkpoint (or LoRA adapter) for a task, zero-shot
classification and class-level retrieval recall on easy-VQA, VQA accuracy, captioning (generated captions scored
with BLEU / ROUGE-L / CIDEr-D and exact match) and image-text classification. `mm evaluate` is the command line.

Every function runs on the model's device, in batches; under `torchrun` / `accelerate launch` each process evaluates
its own block of the rows and the per-row results are gathered (`evaluation.distributed`), so the metrics are those
of one process over the whole split."""

import json
import logging
import os

import numpy as np
import torch
from tqdm.auto import tqdm

import modeling_mm  # noqa: F401  (registers the Auto classes)
from modeling_mm import (
    MMForConditionalGeneration,
    MMForImageTextClassification,
    MMForVisualQuestionAnswering,
    MMModel,
)
from training.defaults import CAPTION_MAX_NEW_TOKENS

from .distributed import gather_rows, process_range


logger = logging.getLogger(__name__)

__all__ = [
    "class_level_recall",
    "evaluate_captioning",
    "evaluate_classification",
    "evaluate_vqa",
    "evaluate_zero_shot_easy_vqa",
    "TASK_MODELS",
    "load_for_task",
    "results_markdown",
]

TASK_MODELS = {
    "zero_shot": MMModel,
    "retrieval": MMModel,
    "vqa": MMForVisualQuestionAnswering,
    "captioning": MMForConditionalGeneration,
    "classification": MMForImageTextClassification,
}


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def load_for_task(path: str, task: str, revision: str | None = None):
    """Loads the task's model and the processor from a checkpoint folder, a Hub id, or a LoRA adapter folder (whose
    `adapter_config.json` names the base checkpoint; the adapter is merged for evaluation)."""
    from processing import MMProcessor

    if task not in TASK_MODELS:
        raise SystemExit(f"--task must be one of {sorted(TASK_MODELS)}, got {task!r}.")
    model_cls = TASK_MODELS[task]
    kwargs = {"revision": revision} if revision else {}
    adapter_config = os.path.join(path, "adapter_config.json")
    if os.path.isfile(adapter_config):
        from peft import PeftModel

        from training.lora import adapter_head_config

        with open(adapter_config) as f:
            base_path = json.load(f).get("base_model_name_or_path")
        if not base_path:
            raise SystemExit(f"{adapter_config} has no base_model_name_or_path; cannot rebuild the base model.")
        # The base checkpoint may be a pretraining one without the head's answer vocabulary / labels.
        head_config = adapter_head_config(path)
        config = {"config": head_config} if head_config is not None else {}
        base = model_cls.from_pretrained(base_path, **kwargs, **config)
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
        processor_path = path if os.path.isfile(os.path.join(path, "processor_config.json")) else base_path
    else:
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise SystemExit(f"{path} has neither config.json nor adapter_config.json: not a checkpoint.")
        model = model_cls.from_pretrained(path, **kwargs)
        processor_path = path
    processor = MMProcessor.from_pretrained(processor_path, **kwargs)
    return model.eval(), processor


def _load_split(dataset: str, split: str, view: str):
    from processing.data import load_easy_vqa, load_image_folder

    if dataset == "easy_vqa":
        data = load_easy_vqa(view=view)
        if split not in data:
            raise SystemExit(f"easy_vqa has splits {list(data)}, not {split!r}.")
        return data[split]
    return load_image_folder(dataset, split=split)


# ----------------------------------------------------------------------------------------------------------------------
# Metrics over a whole split
# ----------------------------------------------------------------------------------------------------------------------


def class_level_recall(
    similarity: torch.Tensor, image_labels: torch.Tensor, text_labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Recall@K when many images share one text (easy-VQA: 24 captions for 1,000 images), so instance-level recall
    is undefined: image->text is a hit if a top-K text has the image's label; text->image if a top-K image does.

    Args:
        similarity: `(num_images, num_texts)` scores.
        image_labels: `(num_images,)`; text_labels: `(num_texts,)` class of each side.
    """
    out = {}
    for k in ks:
        top_t = similarity.topk(min(k, similarity.shape[1]), dim=1).indices  # (I, k)
        out[f"i2t_recall@{k}"] = float((text_labels[top_t] == image_labels[:, None]).any(1).float().mean())
        top_i = similarity.t().topk(min(k, similarity.shape[0]), dim=1).indices  # (T, k)
        out[f"t2i_recall@{k}"] = float((image_labels[top_i] == text_labels[:, None]).any(1).float().mean())
    return out


def _batches(dataset, batch_size: int, desc: str):
    """This process's rows of `dataset` (all of them in one process), `batch_size` at a time, as column dicts."""
    rows = process_range(len(dataset))
    for start in tqdm(range(rows.start, rows.stop, batch_size), desc=desc, unit="batch"):
        yield dataset[start : min(start + batch_size, rows.stop)]


@torch.no_grad()
def evaluate_zero_shot_easy_vqa(
    model: MMModel, processor, test_images=None, batch_size: int = 128, max_samples: int | None = None
) -> dict[str, float]:
    """Zero-shot classification of easy-VQA test images into the 24 colour x shape classes with prompts
    "a {colour} {shape}" (ITC similarity), plus class-level image<->text recall@1/5 over those prompts."""
    from processing.data import EASY_VQA_COLORS, EASY_VQA_SHAPES, load_easy_vqa

    if model.config.fusion == "early":
        raise ValueError("Zero-shot classification by ITC needs fusion 'late' or 'hybrid'.")
    if test_images is None:
        test_images = load_easy_vqa(view="images")["test"]
    if max_samples is not None:
        test_images = test_images.select(range(min(max_samples, len(test_images))))
    was_training = model.training
    model.eval()
    prompts = [f"a {color} {shape}" for color in EASY_VQA_COLORS for shape in EASY_VQA_SHAPES]
    device = next(model.parameters()).device
    text_inputs = processor(text=prompts, padding=True, return_tensors="pt").to(device)
    text_embeds = model.embed_text(text_inputs["input_ids"], text_inputs["attention_mask"])  # (24, P)
    image_embeds, labels = [], []
    for batch in _batches(test_images, batch_size, "zero-shot"):
        pixel_values = processor(images=batch["image"], return_tensors="pt")["pixel_values"].to(device)
        image_embeds += list(model.embed_image(pixel_values).cpu())  # (P,) per image
        labels += [prompts.index(f"a {c} {s}") for c, s in zip(batch["color"], batch["shape"])]
    image_embeds = torch.stack(gather_rows(image_embeds)).to(device)  # (N, P): every process's images, in order
    labels = torch.tensor(gather_rows(labels), device=device)
    similarity = image_embeds @ text_embeds.t()  # (N, 24)
    results = {"zero_shot_top1": float((similarity.argmax(1) == labels).float().mean()), "num_images": len(labels)}
    results.update(class_level_recall(similarity, labels, torch.arange(len(prompts), device=device)))
    model.train(was_training)
    return results


@torch.no_grad()
def evaluate_vqa(model: MMForVisualQuestionAnswering, processor, questions, batch_size: int = 64) -> dict[str, float]:
    """Classifier VQA: argmax answer per question, scored with the local `vqa_accuracy` evaluate module."""
    from metrics import load_metric

    id2label = model.config.id2label
    device = next(model.parameters()).device
    predictions, references = [], []
    for batch in _batches(questions, batch_size, "vqa"):
        inputs = processor(
            images=batch["image"], text=batch["question"], padding=True, truncation=True, return_tensors="pt"
        ).to(device)
        logits = model(**inputs).logits
        predictions += [id2label[int(i)] for i in logits.argmax(-1)]
        references += list(batch["answer"])
    predictions, references = gather_rows(predictions), gather_rows(references)
    results = load_metric("vqa_accuracy").compute(predictions=predictions, references=references)
    results["num_questions"] = len(predictions)
    return results


@torch.no_grad()
def evaluate_captioning(
    model: torch.nn.Module,
    processor,
    images,
    batch_size: int = 64,
    max_new_tokens: int = CAPTION_MAX_NEW_TOKENS,
    num_beams: int = 1,
    text_column: str = "caption",
) -> dict:
    """
    Generates a caption per image and scores it against `text_column`: BLEU-1..4, ROUGE-L, CIDEr-D and sacreBLEU
    (the local `captioning` metric), and `exact_match` after lower-casing and whitespace normalisation.

    Args:
        model: A captioning model (`MMForConditionalGeneration`, or its peft wrapper).
        processor (`MMProcessor`): Images in, token ids out.
        images: Rows (a `Dataset` or anything sliceable into column dicts) with `image` and `text_column`.
        batch_size (`int`): Images per `generate` call.
        max_new_tokens (`int`): Caption length budget.
        num_beams (`int`): Beam search width (1 = greedy).
        text_column (`str`): The reference caption column.
    """
    from metrics import load_metric

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    predictions, references = [], []
    for batch in _batches(images, batch_size, "captioning"):
        pixel_values = processor(images=batch["image"], return_tensors="pt")["pixel_values"].to(device)
        generated = model.generate(
            pixel_values=pixel_values, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False
        )
        predictions += processor.post_process_image_text_to_text(generated)
        references += list(batch[text_column])
    predictions, references = gather_rows(predictions), gather_rows(references)
    results = load_metric("captioning").compute(predictions=predictions, references=references)
    normalise = lambda text: " ".join(text.lower().split())  # noqa: E731
    results["exact_match"] = float(np.mean([normalise(p) == normalise(r) for p, r in zip(predictions, references)]))
    results["num_images"] = len(predictions)
    results["examples"] = [{"generated": p, "reference": r} for p, r in list(zip(predictions, references))[:5]]
    model.train(was_training)
    return results


@torch.no_grad()
def evaluate_classification(
    model: MMForImageTextClassification, processor, rows, batch_size: int = 64, text_column: str = "text",
    label_column: str = "label",
) -> dict[str, float]:
    from metrics import load_metric

    label2id = model.config.label2id
    device = next(model.parameters()).device
    predictions, references = [], []
    for batch in _batches(rows, batch_size, "classification"):
        inputs = processor(
            images=batch["image"], text=batch[text_column], padding=True, truncation=True, return_tensors="pt"
        ).to(device)
        predictions += model(**inputs).logits.argmax(-1).tolist()
        references += [label2id[str(label)] if str(label) in label2id else int(label) for label in batch[label_column]]
    predictions, references = gather_rows(predictions), gather_rows(references)
    results = load_metric("classification").compute(predictions=predictions, references=references)
    results["num_examples"] = len(predictions)
    return results


def results_markdown(task: str, model_name: str, results: dict) -> str:
    rows = [(k, v) for k, v in results.items() if isinstance(v, (int, float))]
    lines = [f"| {task} on {model_name} | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)
