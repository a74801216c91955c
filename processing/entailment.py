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
"""Visual entailment: (image, statement) -> entails / contradicts / unrelated, built so that the label needs both.

Every statement has a *subject* that the image may or may not show, and a *claim* about that subject:

- **entails**: the image shows the subject and the claim holds;
- **contradicts**: the image shows the subject and the claim is false;
- **unrelated**: the image does not show the subject, so the claim is about something absent and cannot be judged
  from the image (presupposition failure, the "neutral" of SNLI-VE).

easy-VQA ([`build_easy_vqa_entailment`]): either the shape is the subject and the colour the claim ("the circle is
red"), or the other way round ("the red shape is a circle"), in a few phrasings ("if there is a circle, it is red").
OpenClipArt ([`build_openclipart_entailment`]): the subject is the drawing's colour mode, read from its pixels
([`colour_mode`]), and the claim its top-level category ("if this drawing is in colour, it is a drawing of food").

The *needs both* property holds by construction, and [`label_balance`] measures it:

- each image gets one statement per label (`statements_per_image` a multiple of 3), so an image alone is at chance;
- images are subsampled to the same count in every (subject, claim) cell and the wrong values are drawn uniformly,
  so each statement occurs equally often (in expectation) under each label across images: text alone is at chance.

[`build_easy_vqa_attribute_check`] is the multi-label task: "red or blue? circle or triangle?" with four labels
(`ATTRIBUTE_CHECK_LABELS`: which of the two named colours and the two named shapes the image has; 0, 1 or 2 hold),
stored as the list of held label ids (`DataCollatorForImageTextClassification(multi_label=True)` makes them
multi-hot; [`multi_hot`] does it for arrays), for `problem_type="multi_label_classification"`.

Rows keep the source `image` column (lazily decoded) and add `statement`, `label`, `image_key` (identity of the
image: `<split>/<image_id>` for easy-VQA, whose ids restart in each split; the drawing's `path` for OpenClipArt) and
`family` / `template`. Image *i* of a source draws its statements from its own generator seeded with `(seed, i)`.
"""

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, Sequence as SequenceFeature, Value

from .data import EASY_VQA_COLORS, EASY_VQA_SHAPES


__all__ = [
    "ATTRIBUTE_CHECK_LABELS",
    "COLOUR_MODES",
    "ENTAILMENT_LABELS",
    "EASY_VQA_TEMPLATES",
    "OPENCLIPART_TEMPLATES",
    "build_easy_vqa_attribute_check",
    "build_easy_vqa_entailment",
    "build_openclipart_entailment",
    "check_disjoint_images",
    "colour_mode",
    "label_balance",
    "multi_hot",
]

logger = logging.getLogger(__name__)

ENTAILMENT_LABELS = ("entails", "contradicts", "unrelated")
ENTAILS, CONTRADICTS, UNRELATED = range(3)
ATTRIBUTE_CHECK_LABELS = ("first colour", "second colour", "first shape", "second shape")

# Phrasings per statement family: "shape" has the shape as subject and the colour as claim, "color" the reverse.
EASY_VQA_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("the {shape} is {color}", "if there is a {shape}, it is {color}", "the {shape} in the image is {color}"),
    "color": (
        "the {color} shape is a {shape}",
        "if there is a {color} shape, it is a {shape}",
        "the {color} thing in the image is a {shape}",
    ),
}
COLOUR_MODES = ("colour", "black and white")
OPENCLIPART_TEMPLATES = (
    "if this drawing is in {mode}, it is a drawing of {category}",
    "this {mode} drawing is a drawing of {category}",
)


# ---------------------------------------------------------------------------------------------------- helpers


def _require_columns(data: Dataset, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in data.column_names]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {data.column_names}.")


def _check_statements_per_image(statements_per_image: int) -> None:
    if statements_per_image < 3 or statements_per_image % 3:
        raise ValueError(
            f"statements_per_image must be a positive multiple of 3 (one statement per label), got {statements_per_image}."
        )


