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
"""Data collators turning raw dataset rows into model batches, one per training objective.

They take the raw columns (`image` or `video`, text, labels, `image_id`), so `Trainer` must run with
`remove_unused_columns=False`. Images are decoded row by row, which is where a corrupt sample is either raised with
its row and file named, or (with `skip_bad_samples=True`) dropped from the batch, logged and counted in a
`BadSampleCounter`.

Rows may also arrive already transformed (`processing.sources.prepare_dataset`, `processing.shards.ShardStream`):
`pixel_values` (one `(3, H, W)` or `(T, 3, H, W)` tensor per row) and `input_ids` (token ids, unpadded). The
collators then only stack, pad and mask. Such rows may carry `skipped_bad_samples`, the bad samples the stream
skipped just before them, which are added to the collator's `BadSampleCounter` (so counts made in DataLoader workers
reach the main process).

Every collator returns a dict of tensors whose keys are the model's argument names:

- `DataCollatorForMMPretraining`: pixel_values, input_ids, attention_mask, mlm_input_ids, mlm_labels, image_ids
  (+ image_keep_indices when image_mask_ratio > 0)
- `DataCollatorForVQA`: pixel_values, input_ids, attention_mask, labels
- `DataCollatorForCaptioning`: pixel_values, input_ids, attention_mask, labels
- `DataCollatorForImageTextClassification`: pixel_values, input_ids, attention_mask, labels
- `DataCollatorForRetrieval`: pixel_values, input_ids, attention_mask, image_ids

`pixel_values` is `(B, 3, H, W)` for images; rows that carry a `video` instead of an `image` give
`pixel_values_videos` `(B, T, 3, H, W)` in its place (the video processor's output name, which the heads take).
"""

import hashlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.utils import logging

from .image_processing_mm import MMImageError
from .processing_mm import MMProcessor


__all__ = [
    "BadSampleCounter",
    "DataCollatorForCaptioning",
    "DataCollatorForImageTextClassification",
    "DataCollatorForMMPretraining",
    "DataCollatorForRetrieval",
    "DataCollatorForVQA",
]

logger = logging.get_logger(__name__)


class BadSampleCounter:
    """
    Counts samples skipped because their image or video could not be decoded, so nothing is dropped silently.

    Each skip is logged as a warning when it happens; `report()` summarises them (run scripts print it at the end).
    With `dataloader_num_workers > 0` collators run in worker processes, whose counts stay there: the warnings are
    still logged, but read the totals from a run with `dataloader_num_workers=0`.

    Args:
        name (`str`, *optional*, defaults to `"bad samples"`):
            Label used in the report.
        max_listed (`int`, *optional*, defaults to 20):
            How many skipped samples `report()` lists individually.
    """

    def __init__(self, name: str = "bad samples", max_listed: int = 20):
        self.name = name
        self.max_listed = max_listed
        self.count = 0
        self.samples: list[str] = []

    def add(self, where: str, error: BaseException) -> None:
        """Record one skipped sample described by `where` (row / index and file) and the error that caused it."""
        self.count += 1
        if len(self.samples) < self.max_listed:
            self.samples.append(f"{where}: {error}")
        logger.warning(f"Skipping bad sample ({where}): {error}")

    def report(self) -> str:
        """One-paragraph summary: how many samples were skipped, and the first `max_listed` of them."""
        if self.count == 0:
            return f"{self.name}: none skipped."
        lines = [f"{self.name}: skipped {self.count} sample(s)."]
        lines += [f"  - {sample}" for sample in self.samples]
        if self.count > len(self.samples):
            lines.append(f"  ... and {self.count - len(self.samples)} more (see the warnings in the log).")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"BadSampleCounter(name={self.name!r}, count={self.count})"


def _stable_id(key: str) -> int:
    # Python's hash() is salted per process; image ids must agree across DataLoader workers and runs.
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little") >> 1


