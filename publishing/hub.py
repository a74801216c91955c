"""Hub-ready folders of MM checkpoints and LoRA adapters, and their upload: what `mm publish` and
`MMTrainer.push_to_hub` (Trainer's `--push_to_hub`) both run, so a repo looks the same whichever wrote it.

The folder holds everything `pipeline(task, model=<repo>, trust_remote_code=True)` needs in a process without this
package: `config.json` (with an `auto_map` for the config, every head and the processor, and `custom_pipelines`), the
model and processing code, `pipelines_mm.py` (the custom `visual-question-answering` and `image-text-retrieval`
tasks), safetensors weights (sharded above `max_shard_size`), processor and tokenizer files,
`generation_config.json` when the model has a captioning decoder, and a `README.md` model card whose results come
only from `mm evaluate` JSON files. An adapter repo (an adapter without `merge_adapter`) holds the adapter, the
processor and a card naming the base model. No pickle file is ever written.
"""

from dataclasses import dataclass, field
import json
import logging
import os
import shutil
from typing import Any

import torch
from huggingface_hub import HfApi
from transformers import GenerationConfig

import modeling_mm  # noqa: F401  (registers the Auto classes)
from modeling_mm import AUTO_CLASSES, MMConfig, MMForConditionalGeneration, MMPreTrainedModel

from training.defaults import CAPTION_MAX_NEW_TOKENS
from training.trainer import fresh_output_dir

from .model_card import build_model_card, check_model_card, eval_results_from_files, tower_base_models
from .paths import PIPELINES_FILE, PIPELINES_PATH


logger = logging.getLogger(__name__)

__all__ = [
    "CUSTOM_PIPELINES",
    "PICKLE_SUFFIXES",
    "PublishArguments",
    "list_folder",
    "load_model",
    "load_processor",
    "publish",
    "push_folder",
    "supported_tasks",
    "write_adapter_folder",
    "write_model_folder",
]

