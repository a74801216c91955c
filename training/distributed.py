"""Distributed training on the engines the ecosystem already has: torch's FSDP2 (`fully_shard`) through accelerate's
FSDP integration, DDP, and Trainer's DeepSpeed config handling. Nothing here distributes anything itself; it decides
which engine runs, says so, and smooths what keeps our models from going through accelerate's FSDP2 path unchanged
(scalar `logit_scale`, tied vocabulary projections, wrap classes of other fusion styles, parameters without
optimizer state). `MMTrainer` calls these; evaluation's counterpart is `evaluation.distributed`.

accelerate attaches its FSDP plugin only for accelerator backends: on a CPU-only machine `--fsdp` would quietly train
plain DDP over gloo. `enable_fsdp_on_cpu` switches the CPU processes to accelerate's own FSDP2 path instead (it calls
torch's `fully_shard`, which runs on gloo), so the sharding that runs on GPUs is the one the CPU tests exercise.
"""

import logging
import os

import torch


__all__ = [
    "CONFIGS_DIR",
    "FSDPOnCPUError",
    "default_device",
    "enable_fsdp_on_cpu",
    "fsdp_fallback_to_ddp",
    "load_sharded_optimizer",
    "reduce_mean",
    "remove_copied_fsdp_sources",
    "replicate_scalar_parameters",
    "resolve_deepspeed_config",
    "shard_tied_modules_together",
    "unwrap_pretraining_model",
    "wrap_only_present_classes",
]

logger = logging.getLogger(__name__)


def unwrap_pretraining_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """The MM head (the module holding `mm`) under any DDP / FSDP / accelerate / peft wrappers, or None."""
    while not hasattr(model, "mm"):
        inner = getattr(model, "module", None) or getattr(model, "base_model", None) or getattr(model, "model", None)
        if inner is None or inner is model:
            return None
        model = inner
    return model

# The DeepSpeed, FSDP and accelerate configuration files shipped with the project (README "Distributed training").
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class FSDPOnCPUError(RuntimeError):
    """Raised when `--fsdp` is asked for on a CPU-only machine and the CPU FSDP2 path was turned off."""


def default_device() -> str:
    """The device a tool runs on when `--device` is not given: the current accelerator (cuda, mps, xpu...) if
    there is one, else the CPU. Under `torchrun` each process takes its `LOCAL_RANK`-th accelerator."""
    if torch.accelerator.is_available():
        kind = torch.accelerator.current_accelerator().type
        if kind != "mps" and "LOCAL_RANK" in os.environ:
            return f"{kind}:{int(os.environ['LOCAL_RANK'])}"
        return kind
    return "cpu"


def fsdp_fallback_to_ddp(training_args, accelerator) -> bool:
    """Whether accelerate dropped the FSDP that `--fsdp` asked for: FSDP arguments were given, the processes run
    distributed, and accelerate picked plain multi-process CPU (DDP) because no accelerator backend is present.

    Args:
        training_args (`TrainingArguments`): The parsed arguments.
        accelerator (`accelerate.Accelerator`): The Trainer's accelerator.
    """
    from accelerate.utils import DistributedType

    return (
        training_args.fsdp_plugin_args is not None
        and getattr(accelerator.state, "fsdp_plugin", None) is None
        and accelerator.distributed_type == DistributedType.MULTI_CPU
    )


