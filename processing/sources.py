# Copyright 2025 The mm-pretrain authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The user's own data: where it comes from (data arguments), which of its columns mean what, and the one-decode path
from raw rows to model inputs.

Sources, in the order `load_mm_datasets` tries them:

1. `--train_shards` / `--eval_shards`: WebDataset tar shards, streamed (see `processing.shards`).
2. `--dataset_name`: anything `datasets.load_dataset` opens (a Hub id, a local dataset folder or script).
3. `--train_file` / `--validation_file`: CSV or JSON lines, one row per image; image paths relative to the file.
4. `--dataset`: `easy_vqa` (the embedded default) or an image folder with `metadata.jsonl` / `metadata.csv`.

Every source comes out in the canonical columns `image` (or `video`), `caption`, `question`, `answer`, `label`
(those it has), plus `image_id` when the source has one. `--image_column` and friends name the source's columns; a
name that is not there raises, naming the column and the columns that exist.

Then, in the run_clip layout: texts are tokenised once in `Dataset.map` (cached, `num_proc`, progress bar), images
are decoded and transformed on access in `set_transform` (a streaming `map` for shards), and the collators only stack
and mask. `--skip_bad_samples` screens a map-style dataset once with `Dataset.filter(num_proc=...)`, naming and
counting every bad sample in a `BadSampleCounter`.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset, DatasetDict, Image, IterableDataset, Value, load_dataset
from transformers.utils import logging

from .collators import BadSampleCounter
from .image_processing_mm import MMImageError
from .processing_mm import MMProcessor


__all__ = [
    "CANONICAL_COLUMNS",
    "MMDataArguments",
    "RowTransform",
    "load_mm_datasets",
    "prepare_dataset",
    "add_stream_group_ids",
    "rename_to_canonical",
    "screen_bad_samples",
    "tokenize_dataset",
]

logger = logging.get_logger(__name__)

# Canonical column -> the `MMDataArguments` field naming it in the source.
CANONICAL_COLUMNS = {
    "image": "image_column",
    "caption": "caption_column",
    "question": "question_column",
    "answer": "answer_column",
    "label": "label_column",
    "video": "video_column",
}


@dataclass
class MMDataArguments:
    """Where the training and evaluation data come from and which columns to use (the data half of run_clip's
    `DataTrainingArguments`). Scripts subclass it to add their own data settings."""

    dataset: str = field(
        default="easy_vqa",
        metadata={
            "help": "'easy_vqa' (embedded) or a folder with images and metadata.jsonl/csv. Used when none of "
            "--dataset_name, --train_file, --train_shards is given."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A dataset for `datasets.load_dataset`: a Hub id, or a local dataset folder or script."},
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration of --dataset_name (its `name` in `load_dataset`)."}
    )
    train_file: str | None = field(
        default=None,
        metadata={"help": "CSV or JSON lines file of training rows; image paths are relative to the file."},
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "CSV or JSON lines file of evaluation rows; image paths are relative to the file."},
    )
    train_split: str = field(default="train", metadata={"help": "Split of the source used for training."})
    eval_split: str | None = field(
        default=None,
        metadata={"help": "Split used for evaluation (default: 'validation', else 'test', when the source has one)."},
    )
    image_column: str = field(default="image", metadata={"help": "Source column (or shard key) holding the image."})
    caption_column: str = field(
        default="caption", metadata={"help": "Source column (or shard key, or field of the shard's json) holding the caption."}
    )
    text_column: str | None = field(
        default=None, metadata={"help": "Alias of --caption_column (kept for older commands)."}
    )
    question_column: str = field(default="question", metadata={"help": "Source column holding the question."})
    answer_column: str = field(default="answer", metadata={"help": "Source column holding the answer."})
    label_column: str = field(default="label", metadata={"help": "Source column holding the class label."})
    video_column: str = field(default="video", metadata={"help": "Source column holding a video (file or frames)."})
    train_shards: str | None = field(
        default=None,
        metadata={
            "help": "WebDataset shards for training: brace patterns such as 'data/shard-{00000..00099}.tar', several "
            "joined with '::' or spaces. Streamed; needs --max_steps."
        },
    )
    eval_shards: str | None = field(default=None, metadata={"help": "WebDataset shards for evaluation."})
    streaming: bool = field(
        default=False, metadata={"help": "Stream --dataset_name instead of downloading and caching it (shards always stream)."}
    )
    shuffle_buffer_size: int = field(
        default=1000,
        metadata={"help": "Streaming: samples in the seeded in-shard shuffle buffer (shard order is shuffled per epoch)."},
    )
    skip_bad_samples: bool = field(
        default=False,
        metadata={"help": "Skip (name in the log and count) unreadable images and corrupt shards instead of stopping."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenising and screening map-style datasets (`num_proc`)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})
    data_cache_dir: str | None = field(default=None, metadata={"help": "`datasets` cache folder (HF cache by default)."})

    def __post_init__(self):
        if self.text_column is not None:
            self.caption_column = self.text_column
        if self.shuffle_buffer_size < 1:
            raise ValueError(f"--shuffle_buffer_size must be >= 1, got {self.shuffle_buffer_size}.")
        if self.preprocessing_num_workers is not None and self.preprocessing_num_workers < 1:
            raise ValueError(f"--preprocessing_num_workers must be >= 1, got {self.preprocessing_num_workers}.")
        for name in ("train_file", "validation_file"):
            path = getattr(self, name)
            if path is not None and os.path.splitext(path)[1].lower() not in (".csv", ".json", ".jsonl"):
                raise ValueError(f"--{name} must be a .csv, .json or .jsonl file, got {path!r}.")

    @property
    def source(self) -> str:
        """Which source the arguments select: 'shards', 'dataset_name', 'files', 'easy_vqa' or 'folder'."""
        if self.train_shards:
            return "shards"
        if self.dataset_name:
            return "easy_vqa" if self.dataset_name == "easy_vqa" else "dataset_name"
        if self.train_file:
            return "files"
        return "easy_vqa" if self.dataset == "easy_vqa" else "folder"

    def column_map(self) -> dict[str, str]:
        """Canonical column -> source column."""
        return {canonical: getattr(self, flag) for canonical, flag in CANONICAL_COLUMNS.items()}