# The custom tasks `pipelines_mm.py` implements, as `config.json`'s `custom_pipelines` lists them. Retrieval loads
# through AutoModelForPreTraining: transformers has no Auto class for retrieval, and MMForPreTraining holds the towers,
# projections and ITM head that retrieval reads.
CUSTOM_PIPELINES: dict[str, dict[str, Any]] = {
    "visual-question-answering": {
        "impl": "pipelines_mm.MMVisualQuestionAnsweringPipeline",
        "pt": ["AutoModelForVisualQuestionAnswering"],
        "type": "multimodal",
    },
    "image-text-retrieval": {
        "impl": "pipelines_mm.MMImageTextRetrievalPipeline",
        "pt": ["AutoModelForPreTraining"],
        "type": "multimodal",
    },
}
PROCESSOR_AUTO_MAP = {
    "AutoProcessor": "processing_mm.MMProcessor",
    "AutoImageProcessor": "image_processing_mm.MMImageProcessor",
    "AutoVideoProcessor": "video_processing_mm.MMVideoProcessor",
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_EASY_VQA = (
    "[easy-VQA](https://github.com/vzhou842/easy-VQA), as embedded in the `easy-vqa` PyPI package: 64x64 synthetic "
    "images of one coloured shape (8 colours x 3 shapes) on a plain background, 4,000 train and 1,000 test images "
    "with 38,575 / 9,673 templated questions over 13 answers. Captions (\"a red circle\") are derived from each "
    "image's questions by `processing.load_easy_vqa`."
)
_EASY_VQA_LIMITATIONS = (
    "Trained only on synthetic data, easy-VQA's 64x64 images of a single coloured shape (8 colours, 3 shapes) with "
    "templated text: it has not seen natural images, and its outputs on them are not meaningful."
)


@dataclass
class PublishArguments:
    output_dir: str = field(metadata={"help": "The Hub-ready folder to write (must be empty or absent)."})
    checkpoint: str | None = field(
        default=None,
        metadata={"help": "Model folder with its processor. With --adapter_path: the base the adapter was trained on "
                          "(default: the adapter's base_model_name_or_path)."},
    )
    adapter_path: str | None = field(default=None, metadata={"help": "A peft LoRA adapter folder to publish."})
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "Merge the adapter into the base and publish a plain model (else an adapter repo)."},
    )
    base_model: list[str] = field(
        default_factory=list,
        metadata={"help": "Hub ids for the card's base_model (default: the towers' ids from their configs). An "
                          "adapter repo needs the Hub id of its published base; it is also written into "
                          "adapter_config.json."},
    )
    processor_path: str | None = field(
        default=None, metadata={"help": "Folder of the processor (default: the adapter folder, then the checkpoint)."}
    )
    max_shard_size: str = field(default="5GB", metadata={"help": "Largest safetensors shard, e.g. '500MB'."})
    eval_results: list[str] = field(
        default_factory=list, metadata={"help": "JSON files written by `mm evaluate`, for model-index."}
    )
    license: str = field(default="apache-2.0", metadata={"help": "License in the card metadata."})
    tags: list[str] = field(default_factory=list, metadata={"help": "Extra card tags."})
    datasets: list[str] = field(
        default_factory=list, metadata={"help": "Hub dataset ids of the training data, for the card metadata."}
    )
    training_data: str | None = field(
        default=None,
        metadata={"help": "Dataset the model was trained on: 'easy_vqa' or a description (default: the 'dataset' of "
                          "finetune_summary.json in the checkpoint, else easy_vqa, the run scripts' default)."},
    )
    max_new_tokens: int = field(
        default=CAPTION_MAX_NEW_TOKENS, metadata={"help": "Caption length cap in generation_config.json."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a non-empty --output_dir."})
    push: bool = field(default=False, metadata={"help": "Upload the folder (else a dry run that lists it)."})
    repo_id: str | None = field(default=None, metadata={"help": "Hub repo, e.g. 'me/mm-hybrid' (needed with --push)."})
    private: bool = field(default=False, metadata={"help": "Create the repo private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to upload to (created if missing)."})
    commit_message: str = field(default="Upload MM model with mm-pretrain", metadata={"help": "Commit message."})
    space_dir: str | None = field(
        default=None,
        metadata={"help": "Also write a Gradio Space app for the repo here (app.py, requirements.txt, README.md, "
                          "gallery/); it loads --repo_id, else the output folder. Not uploaded with the model."},
    )

    def __post_init__(self):
        if self.checkpoint is None and self.adapter_path is None:
            raise ValueError("Pass --checkpoint (a model folder) or --adapter_path (a LoRA adapter folder).")
        if self.merge_adapter and self.adapter_path is None:
            raise ValueError("--merge_adapter needs --adapter_path.")
        if self.push and not self.repo_id:
            raise ValueError("--push needs --repo_id.")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.space_dir is not None:
            if self.adapter_path is not None and not self.merge_adapter:
                raise ValueError("--space_dir needs a full model: publish the adapter with --merge_adapter.")
            out, space = os.path.abspath(self.output_dir), os.path.abspath(self.space_dir)
            if os.path.commonpath([out, space]) in (out, space):
                raise ValueError("--space_dir must lie outside --output_dir (and not contain it): the Space is a "
                                 "separate repo, and would otherwise be uploaded with the model.")


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def _head_class(name: str | None) -> type[MMPreTrainedModel]:
    cls = getattr(modeling_mm, name or "MMModel", None)
    if not (isinstance(cls, type) and issubclass(cls, MMPreTrainedModel)) or cls not in AUTO_CLASSES:
        known = sorted(c.__name__ for c in AUTO_CLASSES)
        raise SystemExit(f"{name!r} is not an MM model class; publish checkpoints of {known}.")
    return cls


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _adapter_base(args: PublishArguments, adapter_config: dict[str, Any]) -> str:
    base = args.checkpoint or adapter_config.get("base_model_name_or_path")
    if not base or not os.path.isfile(os.path.join(base, "config.json")):
        raise SystemExit(
            f"The adapter's base {base!r} is not a local checkpoint folder; pass --checkpoint <the base folder>."
        )
    return base


def load_model(args: PublishArguments) -> tuple[torch.nn.Module, str]:
    """The model to publish and the folder it came from: the checkpoint's head; with `--adapter_path`, the base head
    wrapped in the adapter (loading it checks that the adapter fits), or with `--merge_adapter` the merged head."""
    if args.adapter_path is None:
        config = MMConfig.from_pretrained(args.checkpoint)
        cls = _head_class((config.architectures or [None])[0])
        return cls.from_pretrained(args.checkpoint, config=config).eval(), args.checkpoint
    from peft import PeftModel

    from training.lora import adapter_head_config

    adapter_config = _read_json(os.path.join(args.adapter_path, "adapter_config.json"))
    base = _adapter_base(args, adapter_config)
    # The head config (e.g. a VQA answer vocabulary) lives next to the adapter when the adapter trained a new head.
    config = adapter_head_config(args.adapter_path)
    config = config if config is not None else MMConfig.from_pretrained(base)
    head = (adapter_config.get("auto_mapping") or {}).get("base_model_class") or (config.architectures or [None])[0]
    model = PeftModel.from_pretrained(_head_class(head).from_pretrained(base, config=config), args.adapter_path)
    if args.merge_adapter:
        model = model.merge_and_unload()
    return model.eval(), base


def load_processor(args: PublishArguments, base: str) -> Any:
    """The `MMProcessor` saved with the processor folder, the adapter, the checkpoint or the base (first found)."""
    from processing import MMProcessor

    candidates = [args.processor_path, args.adapter_path, args.checkpoint, base]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "processor_config.json")):
            return MMProcessor.from_pretrained(path)
    raise SystemExit(
        f"No processor_config.json in {[p for p in candidates if p]}; save the processor with the checkpoint "
        "(processor.save_pretrained) or pass --processor_path."
    )


