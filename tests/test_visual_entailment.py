"""Tests for the visual-entailment builders (`processing/entailment.py`) and their benchmark, on tiny generated
stand-ins for easy-VQA images and OpenClipArt drawings: seeding, balance, the "needs both" property, disjoint splits,
multi-hot labels, errors naming the bad field, a head that overfits a few pairs, and the benchmark's `--quick` report."""

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch
from datasets import Dataset, DatasetDict, Features, Image, NamedSplit, Value
from transformers import BertTokenizerFast

from modeling_mm import MMConfig, MMForImageTextClassification
from processing import MMImageProcessor, MMProcessor
from processing.collators import DataCollatorForImageTextClassification
from processing.data import _EASY_VQA_PALETTE, EASY_VQA_COLORS, EASY_VQA_SHAPES, default_tokenizer_path
from processing.entailment import (
    ATTRIBUTE_CHECK_LABELS,
    COLOUR_MODES,
    ENTAILMENT_LABELS,
    build_easy_vqa_attribute_check,
    build_easy_vqa_entailment,
    build_openclipart_entailment,
    check_disjoint_images,
    colour_mode,
    label_balance,
    multi_hot,
)


ROOT = Path(__file__).resolve().parent.parent
CELLS = [(c, s) for c in EASY_VQA_COLORS for s in EASY_VQA_SHAPES]  # 24 colour x shape cells