# ---------------------------------------------------------------------------------------------------- columns


def rename_to_canonical(
    dataset: Dataset | IterableDataset,
    args: MMDataArguments,
    required: Sequence[str] = ("image", "caption"),
    source: str = "the dataset",
) -> Dataset | IterableDataset:
    """
    Renames the source's columns to the canonical ones. A canonical column in `required` whose source column is
    missing raises `ValueError` naming the flag, the column and the columns that exist; `image` is satisfied by a
    `video` column too.

    Args:
        dataset (`Dataset` or `IterableDataset`): The source rows.
        args ([`MMDataArguments`]): Column flags.
        required (`Sequence[str]`, *optional*, defaults to `("image", "caption")`): Canonical columns the task needs.
        source (`str`, *optional*): How to name the source in errors.
    """
    if dataset.column_names is None:
        return dataset  # a stream without declared features: a missing column is reported by the collator
    columns = list(dataset.column_names)
    mapping = args.column_map()
    renames = {}
    for canonical, column in mapping.items():
        if column in columns:
            if column != canonical:
                if canonical in columns and canonical not in mapping.values():
                    dataset = dataset.remove_columns(canonical)  # e.g. a stray `caption` next to --caption_column text
                renames[column] = canonical
        elif canonical in required and not (canonical == "image" and mapping["video"] in columns):
            # Name the flag the user gave: --text_column is the older spelling of --caption_column.
            flag = "text_column" if canonical == "caption" and args.text_column is not None else CANONICAL_COLUMNS[canonical]
            raise ValueError(f"--{flag} {column!r} is not a column of {source} (columns: {columns}).")
    return dataset.rename_columns(renames) if renames else dataset


# ---------------------------------------------------------------------------------------------------- loading


def _resolve_split(splits: Sequence[str], wanted: str | None, source: str) -> str | None:
    if wanted is not None:
        if wanted not in splits:
            raise ValueError(f"Split {wanted!r} is not in {source} (splits: {list(splits)}).")
        return wanted
    return next((s for s in ("validation", "test") if s in splits), None)


def _load_files(args: MMDataArguments) -> DatasetDict:
    """CSV / JSON lines files; relative image (and video) paths are resolved against each file's folder."""
    files = {"train": args.train_file, **({"validation": args.validation_file} if args.validation_file else {})}
    data = DatasetDict()
    for split, path in files.items():
        if not os.path.isfile(path):
            raise ValueError(f"--{'train' if split == 'train' else 'validation'}_file {path!r} does not exist.")
        builder = "csv" if path.lower().endswith(".csv") else "json"
        part = load_dataset(builder, data_files={split: path}, split=split, cache_dir=args.data_cache_dir)
        folder = os.path.dirname(os.path.abspath(path))
        for column in (args.image_column, args.video_column):
            if column not in part.column_names:
                continue
            resolved = []
            for row, value in enumerate(part[column]):
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{path}, row {row + 1}: `{column}` must be a file path, got {value!r}.")
                full = value if os.path.isabs(value) else os.path.join(folder, value)
                if not os.path.isfile(full) and not args.skip_bad_samples:
                    raise ValueError(
                        f"{path}, row {row + 1}: {column} file {full} does not exist (pass --skip_bad_samples to "
                        "skip and count such rows)."
                    )
                resolved.append(full)
            part = part.remove_columns(column).add_column(column, resolved)
        data[split] = part
    return data


