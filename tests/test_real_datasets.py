"""Tests for the real-image loaders (Fashion-MNIST idx files, OpenClipArt PNG + SVG trees) and the real-image
benchmark, on tiny generated files: none of them needs the Debian data packages."""

import gzip
import json
import os

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from processing.collators import BadSampleCounter
from processing.real_datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_TEMPLATES,
    DatasetNotInstalledError,
    fashion_mnist_caption,
    load_fashion_mnist,
    load_openclipart,
    read_idx,
    read_svg_metadata,
    require_dataset_dir,
)
from training.real_benchmark import (
    RESULTS_SECTION_TITLE,
    linear_probe_accuracy,
    update_results_section,
    zero_shot_accuracy,
)


# ---------------------------------------------------------------------------------------------------- fixtures


def _idx_bytes(array: np.ndarray) -> bytes:
    # idx header: two zero bytes, dtype 0x08 (uint8), the number of dimensions, then each size as big-endian int32.
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(directory, num_train: int = 40, num_test: int = 20, gz: bool = True, seed: int = 0) -> str:
    """Tiny Fashion-MNIST idx files; each image is filled with 20 * its label so tests can check the pairing."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = np.repeat((labels * 20).astype(np.uint8)[:, None, None], 28, 1).repeat(28, 2)  # (n, 28, 28)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = os.path.join(directory, f"{prefix}-{kind}-ubyte")
            data = _idx_bytes(array)
            if gz:
                with gzip.open(path + ".gz", "wb") as f:
                    f.write(data)
            else:
                with open(path, "wb") as f:
                    f.write(data)
    return str(directory)


_SVG = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <metadata><rdf:RDF><cc:Work rdf:about="">{title}<dc:description>{description}</dc:description>
    <dc:subject><rdf:Bag><rdf:li>{keyword}</rdf:li><rdf:li></rdf:li></rdf:Bag></dc:subject>
  </cc:Work></rdf:RDF></metadata>
  <rect width="10" height="10"/>
</svg>
"""