def _shape_image(color: str, shape: str, size: int = 32) -> PIL.Image.Image:
    image = PIL.Image.new("RGB", (size, size), (245, 245, 245))
    draw = PIL.ImageDraw.Draw(image)
    rgb, box = _EASY_VQA_PALETTE[color], (6, 6, size - 6, size - 6)
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "rectangle":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([(size // 2, 6), (6, size - 6), (size - 6, size - 6)], fill=rgb)
    return image


def easy_vqa_images(split: str, per_cell: int, extra: int = 0) -> Dataset:
    """An easy-VQA images view: `per_cell` images of every colour x shape, plus `extra` red circles (unbalanced)."""
    cells = [cell for cell in CELLS for _ in range(per_cell)] + [("red", "circle")] * extra
    features = Features({"image": Image(), "image_id": Value("int32"), "color": Value("string"), "shape": Value("string")})
    return Dataset.from_dict(
        {
            "image": [_shape_image(c, s) for c, s in cells],
            "image_id": list(range(len(cells))),
            "color": [c for c, _ in cells],
            "shape": [s for _, s in cells],
        },
        features=features,
        split=NamedSplit(split),
    )


def drawings(split: str, per_cell: int, offset: int = 0) -> Dataset:
    """OpenClipArt-like rows: categories x {colour, grey} drawings, `path` unique per drawing."""
    images, names, paths = [], [], []
    for k, category in enumerate(("animals", "food", "signs and symbols")):
        for mode in COLOUR_MODES:
            for i in range(per_cell):
                fill = (200, 40 + 60 * k, 30) if mode == "colour" else (60 * k, 60 * k, 60 * k)
                image = PIL.Image.new("RGB", (24, 24), (255, 255, 255))
                PIL.ImageDraw.Draw(image).rectangle((4 + k, 4, 18, 14 + i % 4), fill=fill)
                images.append(image)
                names.append(category)
                paths.append(f"{category}/{mode}/d{offset + i}")
    features = Features({"image": Image(), "category_name": Value("string"), "path": Value("string")})
    return Dataset.from_dict({"image": images, "category_name": names, "path": paths}, features=features, split=NamedSplit(split))


@pytest.fixture(scope="module")
def train_images():
    return easy_vqa_images("train", per_cell=2, extra=5)


@pytest.fixture(scope="module")
def test_images():
    return easy_vqa_images("test", per_cell=1)


# ---------------------------------------------------------------------------------------------------- builders


def test_easy_vqa_entailment_seeded_balanced_and_well_defined(train_images):
    rows = build_easy_vqa_entailment(train_images, seed=0)
    again = build_easy_vqa_entailment(train_images, seed=0)
    other = build_easy_vqa_entailment(train_images, seed=1)
    assert rows["statement"] == again["statement"] and rows["label"] == again["label"]
    assert rows["statement"] != other["statement"]
    # Balancing drops the 5 extra red circles: 2 images per cell, 3 statements each, one per label.
    assert len(rows) == 24 * 2 * 3
    assert Counter(rows["label"]) == {0: 48, 1: 48, 2: 48}
    assert rows.features["label"].names == list(ENTAILMENT_LABELS)
    # Each label is what the statement says about the image's colour and shape.
    for row in rows:
        said_colors = [c for c in EASY_VQA_COLORS if f" {c} " in f" {row['statement']} ".replace(",", " ")]
        said_shapes = [s for s in EASY_VQA_SHAPES if s in row["statement"]]
        assert len(said_colors) == 1 and len(said_shapes) == 1, row["statement"]
        color_ok, shape_ok = said_colors[0] == row["color"], said_shapes[0] == row["shape"]
        subject_ok = shape_ok if row["family"] == "shape" else color_ok
        claim_ok = color_ok if row["family"] == "shape" else shape_ok
        expected = "unrelated" if not subject_ok else ("entails" if claim_ok else "contradicts")
        assert ENTAILMENT_LABELS[row["label"]] == expected, row


def test_easy_vqa_entailment_needs_both_modalities():
    # Enough images that the per-statement label frequencies settle: every image has all three labels, every
    # statement occurs under several labels, and neither column alone predicts much better than chance.
    rows = build_easy_vqa_entailment(easy_vqa_images("train", per_cell=8), seed=0, statements_per_image=6)
    by_image = label_balance(rows, "image_key")
    assert by_image["under_all_labels"] == by_image["values"] == 24 * 8
    assert by_image["majority_accuracy"] == pytest.approx(1 / 3)
    labels_per_statement = {}
    for statement, label in zip(rows["statement"], rows["label"]):
        labels_per_statement.setdefault(statement, set()).add(label)
    assert np.mean([len(v) >= 2 for v in labels_per_statement.values()]) > 0.9
    frequent = [s for s, count in Counter(rows["statement"]).items() if count >= 12]
    assert frequent and all(len(labels_per_statement[s]) == 3 for s in frequent)


def test_statement_alone_is_at_chance_in_expectation():
    # The exact per-statement label distribution over the balanced design: enumerate every image and draw many
    # statements; each statement's label shares must all approach 1/3.
    rows = build_easy_vqa_entailment(easy_vqa_images("train", per_cell=1), seed=0, statements_per_image=300)
    counts: dict[str, Counter] = {}
    for statement, label in zip(rows["statement"], rows["label"]):
        counts.setdefault(statement, Counter())[label] += 1
    shares = np.array([[c[label] / sum(c.values()) for label in range(3)] for c in counts.values()])
    assert np.abs(shares.mean(0) - 1 / 3).max() < 0.02
    assert label_balance(rows, "statement")["majority_accuracy"] < 0.42


def test_held_out_split_shares_no_image(train_images, test_images):
    train, test = build_easy_vqa_entailment(train_images, seed=0), build_easy_vqa_entailment(test_images, seed=1)
    check_disjoint_images(train, test)
    assert not set(train["image_key"]) & set(test["image_key"])
    assert all(k.startswith("train/") for k in train["image_key"]) and all(k.startswith("test/") for k in test["image_key"])
    with pytest.raises(ValueError, match="both splits"):
        check_disjoint_images(train, train.select(range(3)))


def test_attribute_check_multi_hot(train_images):
    rows = build_easy_vqa_attribute_check(train_images, seed=0)
    assert rows["label"] == build_easy_vqa_attribute_check(train_images, seed=0)["label"]
    labels = multi_hot(rows["label"])
    assert labels.shape == (len(rows), len(ATTRIBUTE_CHECK_LABELS)) and labels.dtype == np.float32
    assert set(np.unique(labels)) <= {0.0, 1.0}
    assert labels[:, :2].sum(1).max() <= 1 and labels[:, 2:].sum(1).max() <= 1  # one colour, one shape at most
    for row, hot in zip(rows, labels):
        first, second = row["statement"][len("is it "):].split(", ")
        colors, shapes = first.split(" or "), [w.split()[-1].rstrip("?") for w in second.split(" or ")]
        assert hot.tolist() == [float(c == row["color"]) for c in colors] + [float(s == row["shape"]) for s in shapes]
    # Through the package's collator: multi-hot float labels (B, 4).
    processor = MMProcessor(MMImageProcessor(size={"height": 32, "width": 32}), BertTokenizerFast.from_pretrained(default_tokenizer_path()))
    collator = DataCollatorForImageTextClassification(
        processor, label2id={n: i for i, n in enumerate(ATTRIBUTE_CHECK_LABELS)}, multi_label=True, text_column="statement"
    )
    batch = collator([rows[i] for i in range(4)])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (4, 4)
    assert torch.equal(batch["labels"], torch.from_numpy(labels[:4]))


def test_openclipart_entailment_balanced_and_needs_both():
    data = drawings("train", per_cell=4)
    assert [colour_mode(image) for image in data["image"]] == [m for _ in range(3) for m in COLOUR_MODES for _ in range(4)]
    rows = build_openclipart_entailment(data, ["animals", "food", "signs and symbols"], seed=0)
    assert rows["statement"] == build_openclipart_entailment(data, ["animals", "food", "signs and symbols"], seed=0)["statement"]
    assert len(rows) == 3 * 2 * 4 * 3 and Counter(rows["label"]) == {0: 24, 1: 24, 2: 24}
    by_image = label_balance(rows, "image_key")
    assert by_image["under_all_labels"] == by_image["values"] == 24
    for row in rows:
        category_ok = row["statement"].endswith(row["category_name"])
        mode_ok = f" {row['family']}" in row["statement"]
        expected = "unrelated" if not mode_ok else ("entails" if category_ok else "contradicts")
        assert ENTAILMENT_LABELS[row["label"]] == expected, row
    # Unclear colour modes (None) are left out; given modes replace the pixel check.
    modes = [m if i % 4 else None for i, m in enumerate(colour_mode(image) for image in data["image"])]
    assert len(build_openclipart_entailment(data, ["animals", "food"], modes=modes)) == 2 * 2 * 3 * 3


def test_colour_mode():
    assert colour_mode(np.full((8, 8, 3), 128, dtype=np.uint8)) == "black and white"
    red = np.full((3, 8, 8), 255, dtype=np.uint8)
    red[1:] = 0
    assert colour_mode(red) == "colour"  # (3, H, W) arrays too
    speck = np.full((20, 20, 3), 255, dtype=np.uint8)
    speck[0, :2] = (255, 0, 0)  # 0.5% coloured: neither clearly colour nor grey
    assert colour_mode(speck) is None
    transparent = PIL.Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert colour_mode(transparent) == "black and white"  # composited on white


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: build_easy_vqa_entailment(easy_vqa_images("train", 1).remove_columns("shape")), "missing column.*shape"),
        (lambda: build_easy_vqa_entailment(easy_vqa_images("train", 1), statements_per_image=4), "statements_per_image"),
        (lambda: build_easy_vqa_attribute_check(easy_vqa_images("train", 1), statements_per_image=0), "statements_per_image"),
        (lambda: build_openclipart_entailment(drawings("train", 1), ["animals"]), "at least 2"),
        (lambda: build_openclipart_entailment(drawings("train", 1), ["animals", "planets"]), "planets"),
        (lambda: build_openclipart_entailment(drawings("train", 1), ["animals", "food"], modes=["colour"]), "modes"),
        (lambda: multi_hot([[0], [7]]), "Row 1: label id 7"),
        (lambda: colour_mode(np.zeros((4, 4), dtype=np.uint8)), "RGB"),
    ],
)
def test_bad_inputs_name_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_rows_name_the_row_and_field():
    images = easy_vqa_images("train", 1)
    colors = list(images["color"])
    colors[5] = "purple"
    bad = images.remove_columns("color").add_column("color", colors)
    with pytest.raises(ValueError, match=r"row 5 \(image_id 5\): field 'color' is 'purple'"):
        build_easy_vqa_entailment(bad)
    modes = [colour_mode(image) for image in drawings("train", 1)["image"]]
    modes[2] = "sepia"
    with pytest.raises(ValueError, match=r"modes\[2\] \(drawing food/colour/d0\): 'sepia'"):
        build_openclipart_entailment(drawings("train", 1), ["animals", "food"], modes=modes)
    one_mode = drawings("train", 1).filter(lambda row: "/colour/" in row["path"])
    with pytest.raises(ValueError, match="no drawing for category x mode"):
        build_openclipart_entailment(one_mode, ["animals", "food"])