class _MMDataCollatorBase:
    """Shared row handling: column access with clear errors, per-row image/video decoding, processor call."""

    def __init__(
        self,
        processor: MMProcessor,
        max_length: int = 32,
        skip_bad_samples: bool = False,
        bad_samples: BadSampleCounter | None = None,
    ):
        if max_length < 2:
            raise ValueError(f"`max_length` must be >= 2 ([CLS] and [SEP]), got {max_length}.")
        self.processor = processor
        self.max_length = max_length
        self.skip_bad_samples = skip_bad_samples
        self.bad_samples = bad_samples if bad_samples is not None else BadSampleCounter()

    @staticmethod
    def _column(row: Mapping[str, Any], column: str, index: int) -> Any:
        if not isinstance(row, Mapping):
            raise ValueError(f"Row {index} of the batch is a {type(row).__name__}, expected a dict of columns.")
        if column not in row or row[column] is None:
            raise ValueError(
                f"Row {index} of the batch has no '{column}' column (it has {sorted(row)}). The collators work on raw "
                "dataset rows: with Trainer, set `remove_unused_columns=False` so the raw columns reach the collator."
            )
        return row[column]

    @classmethod
    def _texts(cls, rows: Sequence[Mapping[str, Any]], column: str, indices: Sequence[int]) -> list[str]:
        texts = []
        for i in indices:
            text = cls._column(rows[i], column, i)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"Row {i} of the batch has an empty or non-string '{column}': {text!r}.")
            texts.append(text)
        return texts

    def _load_visuals(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list[Any], list[int], bool]:
        """Decode each row's `image` (or `video`); returns the decoded items, the kept row indices and `is_video`."""
        if len(rows) == 0:
            raise ValueError("Got an empty batch of rows.")
        image_processor, video_processor = self.processor.image_processor, self.processor.video_processor
        visuals, kept, kinds = [], [], set()
        for i, row in enumerate(rows):
            if isinstance(row, Mapping):
                for skipped in row.get("skipped_bad_samples") or ():
                    where, _, error = skipped.partition(": ")
                    self.bad_samples.add(where, MMImageError(error))
            if isinstance(row, Mapping) and row.get("pixel_values") is not None:
                # Already decoded and transformed upstream (decode once): nothing to do but stack.
                value = row["pixel_values"]
                value = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
                kinds.add(value.ndim == 4)
                visuals.append(value)
                kept.append(i)
                continue
            is_video = isinstance(row, Mapping) and row.get("image") is None and row.get("video") is not None
            kinds.add(is_video)
            value = self._column(row, "video" if is_video else "image", i)
            try:
                visual = video_processor.load_video(value, i) if is_video else image_processor.load_image(value, i)
            except MMImageError as err:
                where = f"row {i} of the batch" + (f", file '{err.path}'" if err.path else "")
                if not self.skip_bad_samples:
                    raise MMImageError(
                        f"Bad sample ({where}): {err} Pass skip_bad_samples=True to skip and count such samples, or "
                        "screen the dataset first with `processing.data.check_images`.",
                        i,
                        err.path,
                    ) from err
                self.bad_samples.add(where, err)
                continue
            visuals.append(visual)
            kept.append(i)
        if len(kinds) > 1:
            raise ValueError("A batch mixes rows with `image` and rows with `video`; batch them separately.")
        if not kept:
            raise MMImageError(
                f"All {len(rows)} samples of this batch were bad and skipped; screen the dataset with "
                "`processing.data.check_images` before training."
            )
        return visuals, kept, kinds.pop()

    def _encode(
        self, visuals: list[Any], texts: list[str], is_video: bool, rows: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, torch.Tensor]:
        """`rows` (the kept rows) lets already-transformed rows be stacked instead of processed."""
        if rows and all(row.get("pixel_values") is not None for row in rows):
            return self._stack(visuals, texts, rows)
        # `load_image`/`load_video` already returned channels-first RGB tensors.
        visual_kwargs = {"videos": visuals} if is_video else {"images": visuals}
        encoding = self.processor(
            text=texts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            input_data_format="channels_first",
            **visual_kwargs,
        )
        return dict(encoding)

    def _stack(
        self, visuals: list[torch.Tensor], texts: list[str], rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """Stack transformed `pixel_values`; pad the rows' `input_ids` (tokenise `texts` if the rows have none)."""
        shapes = {tuple(v.shape) for v in visuals}
        if len(shapes) > 1:
            raise ValueError(f"Rows of the batch have `pixel_values` of different shapes {sorted(shapes)}.")
        if all(row.get("input_ids") is not None for row in rows):
            ids = [list(row["input_ids"])[: self.max_length] for row in rows]
        else:
            ids = self.processor.tokenizer(
                texts, truncation=True, max_length=self.max_length, return_token_type_ids=False
            )["input_ids"]
        pad_id = self.processor.tokenizer.pad_token_id
        length = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)  # (B, L)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
            attention_mask[i, : len(x)] = 1
        pixel_values = torch.stack([v.to(torch.float32) for v in visuals])  # (B, 3, H, W) or (B, T, 3, H, W)
        key = "pixel_values_videos" if pixel_values.ndim == 5 else "pixel_values"
        return {"input_ids": input_ids, "attention_mask": attention_mask, key: pixel_values}

    @staticmethod
    def _image_ids(rows: Sequence[Mapping[str, Any]], is_video: bool) -> torch.Tensor:
        """`image_id` column when present, else a stable hash of the file path, else a per-row unique negative id."""
        ids = []
        for i, row in enumerate(rows):
            if row.get("image_id") is not None:
                ids.append(int(row["image_id"]))
                continue
            if row.get("__key__") is not None:  # a shard sample: its WebDataset key names it uniquely
                ids.append(_stable_id(f"{os.path.basename(row.get('__url__') or '')}/{row['__key__']}"))
                continue
            value = row.get("video" if is_video else "image")
            path = value.get("path") if isinstance(value, Mapping) else value
            path = path if isinstance(path, (str, os.PathLike)) else getattr(value, "filename", None)
            ids.append(_stable_id(os.fspath(path)) if path else -1 - i)
        return torch.tensor(ids, dtype=torch.long)


