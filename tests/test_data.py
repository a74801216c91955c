"""Tests for the dataset loaders: embedded easy-VQA, user image folders (incl. streaming) and bad-image screening."""

import csv
import io
import json
import os

import datasets
import numpy as np
import PIL.Image
import pytest

from processing import MMImageError, MMImageProcessor, MMProcessor
from processing.collators import BadSampleCounter
from processing.data import (
    EASY_VQA_COLORS,
    EASY_VQA_SHAPES,
    build_default_processor,
    check_images,
    default_tokenizer_path,
    easy_vqa_answers,
    easy_vqa_data_dir,
    load_easy_vqa,
    load_image_folder,
)


@pytest.fixture(scope="module")
def easy_vqa():
    return load_easy_vqa()


@pytest.fixture(scope="module")
def easy_vqa_images():
    return load_easy_vqa(view="images")


# ---------------------------------------------------------------------------------------------------- easy-VQA


def _columns(dataset: datasets.Dataset, *names: str) -> dict[str, list]:
    # Slicing the selected columns converts them in one Arrow call (iterating a `Column` goes row by row).
    return dataset.select_columns(list(names))[:]


def test_easy_vqa_counts(easy_vqa, easy_vqa_images):
    assert isinstance(easy_vqa, datasets.DatasetDict) and set(easy_vqa) == {"train", "test"}
    assert easy_vqa["train"].num_rows == 38_575 and easy_vqa["test"].num_rows == 9_673
    assert easy_vqa_images["train"].num_rows == 4_000 and easy_vqa_images["test"].num_rows == 1_000
    train, test = _columns(easy_vqa["train"], "image_id", "answer"), _columns(easy_vqa["test"], "image_id", "answer")
    assert len(set(train["image_id"])) == 4_000 and len(set(test["image_id"])) == 1_000
    answers = easy_vqa_answers()
    assert len(answers) == 13 and answers[:3] == ["circle", "green", "red"] and answers[-1] == "no"
    assert set(train["answer"]) | set(test["answer"]) == set(answers)


def test_easy_vqa_columns_and_lazy_images(easy_vqa, easy_vqa_images):
    assert easy_vqa["train"].column_names == ["image", "image_id", "question", "answer", "caption"]
    assert easy_vqa_images["test"].column_names == ["image", "image_id", "caption", "color", "shape"]
    assert isinstance(easy_vqa["train"].features["image"], datasets.Image)
    # Stored as file paths (nothing decoded or copied at load time), decoded on access.
    stored = easy_vqa["train"].with_format("arrow")[:1]["image"].to_pylist()[0]
    assert stored["bytes"] is None and stored["path"].endswith(os.path.join("train", "images", "0.png"))
    row = easy_vqa["train"][0]
    assert isinstance(row["image"], PIL.Image.Image) and row["image"].size == (64, 64)
    assert row == {
        **row,
        "image_id": 0,
        "question": "what is the blue shape?",
        "answer": "rectangle",
        "caption": "a blue rectangle",
    }
    assert _columns(easy_vqa_images["train"], "image_id")["image_id"] == list(range(4000))
    assert _columns(load_easy_vqa(split="test"), "question") == _columns(easy_vqa["test"], "question")


def test_every_easy_vqa_image_is_64x64(easy_vqa_images):
    for split in ("train", "test"):
        for stored in easy_vqa_images[split].with_format("arrow")["image"].to_pylist():
            with PIL.Image.open(stored["path"]) as image:  # header only
                assert image.size == (64, 64)


@pytest.mark.parametrize("split", ["train", "test"])
def test_captions_agree_with_every_question(easy_vqa, easy_vqa_images, split):
    """Each image has one caption 'a <color> <shape>', consistent with every question asked about it."""
    images = _columns(easy_vqa_images[split], "image_id", "color", "shape", "caption")
    attributes = dict(zip(images["image_id"], zip(images["color"], images["shape"])))
    assert all(c in EASY_VQA_COLORS and s in EASY_VQA_SHAPES for c, s in attributes.values())
    assert images["caption"] == [f"a {c} {s}" for c, s in zip(images["color"], images["shape"])]
    questions = _columns(easy_vqa[split], "question", "answer", "image_id", "caption")
    vocabulary = set(EASY_VQA_COLORS + EASY_VQA_SHAPES)
    for question, answer, image_id, caption in zip(
        questions["question"], questions["answer"], questions["image_id"], questions["caption"]
    ):
        color, shape = attributes[image_id]
        assert caption == f"a {color} {shape}"
        if answer in EASY_VQA_COLORS:
            assert answer == color, (image_id, question)
        elif answer in EASY_VQA_SHAPES:
            assert answer == shape, (image_id, question)
        else:
            mentioned = [w for w in question.rstrip("?").split() if w in vocabulary]
            negated = " not " in f" {question} " or question.startswith("is no ")
            assert ((answer == "yes") != negated) == all(w in (color, shape) for w in mentioned), (image_id, question)