def _load_source(args: MMDataArguments, bad_samples: BadSampleCounter | None) -> tuple[Any, str]:
    """The raw source as a `DatasetDict`-like mapping of splits, and its name for messages."""
    from .data import load_easy_vqa, load_image_folder

    source = args.source
    if source == "easy_vqa":
        return load_easy_vqa(view="images"), "easy_vqa"
    if source == "folder":
        data = {}
        # The folder's own per-split layout (train/, test/) when it has one; else all of it is `train`.
        for split in dict.fromkeys([args.train_split, *( [args.eval_split] if args.eval_split else [])]):
            try:
                data[split] = load_image_folder(
                    args.dataset,
                    split=split,
                    skip_bad_samples=args.skip_bad_samples,
                    bad_samples=bad_samples,
                    cache_dir=args.data_cache_dir,
                )
            except ValueError as err:
                if split == args.train_split or "Unknown split" not in str(err):
                    raise
        return data, args.dataset
    if source == "dataset_name":
        data = load_dataset(
            args.dataset_name,
            args.dataset_config_name,
            streaming=args.streaming,
            cache_dir=args.data_cache_dir,
        )
        return data, args.dataset_name
    return _load_files(args), args.train_file


def load_mm_datasets(
    args: MMDataArguments,
    required: Sequence[str] = ("image", "caption"),
    bad_samples: BadSampleCounter | None = None,
    seed: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    processor: MMProcessor | None = None,
    max_length: int = 32,
) -> tuple[Dataset | IterableDataset, Dataset | IterableDataset | None]:
    """
    Train and eval datasets in the canonical columns, from whichever source `args` selects (see the module
    docstring). Images stay undecoded here; `prepare_dataset` adds the decode step.

    Args:
        args ([`MMDataArguments`]): The data arguments.
        required (`Sequence[str]`, *optional*, defaults to `("image", "caption")`): Columns the task needs.
        bad_samples ([`BadSampleCounter`], *optional*): Counter for skipped samples and shards.
        seed (`int`, *optional*, defaults to 0): Seed of the streaming shard and sample shuffles.
        world_size (`int`, *optional*, defaults to 1): Processes that will read the shards (checked for fairness).
        num_workers (`int`, *optional*, defaults to 0): DataLoader workers per process (checked for fairness).
        processor ([`MMProcessor`], *optional*): With shards, decode and transform in the stream's `map` (rows come
            out with `pixel_values` and `input_ids`); raw rows without.
        max_length (`int`, *optional*, defaults to 32): Token budget of the stream's tokenisation.

    Returns:
        `(train, eval)`; `eval` is `None` when the source has no evaluation split.
    """
    if args.source == "shards":
        from .shards import ShardStream

        def stream(patterns: str, train: bool) -> IterableDataset:
            shards = ShardStream(
                patterns,
                args,
                seed=seed,
                world_size=world_size,
                num_workers=num_workers,
                shuffle=train,
                num_epochs=None if train else 1,
                required=required,
                bad_samples=bad_samples,
            )
            return shards.to_iterable_dataset(processor, max_length=max_length)

        train = stream(args.train_shards, train=True)
        evaluation = stream(args.eval_shards, train=False) if args.eval_shards else None
        if args.max_train_samples is not None:
            logger.warning("--max_train_samples is ignored for shards; use --max_steps.")
        return train, evaluation

    data, name = _load_source(args, bad_samples)
    splits = list(data.keys())
    if args.train_split not in splits:
        raise ValueError(f"Split {args.train_split!r} is not in {name} (splits: {splits}).")
    eval_split = _resolve_split([s for s in splits if s != args.train_split], args.eval_split, name)
    train = rename_to_canonical(data[args.train_split], args, required, source=f"{name} [{args.train_split}]")
    evaluation = None
    if eval_split is not None:
        evaluation = rename_to_canonical(data[eval_split], args, required, source=f"{name} [{eval_split}]")
    for split_name, part in (("train", train), ("eval", evaluation)):
        if part is None:
            continue
        limit = args.max_train_samples if split_name == "train" else args.max_eval_samples
        if limit is not None:
            part = part.take(limit) if isinstance(part, IterableDataset) else part.select(range(min(limit, len(part))))
        if isinstance(part, Dataset) and "image" in part.column_names:
            feature = part.features["image"]
            if isinstance(feature, Image) or (isinstance(feature, Value) and feature.dtype == "string"):
                # Keep images undecoded (paths become {"path", "bytes"}): our strict decoder is the only decode.
                part = part.cast_column("image", Image(decode=False))
        if split_name == "train":
            train = part
        else:
            evaluation = part
    return train, evaluation


