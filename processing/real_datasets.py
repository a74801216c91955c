"""Loaders for two real-image datasets that Debian packages install: Fashion-MNIST and OpenClipArt.

- **Fashion-MNIST** (`dataset-fashion-mnist`): 70,000 product photos, 28x28 grey, 10 classes, as idx files under
  `/usr/share/datasets/fashion-mnist/` (`{train,t10k}-{images-idx3,labels-idx1}-ubyte`, gzipped by Debian; plain
  files are read too). Images come back as RGB PIL images with a caption made from a prompt template
  ("a photo of a sandal.").
- **OpenClipArt** (`openclipart-png`, `openclipart-svg`): clip-art drawings rendered to PNG under
  `/usr/share/openclipart/png/<category>/.../<name>.png`, each with its source SVG at the same relative path under
  `/usr/share/openclipart/svg/`, whose Dublin Core metadata carries a title, an optional description and keywords.

Neither loader downloads anything. A missing folder raises `DatasetNotInstalledError` naming the Debian package;
`install_missing=True` runs `apt-get install` for it when `apt-get` exists and the process is root. Files that cannot
be used (unreadable PNG, SVG missing, unparsable or without a title) are counted and named in a `BadSampleCounter`
and in the log, never dropped silently.

Not shipped to the Hub: it depends on `datasets`.
"""

import gzip
import logging
import os
import random
import re
import shutil
import subprocess
import warnings
from collections.abc import Sequence
from xml.etree import ElementTree

import numpy as np
import PIL.Image
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from .collators import BadSampleCounter


__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_HELDOUT_CLASSES",
    "FASHION_MNIST_PROMPT_NAMES",
    "FASHION_MNIST_TEMPLATES",
    "OPENCLIPART_EXCLUDED_CATEGORIES",
    "OPENCLIPART_PNG_DIR",
    "OPENCLIPART_SVG_DIR",
    "DatasetNotInstalledError",
    "fashion_mnist_caption",
    "load_fashion_mnist",
    "load_openclipart",
    "openclipart_category_prompt",
    "read_idx",
    "read_svg_metadata",
    "require_dataset_dir",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
OPENCLIPART_PNG_DIR = "/usr/share/openclipart/png"
OPENCLIPART_SVG_DIR = "/usr/share/openclipart/svg"

# Label order of the idx files (github.com/zalandoresearch/fashion-mnist, README "Labels").
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# The class names as they read inside a sentence ("a photo of a pair of trousers").
FASHION_MNIST_PROMPT_NAMES = (
    "t-shirt",
    "pair of trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
# Caption templates in the style of CLIP's prompt ensembles (Radford et al. 2021, Sec. 3.1.4); training captions draw
# one per image, zero-shot classification averages the text embeddings of all of them.
FASHION_MNIST_TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a product photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}, for sale.",
)
# Classes never seen in image-text pretraining, for zero-shot transfer: `sorted(random.Random(0).sample(range(10), 3))`
# (T-shirt/top, Shirt, Ankle boot), drawn once so that the choice is not tuned to the results.
FASHION_MNIST_HELDOUT_CLASSES = (0, 6, 9)

_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# `unsorted` is the catch-all folder of uncategorised drawings: no category to classify into.
OPENCLIPART_EXCLUDED_CATEGORIES = ("unsorted",)

_DC = "{http://purl.org/dc/elements/1.1/}"
_CC = "{http://web.resource.org/cc/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
# Some SVG exports wrote a Perl object address instead of the text ("HASH(0x853142c)").
_PERL_ARTIFACT = re.compile(r"^(HASH|ARRAY)\(0x[0-9a-f]+\)$", re.IGNORECASE)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ---------------------------------------------------------------------------------------------------- missing data


class DatasetNotInstalledError(FileNotFoundError):
    """A dataset folder is missing; the message names the Debian package that installs it."""