class DataCollatorForMMPretraining(_MMDataCollatorBase):
    r"""
    Batches image-text pairs for pretraining (contrastive + ITM + MLM, optionally FLIP-style image masking).

    BERT masking (Devlin et al., 2019): `mlm_probability` of the maskable tokens are selected; of those 80% become
    [MASK], 10% a random non-special token and 10% stay unchanged. [CLS], [SEP], [PAD] (all special tokens) and
    padding are never selected.

    Returns `pixel_values`, `input_ids` (clean text), `attention_mask`, `mlm_input_ids` (masked copy), `mlm_labels`
    (-100 except at selected positions, which hold the original id), `image_ids` (`(B,)`; pairs sharing an id are
    never used as ITM negatives) and, when `image_mask_ratio > 0`, `image_keep_indices` `(B, K)`: a sorted random
    subset of `K = round(num_patches * (1 - image_mask_ratio))` patch indices per sample (FLIP, Li et al., 2023).

    Args:
        processor ([`MMProcessor`]):
            Processor for images and text.
        mlm_probability (`float`, *optional*, defaults to 0.15):
            Fraction of maskable tokens selected for MLM.
        max_length (`int`, *optional*, defaults to 32):
            Texts are truncated to this many tokens and padded to the longest in the batch.
        image_mask_ratio (`float`, *optional*, defaults to 0.0):
            Fraction of image patches dropped (FLIP). Needs `num_patches`.
        num_patches (`int`, *optional*):
            Number of patches per image (e.g. `(image_size // patch_size) ** 2`).
        skip_bad_samples (`bool`, *optional*, defaults to `False`):
            Skip rows whose image cannot be decoded (logged and counted in `bad_samples`) instead of raising.
        text_column (`str`, *optional*, defaults to `"caption"`):
            Column holding the text.
        seed (`int`, *optional*):
            Draws each batch's masks from a private `torch.Generator` seeded with `seed` and the batch's rows (image
            ids and texts): masks then depend on the batch alone, so they are the same in every DataLoader worker
            and when a run resumed mid-epoch collates the batches after its checkpoint again (Trainer restores its
            RNG state only after the DataLoader has built those batches). Without it the global torch RNG is used,
            and a run resumed mid-epoch draws different masks from the uninterrupted run.
        bad_samples ([`BadSampleCounter`], *optional*):
            Counter to record skipped samples in (shared with e.g. `check_images`); a new one by default.
    """

    def __init__(
        self,
        processor: MMProcessor,
        mlm_probability: float = 0.15,
        max_length: int = 32,
        image_mask_ratio: float = 0.0,
        num_patches: int | None = None,
        skip_bad_samples: bool = False,
        text_column: str = "caption",
        seed: int | None = None,
        bad_samples: BadSampleCounter | None = None,
    ):
        super().__init__(processor, max_length, skip_bad_samples, bad_samples)
        if not 0.0 <= mlm_probability < 1.0:
            raise ValueError(f"`mlm_probability` must be in [0, 1), got {mlm_probability}.")
        if not 0.0 <= image_mask_ratio < 1.0:
            raise ValueError(f"`image_mask_ratio` must be in [0, 1), got {image_mask_ratio}.")
        if image_mask_ratio > 0 and (num_patches is None or num_patches < 1):
            raise ValueError("`image_mask_ratio > 0` needs `num_patches` (patches per image) to draw the kept subset.")
        tokenizer = processor.tokenizer
        if tokenizer.mask_token_id is None:
            raise ValueError("The tokenizer has no [MASK] token, which MLM needs.")
        self.mlm_probability = mlm_probability
        self.image_mask_ratio = image_mask_ratio
        self.num_patches = num_patches
        self.text_column = text_column
        self.seed = seed
        self._special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        vocab = torch.arange(len(tokenizer), dtype=torch.long)
        # Random replacements are drawn from ordinary tokens only: a random [SEP] or [PAD] would change the structure.
        self._random_ids = vocab[~torch.isin(vocab, self._special_ids)]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        visuals, kept, is_video = self._load_visuals(rows)
        texts = self._texts(rows, self.text_column, kept)
        rows = [rows[i] for i in kept]
        batch = self._encode(visuals, texts, is_video, rows)
        batch["image_ids"] = self._image_ids(rows, is_video)
        generator = self._batch_generator(batch["image_ids"], texts)
        batch["mlm_input_ids"], batch["mlm_labels"] = self.mask_tokens(
            batch["input_ids"], batch["attention_mask"], generator
        )
        if self.image_mask_ratio > 0:
            batch["image_keep_indices"] = self.sample_kept_patches(len(rows), generator)
        return batch

    def _batch_generator(self, image_ids: torch.Tensor, texts: list[str]) -> torch.Generator | None:
        """With `seed`, a generator seeded from the seed and the batch's rows; `None` (global RNG) without."""
        if self.seed is None:
            return None
        return torch.Generator().manual_seed(_stable_id(f"{self.seed}|{image_ids.tolist()}|{texts}"))

    def mask_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        BERT masking of a `(B, L)` batch; returns `(mlm_input_ids, mlm_labels)`.

        Args:
            input_ids (`torch.Tensor`): `(B, L)` token ids.
            attention_mask (`torch.Tensor`): `(B, L)`, 0 on padding.
            generator (`torch.Generator`, *optional*): Source of randomness; the global torch RNG when `None`.
        """
        maskable = ~torch.isin(input_ids, self._special_ids) & attention_mask.bool()
        shape = input_ids.shape
        selected = torch.bernoulli(torch.full(shape, self.mlm_probability), generator=generator).bool()
        selected &= maskable
        if self.mlm_probability > 0 and not selected.any() and maskable.any():
            # A batch of very short texts can come out with nothing selected, which makes the MLM loss NaN (mean over
            # zero targets); select one maskable token instead.
            candidates = maskable.flatten().nonzero().squeeze(1)
            pick = candidates[torch.randint(len(candidates), (1,), generator=generator)]
            selected.view(-1)[pick] = True
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))

        to_mask = torch.bernoulli(torch.full(shape, 0.8), generator=generator).bool() & selected
        # Half of the remaining 20% -> 10% random, 10% unchanged.
        to_random = torch.bernoulli(torch.full(shape, 0.5), generator=generator).bool() & selected & ~to_mask
        masked_ids = input_ids.clone()
        masked_ids[to_mask] = self.processor.tokenizer.mask_token_id
        random_ids = self._random_ids[torch.randint(len(self._random_ids), shape, generator=generator)]
        masked_ids[to_random] = random_ids[to_random]
        return masked_ids, labels

    def sample_kept_patches(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`(B, K)` sorted random patch indices kept per sample (FLIP)."""
        num_keep = max(1, round(self.num_patches * (1.0 - self.image_mask_ratio)))
        noise = torch.rand(batch_size, self.num_patches, generator=generator)
        return noise.argsort(dim=1)[:, :num_keep].sort(dim=1).values