# ---------------------------------------------------------------------------------------------------- one decode


def _image_where(value: Any, index: int | None) -> str:
    path = value.get("path") if isinstance(value, dict) else (value if isinstance(value, str) else None)
    return ", ".join(p for p in (f"row {index}" if index is not None else None, f"file '{path}'" if path else None) if p)


class RowTransform:
    """
    Decodes and transforms a batch of canonical rows into model-ready rows: `pixel_values` (a `(3, H, W)` float
    tensor per row, or `(T, 3, H, W)` for a video), `input_ids` (tokenised here unless the rows already carry them),
    and the row's other columns unchanged. The image processor's strict decoder runs exactly once per row.

    Used as `Dataset.set_transform(RowTransform(...))` (map-style) and inside the shard stream (streaming).

    Args:
        processor ([`MMProcessor`]): Image processor and tokenizer.
        text_column (`str`, *optional*, defaults to `"caption"`): Text tokenised into `input_ids` when absent.
        max_length (`int`, *optional*, defaults to 32): Token budget.
        keep_raw (`bool`, *optional*, defaults to `False`): Keep the undecoded `image` / `video` value in the rows.
    """

    def __init__(self, processor: MMProcessor, text_column: str = "caption", max_length: int = 32, keep_raw: bool = False):
        self.processor = processor
        self.text_column = text_column
        self.max_length = max_length
        self.keep_raw = keep_raw

    def pixel_values(self, values: list[Any], is_video: bool, first_index: int = 0) -> list[torch.Tensor]:
        """Decode (once each) and preprocess a list of images or videos; errors name the row and file."""
        image_processor = self.processor.image_processor
        try:
            if is_video:
                # The processor's own video processor: its frame count, size and sampling, as the collator uses.
                video_processor = self.processor.video_processor
                loaded = [video_processor.load_video(v, first_index + i) for i, v in enumerate(values)]
                pixels = video_processor(videos=loaded, input_data_format="channels_first")["pixel_values_videos"]
            else:
                loaded = [image_processor.load_image(v, first_index + i) for i, v in enumerate(values)]
                pixels = image_processor(images=loaded, input_data_format="channels_first")["pixel_values"]
        except MMImageError as err:
            # `set_transform` sees one access at a time, not the dataset row number: name the file.
            where = _image_where(values[err.index - first_index] if err.index is not None else None, None)
            raise MMImageError(
                f"Bad sample ({where or 'input'}): {err} Pass --skip_bad_samples (skip_bad_samples=True) to skip and "
                "count such samples.",
                err.index,
                err.path,
            ) from err
        return list(pixels.unbind(0))

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        encoding = self.processor.tokenizer(
            texts, truncation=True, max_length=self.max_length, return_token_type_ids=False, return_attention_mask=False
        )
        return encoding["input_ids"]

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        is_video = batch.get("image") is None and batch.get("video") is not None
        column = "video" if is_video else "image"
        out = {k: v for k, v in batch.items() if self.keep_raw or k not in ("image", "video")}
        out["pixel_values"] = self.pixel_values(list(batch[column]), is_video)
        if "input_ids" not in batch and self.text_column in batch:
            out["input_ids"] = self.tokenize(list(batch[self.text_column]))
        return out


def tokenize_dataset(
    dataset: Dataset, processor: MMProcessor, text_column: str = "caption", max_length: int = 32,
    num_proc: int | None = None,
) -> Dataset:
    """`input_ids` for every row, tokenised once in `Dataset.map` (cached on disk by `datasets`, `num_proc`
    processes, with a progress bar)."""
    if text_column not in dataset.column_names:
        raise ValueError(f"Text column {text_column!r} is not a column (columns: {dataset.column_names}).")
    transform = RowTransform(processor, text_column, max_length)
    return dataset.map(
        lambda texts: {"input_ids": transform.tokenize(list(texts))},
        input_columns=[text_column],
        batched=True,
        num_proc=num_proc,
        desc="Tokenising",
    )