# ----------------------------------------------------------------------------------------------------------------------
# The folder
# ----------------------------------------------------------------------------------------------------------------------


def supported_tasks(architecture: str, fusion: str, weight_names: set[str]) -> list[str]:
    """`pipeline()` tasks a published model serves, main task first (the card's `pipeline_tag`). Zero-shot,
    retrieval and embeddings need the ITC space (late, hybrid) of a model trained for it; hybrid retrieval also needs
    the trained ITM head; captioning needs the decoder weights."""
    if architecture == "MMForVisualQuestionAnswering":
        return ["visual-question-answering"]
    if architecture == "MMForConditionalGeneration":
        return ["image-text-to-text"]
    if architecture not in ("MMModel", "MMForPreTraining", "MMForImageTextRetrieval") or fusion == "early":
        return []
    tasks = ["zero-shot-image-classification"]
    if fusion == "late" or any(name.startswith("itm_head.") for name in weight_names):
        tasks.append("image-text-retrieval")
    if any(name.startswith("text_decoder.") for name in weight_names):
        tasks.append("image-text-to-text")
    return tasks + ["image-feature-extraction", "feature-extraction"]


def _card_auto_class(architecture: str) -> str:
    # Embedding-style checkpoints are shown with the bare model, whose outputs are the useful ones.
    if architecture in ("MMModel", "MMForPreTraining", "MMForImageTextRetrieval"):
        return "AutoModel"
    return AUTO_CLASSES[_head_class(architecture)]


def _generation_config(model: MMPreTrainedModel, tokenizer: Any, max_new_tokens: int) -> GenerationConfig:
    # The decoder learned `[CLS] caption [SEP]` from the processor's tokenizer, so its ids are the source of truth.
    generation_config = (
        model.generation_config if isinstance(model, MMForConditionalGeneration) else GenerationConfig()
    )
    defaults = {
        "bos_token_id": tokenizer.cls_token_id,
        "decoder_start_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "max_new_tokens": max_new_tokens,
    }
    for name, value in defaults.items():
        if getattr(generation_config, name, None) is None:
            setattr(generation_config, name, value)
    return generation_config