class DataCollatorForVQA(_MMDataCollatorBase):
    r"""
    Batches (image, question, answer) rows for VQA as classification over a fixed answer vocabulary.

    Returns `pixel_values`, `input_ids`, `attention_mask` and `labels`: class ids `(B,)` (LongTensor) from the
    `answer` column, or with `soft_scores=True` VQAv2 soft targets `(B, num_labels)` (FloatTensor) from the `answers`
    column (all annotators' answers): `score = min(1, count / 3)` (Antol et al., 2015; Teney et al., 2018).

    Args:
        processor ([`MMProcessor`]):
            Processor for images and text.
        label2id (`dict[str, int]`):
            Answer vocabulary; ids must be `0..len(label2id) - 1`. An answer outside it raises, naming the row.
        max_length (`int`, *optional*, defaults to 32):
            Question token budget.
        soft_scores (`bool`, *optional*, defaults to `False`):
            Use the `answers` list for soft targets instead of the single `answer`.
        skip_bad_samples (`bool`, *optional*, defaults to `False`):
            Skip rows whose image cannot be decoded (logged and counted) instead of raising.
        question_column (`str`, *optional*, defaults to `"question"`):
            Column holding the question.
        bad_samples ([`BadSampleCounter`], *optional*):
            Counter for skipped samples.
    """

    def __init__(
        self,
        processor: MMProcessor,
        label2id: Mapping[str, int],
        max_length: int = 32,
        soft_scores: bool = False,
        skip_bad_samples: bool = False,
        question_column: str = "question",
        bad_samples: BadSampleCounter | None = None,
    ):
        super().__init__(processor, max_length, skip_bad_samples, bad_samples)
        if sorted(label2id.values()) != list(range(len(label2id))):
            raise ValueError("`label2id` ids must be exactly 0..len(label2id) - 1.")
        self.label2id = dict(label2id)
        self.soft_scores = soft_scores
        self.question_column = question_column

    def _label(self, answer: Any, index: int) -> int:
        if answer not in self.label2id:
            raise ValueError(
                f"Row {index} of the batch has answer {answer!r}, which is not in label2id ({len(self.label2id)} "
                "answers). Filter the dataset to the answer vocabulary first."
            )
        return self.label2id[answer]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        visuals, kept, is_video = self._load_visuals(rows)
        texts = self._texts(rows, self.question_column, kept)
        rows = [rows[i] for i in kept]
        if self.soft_scores:
            labels = torch.zeros(len(rows), len(self.label2id), dtype=torch.float32)
            for i, row in enumerate(rows):
                answers = self._column(row, "answers", kept[i])
                for answer, count in Counter(answers).items():
                    labels[i, self._label(answer, kept[i])] = min(1.0, count / 3.0)
        else:
            labels = torch.tensor(
                [self._label(self._column(row, "answer", kept[i]), kept[i]) for i, row in enumerate(rows)],
                dtype=torch.long,
            )
        batch = self._encode(visuals, texts, is_video, rows)
        batch["labels"] = labels
        return batch