def test_caption_examples(easy_vqa_images):
    train = easy_vqa_images["train"]
    assert train[0]["caption"] == "a blue rectangle"
    # Image 2375's questions leave its colour open among four; the pixels settle it (a teal circle).
    assert train[2375]["caption"] == "a teal circle"
    pixels = np.asarray(train[2375]["image"])
    assert (pixels == (0, 128, 128)).all(-1).sum() > 100


def test_easy_vqa_validation():
    with pytest.raises(ValueError, match="view"):
        load_easy_vqa(view="pixels")
    with pytest.raises(ValueError, match="splits"):
        load_easy_vqa(split="validation")
    assert os.path.isfile(os.path.join(easy_vqa_data_dir(), "answers.txt"))


def test_default_tokenizer_and_processor():
    processor = build_default_processor(image_size=64, max_length=24)
    assert isinstance(processor, MMProcessor) and processor.max_length == 24
    assert processor.image_processor.size == {"height": 64, "width": 64}
    assert len(processor.tokenizer) == 30_522
    assert processor.tokenizer.tokenize("a blue rectangle") == ["a", "blue", "rec", "##tangle"]  # WordPiece
    assert os.path.isfile(os.path.join(default_tokenizer_path(), "vocab.txt"))


# ---------------------------------------------------------------------------------------------------- image folders


def _write_folder(root, metadata_format: str = "jsonl", count: int = 4, columns=None) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        name = f"img_{i}.png"
        PIL.Image.fromarray(np.full((6 + i, 8, 3), 40 * i, dtype=np.uint8)).save(root / name)
        rows.append(
            {"file_name": name, **(columns(i) if columns else {"caption": f"caption number {i}", "label": i % 2})}
        )
    if metadata_format == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(root / "metadata.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


@pytest.mark.parametrize("metadata_format", ["jsonl", "csv"])
def test_image_folder_round_trip(tmp_path, metadata_format):
    rows = _write_folder(tmp_path / "data", metadata_format)
    dataset = load_image_folder(tmp_path / "data", cache_dir=str(tmp_path / "cache"))
    assert isinstance(dataset, datasets.Dataset) and dataset.num_rows == 4
    by_caption = {row["caption"]: row for row in dataset}
    for i, written in enumerate(rows):
        row = by_caption[written["caption"]]
        assert int(row["label"]) == i % 2
        assert np.asarray(row["image"]).shape == (6 + i, 8, 3) and np.asarray(row["image"])[0, 0, 0] == 40 * i


def test_image_folder_streaming_yields_same_rows(tmp_path):
    _write_folder(tmp_path / "data")
    regular = load_image_folder(tmp_path / "data", cache_dir=str(tmp_path / "cache"))
    streamed = load_image_folder(tmp_path / "data", streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    streamed_rows = list(streamed)
    assert [r["caption"] for r in streamed_rows] == regular["caption"]
    for a, b in zip(streamed_rows, regular):
        assert isinstance(a["image"], PIL.Image.Image)
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))