# ---------------------------------------------------------------------------------------------------- model


def _tiny_config(problem_type: str, num_labels: int) -> MMConfig:
    tower = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return MMConfig(
        fusion="hybrid",
        vision_config=dict(image_size=32, patch_size=8, **tower),
        text_config=dict(vocab_size=30522, max_position_embeddings=32, **tower),
        num_fusion_layers=1,
        num_labels=num_labels,
        problem_type=problem_type,
    )


@pytest.mark.parametrize("multi", [False, True], ids=["single_label", "multi_label"])
def test_classifier_overfits_a_few_pairs(train_images, multi):
    torch.manual_seed(0)
    builder = build_easy_vqa_attribute_check if multi else build_easy_vqa_entailment
    rows = builder(train_images, seed=0).select(range(12))
    processor = MMProcessor(MMImageProcessor(size={"height": 32, "width": 32}), BertTokenizerFast.from_pretrained(default_tokenizer_path()))
    label2id = {n: i for i, n in enumerate(ATTRIBUTE_CHECK_LABELS if multi else ENTAILMENT_LABELS)}
    collator = DataCollatorForImageTextClassification(processor, label2id=label2id, multi_label=multi, text_column="statement")
    batch = collator(list(rows))
    problem = "multi_label_classification" if multi else "single_label_classification"
    model = MMForImageTextClassification(_tiny_config(problem, len(label2id))).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    logits = model.eval()(**{k: v for k, v in batch.items() if k != "labels"}).logits
    if multi:
        assert torch.equal((logits >= 0).float(), batch["labels"])
    else:
        assert torch.equal(logits.argmax(-1), batch["labels"])


