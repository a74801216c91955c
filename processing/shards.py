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
"""WebDataset shards: writing them (`write_shards`) and streaming them exactly once per epoch (`ShardStream`).

A shard is a tar of samples, each a group of files sharing a key (`000123.jpg`, `000123.txt`, `000123.json`); the
img2dataset keys `jpg`/`png`/`webp`, `txt`, `json`, `cls` and `mp4` map onto the canonical columns `image`,
`caption`, (fields of `json`), `label` and `video`, and the `--*_column` flags can name other keys or `json` fields.
Samples are grouped and their `txt`/`json`/`cls` files decoded by `datasets`' own `webdataset` builder code.

Streaming is exact and resumable by construction rather than by saved state:

- Epoch `e` orders the shards by a permutation seeded with `(seed, e)`; every process computes the same one.
- The shards are dealt to `processes x workers` streams (stream `j` reads slots `j, j + S, ...` of the epoch's
  order). The dataset is a `datasets.IterableDataset` with one data source per stream: `split_dataset_by_node` (or
  accelerate under `Trainer`, which splits a `datasets.IterableDataset` by its data sources when
  `dispatch_batches=False`) hands each process its streams, and `datasets` each DataLoader worker its own. Fewer
  shards than streams, or a count they do not divide, raises instead of reading everything everywhere.
- Inside a stream, samples pass a shuffle buffer seeded with `(seed, e, slots)`: the same run of the stream always
  yields the same samples in the same order.
- Every stream yields the same number of samples per epoch, `samples_per_stream` (the sum of its share of the
  smallest shards); what uneven shards leave over is dropped and reported (logged and in `drop_report`).
- The stream repeats epochs forever (train with `max_steps`), so `Trainer`'s resume, which replays and discards the
  batches already trained on, lands exactly on the next unseen sample: no sample is lost or repeated. (The shuffle
  buffer needs no saved state: replaying from the epoch start refills it identically.)

Images are decoded once, in the stream's `map` (`RowTransform`): rows reach the collator as `pixel_values` and
`input_ids`. A corrupt sample or a truncated shard raises naming the shard and key; with `skip_bad_samples` it is
skipped, and its name travels with the next row to the collator's `BadSampleCounter` (so counts made in DataLoader
workers reach the run summary).
"""

import io
import itertools
import json
import os
import random
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
from datasets import Dataset, IterableDataset
from datasets.iterable_dataset import ExamplesIterable
from datasets.distributed import split_dataset_by_node
from transformers.utils import logging

from .collators import BadSampleCounter
from .image_processing_mm import MMImageError, MMImageProcessor
from .processing_mm import MMProcessor


__all__ = [
    "IMAGE_KEYS",
    "ShardError",
    "ShardStream",
    "expand_shard_patterns",
    "iter_shard_samples",
    "read_shard_sizes",
    "split_for_rank",
    "write_shards",
]

logger = logging.get_logger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
VIDEO_KEYS = ("mp4", "webm", "avi")
SIZES_FILE = "sizes.json"


class ShardError(ValueError):
    """A shard that cannot be read (missing, not a tar, truncated); the message names it."""


# ---------------------------------------------------------------------------------------------------- patterns

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_ALTERNATIVES = re.compile(r"\{([^{}]*,[^{}]*)\}")


def _expand_braces(pattern: str) -> list[str]:
    """`shard-{000..002}.tar` -> 3 names (zero padding kept); `{a,b}` alternatives; nested and repeated braces."""
    match = _RANGE.search(pattern)
    if match:
        start, end = match.group(1), match.group(2)
        width = len(start) if start.startswith("0") or len(start) == len(end) else 0
        if int(end) < int(start):
            raise ValueError(f"Shard pattern {pattern!r}: range {{{start}..{end}}} runs backwards.")
        head, tail = pattern[: match.start()], pattern[match.end() :]
        return [name for i in range(int(start), int(end) + 1) for name in _expand_braces(f"{head}{i:0{width}d}{tail}")]
    match = _ALTERNATIVES.search(pattern)
    if match:
        head, tail = pattern[: match.start()], pattern[match.end() :]
        return [name for alt in match.group(1).split(",") for name in _expand_braces(f"{head}{alt}{tail}")]
    return [pattern]