def _balanced_indices(cells: Sequence[tuple], seed: int, what: str) -> list[int]:
    """Indices keeping the same number of rows in every cell (the smallest cell's count), chosen with `seed`, in the
    original order. Equal cells make every statement equally likely under each label (see the module docstring)."""
    by_cell: dict[tuple, list[int]] = defaultdict(list)
    for i, cell in enumerate(cells):
        by_cell[cell].append(i)
    per_cell = min(len(v) for v in by_cell.values())
    rng = np.random.default_rng(seed)
    kept = sorted(int(i) for v in by_cell.values() for i in rng.choice(v, size=per_cell, replace=False))
    if len(kept) < len(cells):
        logger.info(
            "%s: balanced %d cells to %d rows each, %d of %d rows kept.", what, len(by_cell), per_cell, len(kept), len(cells)
        )
    return kept


def _other(rng: np.random.Generator, values: Sequence[str], excluded: str) -> str:
    return str(rng.choice([v for v in values if v != excluded]))


def _with_statements(source: Dataset, rows: list[dict[str, Any]], label_feature: Any) -> Dataset:
    """`source` rows (by `rows[i]["source"]`, images stay lazy) with the new columns."""
    out = source.select([row["source"] for row in rows])
    for name in rows[0]:
        if name == "source":
            continue
        if name in out.column_names:
            out = out.remove_columns(name)
        feature = label_feature if name == "label" else Value("string")
        out = out.add_column(name, [row[name] for row in rows], feature=feature)
    return out


# ---------------------------------------------------------------------------------------------------- easy-VQA


def _easy_vqa_checked(images: Dataset) -> tuple[list[str], list[str], list[str]]:
    """Colours, shapes and image keys of an easy-VQA images view, each row validated."""
    _require_columns(images, ("image", "image_id", "color", "shape"), "easy-VQA images")
    split = str(images.split) if images.split is not None else "images"
    colors, shapes, ids = list(images["color"]), list(images["shape"]), list(images["image_id"])
    for i, row in enumerate(zip(colors, shapes)):
        for field, value, allowed in (("color", row[0], EASY_VQA_COLORS), ("shape", row[1], EASY_VQA_SHAPES)):
            if value not in allowed:
                raise ValueError(
                    f"easy-VQA images row {i} (image_id {ids[i]}): field '{field}' is {value!r}, not one of {allowed}."
                )
    return colors, shapes, [f"{split}/{image_id}" for image_id in ids]