def _screen_batch(values: list[Any], indices: list[int], column: str, processor: MMProcessor) -> dict[str, list]:
    reasons = []
    for value, index in zip(values, indices):
        try:
            if column == "video":
                processor.video_processor.load_video(value, index)
            else:
                processor.image_processor.load_image(value, index)
            reasons.append(None)
        except MMImageError as err:
            reasons.append(f"{_image_where(value, index)}: {err}")
    return {"bad_sample_reason": reasons}


def screen_bad_samples(
    dataset: Dataset, processor: MMProcessor, bad_samples: BadSampleCounter, num_proc: int | None = None,
) -> Dataset:
    """
    Screens every image (or video) of a map-style dataset once with the strict decoder and removes the bad rows with
    `Dataset.filter(num_proc=...)`, each named and counted in `bad_samples` (the count then reaches the run summary
    even though the screening ran in other processes). `datasets` caches the result, so a rerun does not decode again.
    """
    column = "video" if "image" not in dataset.column_names and "video" in dataset.column_names else "image"
    screened = dataset.map(
        _screen_batch,
        input_columns=[column],
        with_indices=True,
        batched=True,
        num_proc=num_proc,
        fn_kwargs={"column": column, "processor": processor},
        desc="Screening images",
    )
    reasons = screened["bad_sample_reason"]
    for reason in reasons:
        if reason is not None:
            where, _, error = reason.partition(": ")
            bad_samples.add(where, MMImageError(error))
    if not any(r is not None for r in reasons):
        return dataset
    kept = screened.filter(lambda r: r is None, input_columns=["bad_sample_reason"], num_proc=num_proc, desc="Dropping bad samples")
    return kept.remove_columns("bad_sample_reason")


def prepare_dataset(
    dataset: Dataset | IterableDataset,
    processor: MMProcessor,
    text_column: str = "caption",
    max_length: int = 32,
    skip_bad_samples: bool = False,
    bad_samples: BadSampleCounter | None = None,
    num_proc: int | None = None,
) -> Dataset | IterableDataset:
    """
    The run_clip data path for a canonical map-style dataset: screen once (with `skip_bad_samples`), tokenise in a
    cached `map`, decode + transform on access with `set_transform`. Rows then reach the collator as `pixel_values`
    and `input_ids` (plus the other columns, e.g. `caption` and `image_id`). A shard stream (`IterableDataset` from
    `processing.shards`) is returned unchanged: it already decodes in its streaming map.

    Args:
        dataset (`Dataset` or `IterableDataset`): Canonical rows with undecoded images.
        processor ([`MMProcessor`]): Image processor and tokenizer.
        text_column (`str`, *optional*, defaults to `"caption"`): The text to tokenise.
        max_length (`int`, *optional*, defaults to 32): Token budget.
        skip_bad_samples (`bool`, *optional*, defaults to `False`): Screen and drop bad samples (named and counted).
        bad_samples ([`BadSampleCounter`], *optional*): Counter for them.
        num_proc (`int`, *optional*): Processes for screening and tokenising.
    """
    if isinstance(dataset, IterableDataset):
        if getattr(dataset, "_mm_decodes", False):
            return dataset
        transform = RowTransform(processor, text_column, max_length)
        return dataset.map(transform, batched=True, batch_size=16)
    bad_samples = bad_samples if bad_samples is not None else BadSampleCounter()
    if skip_bad_samples:
        dataset = screen_bad_samples(dataset, processor, bad_samples, num_proc=num_proc)
    dataset = tokenize_dataset(dataset, processor, text_column, max_length, num_proc=num_proc)
    dataset.set_transform(RowTransform(processor, text_column, max_length))
    return dataset


def add_stream_group_ids(dataset: IterableDataset, column: str) -> IterableDataset:
    """`image_id` = a stable hash of `column` for every streamed row, so rows with equal values (e.g. identical
    captions) are never ITM negatives of each other; the streaming counterpart of numbering the distinct values."""
    from .collators import _stable_id

    def group(value: Any) -> dict[str, int]:
        if value is None:
            raise ValueError(f"A streamed row has no {column!r} to group by (--group_column).")
        return {"image_id": _stable_id(f"group|{value}")}

    grouped = dataset.map(group, input_columns=[column])
    for marker in ("_mm_decodes", "_mm_stream"):  # still the same (decoding) shard stream
        if hasattr(dataset, marker):
            setattr(grouped, marker, getattr(dataset, marker))
    return grouped