def expand_shard_patterns(patterns: str | Sequence[str], check_exist: bool = True) -> list[str]:
    """
    Local shard paths from brace patterns (`data/shard-{00000..00099}.tar`, `{train,extra}-{0..3}.tar`), several
    joined with `::` or whitespace (or given as a list). Raises `ValueError` if nothing matches, a path repeats, or
    (with `check_exist`) a shard does not exist, naming the missing ones.
    """
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    paths = []
    for item in items:
        for pattern in re.split(r"::|\s+", item.strip()):
            if pattern:
                paths.extend(_expand_braces(os.path.expanduser(pattern)))
    if not paths:
        raise ValueError(f"No shards in {patterns!r}.")
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    if repeated:
        raise ValueError(f"Shard patterns {patterns!r} name these shards more than once: {repeated[:5]}.")
    if check_exist:
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise ValueError(
                f"{len(missing)} of the {len(paths)} shards of {patterns!r} do not exist, e.g. {missing[:3]}."
            )
    return paths


# ---------------------------------------------------------------------------------------------------- reading


def _tar_members(path: str) -> Iterator[tuple[str, io.BufferedReader]]:
    """(file name, file object) of every regular file of a tar, in order; corrupt or truncated -> `ShardError`."""
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if not member.isfile() or os.path.basename(member.name).startswith((".", "__")):
                    continue
                handle = archive.extractfile(member)
                yield member.name, io.BytesIO(handle.read())
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ShardError(f"Shard {path} is corrupt or truncated: {err}.") from err