def build_easy_vqa_entailment(
    images: Dataset, seed: int = 0, statements_per_image: int = 3, balance: bool = True
) -> Dataset:
    """
    Visual-entailment rows from easy-VQA images (one coloured shape each).

    Per image, `statements_per_image / 3` rounds of one statement per label. A statement has a family ("shape":
    subject shape, claim colour; "color": the reverse, each with probability 1/2) and a template (uniform):

    - entails: the image's shape and colour;
    - contradicts: the image's subject value, a wrong claim value (uniform over the others);
    - unrelated: a wrong subject value (uniform over the others), any claim value (uniform over all).

    With the same number of images of every colour x shape (`balance`), each statement then has probability
    1/24 * 1/2 * 1/3 under each label, for either family.

    Args:
        images (`Dataset`): The `load_easy_vqa(split, view="images")` view: `image`, `image_id`, `color`, `shape`.
        seed (`int`, *optional*, defaults to 0): Seed of the balancing and of the statements.
        statements_per_image (`int`, *optional*, defaults to 3): A multiple of 3.
        balance (`bool`, *optional*, defaults to `True`): Subsample to equal colour x shape cells first.

    Returns:
        `Dataset` with the source columns plus `statement`, `label` (`ClassLabel` over `ENTAILMENT_LABELS`),
        `image_key`, `family`, `template`.
    """
    _check_statements_per_image(statements_per_image)
    colors, shapes, keys = _easy_vqa_checked(images)
    if len(colors) == 0:
        raise ValueError("easy-VQA images: the dataset is empty.")
    kept = (
        _balanced_indices(list(zip(colors, shapes)), seed, "easy-VQA entailment") if balance else range(len(colors))
    )
    rows = []
    for i in kept:
        rng = np.random.default_rng([seed, i])
        truth = {"color": colors[i], "shape": shapes[i]}
        for _ in range(statements_per_image // 3):
            for label in rng.permutation(3):
                family = "shape" if rng.random() < 0.5 else "color"
                claim_kind = "color" if family == "shape" else "shape"
                values = {"color": EASY_VQA_COLORS, "shape": EASY_VQA_SHAPES}
                said = dict(truth)
                if label == CONTRADICTS:
                    said[claim_kind] = _other(rng, values[claim_kind], truth[claim_kind])
                elif label == UNRELATED:
                    said[family] = _other(rng, values[family], truth[family])
                    said[claim_kind] = str(rng.choice(values[claim_kind]))
                template = int(rng.integers(len(EASY_VQA_TEMPLATES[family])))
                rows.append(
                    {
                        "source": i,
                        "statement": EASY_VQA_TEMPLATES[family][template].format(**said),
                        "label": int(label),
                        "image_key": keys[i],
                        "family": family,
                        "template": str(template),
                    }
                )
    return _with_statements(images, rows, ClassLabel(names=list(ENTAILMENT_LABELS)))


def build_easy_vqa_attribute_check(
    images: Dataset, seed: int = 0, statements_per_image: int = 3, balance: bool = True
) -> Dataset:
    """
    The multi-label task: "is it red or blue, a circle or a triangle?" -> which of the four named values hold
    (`ATTRIBUTE_CHECK_LABELS`; at most one colour and one shape).

    For the colours and for the shapes independently, the answer is "first", "second" or "neither" (probability
    1/3 each): "first" names the true value first and a wrong one (uniform) second, "second" the reverse, "neither"
    two distinct wrong values in random order. On balanced images (`balance`) each named pair then occurs equally
    often under the three answers, and per image the three answers are equally likely: each label is positive a third
    of the time, and neither modality alone beats the label priors.

    Args:
        images (`Dataset`): The easy-VQA images view (`image`, `image_id`, `color`, `shape`).
        seed (`int`, *optional*, defaults to 0): Seed.
        statements_per_image (`int`, *optional*, defaults to 3): Questions per image (any positive number).
        balance (`bool`, *optional*, defaults to `True`): Subsample to equal colour x shape cells first.

    Returns:
        `Dataset` with the source columns plus `statement`, `label` (list of held label ids, possibly empty),
        `image_key`, `family` ("attributes") and `template` (the answer pattern, e.g. "first/neither").
    """
    if statements_per_image < 1:
        raise ValueError(f"statements_per_image must be >= 1, got {statements_per_image}.")
    colors, shapes, keys = _easy_vqa_checked(images)
    if len(colors) == 0:
        raise ValueError("easy-VQA images: the dataset is empty.")
    kept = (
        _balanced_indices(list(zip(colors, shapes)), seed, "easy-VQA attribute check") if balance else range(len(colors))
    )
    answers = ("first", "second", "neither")
    rows = []
    for i in kept:
        rng = np.random.default_rng([seed, i])
        for _ in range(statements_per_image):
            named, held, pattern = {}, [], []
            for offset, (kind, values, truth) in enumerate(
                (("color", EASY_VQA_COLORS, colors[i]), ("shape", EASY_VQA_SHAPES, shapes[i]))
            ):
                answer = answers[int(rng.integers(3))]
                wrong = [str(v) for v in rng.permutation([v for v in values if v != truth])]
                pair = {"first": [truth, wrong[0]], "second": [wrong[0], truth], "neither": wrong[:2]}[answer]
                named[kind] = pair
                if answer != "neither":
                    held.append(2 * offset + (answer == "second"))
                pattern.append(answer)
            statement = f"is it {named['color'][0]} or {named['color'][1]}, a {named['shape'][0]} or a {named['shape'][1]}?"
            rows.append(
                {
                    "source": i,
                    "statement": statement,
                    "label": held,
                    "image_key": keys[i],
                    "family": "attributes",
                    "template": "/".join(pattern),
                }
            )
    return _with_statements(images, rows, SequenceFeature(Value("int64")))


def multi_hot(label_lists: Sequence[Sequence[int]], num_labels: int = len(ATTRIBUTE_CHECK_LABELS)) -> np.ndarray:
    """Lists of held label ids -> float32 multi-hot `(N, num_labels)`.

    Args:
        label_lists (`Sequence[Sequence[int]]`): Per row, the ids that hold.
        num_labels (`int`, *optional*): Width.
    """
    out = np.zeros((len(label_lists), num_labels), dtype=np.float32)
    for row, ids in enumerate(label_lists):
        for label in ids:
            if not 0 <= int(label) < num_labels:
                raise ValueError(f"Row {row}: label id {label} outside 0..{num_labels - 1}.")
            out[row, int(label)] = 1.0
    return out


# ---------------------------------------------------------------------------------------------------- OpenClipArt


def colour_mode(image: Any, chroma: int = 48, colour_fraction: float = 0.02, grey_fraction: float = 0.002) -> str | None:
    """
    Whether a drawing is in colour or in black and white (greys included), from its pixels; `None` when unclear.

    The chroma of a pixel is `max(R, G, B) - min(R, G, B)` (0 for greys). Transparent pixels count as white
    (composited), as the image processor shows them. A drawing is "colour" when at least `colour_fraction` of its
    pixels have chroma >= `chroma`, "black and white" when at most `grey_fraction` do; in between (a small coloured
    detail, anti-aliased edges) it is left out, so that the class is not decided by a handful of pixels.

    Args:
        image (`PIL.Image.Image` or `np.ndarray`): The drawing; arrays are `(H, W, 3)` or `(3, H, W)` uint8 RGB.
        chroma (`int`, *optional*, defaults to 48): Chroma of a coloured pixel.
        colour_fraction (`float`, *optional*, defaults to 0.02): Share of coloured pixels that makes it "colour".
        grey_fraction (`float`, *optional*, defaults to 0.002): Share at or below which it is "black and white".
    """
    if isinstance(image, np.ndarray):
        pixels = image
        if pixels.ndim == 3 and pixels.shape[0] == 3 and pixels.shape[-1] != 3:
            pixels = pixels.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    else:
        import PIL.Image

        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        pixels = np.asarray(PIL.Image.alpha_composite(white, rgba).convert("RGB"))
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"colour_mode needs an RGB image, got an array of shape {pixels.shape}.")
    pixels = pixels.astype(np.int16)
    share = float(((pixels.max(-1) - pixels.min(-1)) >= chroma).mean())
    if share >= colour_fraction:
        return "colour"
    if share <= grey_fraction:
        return "black and white"
    return None