def write_openclipart(root, per_category: int = 12) -> tuple[str, str]:
    """A tiny OpenClipArt layout: 3 categories (one with a sub-folder), an `unsorted` folder, a symbolic link, and
    four bad files (a broken PNG, an SVG without a title, an unparsable SVG, a PNG without an SVG)."""
    png_root, svg_root = os.path.join(root, "png"), os.path.join(root, "svg")
    colours = {"animals": (200, 30, 30), "food": (30, 200, 30), "signs_and_symbols": (30, 30, 200)}
    for category, colour in colours.items():
        for i in range(per_category):
            sub = os.path.join(category, "birds") if category == "animals" and i % 2 else category
            os.makedirs(os.path.join(png_root, sub), exist_ok=True)
            os.makedirs(os.path.join(svg_root, sub), exist_ok=True)
            mode = "RGBA" if i % 3 == 0 else "RGB"
            PIL.Image.new(mode, (12 + i, 10), (*colour, 255)[: len(mode)]).save(os.path.join(png_root, sub, f"d{i}.png"))
            with open(os.path.join(svg_root, sub, f"d{i}.svg"), "w") as f:
                f.write(_SVG.format(title=f"<dc:title>{category} drawing {i % 4}</dc:title>",
                                    description="HASH(0x853142c)" if i == 1 else f"number {i}", keyword=category))
    os.makedirs(os.path.join(png_root, "unsorted"), exist_ok=True)
    os.makedirs(os.path.join(svg_root, "unsorted"), exist_ok=True)
    PIL.Image.new("RGB", (8, 8)).save(os.path.join(png_root, "unsorted", "u.png"))
    with open(os.path.join(svg_root, "unsorted", "u.svg"), "w") as f:
        f.write(_SVG.format(title="<dc:title>u</dc:title>", description="", keyword="x"))
    # A link from food/ to a drawing filed under animals/: loaded once, at its real path.
    os.symlink(os.path.join(png_root, "animals", "d0.png"), os.path.join(png_root, "food", "link.png"))
    with open(os.path.join(svg_root, "food", "link.svg"), "w") as f:
        f.write(_SVG.format(title="<dc:title>link</dc:title>", description="", keyword="x"))
    # Bad files.
    with open(os.path.join(png_root, "food", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really a png")
    with open(os.path.join(svg_root, "food", "broken.svg"), "w") as f:
        f.write(_SVG.format(title="<dc:title>broken</dc:title>", description="", keyword="x"))
    PIL.Image.new("RGB", (8, 8)).save(os.path.join(png_root, "food", "untitled.png"))
    with open(os.path.join(svg_root, "food", "untitled.svg"), "w") as f:
        f.write(_SVG.format(title="", description="no title here", keyword="x"))
    PIL.Image.new("RGB", (8, 8)).save(os.path.join(png_root, "food", "badxml.png"))
    with open(os.path.join(svg_root, "food", "badxml.svg"), "w") as f:
        f.write("<svg><metadata>")
    PIL.Image.new("RGB", (8, 8)).save(os.path.join(png_root, "animals", "nosvg.png"))
    return png_root, svg_root


@pytest.fixture(scope="module")
def clipart(tmp_path_factory):
    return write_openclipart(str(tmp_path_factory.mktemp("openclipart")))


# ---------------------------------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_gz_and_plain(tmp_path, gz):
    directory = write_fashion_mnist(tmp_path / "fm", gz=gz)
    train = load_fashion_mnist(directory, "train")
    test = load_fashion_mnist(directory, "test")
    assert isinstance(train, datasets.Dataset) and len(train) == 40 and len(test) == 20
    assert train.column_names == ["image", "label", "class_name", "caption", "index"]
    assert train.features["label"].names == list(FASHION_MNIST_CLASSES)
    row = train[3]
    image = row["image"]
    assert image.mode == "RGB" and image.size == (28, 28)
    # Grey copied to three channels, and the image is the one of its label (filled with 20 * label).
    assert np.all(np.asarray(image) == 20 * row["label"])
    assert row["class_name"] == FASHION_MNIST_CLASSES[row["label"]]
    name_in_caption = fashion_mnist_caption(row["label"], 0).removeprefix("a photo of a ").rstrip(".")
    assert name_in_caption in row["caption"]
    assert any(row["caption"] == t.format(name_in_caption) for t in FASHION_MNIST_TEMPLATES)


def test_fashion_mnist_caption_templates():
    assert fashion_mnist_caption(5) == "a photo of a sandal."
    assert fashion_mnist_caption(1, 1) == "a black and white photo of a pair of trousers."
    assert len(FASHION_MNIST_TEMPLATES) >= 3


def test_fashion_mnist_seeded_subset(tmp_path):
    directory = write_fashion_mnist(tmp_path / "fm", num_train=100)
    a = load_fashion_mnist(directory, "train", max_samples=30, seed=1)
    b = load_fashion_mnist(directory, "train", max_samples=30, seed=1)
    c = load_fashion_mnist(directory, "train", max_samples=30, seed=2)
    assert len(a) == 30 and list(a["index"]) == list(b["index"]) and list(a["caption"]) == list(b["caption"])
    assert list(a["index"]) != list(c["index"])
    assert list(a["index"]) == sorted(list(a["index"]))  # kept in file order
    assert len(load_fashion_mnist(directory, "train", max_samples=1000)) == 100


def test_read_idx_errors_name_the_file(tmp_path):
    path = tmp_path / "bad-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x01\x02")  # header says 5, 2 follow
    with pytest.raises(ValueError, match="bad-ubyte.*5"):
        read_idx(str(path))
    path.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(str(path))
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(write_fashion_mnist(tmp_path / "fm"), "validation")


# ---------------------------------------------------------------------------------------------------- missing data


def test_missing_directory_names_the_debian_package(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(DatasetNotInstalledError, match="dataset-fashion-mnist") as err:
        load_fashion_mnist(missing)
    assert "apt-get install dataset-fashion-mnist" in str(err.value) and missing in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DatasetNotInstalledError, match="openclipart-png"):
        load_openclipart(missing, missing)
    png_root = tmp_path / "png"
    png_root.mkdir()
    with pytest.raises(DatasetNotInstalledError, match="openclipart-svg"):
        load_openclipart(str(png_root), missing)


def test_install_missing_runs_apt_get_only_when_asked(tmp_path, monkeypatch):
    import processing.real_datasets as real_datasets

    calls = []
    target = tmp_path / "installed"
    monkeypatch.setattr(real_datasets.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(real_datasets.os, "geteuid", lambda: 0)
    monkeypatch.setattr(real_datasets.subprocess, "run", lambda cmd, check: calls.append(cmd) or target.mkdir())
    with pytest.raises(DatasetNotInstalledError, match="install_missing"):
        require_dataset_dir(str(target), "dataset-fashion-mnist")
    assert calls == []
    assert require_dataset_dir(str(target), "dataset-fashion-mnist", install_missing=True) == str(target)
    assert calls == [["apt-get", "install", "-y", "dataset-fashion-mnist"]]


# ---------------------------------------------------------------------------------------------------- OpenClipArt


def test_svg_metadata(clipart):
    _, svg_root = clipart
    meta = read_svg_metadata(os.path.join(svg_root, "food", "d2.svg"))
    assert meta == {"title": "food drawing 2", "description": "number 2", "keywords": ["food"]}
    assert read_svg_metadata(os.path.join(svg_root, "animals", "birds", "d1.svg"))["description"] == ""  # HASH(0x..)


def test_openclipart_pairs_categories_and_split(clipart):
    png_root, svg_root = clipart
    data = load_openclipart(png_root, svg_root, test_size=10, seed=0)
    train, test = data["train"], data["test"]
    assert len(train) + len(test) == 36 and len(test) == 10  # 3 x 12 drawings; link, unsorted and bad files out
    assert train.features["category"].names == ["animals", "food", "signs_and_symbols"]
    paths = list(train["path"]) + list(test["path"])
    assert len(set(paths)) == 36 and not any(p.startswith("unsorted") or p.endswith("link") for p in paths)
    assert "animals/birds/d1" in paths  # top-level folder is the category, sub-folders included
    row = next(r for r in train if r["path"] == "animals/birds/d1") if "animals/birds/d1" in list(train["path"]) else None
    row = row or next(r for r in test if r["path"] == "animals/birds/d1")
    assert row["category_name"] == "animals" and row["caption"] == row["title"] == "animals drawing 1"
    assert row["image"].size == (13, 10) and row["keywords"] == ["animals"]
    names = {row["category"]: row["category_name"] for row in train}
    assert "signs and symbols" in names.values()
    # Fixed, seeded split: same seed -> same split, another seed -> another one.
    again = load_openclipart(png_root, svg_root, test_size=10, seed=0)
    assert list(again["test"]["path"]) == list(test["path"]) and list(again["train"]["path"]) == list(train["path"])
    other = load_openclipart(png_root, svg_root, test_size=10, seed=1)
    assert list(other["test"]["path"]) != list(test["path"])
    assert sorted(list(other["test"]["path"]) + list(other["train"]["path"])) == sorted(paths)
    with pytest.raises(ValueError, match="test_size"):
        load_openclipart(png_root, svg_root, test_size=36)


def test_openclipart_bad_files_named_and_counted(clipart, caplog):
    png_root, svg_root = clipart
    bad = BadSampleCounter("clipart")
    with caplog.at_level("WARNING"):
        load_openclipart(png_root, svg_root, test_size=5, bad_samples=bad)
    assert bad.count == 4
    report = "\n".join(bad.samples)
    assert "png food/broken.png: unreadable PNG" in report
    assert "svg food/untitled.svg: no dc:title" in report
    assert "svg food/badxml.svg: not parsable XML" in report
    assert "png animals/nosvg.png: no SVG" in report
    assert "untitled.svg" in caplog.text and "skipped 4 sample(s)" in caplog.text
    # Oversized PNGs are named too.
    bad_large = BadSampleCounter()
    load_openclipart(png_root, svg_root, test_size=5, bad_samples=bad_large, max_pixels=150)
    assert any("px is over max_pixels=150" in s for s in bad_large.samples)


# ---------------------------------------------------------------------------------------------------- benchmark pieces


def test_zero_shot_and_linear_probe():
    class_embeds = torch.eye(4)
    labels = torch.tensor([0, 1, 2, 3, 3])
    image_embeds = torch.eye(4)[[0, 1, 3, 3, 3]]  # image 2 (label 2) looks like class 3
    assert zero_shot_accuracy(image_embeds, class_embeds, labels) == pytest.approx(0.8)
    assert zero_shot_accuracy(image_embeds, class_embeds, labels, classes=[2, 3]) == pytest.approx(2 / 3)
    # On held-out classes only the held-out prompts compete: class 0's image is right among {0, 1}.
    assert zero_shot_accuracy(image_embeds, class_embeds, labels, classes=[0, 1]) == 1.0
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=generator) * 4
    y = torch.arange(300) % 3
    x = centres[y] + torch.randn(300, 8, generator=generator)
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.95


def test_update_results_section_replaces_only_its_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nintro\n\n## Other\n\nkeep me\n")
    update_results_section(str(path), f"{RESULTS_SECTION_TITLE}\n\nfirst\n")
    update_results_section(str(path), f"{RESULTS_SECTION_TITLE}\n\nsecond\n")
    text = path.read_text()
    assert text.count(RESULTS_SECTION_TITLE) == 1 and "second" in text and "first" not in text
    assert text.startswith("# Results\n\nintro\n\n## Other\n\nkeep me\n")
    path.write_text(f"# Results\n\n{RESULTS_SECTION_TITLE}\n\nold\n\n## Later\n\nstays\n")
    update_results_section(str(path), f"{RESULTS_SECTION_TITLE}\n\nnew\n")
    assert path.read_text() == f"# Results\n\n{RESULTS_SECTION_TITLE}\n\nnew\n\n## Later\n\nstays\n"


def _tiny_effnet_dir(directory: str) -> str:
    from modeling_mm import MMEfficientNetLiteConfig, MMEfficientNetLiteModel

    config = MMEfficientNetLiteConfig(
        image_size=32, stem_channels=8, stage_channels=[8, 12, 16], stage_depths=[1, 1, 1], stage_strides=[1, 2, 2],
        stage_kernel_sizes=[3, 3, 3], stage_expand_ratios=[1, 2, 2], hidden_size=32,
    )
    MMEfficientNetLiteModel(config).save_pretrained(directory)
    return directory


def _tiny_text_dir(directory: str) -> str:
    # A 1-layer text tower with the real WordPiece tokenizer: the benchmark's text path without MiniLM's load time.
    from transformers import BertTokenizerFast

    from modeling_mm import MMTextConfig, MMTextModel
    from processing.data import default_tokenizer_path

    config = MMTextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    MMTextModel(config).save_pretrained(directory)
    BertTokenizerFast.from_pretrained(default_tokenizer_path()).save_pretrained(directory)
    return directory


def test_recalibrate_batch_norm_resets_statistics(tmp_path):
    from training.real_benchmark import build_tower_model, recalibrate_batch_norm

    model = build_tower_model(
        "effnet_lite0_scratch", _tiny_text_dir(str(tmp_path / "text")), 32, 16, _tiny_effnet_dir(str(tmp_path / "e"))
    )
    norms = [m for m in model.vision_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(float(m.running_var.mean()) == 1.0 for m in norms)
    momentum = norms[0].momentum
    model.eval()
    pixels = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert recalibrate_batch_norm(model, pixels, batch_size=16, num_batches=2) == len(norms)
    assert float(norms[0].running_var.mean()) != 1.0 and norms[0].momentum == momentum
    assert int(norms[0].num_batches_tracked) == 2 and not model.vision_model.training


@pytest.mark.slow
def test_benchmark_quick_end_to_end(tmp_path, clipart):
    from run_scripts.real_benchmark import main

    png_root, svg_root = clipart
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Results\n\n## Kept\n\nuntouched\n")
    out = tmp_path / "out"
    results = main([
        "--quick",
        "--fashion_mnist_dir", write_fashion_mnist(tmp_path / "fm", num_train=60, num_test=30),
        "--openclipart_png_dir", png_root,
        "--openclipart_svg_dir", svg_root,
        "--openclipart_test_size", "12",
        "--effnet_dir", _tiny_effnet_dir(str(tmp_path / "effnet")),
        "--text_model_name_or_path", _tiny_text_dir(str(tmp_path / "text")),
        "--output_dir", str(out),
        "--results_file", str(results_md),
        "--num_threads", "1",
    ])
    saved = json.loads((out / "results.json").read_text())
    for dataset in ("fashion_mnist", "openclipart"):
        assert set(saved[dataset]["towers"]) == {"effnet_lite0_locked", "effnet_lite0_scratch", "vit_scratch"}
        for tower, row in saved[dataset]["towers"].items():
            assert "blocked" not in row, (dataset, tower, row)
            assert np.isfinite(row["final_loss"])
    fm = saved["fashion_mnist"]["towers"]["vit_scratch"]
    assert 0.0 <= fm["zero_shot_heldout_top1"] <= 1.0 and 0.0 <= fm["linear_probe_top1"] <= 1.0
    oc = saved["openclipart"]["towers"]["effnet_lite0_locked"]
    assert {"t2i_recall@1", "t2i_recall@5", "t2i_recall@10", "i2t_recall@10", "zero_shot_category_top1"} <= set(oc)
    assert saved["openclipart"]["setup"]["unusable_files"] == 4
    # The locked tower trains only its projections (+ temperature); the scratch towers train their vision tower.
    locked = saved["fashion_mnist"]["towers"]["effnet_lite0_locked"]
    assert locked["trainable_parameters"] < saved["fashion_mnist"]["towers"]["effnet_lite0_scratch"]["trainable_parameters"]
    text = results_md.read_text()
    assert text.startswith("# Results\n\n## Kept\n\nuntouched\n") and RESULTS_SECTION_TITLE in text
    assert "text->image R@1" in text and "held-out" in text
    assert [t["target"] for t in results["targets"]][0].startswith("OpenClipArt")
    # --render_only rewrites the section from results.json alone.
    results_md.write_text("# Results\n\n## Kept\n\nuntouched\n")
    main(["--render_only", "--output_dir", str(out), "--results_file", str(results_md)])
    assert results_md.read_text() == text