def iter_shard_samples(path: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard as dicts of their files (`__key__`, `__url__`, `jpg` bytes, `txt` str, `json`
    object, `cls` int, ...), grouped and decoded by `datasets`' webdataset builder. Raises `ShardError` naming the
    shard when it is corrupt."""
    from datasets.packaged_modules.webdataset.webdataset import WebDataset

    try:
        yield from WebDataset._get_pipeline_from_tar(path, _tar_members(path))
    except ShardError:
        raise
    except (ValueError, UnicodeDecodeError) as err:  # duplicate fields, bad json / txt
        raise ShardError(f"Shard {path}: {err}") from err


def read_shard_sizes(paths: Sequence[str], skip_bad: bool = False, bad_samples: BadSampleCounter | None = None) -> list[int]:
    """
    Samples per shard: from `sizes.json` next to the shards (`{"shard-00000.tar": 1000, ...}`, as `write_shards` and
    img2dataset write it) when it lists them all, else counted from the tar headers (no image is decoded). A corrupt
    shard raises `ShardError`, or with `skip_bad` counts as empty and is recorded in `bad_samples`.
    """
    sizes: dict[str, int] = {}
    for folder in dict.fromkeys(os.path.dirname(os.path.abspath(p)) for p in paths):
        sizes_path = os.path.join(folder, SIZES_FILE)
        if os.path.isfile(sizes_path):
            with open(sizes_path, encoding="utf-8") as f:
                listed = json.load(f)
            sizes.update({os.path.join(folder, name): int(n) for name, n in listed.items()})
    counts = []
    for path in paths:
        full = os.path.abspath(path)
        if full in sizes:
            counts.append(sizes[full])
            continue
        try:
            keys = set()
            for name, _ in _tar_members(path):
                keys.add(name.split("/")[-1].split(".", 1)[0] if "." in name else name)
            counts.append(len(keys))
        except ShardError as err:
            if not skip_bad:
                raise ShardError(f"{err} Pass --skip_bad_samples to skip and count corrupt shards.") from err
            (bad_samples or BadSampleCounter()).add(f"shard {path}", err)
            counts.append(0)
    return counts


def _pick(sample: dict[str, Any], wanted: str, defaults: Sequence[str], canonical: str) -> Any:
    """A sample's value for a column flag: the key itself, a field of its `json`, or (only while the flag keeps its
    default, the canonical name) the first img2dataset key present."""
    if wanted in sample:
        return sample[wanted]
    meta = sample.get("json")
    if isinstance(meta, dict) and wanted in meta:
        return meta[wanted]
    if wanted != canonical:
        return None  # an explicitly named column that is missing: reported, never replaced by a guess
    for key in defaults:
        if key in sample:
            return sample[key]
    return None


@dataclass
class _StreamPlan:
    """Everything a stream (one process, one worker) needs to produce its samples; picklable for workers."""

    paths: list[str]
    sizes: list[int]
    num_streams: int
    seed: int
    shuffle: bool
    buffer_size: int
    samples_per_stream: int | None
    num_epochs: int | None
    columns: dict[str, str]
    required: tuple[str, ...]
    skip_bad: bool

    def stream_slots(self, stream: int) -> list[int]:
        """The shard slots of stream `stream`: every `num_streams`-th one."""
        return list(range(stream, len(self.paths), self.num_streams))

    def shard_order(self, epoch: int) -> list[int]:
        """Slot -> shard index in epoch `epoch`: a permutation seeded with (seed, epoch), the same in every process."""
        if not self.shuffle:
            return list(range(len(self.paths)))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.paths)).tolist()

    def canonical(self, sample: dict[str, Any], path: str) -> dict[str, Any]:
        key = sample["__key__"]
        # `image` and `video` are always present (one of them None) so the decoding map can drop both.
        row: dict[str, Any] = {"__key__": key, "__url__": path, "image": None, "video": None}
        image = _pick(sample, self.columns["image"], IMAGE_KEYS, "image")
        video = _pick(sample, self.columns["video"], VIDEO_KEYS, "video") if image is None else None
        if image is not None:
            ext = next((k for k in (self.columns["image"], *IMAGE_KEYS) if k in sample), "img")
            row["image"] = {"bytes": image, "path": f"{path}/{key}.{ext}"} if isinstance(image, bytes) else image
        if video is not None:
            row["video"] = video
        defaults = {"caption": ("txt",), "label": ("cls",), "question": (), "answer": ()}
        for column, keys in defaults.items():
            value = _pick(sample, self.columns[column], keys, column)
            if value is not None:
                row[column] = value
        meta = sample.get("json")
        if isinstance(meta, dict) and meta.get("image_id") is not None:
            row["image_id"] = int(meta["image_id"])
        present = {k for k, v in row.items() if v is not None}
        missing = [c for c in self.required if c not in present and not (c == "image" and "video" in present)]
        if missing:
            available = sorted(k for k in sample if not k.startswith("__"))
            fields = sorted(meta) if isinstance(meta, dict) else []
            raise MMImageError(
                f"sample '{key}' of shard {path} has no {missing} (flags "
                + ", ".join(f"--{c}_column {self.columns[c]!r}" for c in missing)
                + f"); its keys are {available}" + (f" and its json fields {fields}" if fields else "") + ".",
                None,
                f"{path}/{key}",
            )
        return row

    def _shard_rows(self, shard: int, pending: list[str]) -> Iterator[dict[str, Any]]:
        path = self.paths[shard]
        read = 0
        try:
            for sample in iter_shard_samples(path):
                read += 1
                try:
                    yield self.canonical(sample, path)
                except MMImageError as err:
                    if not self.skip_bad:
                        raise
                    pending.append(f"shard {path}, sample '{sample['__key__']}': {err}")
        except ShardError as err:
            if not self.skip_bad:
                raise ShardError(f"{err} Pass --skip_bad_samples to skip and count corrupt shards.") from err
            expected = self.sizes[shard]
            logger.warning(f"Skipping the rest of corrupt shard {path} after {read} of {expected} samples: {err}")
            pending.append(f"shard {path} (corrupt after {read} of {expected} samples): {err}")

    def rows(self, slots: Sequence[int]) -> Iterator[dict[str, Any]]:
        """This stream's rows, epoch after epoch; `skipped_bad_samples` on a row names what was skipped before it."""
        pending: list[str] = []
        for epoch in itertools.count() if self.num_epochs is None else range(self.num_epochs):
            order = self.shard_order(epoch)
            shards = [order[slot] for slot in slots]
            source = itertools.chain.from_iterable(self._shard_rows(s, pending) for s in shards)
            if self.shuffle:
                rng = random.Random(f"{self.seed}|{epoch}|{','.join(map(str, slots))}")
                source = _buffer_shuffle(source, self.buffer_size, rng)
            limit = self.samples_per_stream
            for count, row in enumerate(source):
                if limit is not None and count >= limit:
                    break
                row["epoch"] = epoch
                row["skipped_bad_samples"], pending[:] = list(pending), []
                yield row