def build_openclipart_entailment(
    drawings: Dataset,
    categories: Sequence[str],
    modes: Sequence[str | None] | None = None,
    seed: int = 0,
    statements_per_image: int = 3,
) -> Dataset:
    """
    Visual-entailment rows from OpenClipArt drawings: "if this drawing is in colour, it is a drawing of food".

    The subject is the colour mode ([`colour_mode`]), the claim the top-level category (`category_name`):

    - entails: the drawing's mode and category;
    - contradicts: its mode and another of `categories` (uniform);
    - unrelated: the other mode (the statement speaks of a colour drawing, this one is black and white, or the
      reverse) and any of `categories` (uniform).

    Only drawings of `categories` whose mode is clear are used, subsampled to the same number in every category x
    mode cell, so each statement has the same probability under each label (1 / (2K) * 1 / 3 with K categories).

    Args:
        drawings (`Dataset`): A `load_openclipart` split (or any dataset with `image`, `category_name`, `path`).
        categories (`Sequence[str]`): The `category_name`s to use (at least 2).
        modes (`Sequence[str | None]`, *optional*): Each drawing's colour mode (`COLOUR_MODES` or `None`), e.g.
            computed from already decoded pixels; computed with [`colour_mode`] when not given.
        seed (`int`, *optional*, defaults to 0): Seed.
        statements_per_image (`int`, *optional*, defaults to 3): A multiple of 3.

    Returns:
        `Dataset` with the source columns plus `statement`, `label`, `image_key` (the drawing's `path`), `family`
        (the mode) and `template`.
    """
    _check_statements_per_image(statements_per_image)
    _require_columns(drawings, ("image", "category_name", "path"), "OpenClipArt drawings")
    categories = list(dict.fromkeys(categories))
    if len(categories) < 2:
        raise ValueError(f"categories: need at least 2 distinct category names, got {categories}.")
    names, paths = list(drawings["category_name"]), list(drawings["path"])
    unknown = sorted(set(categories) - set(names))
    if unknown:
        raise ValueError(f"categories {unknown} do not occur in the drawings' 'category_name' column.")
    if modes is None:
        modes = [colour_mode(image) for image in drawings["image"]]
    if len(modes) != len(names):
        raise ValueError(f"modes: got {len(modes)} values for {len(names)} drawings.")
    for i, mode in enumerate(modes):
        if mode is not None and mode not in COLOUR_MODES:
            raise ValueError(f"modes[{i}] (drawing {paths[i]}): {mode!r} is not one of {COLOUR_MODES} or None.")
    usable = [i for i, (name, mode) in enumerate(zip(names, modes)) if name in categories and mode is not None]
    cells = {(names[i], modes[i]) for i in usable}
    missing = [(c, m) for c in categories for m in COLOUR_MODES if (c, m) not in cells]
    if missing:
        raise ValueError(f"OpenClipArt entailment: no drawing for category x mode {missing}; pick other categories.")
    cells_of_usable = [(names[i], modes[i]) for i in usable]
    kept = [usable[j] for j in _balanced_indices(cells_of_usable, seed, "OpenClipArt entailment")]
    unclear = sum(mode is None for mode in modes)
    logger.info(
        "OpenClipArt entailment: %d drawings kept; %d of %d with an unclear colour mode left out.",
        len(kept), unclear, len(modes),
    )
    rows = []
    for i in kept:
        rng = np.random.default_rng([seed, i])
        for _ in range(statements_per_image // 3):
            for label in rng.permutation(3):
                mode, category = modes[i], names[i]
                if label == CONTRADICTS:
                    category = _other(rng, categories, category)
                elif label == UNRELATED:
                    mode = _other(rng, COLOUR_MODES, mode)
                    category = str(rng.choice(categories))
                template = int(rng.integers(len(OPENCLIPART_TEMPLATES)))
                rows.append(
                    {
                        "source": i,
                        "statement": OPENCLIPART_TEMPLATES[template].format(mode=mode, category=category),
                        "label": int(label),
                        "image_key": paths[i],
                        "family": modes[i],
                        "template": str(template),
                    }
                )
    return _with_statements(drawings, rows, ClassLabel(names=list(ENTAILMENT_LABELS)))


# ---------------------------------------------------------------------------------------------------- checks


def check_disjoint_images(train: Dataset, test: Dataset) -> None:
    """Raises `ValueError` naming a few shared `image_key`s if the two splits share an image.

    Args:
        train (`Dataset`), test (`Dataset`): Built rows (with `image_key`).
    """
    shared = sorted(set(train["image_key"]) & set(test["image_key"]))
    if shared:
        raise ValueError(f"{len(shared)} image(s) are in both splits, e.g. {shared[:5]}.")


def label_balance(rows: Dataset, by: str) -> dict[str, Any]:
    """
    How much one modality alone can tell: per value of `by` (`"statement"` or `"image_key"`), the share of rows
    under its most frequent label, averaged over rows (the accuracy of the best predictor that sees only that
    column, on these rows), and how many values occur under every label.

    Args:
        rows (`Dataset`): Single-label built rows.
        by (`str`): The column a one-modality predictor sees.

    Returns:
        `{"values": int, "under_all_labels": int, "majority_accuracy": float}`.
    """
    counts: dict[Any, np.ndarray] = defaultdict(lambda: np.zeros(len(ENTAILMENT_LABELS), dtype=np.int64))
    for value, label in zip(rows[by], rows["label"]):
        counts[value][label] += 1
    total = sum(int(c.sum()) for c in counts.values())
    return {
        "values": len(counts),
        "under_all_labels": sum(bool((c > 0).all()) for c in counts.values()),
        "majority_accuracy": sum(int(c.max()) for c in counts.values()) / max(total, 1),
    }