def enable_fsdp_on_cpu(training_args, accelerator) -> None:
    """Puts CPU (gloo) processes on accelerate's FSDP2 path, which shards the model with torch's `fully_shard`, wrapping
    the classes of `fsdp_config["transformer_layer_cls_to_wrap"]` (default: the model's `_no_split_modules`) and then
    the root, exactly as on GPUs. Trainer's FSDP checkpointing (`state_dict_type` SHARDED_STATE_DICT or
    FULL_STATE_DICT) and resuming then work unchanged.

    Args:
        training_args (`TrainingArguments`): Arguments with `--fsdp` (FSDP2: `fsdp_config["version"] == 2`).
        accelerator (`accelerate.Accelerator`): The Trainer's accelerator, still unprepared.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin_args = dict(training_args.fsdp_plugin_args)
    if plugin_args.get("fsdp_version", 2) != 2:
        raise FSDPOnCPUError(
            "--fsdp on CPU needs FSDP2 (fsdp_config version 2, the default): FSDP1 has no CPU/gloo support."
        )
    plugin = FullyShardedDataParallelPlugin(**plugin_args)
    state = accelerator.state
    # What AcceleratorState does for accelerator backends when it is given an FSDP plugin (accelerate/state.py).
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    logger.warning(
        "--fsdp on a CPU-only machine: accelerate would train plain DDP here; sharding with torch's FSDP2 "
        "(fully_shard over gloo, wrapping %s) instead.",
        plugin_args.get("transformer_cls_names_to_wrap", "the model's _no_split_modules"),
    )


def replicate_scalar_parameters(fsdp_plugin, model: torch.nn.Module) -> list[str]:
    """Keeps 0-d parameters (our `logit_scale`, as CLIP's) out of FSDP2, which refuses scalars, by adding them to the
    plugin's `ignored_modules`; they stay replicated, and Trainer's `_sync_replicated_trainable_parameters` (run by
    `MMTrainer` after preparation) broadcasts them from rank 0 and averages their gradient. Returns their names.

    Args:
        fsdp_plugin (`accelerate.utils.FullyShardedDataParallelPlugin`): The active FSDP2 plugin.
        model (`nn.Module`): The model about to be sharded.
    """
    scalars = [(name, p) for name, p in model.named_parameters() if p.ndim == 0]
    if not scalars:
        return []
    # accelerate reads the ignored parameters from modules' `.parameters()`: a holder module that registers the
    # same Parameter objects (it is not part of the model) names exactly these.
    holder = torch.nn.Module()
    for i, (_, param) in enumerate(scalars):
        holder.register_parameter(f"scalar_{i}", param)
    ignored = fsdp_plugin.ignored_modules
    fsdp_plugin.ignored_modules = [*(ignored or []), holder]
    return [name for name, _ in scalars]


def shard_tied_modules_together(accelerator, model: torch.nn.Module) -> list[list[str]]:
    """Gives each group of modules that share a parameter (tied vocabulary projections: the MLM decoder and the text
    embeddings, the captioning `lm_head` and the decoder embeddings) one FSDP2 unit, `fully_shard([a, b])`, before
    accelerate shards the rest. torch >= 2.13 refuses a parameter seen by two FSDP groups, and accelerate only groups
    the pair that `get_input_embeddings` / `get_output_embeddings` name. Returns the module names of each group.

    Args:
        accelerator (`accelerate.Accelerator`): The accelerator, on its FSDP2 path.
        model (`nn.Module`): The model about to be prepared.
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    owners: dict[int, list[tuple[str, torch.nn.Module]]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append((name, module))
    groups = [pairs for pairs in owners.values() if len({id(m) for _, m in pairs}) > 1]
    if not groups:
        return []
    plugin = accelerator.state.fsdp_plugin
    # The arguments accelerate's `fsdp2_prepare_model` gives every unit (accelerate/utils/fsdp_utils.py).
    kwargs = {
        "reshard_after_forward": plugin.reshard_after_forward,
        "offload_policy": plugin.cpu_offload,
        "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
    }
    mesh = getattr(accelerator, "torch_device_mesh", None)
    if mesh is not None:
        kwargs["mesh"] = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    names = []
    for pairs in groups:
        modules = list({id(m): m for _, m in pairs}.values())
        if not any(isinstance(m, FSDPModule) for m in modules):
            fully_shard(modules, **kwargs)
            names.append(sorted({name for name, _ in pairs}))
    return names


def load_sharded_optimizer(model: torch.nn.Module, optimizer, folder: str, fsdp_plugin) -> None:
    """Loads an FSDP2 optimizer saved with SHARDED_STATE_DICT (accelerate's `optimizer_0` DCP folder) as accelerate's
    `load_fsdp_optimizer` does, except that parameters with no saved state are allowed: a parameter that never got a
    gradient (e.g. the video `temporal_embedding` in an image-only run) has no AdamW state in the checkpoint, while the
    freshly built optimizer asks for one (accelerate's loader then fails with "Missing key in checkpoint").

    Args:
        model (`nn.Module`): The sharded model.
        optimizer (`torch.optim.Optimizer`): Its (prepared) optimizer.
        folder (`str`): The `optimizer_0` folder of a checkpoint.
        fsdp_plugin (`accelerate.utils.FullyShardedDataParallelPlugin`): The active plugin (its CPU offload).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    offload = getattr(fsdp_plugin.state_dict_config, "offload_to_cpu", False)
    options = StateDictOptions(full_state_dict=False, cpu_offload=offload)

    state = {"optimizer": get_optimizer_state_dict(model, optimizer, options=options)}
    dcp.load(state, storage_reader=dcp.FileSystemReader(folder), planner=DefaultLoadPlanner(allow_partial_load=True))
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)


def resolve_deepspeed_config(config: str | dict, training_args, model, num_training_steps: int) -> dict:
    """The DeepSpeed config Trainer would hand to `deepspeed.initialize`: every `"auto"` filled from the training
    arguments and the model by Trainer's own `HfTrainerDeepSpeedConfig` (`trainer_config_process`, then
    `trainer_config_finalize`), which also raises on values that contradict the arguments. Usable without deepspeed
    installed (accelerate disables DeepSpeed on CPU anyway): the config is checked statically, nothing is launched.

    Args:
        config (`str` or `dict`): A DeepSpeed JSON file (e.g. `configs/ds_zero2.json`) or its dict.
        training_args (`TrainingArguments`): The arguments of the run (batch sizes, learning rate, precision...).
        model (`PreTrainedModel`): The model (its hidden size sizes the ZeRO buckets).
        num_training_steps (`int`): Steps of the run (the scheduler's total).

    Returns:
        `dict`: The resolved config; raises `ValueError` if an `"auto"` is left or a value mismatches.
    """
    import json

    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    if isinstance(config, str):
        with open(config, encoding="utf-8") as f:
            config = json.load(f)

    class _StaticConfig(HfTrainerDeepSpeedConfig, HfDeepSpeedConfig):
        # Trainer's subclass without the import checks of deepspeed itself: accelerate's config object underneath.
        def __init__(self, config_dict: dict):
            HfDeepSpeedConfig.__init__(self, config_dict)
            self._dtype = None
            self.mismatches = []

    resolved = _StaticConfig(json.loads(json.dumps(config)))
    resolved.trainer_config_process(training_args)
    resolved.trainer_config_finalize(training_args, model, num_training_steps)
    left = [key for key, value in _flatten(resolved.config).items() if value == "auto"]
    if left:
        raise ValueError(f"DeepSpeed config keys left at 'auto' (nothing in Trainer fills them): {left}")
    return resolved.config


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def wrap_only_present_classes(fsdp_plugin, model: torch.nn.Module) -> list[str]:
    """Narrows the plugin's `transformer_cls_names_to_wrap` (default: the model's `_no_split_modules`) to the classes
    this model contains. accelerate raises on a listed class the model lacks, and `_no_split_modules` names the blocks
    of every fusion style (e.g. `MMCoAttentionLayer`, which only co-attention models have), so one config
    (`configs/fsdp_config.json`) serves them all. Returns the classes that will be wrapped.

    Args:
        fsdp_plugin (`accelerate.utils.FullyShardedDataParallelPlugin`): The active FSDP2 plugin.
        model (`nn.Module`): The model about to be sharded.
    """
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    # The plugin holds the policy function, or a partial of it once accelerate bound the classes.
    if getattr(fsdp_plugin.auto_wrap_policy, "func", fsdp_plugin.auto_wrap_policy) is not transformer_auto_wrap_policy:
        return []
    names = fsdp_plugin.transformer_cls_names_to_wrap or list(getattr(model, "_no_split_modules", None) or [])
    present = {type(module).__name__ for module in model.modules()}
    fsdp_plugin.transformer_cls_names_to_wrap = [name for name in names if name in present]
    return fsdp_plugin.transformer_cls_names_to_wrap


def remove_copied_fsdp_sources(folder: str) -> list[str]:
    """Deletes the copies of torch's FSDP2 sources that `save_pretrained` leaves next to our remote code. Under FSDP2
    the model's class is torch's `FSDP<Class>` subclass, so transformers' `custom_object_save` copies the files of
    *its* module (`_fully_shard.py`, `_fsdp_*.py`) into the folder; only files byte-identical to torch's go. Returns
    the names removed.

    Args:
        folder (`str`): A folder written by `save_pretrained` (a checkpoint or the final model).
    """
    import filecmp

    import torch.distributed.fsdp._fully_shard as fully_shard_package

    source_dir = os.path.dirname(fully_shard_package.__file__)
    removed = []
    for name in os.listdir(source_dir):
        copy = os.path.join(folder, name)
        if name.endswith(".py") and os.path.isfile(copy) and filecmp.cmp(copy, os.path.join(source_dir, name), False):
            os.remove(copy)
            removed.append(name)
    return removed


def reduce_mean(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Averages each scalar in `values` over the processes of the default group (unchanged outside torch.distributed),
    so what rank 0 logs describes the global batch, not its own shard.

    Args:
        values (`dict[str, float]`): Per-process scalars (e.g. each objective's mean loss since the last log).
        device: Where the collective runs (the accelerator under NCCL, the CPU under gloo).
    """
    import torch.distributed as dist

    if not values or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(values)
    keys = sorted(values)
    stacked = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist()))