def _update_config_json(folder: str, tasks: list[str]) -> None:
    path = os.path.join(folder, "config.json")
    config = _read_json(path)
    config["auto_map"] = {**config.get("auto_map", {}), **PROCESSOR_AUTO_MAP}
    custom = {task: CUSTOM_PIPELINES[task] for task in tasks if task in CUSTOM_PIPELINES}
    if custom:
        config["custom_pipelines"] = custom
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def _training_data(args: PublishArguments, folders: list[str | None]) -> tuple[str, str]:
    """(card paragraph, limitations line) for the training data, from --training_data or finetune_summary.json."""
    dataset = args.training_data
    for folder in folders:
        summary = os.path.join(folder or "", "finetune_summary.json")
        if dataset is None and folder and os.path.isfile(summary):
            dataset = _read_json(summary).get("dataset")
    dataset = dataset or "easy_vqa"
    if dataset == "easy_vqa":
        return _EASY_VQA, _EASY_VQA_LIMITATIONS
    return f"`{dataset}`.", f"Trained only on `{dataset}`; check how far it covers your data before relying on it."


def write_model_folder(args: PublishArguments, model: MMPreTrainedModel, processor: Any) -> dict[str, Any]:
    """Writes weights, code, processor, generation config and `config.json` additions; returns card inputs."""
    out = args.output_dir
    model.save_pretrained(out, max_shard_size=args.max_shard_size)
    processor.save_pretrained(out)
    architecture = type(model).__name__
    weight_names = set(model.state_dict())
    tasks = supported_tasks(architecture, model.config.fusion, weight_names)
    if any(name.startswith("text_decoder.") for name in weight_names):
        _generation_config(model, processor.tokenizer, args.max_new_tokens).save_pretrained(out)
    shutil.copyfile(PIPELINES_PATH, os.path.join(out, PIPELINES_FILE))
    _update_config_json(out, tasks)
    return {
        "config": model.config,
        "architecture": architecture,
        "auto_class": _card_auto_class(architecture),
        "tasks": tasks,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "base_model": args.base_model or tower_base_models(model.config),
    }


def write_adapter_folder(args: PublishArguments, peft_model: Any, processor: Any) -> dict[str, Any]:
    """Copies the adapter (safetensors only) with its base set to the published base's Hub id; returns card inputs."""
    from safetensors.torch import save_file

    adapter_config = _read_json(os.path.join(args.adapter_path, "adapter_config.json"))
    base_ids = list(args.base_model)
    if not base_ids:
        original = adapter_config.get("base_model_name_or_path")
        if not original or os.path.exists(original):
            raise SystemExit(
                f"The adapter's base is the local folder {original!r}: publish that base first and pass its Hub id "
                "with --base_model, so the adapter repo points to it."
            )
        base_ids = [original]
    out = args.output_dir
    source = os.path.join(args.adapter_path, "adapter_model.safetensors")
    if os.path.isfile(source):
        shutil.copyfile(source, os.path.join(out, "adapter_model.safetensors"))
    else:
        # An old pickle adapter: read it without executing code and re-save as safetensors.
        state = torch.load(os.path.join(args.adapter_path, "adapter_model.bin"), map_location="cpu", weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, "adapter_model.safetensors"))
    adapter_config["base_model_name_or_path"] = base_ids[0]
    with open(os.path.join(out, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)
        f.write("\n")
    processor.save_pretrained(out)
    head = peft_model.get_base_model()
    architecture = type(head).__name__
    return {
        "config": head.config,
        "architecture": architecture,
        "auto_class": AUTO_CLASSES[type(head)],
        "tasks": supported_tasks(architecture, head.config.fusion, set(head.state_dict()))[:1],
        "num_parameters": sum(p.numel() for p in head.parameters()),
        "base_model": base_ids,
        "adapter": {
            "r": adapter_config.get("r"),
            "alpha": adapter_config.get("lora_alpha"),
            "num_targets": len(adapter_config.get("target_modules") or []),
            "modules_to_save": adapter_config.get("modules_to_save") or [],
        },
    }


def list_folder(folder: str) -> list[tuple[str, int]]:
    """Every file under `folder` (relative path, bytes), sorted."""
    files = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files.append((os.path.relpath(path, folder), os.path.getsize(path)))
    return sorted(files)


def _human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def push_folder(
    folder: str,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload",
    token: str | None = None,
) -> Any:
    """Creates the repo (and branch) if needed and uploads `folder`. Without `token`, it comes from `HF_TOKEN` or
    `hf auth login`, as everywhere in huggingface_hub."""
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id=repo_id, branch=revision, repo_type="model", exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, folder_path=folder, repo_type="model", revision=revision, commit_message=commit_message
    )