class DataCollatorForCaptioning(_MMDataCollatorBase):
    r"""
    Batches image-caption pairs for captioning (teacher forcing).

    Returns `pixel_values`, `input_ids` (`[CLS] caption [SEP]`, padded), `attention_mask` and `labels`: `input_ids`
    with padding set to -100. Labels are *not* shifted: the model shifts them internally, like transformers causal LMs.

    Args:
        processor ([`MMProcessor`]):
            Processor for images and text.
        max_length (`int`, *optional*, defaults to 32):
            Caption token budget.
        text_column (`str`, *optional*, defaults to `"caption"`):
            Column holding the caption.
        skip_bad_samples (`bool`, *optional*, defaults to `False`):
            Skip rows whose image cannot be decoded (logged and counted) instead of raising.
        bad_samples ([`BadSampleCounter`], *optional*):
            Counter for skipped samples.
    """

    def __init__(
        self,
        processor: MMProcessor,
        max_length: int = 32,
        text_column: str = "caption",
        skip_bad_samples: bool = False,
        bad_samples: BadSampleCounter | None = None,
    ):
        super().__init__(processor, max_length, skip_bad_samples, bad_samples)
        self.text_column = text_column

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        visuals, kept, is_video = self._load_visuals(rows)
        texts = self._texts(rows, self.text_column, kept)
        batch = self._encode(visuals, texts, is_video, [rows[i] for i in kept])
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch


class DataCollatorForImageTextClassification(_MMDataCollatorBase):
    r"""
    Batches (image, text, label) rows for image-text classification (e.g. NLVR-style or meme classification).

    Returns `pixel_values`, `input_ids`, `attention_mask` and `labels`: class ids `(B,)` (LongTensor), or with
    `multi_label=True` multi-hot `(B, num_labels)` (FloatTensor) from a list of labels per row.

    Args:
        processor ([`MMProcessor`]):
            Processor for images and text.
        label2id (`dict[str, int]`, *optional*):
            Maps string labels to ids; required for string labels and for `multi_label`. Int labels are used as ids
            (checked against `len(label2id)` when given).
        max_length (`int`, *optional*, defaults to 32):
            Text token budget.
        multi_label (`bool`, *optional*, defaults to `False`):
            Each row's label is a list; labels become multi-hot floats.
        text_column (`str`, *optional*, defaults to `"text"`):
            Column holding the text.
        label_column (`str`, *optional*, defaults to `"label"`):
            Column holding the label(s).
        skip_bad_samples (`bool`, *optional*, defaults to `False`):
            Skip rows whose image cannot be decoded (logged and counted) instead of raising.
        bad_samples ([`BadSampleCounter`], *optional*):
            Counter for skipped samples.
    """

    def __init__(
        self,
        processor: MMProcessor,
        label2id: Mapping[str, int] | None = None,
        max_length: int = 32,
        multi_label: bool = False,
        text_column: str = "text",
        label_column: str = "label",
        skip_bad_samples: bool = False,
        bad_samples: BadSampleCounter | None = None,
    ):
        super().__init__(processor, max_length, skip_bad_samples, bad_samples)
        if multi_label and label2id is None:
            raise ValueError("`multi_label=True` needs `label2id` to know the number of labels.")
        if label2id is not None and sorted(label2id.values()) != list(range(len(label2id))):
            raise ValueError("`label2id` ids must be exactly 0..len(label2id) - 1.")
        self.label2id = dict(label2id) if label2id is not None else None
        self.multi_label = multi_label
        self.text_column = text_column
        self.label_column = label_column

    def _label_id(self, label: Any, index: int) -> int:
        if not isinstance(label, str) and not hasattr(label, "__index__"):
            raise ValueError(f"Row {index} of the batch has label {label!r}; expected an int or a string.")
        if isinstance(label, str):
            if self.label2id is None or label not in self.label2id:
                raise ValueError(
                    f"Row {index} of the batch has label {label!r}, which is not in label2id "
                    f"({'none given' if self.label2id is None else sorted(self.label2id)})."
                )
            return self.label2id[label]
        label = int(label)
        num_labels = len(self.label2id) if self.label2id is not None else None
        if label < 0 or (num_labels is not None and label >= num_labels):
            raise ValueError(f"Row {index} of the batch has label id {label}, outside 0..{(num_labels or 0) - 1}.")
        return label

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        visuals, kept, is_video = self._load_visuals(rows)
        texts = self._texts(rows, self.text_column, kept)
        raw_labels = [self._column(rows[i], self.label_column, i) for i in kept]
        if self.multi_label:
            labels = torch.zeros(len(kept), len(self.label2id), dtype=torch.float32)
            for row, (i, row_labels) in enumerate(zip(kept, raw_labels)):
                if isinstance(row_labels, (str, int)):
                    raise ValueError(f"Row {i} of the batch has label {row_labels!r}; multi_label expects a list.")
                for label in row_labels:
                    labels[row, self._label_id(label, i)] = 1.0
        else:
            labels = torch.tensor([self._label_id(label, i) for i, label in zip(kept, raw_labels)], dtype=torch.long)
        batch = self._encode(visuals, texts, is_video, [rows[i] for i in kept])
        batch["labels"] = labels
        return batch


class DataCollatorForRetrieval(_MMDataCollatorBase):
    r"""
    Batches image-text pairs for retrieval training/evaluation.

    Returns `pixel_values`, `input_ids`, `attention_mask` and `image_ids` (`(B,)`, so several captions of one image
    count as positives of each other).

    Args:
        processor ([`MMProcessor`]):
            Processor for images and text.
        max_length (`int`, *optional*, defaults to 32):
            Text token budget.
        text_column (`str`, *optional*, defaults to `"caption"`):
            Column holding the text.
        skip_bad_samples (`bool`, *optional*, defaults to `False`):
            Skip rows whose image cannot be decoded (logged and counted) instead of raising.
        bad_samples ([`BadSampleCounter`], *optional*):
            Counter for skipped samples.
    """

    def __init__(
        self,
        processor: MMProcessor,
        max_length: int = 32,
        text_column: str = "caption",
        skip_bad_samples: bool = False,
        bad_samples: BadSampleCounter | None = None,
    ):
        super().__init__(processor, max_length, skip_bad_samples, bad_samples)
        self.text_column = text_column

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        visuals, kept, is_video = self._load_visuals(rows)
        texts = self._texts(rows, self.text_column, kept)
        rows = [rows[i] for i in kept]
        batch = self._encode(visuals, texts, is_video, rows)
        batch["image_ids"] = self._image_ids(rows, is_video)
        return batch