def _buffer_shuffle(rows: Iterable[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """Streaming shuffle: keep `size` rows, emit a random one as each new row arrives (seeded, so replayable)."""
    buffer: list[dict] = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = row
    rng.shuffle(buffer)
    yield from buffer


def _stream_generator(streams: list[int], plan: "_StreamPlan") -> Iterator[tuple[str, dict[str, Any]]]:
    """The rows of the streams this reader (process or DataLoader worker) was given, taken in turn (normally one)."""
    iterators = [plan.rows(plan.stream_slots(j)) for j in streams]
    while iterators:
        for iterator in list(iterators):
            try:
                row = next(iterator)
            except StopIteration:
                iterators.remove(iterator)
                continue
            yield f"{row['__url__']}/{row['__key__']}", row


class _StreamExamplesIterable(ExamplesIterable):
    """`datasets`' generator source, but the generator is called once with all the streams this reader was given
    (the stock one calls it once per data source, one after the other, which never ends for an endless stream)."""

    def __iter__(self):
        yield from self.generate_examples_fn(**self.kwargs)

    def shard_data_sources(self, num_shards: int, index: int, contiguous=True) -> "_StreamExamplesIterable":
        part = super().shard_data_sources(num_shards, index, contiguous=contiguous)
        return _StreamExamplesIterable(part.generate_examples_fn, part.kwargs)

    def shuffle_data_sources(self, generator) -> "_StreamExamplesIterable":
        return self  # the stream shuffles shard order itself, by (seed, epoch)


class _StreamDecoder:
    """The streaming `map` that decodes (once) and transforms each row; bad ones are skipped with their names carried
    on to the next good row, or raise. One instance lives in each DataLoader worker, so `pending` is per stream."""

    def __init__(self, processor: MMProcessor, text_column: str, max_length: int, skip_bad: bool):
        from .sources import RowTransform

        self.transform = RowTransform(processor, text_column, max_length)
        self.skip_bad = skip_bad
        self.pending: list[str] = []

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        image_processor: MMImageProcessor = self.transform.processor.image_processor
        n = len(batch["__key__"])
        good, pixels = [], []
        for i in range(n):
            self.pending.extend(batch["skipped_bad_samples"][i] or [])
            is_video = batch["image"][i] is None
            value = batch["video"][i] if is_video else batch["image"][i]
            where = f"shard {batch['__url__'][i]}, sample '{batch['__key__'][i]}'"
            try:
                loaded = (
                    self.transform.processor.video_processor.load_video(value)
                    if is_video
                    else image_processor.load_image(value)
                )
            except MMImageError as err:
                if not self.skip_bad:
                    raise MMImageError(
                        f"Bad sample ({where}): {err} Pass --skip_bad_samples to skip and count such samples.",
                        None,
                        err.path,
                    ) from err
                self.pending.append(f"{where}: {err}")
                continue
            good.append(i)
            pixels.append((loaded, is_video))
        out: dict[str, list[Any]] = {k: [v[i] for i in good] for k, v in batch.items() if k not in ("image", "video")}
        # (`image` / `video` are removed by the map: `remove_columns`.)
        if good:
            videos = [p for p, v in pixels if v]
            images = [p for p, v in pixels if not v]
            if videos and images:
                raise ValueError("A shard mixes image and video samples; write them to separate shards.")
            if videos:
                video_processor = self.transform.processor.video_processor
                values = video_processor(videos=videos, input_data_format="channels_first")["pixel_values_videos"]
            else:
                values = image_processor(images=images, input_data_format="channels_first")["pixel_values"]
            out["pixel_values"] = list(values.unbind(0))
            texts = out.get(self.transform.text_column)
            if texts is not None:
                out["input_ids"] = self.transform.tokenize(list(texts))
            out["skipped_bad_samples"][0] = self.pending + list(out["skipped_bad_samples"][0])
            self.pending = []
        else:
            out["pixel_values"], out["input_ids"] = [], []
        return out


class ShardStream:
    """
    Exactly-once, resumable streaming over WebDataset shards (see the module docstring for how).

    Args:
        patterns (`str` or `Sequence[str]`):
            Shard paths or brace patterns (`expand_shard_patterns`).
        args ([`MMDataArguments`], *optional*):
            Column flags, `shuffle_buffer_size` and `skip_bad_samples`; defaults otherwise.
        seed (`int`, *optional*, defaults to 0):
            Seed of the per-epoch shard order and of the in-stream shuffle buffer.
        world_size (`int`, *optional*, defaults to 1):
            Processes that will read the stream (under `torchrun`: `WORLD_SIZE`).
        num_workers (`int`, *optional*, defaults to 0):
            DataLoader workers per process.
        shuffle (`bool`, *optional*, defaults to `True`):
            Shuffle shard order per epoch and samples through the buffer (off for evaluation).
        num_epochs (`int`, *optional*):
            Stop after this many epochs; `None` repeats forever (training with `max_steps`).
        required (`Sequence[str]`, *optional*, defaults to `("image", "caption")`):
            Canonical columns every sample must have.
        bad_samples ([`BadSampleCounter`], *optional*):
            Counter for corrupt shards found while sizing them (samples skipped while streaming are counted by the
            collator, which receives their names with the rows).
    """

    def __init__(
        self,
        patterns: str | Sequence[str],
        args: Any = None,
        seed: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        required: Sequence[str] = ("image", "caption"),
        bad_samples: BadSampleCounter | None = None,
    ):
        from .sources import MMDataArguments

        args = args if args is not None else MMDataArguments()
        self.args = args
        self.paths = expand_shard_patterns(patterns)
        self.world_size = world_size
        self.num_workers = num_workers
        self.bad_samples = bad_samples if bad_samples is not None else BadSampleCounter()
        num_streams = world_size * max(1, num_workers)
        num_shards = len(self.paths)
        if num_shards < num_streams or num_shards % num_streams:
            raise ValueError(
                f"{num_shards} shards cannot be divided fairly among {world_size} process(es) x "
                f"{max(1, num_workers)} DataLoader worker(s) = {num_streams} streams: each stream reads whole shards, "
                f"so the shard count must be a multiple of {num_streams}. Write a multiple of {num_streams} shards "
                "(make_shards --num_shards), or change the number of processes or --dataloader_num_workers."
            )
        self.sizes = read_shard_sizes(self.paths, skip_bad=args.skip_bad_samples, bad_samples=self.bad_samples)
        per_stream = num_shards // num_streams
        # A stream may get any `per_stream` shards in an epoch; the smallest such share is what all can deliver.
        self.samples_per_stream = sum(sorted(self.sizes)[:per_stream])
        self.num_samples = sum(self.sizes)
        self.dropped_per_epoch = self.num_samples - num_streams * self.samples_per_stream
        self.num_streams = num_streams
        if self.dropped_per_epoch:
            logger.warning(self.drop_report())
        else:
            logger.info(self.drop_report())
        self.plan = _StreamPlan(
            paths=self.paths,
            sizes=self.sizes,
            num_streams=num_streams,
            seed=seed,
            shuffle=shuffle,
            buffer_size=args.shuffle_buffer_size,
            samples_per_stream=self.samples_per_stream if shuffle or num_streams > 1 else None,
            num_epochs=num_epochs,
            columns=args.column_map(),
            required=tuple(required),
            skip_bad=args.skip_bad_samples,
        )
        if self.plan.samples_per_stream is None:
            self.dropped_per_epoch = 0

    def drop_report(self) -> str:
        """One line: shards, samples, streams, samples per stream per epoch, and what is dropped to even them out."""
        line = (
            f"{len(self.paths)} shards, {self.num_samples} samples, {self.num_streams} stream(s) "
            f"({self.world_size} process(es) x {max(1, self.num_workers)} worker(s)): each stream reads "
            f"{self.samples_per_stream} samples per epoch"
        )
        if not self.dropped_per_epoch:
            return line + "; none dropped."
        return (
            line + f"; {self.dropped_per_epoch} sample(s) per epoch ({self.dropped_per_epoch / self.num_samples:.2%}) are "
            f"dropped so that every stream reads the same number (shard sizes {min(self.sizes)}..{max(self.sizes)}; "
            "equal-size shards drop none)."
        )

    def summary(self) -> dict[str, Any]:
        return {
            "shards": len(self.paths),
            "samples": self.num_samples,
            "streams": self.num_streams,
            "samples_per_stream_per_epoch": self.samples_per_stream,
            "dropped_per_epoch": self.dropped_per_epoch,
        }

    def raw_dataset(self) -> IterableDataset:
        """Undecoded canonical rows (`__key__`, `__url__`, `image` bytes, `caption`, ..., `epoch`)."""
        # One data source per stream: processes and workers are handed whole streams, hence whole shards.
        source = _StreamExamplesIterable(_stream_generator, {"streams": list(range(self.num_streams)), "plan": self.plan})
        return IterableDataset(source)

    def to_iterable_dataset(
        self, processor: MMProcessor | None = None, text_column: str = "caption", max_length: int = 32,
        decode_batch_size: int = 16,
    ) -> IterableDataset:
        """
        The stream as a `datasets.IterableDataset` with one data source per shard slot. With a `processor`, images
        are decoded and transformed in its `map` (rows carry `pixel_values` and `input_ids`); without, rows are raw.
        """
        dataset = self.raw_dataset()
        if processor is not None:
            decoder = _StreamDecoder(processor, text_column, max_length, self.args.skip_bad_samples)
            dataset = dataset.map(decoder, batched=True, batch_size=decode_batch_size, remove_columns=["image", "video"])
            dataset._mm_decodes = True
        dataset._mm_stream = self
        return dataset


def split_for_rank(dataset: IterableDataset, rank: int, world_size: int) -> IterableDataset:
    """This process's whole shards (`datasets.distributed.split_dataset_by_node`, by data sources), for loops that
    do not go through `Trainer` (under `Trainer`, accelerate splits the full stream itself)."""
    if dataset.num_shards % world_size:
        raise ValueError(f"{dataset.num_shards} shard slots cannot be split evenly over {world_size} processes.")
    return split_dataset_by_node(dataset, rank=rank, world_size=world_size)


# ---------------------------------------------------------------------------------------------------- writing


def _resize_square(image: PIL.Image.Image, resolution: int) -> PIL.Image.Image:
    """Shortest edge to `resolution`, then centre crop to `resolution` x `resolution`."""
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(size, PIL.Image.Resampling.BICUBIC)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def write_shards(
    dataset: Dataset | Iterable[dict[str, Any]],
    output_dir: str,
    num_shards: int | None = None,
    samples_per_shard: int | None = None,
    resolution: int | None = 64,
    image_format: str = "jpg",
    quality: int = 95,
    prefix: str = "shard",
    skip_bad_samples: bool = False,
    bad_samples: BadSampleCounter | None = None,
    num_samples: int | None = None,
) -> dict[str, int]:
    """
    Writes canonical rows (`image`, `caption`, and any of `question`, `answer`, `label`, `image_id`) as WebDataset
    shards `prefix-00000.tar`, ... (with `webdataset.TarWriter`) plus `sizes.json`. Each image is decoded with the
    strict `MMImageProcessor` decoder, resized (shortest edge, centre crop) and re-encoded; a bad one raises naming
    its row, or with `skip_bad_samples` is skipped and counted.

    Shards are equal in size: with `num_shards`, sizes differ by at most one sample (a multiple of the sample count
    makes them identical); with `samples_per_shard`, all but the last are full (logged).

    Args:
        dataset (`Dataset` or iterable of dicts): Canonical rows; images as files, bytes, dicts or PIL images.
        output_dir (`str`): Folder for the shards (created).
        num_shards (`int`, *optional*): How many shards (exclusive with `samples_per_shard`).
        samples_per_shard (`int`, *optional*): Samples per shard.
        resolution (`int`, *optional*, defaults to 64): Square side of the stored images; `None` keeps the size.
        image_format (`str`, *optional*, defaults to `"jpg"`): `"jpg"`, `"png"` or `"webp"`.
        quality (`int`, *optional*, defaults to 95): JPEG / WebP quality.
        prefix (`str`, *optional*, defaults to `"shard"`): Shard file name prefix.
        skip_bad_samples (`bool`, *optional*, defaults to `False`): Skip bad images instead of raising.
        bad_samples ([`BadSampleCounter`], *optional*): Counter for skipped images.
        num_samples (`int`, *optional*): Row count of an iterable without `len` (needed with `num_shards`).

    Returns:
        `{shard file name: samples}` (also written to `sizes.json`).
    """
    import webdataset

    if (num_shards is None) == (samples_per_shard is None):
        raise ValueError("Pass exactly one of `num_shards` and `samples_per_shard`.")
    if image_format not in ("jpg", "png", "webp"):
        raise ValueError(f"`image_format` must be 'jpg', 'png' or 'webp', got {image_format!r}.")
    bad_samples = bad_samples if bad_samples is not None else BadSampleCounter()
    image_processor = MMImageProcessor()
    total = num_samples if num_samples is not None else (len(dataset) if hasattr(dataset, "__len__") else None)
    if num_shards is not None:
        if total is None:
            raise ValueError("`num_shards` needs the number of rows: pass `num_samples` for an iterable.")
        if num_shards < 1 or num_shards > total:
            raise ValueError(f"`num_shards` must be in 1..{total} (the number of rows), got {num_shards}.")
        # Rows are assigned before screening, so skipped bad rows make their shard one smaller (counted, logged).
        bounds = [total * i // num_shards for i in range(num_shards + 1)]
        shard_of_row = lambda row: next(s for s in range(num_shards) if row < bounds[s + 1])  # noqa: E731
    else:
        if samples_per_shard < 1:
            raise ValueError(f"`samples_per_shard` must be >= 1, got {samples_per_shard}.")
        shard_of_row = None
    os.makedirs(output_dir, exist_ok=True)
    sizes: dict[str, int] = {}
    writer, current, written = None, -1, 0
    pil_format = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[image_format]

    def open_shard(index: int):
        name = f"{prefix}-{index:05d}.tar"
        sizes[name] = 0
        return webdataset.TarWriter(os.path.join(output_dir, name)), name

    name = None
    for row_index, row in enumerate(dataset):
        if shard_of_row is not None:
            target = shard_of_row(row_index) if row_index < total else num_shards - 1
        else:
            target = written // samples_per_shard
        if target != current:
            if writer is not None:
                writer.close()
            writer, name = open_shard(target)
            current = target
        try:
            if row.get("image") is None:
                raise MMImageError(f"row {row_index} has no image.", row_index)
            tensor = image_processor.load_image(row["image"], row_index)  # (3, H, W) uint8, strict checks
            image = PIL.Image.fromarray(tensor.permute(1, 2, 0).contiguous().numpy())
        except MMImageError as err:
            if not skip_bad_samples:
                raise MMImageError(
                    f"Cannot shard row {row_index}: {err} Pass --skip_bad_samples to skip and count such rows.",
                    row_index,
                    err.path,
                ) from err
            bad_samples.add(f"row {row_index}", err)
            continue
        if resolution is not None:
            image = _resize_square(image, resolution)
        buffer = io.BytesIO()
        image.save(buffer, format=pil_format, **({"quality": quality} if image_format != "png" else {}))
        sample = {"__key__": f"{row_index:09d}", image_format: buffer.getvalue()}
        if row.get("caption") is not None:
            sample["txt"] = str(row["caption"])
        meta = {k: row[k] for k in ("question", "answer", "label", "image_id") if row.get(k) is not None}
        if isinstance(row.get("label"), (int, np.integer)):
            sample["cls"] = int(row["label"])
        if meta:
            sample["json"] = json.dumps({k: (int(v) if isinstance(v, np.integer) else v) for k, v in meta.items()})
        writer.write(sample)
        sizes[name] += 1
        written += 1
    if writer is not None:
        writer.close()
    if not sizes:
        raise ValueError("No rows to write.")
    with open(os.path.join(output_dir, SIZES_FILE), "w", encoding="utf-8") as f:
        json.dump(sizes, f, indent=1)
    counts = sorted(set(sizes.values()))
    logger.info(
        f"Wrote {written} samples in {len(sizes)} shards to {output_dir} (sizes {counts[0]}..{counts[-1]}); "
        f"{bad_samples.count} bad row(s) skipped."
    )
    if len(counts) > 1:
        logger.warning(f"Shard sizes differ ({counts[0]}..{counts[-1]}): streaming drops the difference per stream.")
    return sizes