# ---------------------------------------------------------------------------------------------------- benchmark


def test_benchmark_quick_writes_the_report(tmp_path, train_images, test_images):
    spec = importlib.util.spec_from_file_location("visual_entailment", ROOT / "benchmarks" / "visual_entailment.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out, results_file = tmp_path / "ve.md", tmp_path / "RESULTS.md"
    results_file.write_text("# Results\n\n## Other\n\nkept\n")
    clipart = DatasetDict({"train": drawings("train", 3), "test": drawings("test", 2, offset=100)})
    results = bench.main(
        ["--quick", "--out", str(out), "--results_file", str(results_file)],
        easy_vqa_images={"train": train_images, "test": test_images},
        drawings=clipart,
    )
    assert set(results["tasks"]) == set(bench.TASKS)
    for task, result in results["tasks"].items():
        assert set(result["rows"]) == set(bench.VARIANTS)
        keys = {"exact_match", "micro_f1", "macro_f1"} if task == "attributes" else {"accuracy", "macro_f1"}
        for row in result["rows"].values():
            assert keys <= set(row) and all(0.0 <= row[k] <= 1.0 for k in keys)
    text = out.read_text()
    assert "python benchmarks/visual_entailment.py --quick" in text
    assert "| task | multimodal acc / macro-F1 | image only acc / macro-F1 | text only acc / macro-F1 |" in text
    assert "| multi-label task | variant | exact match | micro-F1 | macro-F1 |" in text
    for label in bench.TASK_LABELS.values():
        assert label in text
    merged = results_file.read_text()
    assert bench.RESULTS_SECTION_TITLE in merged and "## Other\n\nkept" in merged