def require_dataset_dir(directory: str, package: str, install_missing: bool = False) -> str:
    """
    Returns `directory` if it exists, else installs `package` (when asked and possible) or raises.

    Args:
        directory (`str`): Folder the dataset should be in.
        package (`str`): Debian package that installs it.
        install_missing (`bool`, *optional*, defaults to `False`): Run `apt-get install -y <package>` when the folder
            is missing, `apt-get` exists and the process is root; otherwise only the error says what to run.

    Raises:
        `DatasetNotInstalledError`: The folder is missing (and was not installed).
    """
    if os.path.isdir(directory):
        return directory
    can_install = shutil.which("apt-get") is not None and hasattr(os, "geteuid") and os.geteuid() == 0
    if install_missing and can_install:
        logger.info("%s is missing: running apt-get install -y %s", directory, package)
        subprocess.run(["apt-get", "install", "-y", package], check=True)
        if os.path.isdir(directory):
            return directory
    hint = f"install it with `apt-get install {package}`"
    if can_install and not install_missing:
        hint += " (or pass install_missing=True / --install_missing to do that here)"
    elif not can_install:
        hint += " as root on a Debian/Ubuntu system"
    raise DatasetNotInstalledError(f"Dataset folder {directory!r} not found: it comes from the Debian package "
                                   f"{package!r}; {hint}, or point the loader at a copy of the files.")


# ---------------------------------------------------------------------------------------------------- Fashion-MNIST