# ----------------------------------------------------------------------------------------------------------------------
# Publication
# ----------------------------------------------------------------------------------------------------------------------


def publish(args: PublishArguments, token: str | None = None) -> dict[str, Any]:
    """Writes the folder and, with `args.push`, uploads it (with `token`, else `HF_TOKEN` / `hf auth login`).

    Returns:
        `{"output_dir", "files", "tasks", "commit"}` (`commit` is None in a dry run).
    """
    # 1. A clean output folder: stale files (old shards) would be uploaded too.
    out = args.output_dir
    fresh_output_dir(out, args.overwrite_output_dir)

    # 2. The model (merged with its adapter when asked) and its processor.
    model, base = load_model(args)
    processor = load_processor(args, base)

    # 3. Weights, code, processor and config (or the adapter files).
    if args.adapter_path is not None and not args.merge_adapter:
        info = write_adapter_folder(args, model, processor)
    else:
        info = write_model_folder(args, model, processor)

    # 4. The model card, checked offline.
    eval_results, eval_rows = eval_results_from_files(args.eval_results)
    training_data, limitations_data = _training_data(args, [args.adapter_path, args.checkpoint, base])
    code_files = sorted(name for name, _ in list_folder(out) if name.endswith(".py"))
    card = build_model_card(
        info["config"],
        repo_id=args.repo_id or os.path.abspath(out),
        architecture=info["architecture"],
        auto_class=info["auto_class"],
        tasks=info["tasks"],
        num_parameters=info["num_parameters"],
        code_files=code_files,
        license=args.license,
        training_data=training_data,
        limitations_data=limitations_data,
        max_length=processor.max_length,
        max_new_tokens=args.max_new_tokens,
        eval_results=eval_results,
        eval_rows=eval_rows,
        tags=args.tags + (["lora"] if args.adapter_path else []) + (["peft"] if "adapter" in info else []),
        datasets=args.datasets,
        base_model=info["base_model"],
        adapter=info.get("adapter"),
    )
    required = ("license", "library_name") + (("pipeline_tag",) if info["tasks"] else ())
    check_model_card(card, required=required)
    card.save(os.path.join(out, "README.md"))

    files = list_folder(out)
    pickles = [name for name, _ in files if name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise SystemExit(f"Refusing to publish pickle files: {pickles}.")

    # 5. The Gradio Space app next to the repo, loading it by Hub id (or from the folder in a dry run).
    if args.space_dir is not None:
        from .space import folder_tabs, write_space

        title = (args.repo_id or os.path.abspath(out)).rstrip("/").split("/")[-1]
        space_files = write_space(args.space_dir, args.repo_id or out, folder_tabs(out), title, license=args.license,
                                  revision=args.revision, overwrite=args.overwrite_output_dir)
        logger.info("Wrote the Space app to %s (%d files).", args.space_dir, len(space_files))

    # 6. Upload, or list what would be uploaded.
    commit = None
    if args.push:
        card.validate()  # the Hub's own metadata check (needs network)
        commit = push_folder(out, args.repo_id, args.private, args.revision, args.commit_message, token=token)
        logger.info("Uploaded %s to %s (%s).", out, args.repo_id, getattr(commit, "commit_url", commit))
    else:
        width = max(len(name) for name, _ in files)
        print(f"Dry run: would upload {len(files)} files from {out} (pass --push --repo_id NAME to upload):")
        for name, size in files:
            print(f"  {name:<{width}}  {_human_size(size):>10}")
        print(f"  {'total':<{width}}  {_human_size(sum(size for _, size in files)):>10}")
    return {"output_dir": out, "files": files, "tasks": info["tasks"], "commit": commit}