def test_image_folder_vqa_columns_and_splits(tmp_path):
    columns = lambda i: {"question": "what color is it?", "answer": "gray"}  # noqa: E731
    _write_folder(tmp_path / "data" / "train", columns=columns, count=3)
    _write_folder(tmp_path / "data" / "test", columns=columns, count=2)
    train = load_image_folder(tmp_path / "data", cache_dir=str(tmp_path / "cache"))
    test = load_image_folder(tmp_path / "data", split="test", cache_dir=str(tmp_path / "cache"))
    assert (train.num_rows, test.num_rows) == (3, 2)
    assert set(train.column_names) >= {"image", "question", "answer"}


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    PIL.Image.new("RGB", (4, 4)).save(tmp_path / "empty" / "a.png")
    with pytest.raises(ValueError, match=r"No metadata\.jsonl or metadata\.csv.*empty"):
        load_image_folder(tmp_path / "empty")

    _write_folder(tmp_path / "missing_file")
    with open(tmp_path / "missing_file" / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "ghost.png", "caption": "boo"}) + "\n")
    with pytest.raises(ValueError, match=r"metadata\.jsonl, row 5: referenced file .*ghost\.png does not exist"):
        load_image_folder(tmp_path / "missing_file")

    _write_folder(tmp_path / "no_text", columns=lambda i: {"width": 8})
    with pytest.raises(ValueError, match=r"no recognised text or label column.*'width'"):
        load_image_folder(tmp_path / "no_text")

    _write_folder(tmp_path / "question_only", columns=lambda i: {"question": "why?"})
    with pytest.raises(ValueError, match="no recognised text or label column"):
        load_image_folder(tmp_path / "question_only")

    _write_folder(tmp_path / "bad_json")
    (tmp_path / "bad_json" / "metadata.jsonl").write_text('{"file_name": "img_0.png", "caption": "x"}\n{oops\n')
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        load_image_folder(tmp_path / "bad_json")


def _corrupt(path) -> None:
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[:150])


def test_image_folder_corrupt_image_raises_or_is_skipped_and_counted(tmp_path):
    _write_folder(tmp_path / "data", count=5)
    _corrupt(tmp_path / "data" / "img_3.png")
    cache = str(tmp_path / "cache")
    with pytest.raises(MMImageError, match=r"sample \d, file '.*img_3\.png'.*truncated"):
        load_image_folder(tmp_path / "data", cache_dir=cache)

    counter = BadSampleCounter()
    dataset = load_image_folder(tmp_path / "data", skip_bad_samples=True, bad_samples=counter, cache_dir=cache)
    assert dataset.num_rows == 4 and "caption number 3" not in dataset["caption"]
    assert counter.count == 1 and "img_3.png" in counter.report()
    assert all(isinstance(row["image"], PIL.Image.Image) for row in dataset)  # the rest decode fine


def test_streaming_corrupt_image_raises_or_is_skipped_and_counted(tmp_path):
    _write_folder(tmp_path / "data", count=5)
    _corrupt(tmp_path / "data" / "img_1.png")
    streamed = load_image_folder(tmp_path / "data", streaming=True)  # lazy: nothing read yet
    with pytest.raises(MMImageError, match=r"img_1\.png"):
        list(streamed)

    counter = BadSampleCounter()
    streamed = load_image_folder(tmp_path / "data", streaming=True, skip_bad_samples=True, bad_samples=counter)
    assert counter.count == 0
    rows = list(streamed)
    assert len(rows) == 4 and counter.count == 1 and "img_1.png" in counter.report()


def test_check_images_on_in_memory_dataset(tmp_path):
    good = tmp_path / "good.png"
    PIL.Image.new("RGB", (5, 5), (1, 2, 3)).save(good)
    (tmp_path / "text.png").write_text("hello")
    dataset = datasets.Dataset.from_dict(
        {"image": [str(good), str(tmp_path / "text.png"), str(good), str(tmp_path / "gone.png")], "n": [0, 1, 2, 3]},
        features=datasets.Features({"image": datasets.Image(), "n": datasets.Value("int32")}),
    )
    with pytest.raises(MMImageError, match=r"sample 1, file '.*text\.png'.*Not a recognised image"):
        check_images(dataset)
    counter = BadSampleCounter()
    checked = check_images(dataset, skip_bad_samples=True, bad_samples=counter)
    assert checked["n"] == [0, 2] and counter.count == 2 and "gone.png" in counter.report()
    # Images above the processor's pixel limit count as bad too.
    with pytest.raises(MMImageError, match="max_image_pixels"):
        check_images(dataset.select([0]), image_processor=MMImageProcessor(max_image_pixels=10))
    # A clean dataset comes back untouched.
    clean = load_easy_vqa(split="test", view="images").select(range(50))
    assert check_images(clean) is clean
    with pytest.raises(ValueError, match="no 'picture' column"):
        check_images(clean, image_column="picture")