def read_idx(path: str) -> np.ndarray:
    """
    Reads an idx file (the MNIST format: 2 zero bytes, a dtype byte, a dimension count, big-endian int32 sizes, then
    the data), gzipped or not; gzip is recognised by its magic bytes, not the file name.

    Args:
        path (`str`): The file.

    Returns:
        `np.ndarray` of the file's shape and dtype (uint8 for Fashion-MNIST images `(N, 28, 28)` and labels `(N,)`).

    Raises:
        `ValueError`: The file is not an idx file or is truncated (the message names it).
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err}).") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (bad magic number {raw[:4].hex()}).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: idx header says shape {shape} ({expected} bytes) but {len(raw) - header} follow.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find_idx(directory: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"Neither {stem}.gz nor {stem} in {directory}.")


def fashion_mnist_caption(label: int, template: int = 0) -> str:
    """
    The caption of a Fashion-MNIST class from one of `FASHION_MNIST_TEMPLATES`: `(5, 0)` -> "a photo of a sandal.".

    Args:
        label (`int`): Class id, 0..9.
        template (`int`, *optional*, defaults to 0): Template index.
    """
    return FASHION_MNIST_TEMPLATES[template].format(FASHION_MNIST_PROMPT_NAMES[label])


def load_fashion_mnist(
    directory: str = FASHION_MNIST_DIR,
    split: str = "train",
    max_samples: int | None = None,
    seed: int = 0,
    install_missing: bool = False,
) -> Dataset:
    """
    Fashion-MNIST's official train (60,000) or test (10,000) split as a `datasets.Dataset`.

    Columns: `image` (RGB PIL image, 28x28: the grey value copied to the three channels), `label` (`ClassLabel` over
    `FASHION_MNIST_CLASSES`), `class_name`, `caption` (a template from `FASHION_MNIST_TEMPLATES` drawn per row with
    `seed`) and `index` (the row in the idx file).

    Args:
        directory (`str`, *optional*): Folder with the idx files (`.gz` or plain). Defaults to the Debian location.
        split (`str`, *optional*, defaults to `"train"`): `"train"` or `"test"`.
        max_samples (`int`, *optional*): Keep a uniform random subset of this many rows (drawn with `seed`; kept in
            file order). All rows when `None`.
        seed (`int`, *optional*, defaults to 0): Seed of the subset and of the caption templates.
        install_missing (`bool`, *optional*, defaults to `False`): See `require_dataset_dir`.

    Raises:
        `DatasetNotInstalledError`: The folder is missing. `ValueError`: unknown split, or images and labels disagree.
    """
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(_FASHION_MNIST_FILES)}, got {split!r}.")
    require_dataset_dir(directory, "dataset-fashion-mnist", install_missing)
    images_stem, labels_stem = _FASHION_MNIST_FILES[split]
    images = read_idx(_find_idx(directory, images_stem))  # (N, 28, 28) uint8
    labels = read_idx(_find_idx(directory, labels_stem))  # (N,) uint8
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match.")
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{directory}: {split} labels go up to {int(labels.max())}; Fashion-MNIST has 10 classes.")
    rng = np.random.default_rng(seed)
    rows = np.arange(len(labels))
    if max_samples is not None and max_samples < len(rows):
        rows = np.sort(rng.choice(len(rows), size=max_samples, replace=False))
    templates = rng.integers(len(FASHION_MNIST_TEMPLATES), size=len(rows))
    # Grey -> RGB by repeating the channel: (N, 28, 28) -> (N, 28, 28, 3); every tower here takes 3 channels.
    rgb = np.repeat(images[rows][..., None], 3, axis=-1)
    features = Features(
        {
            "image": Image(),
            "label": ClassLabel(names=list(FASHION_MNIST_CLASSES)),
            "class_name": Value("string"),
            "caption": Value("string"),
            "index": Value("int64"),
        }
    )
    data = {
        "image": [PIL.Image.fromarray(a, mode="RGB") for a in rgb],
        "label": [int(labels[r]) for r in rows],
        "class_name": [FASHION_MNIST_CLASSES[labels[r]] for r in rows],
        "caption": [fashion_mnist_caption(int(labels[r]), int(t)) for r, t in zip(rows, templates)],
        "index": [int(r) for r in rows],
    }
    return Dataset.from_dict(data, features=features, split=split)


# ---------------------------------------------------------------------------------------------------- OpenClipArt


def _clean_text(text: str | None) -> str:
    text = " ".join((text or "").split())
    return "" if _PERL_ARTIFACT.match(text) else text


def read_svg_metadata(path: str) -> dict[str, str | list[str]]:
    """
    The Dublin Core title, description and keywords (`dc:subject` bag) of an OpenClipArt SVG's `cc:Work`.

    Args:
        path (`str`): The SVG file.

    Returns:
        `{"title": str, "description": str, "keywords": list[str]}`; empty strings/lists where absent. Perl
        artifacts such as "HASH(0x853142c)" count as absent.

    Raises:
        `ElementTree.ParseError`: The file is not well-formed XML.
    """
    root = ElementTree.parse(path).getroot()
    work = next(root.iter(_CC + "Work"), None)
    if work is None:
        return {"title": "", "description": "", "keywords": []}
    title = work.find(_DC + "title")
    description = work.find(_DC + "description")
    subject = work.find(_DC + "subject")
    keywords = []
    if subject is not None:
        keywords = [k for k in (_clean_text(li.text) for li in subject.iter(_RDF + "li")) if k]
    return {
        "title": _clean_text(title.text if title is not None else None),
        "description": _clean_text(description.text if description is not None else None),
        "keywords": keywords,
    }


def openclipart_category_prompt(category: str) -> str:
    """A top-level folder name as words: `"signs_and_symbols"` -> `"signs and symbols"`.

    Args:
        category (`str`): Folder name.
    """
    return category.replace("_", " ").replace("-", " ")


def load_openclipart(
    directory_png: str = OPENCLIPART_PNG_DIR,
    directory_svg: str = OPENCLIPART_SVG_DIR,
    test_size: int = 1000,
    seed: int = 0,
    exclude_categories: Sequence[str] = OPENCLIPART_EXCLUDED_CATEGORIES,
    bad_samples: BadSampleCounter | None = None,
    max_samples: int | None = None,
    max_pixels: int = 4096 * 4096,
    install_missing: bool = False,
) -> DatasetDict:
    """
    OpenClipArt PNGs paired with their SVG's title, as a `DatasetDict` with `train` and `test` splits.

    Pairing: `<png>/<rel>/<name>.png` with `<svg>/<rel>/<name>.svg`. The category is the **top-level** folder under
    `directory_png` (`animals/birds/crow_01.png` -> `animals`); `exclude_categories` (`unsorted`) is left out, and so
    are PNGs at the top level (no category). Several PNGs are symbolic links to a drawing filed in another category:
    each drawing is kept once, at the real file's path, and the number of links skipped is logged.

    Rows whose files cannot be used are recorded in `bad_samples` (and logged) with the reason, never dropped
    silently: PNG unreadable or larger than `max_pixels` (a few renders are over 100 megapixels, which take seconds and
    gigabytes to decode), SVG missing, SVG not parsable, SVG without a `dc:title`.

    Split: the usable rows, sorted by relative path, are shuffled with `random.Random(seed)`; the first `test_size`
    form `test`, the rest `train`. The same files and seed give the same split on every machine.

    Columns: `image` (the PNG; decoded on access, transparent ones stay RGBA), `caption` (the title), `title`,
    `description`, `keywords`, `category` (`ClassLabel` over the sorted top-level folders kept), `category_name`
    (the folder in words, e.g. "signs and symbols"), `path` (relative, without extension).

    Args:
        directory_png (`str`, *optional*): PNG tree. Defaults to the Debian `openclipart-png` location.
        directory_svg (`str`, *optional*): SVG tree. Defaults to the Debian `openclipart-svg` location.
        test_size (`int`, *optional*, defaults to 1000): Rows in the held-out split.
        seed (`int`, *optional*, defaults to 0): Seed of the split.
        exclude_categories (`Sequence[str]`, *optional*): Top-level folders to leave out.
        bad_samples ([`BadSampleCounter`], *optional*): Counter the unusable files go to (a new one by default; the
            summary is logged either way).
        max_samples (`int`, *optional*): Keep only this many usable rows (after shuffling; for quick runs), of which
            `test_size` are held out.
        max_pixels (`int`, *optional*, defaults to 4096 * 4096): Larger PNGs count as unusable.
        install_missing (`bool`, *optional*, defaults to `False`): See `require_dataset_dir`.

    Raises:
        `DatasetNotInstalledError`: A folder is missing. `ValueError`: fewer usable rows than `test_size` + 1.
    """
    require_dataset_dir(directory_png, "openclipart-png", install_missing)
    require_dataset_dir(directory_svg, "openclipart-svg", install_missing)
    bad_samples = bad_samples if bad_samples is not None else BadSampleCounter("OpenClipArt unusable files")
    excluded = set(exclude_categories)
    png_root = os.path.realpath(directory_png)
    rows: list[dict] = []
    links = excluded_count = 0
    for dirpath, dirnames, filenames in os.walk(directory_png):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.lower().endswith(".png"):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, directory_png)
            parts = rel.split(os.sep)
            if len(parts) < 2 or parts[0] in excluded:
                excluded_count += 1
                continue
            if os.path.islink(full):
                target = os.path.realpath(full)
                if os.path.isfile(target) and os.path.dirname(target).startswith(png_root):
                    links += 1  # the drawing is loaded at its real path (unless that is excluded)
                    continue
            stem = os.path.splitext(rel)[0]
            svg_path = os.path.join(directory_svg, stem + ".svg")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)  # the size is checked below
                    with PIL.Image.open(full) as image:
                        size = image.size
                        image.verify()  # checks the PNG structure and chunk CRCs without decoding the pixels
            except Exception as err:  # noqa: BLE001  (PIL raises many types for broken files)
                bad_samples.add(f"png {rel}", ValueError(f"unreadable PNG ({type(err).__name__}: {err})"))
                continue
            if size[0] * size[1] > max_pixels:
                bad_samples.add(f"png {rel}", ValueError(f"{size[0]}x{size[1]} px is over max_pixels={max_pixels}"))
                continue
            if not os.path.isfile(svg_path):
                bad_samples.add(f"png {rel}", FileNotFoundError(f"no SVG at {stem}.svg"))
                continue
            try:
                meta = read_svg_metadata(svg_path)
            except ElementTree.ParseError as err:
                bad_samples.add(f"svg {stem}.svg", ValueError(f"not parsable XML ({err})"))
                continue
            if not meta["title"]:
                bad_samples.add(f"svg {stem}.svg", ValueError("no dc:title"))
                continue
            rows.append({"image": full, "caption": meta["title"], **meta, "category": parts[0], "path": stem})
    logger.info(
        "OpenClipArt: %d usable drawings; skipped %d symbolic links to drawings loaded elsewhere, %d PNGs in %s or at "
        "the top level, %d unusable files.", len(rows), links, excluded_count, sorted(excluded), bad_samples.count
    )
    if bad_samples.count:
        logger.warning(bad_samples.report())
    random.Random(seed).shuffle(rows)
    if max_samples is not None:
        rows = rows[:max_samples]
    if len(rows) <= test_size:
        raise ValueError(f"OpenClipArt: {len(rows)} usable rows, need more than test_size={test_size}.")
    categories = sorted({row["category"] for row in rows})
    features = Features(
        {
            "image": Image(),
            "caption": Value("string"),
            "title": Value("string"),
            "description": Value("string"),
            "keywords": [Value("string")],
            "category": ClassLabel(names=categories),
            "category_name": Value("string"),
            "path": Value("string"),
        }
    )

    def build(part: list[dict], split: str) -> Dataset:
        columns = {name: [row.get(name) for row in part] for name in features if name != "category_name"}
        columns["category_name"] = [openclipart_category_prompt(row["category"]) for row in part]
        return Dataset.from_dict(columns, features=features, split=split)

    return DatasetDict({"train": build(rows[test_size:], "train"), "test": build(rows[:test_size], "test")})
