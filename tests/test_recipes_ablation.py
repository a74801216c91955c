"""Smoke test of `benchmarks/recipes_ablation.py` on tiny generated OpenClipArt files and tiny towers (nothing is
downloaded, no Debian data package is needed): every recipe trains through `MMTrainer` and gets its row, and the rows
really differ where their recipes do (the sigmoid's bias, the GradCache negatives, the distillation queue)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from test_real_datasets import _tiny_effnet_dir, _tiny_text_dir, write_openclipart


ROOT = Path(__file__).resolve().parent.parent
RECIPES = ["infonce", "sigmoid", "infonce_md", "infonce_gc", "infonce_b128"]
STEPS = 2


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("recipes_ablation", ROOT / "benchmarks" / "recipes_ablation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(ablation, tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes_ablation")
    # 3 categories x 60 drawings (12 distinct titles), enough for one batch of 128 after 20 are held out.
    png_root, svg_root = write_openclipart(str(root / "openclipart"), per_category=60)
    threads = torch.get_num_threads()
    out = root / "report.md"
    results_file = root / "RESULTS.md"
    results_file.write_text("# Results\n\n## Someone else's section\n\nkept\n")
    try:
        results = ablation.main([
            "--recipes", ",".join(RECIPES),
            "--steps", str(STEPS),
            "--learning_rate", "1e-2",  # the sigmoid bias visibly moves in 2 steps
            "--openclipart_png_dir", png_root,
            "--openclipart_svg_dir", svg_root,
            "--test_size", "20",
            "--max_samples", "1000",
            "--image_size", "32",
            "--projection_dim", "16",
            "--queue_size", "48",
            "--text_model_name_or_path", _tiny_text_dir(str(root / "text")),
            "--effnet_dir", _tiny_effnet_dir(str(root / "effnet")),
            "--num_threads", "1",
            "--output_dir", str(root / "outputs"),
            "--out", str(out),
            "--results_file", str(results_file),
        ])
    finally:
        torch.set_num_threads(threads)
    return results, out, results_file, root


def test_every_recipe_has_a_row_with_metrics_in_range(run):
    results, *_ = run
    assert list(results["rows"]) == RECIPES
    for name, row in results["rows"].items():
        for direction in ("t2i", "i2t"):
            recalls = [row[f"{direction}_recall@{k}"] for k in (1, 5, 10)]
            assert all(0.0 <= r <= 1.0 for r in recalls), (name, recalls)
            assert recalls == sorted(recalls), (name, recalls)  # recall@K never falls with K
        assert math.isfinite(row["final_itc_loss"]) and row["final_itc_loss"] > 0
        assert 1.0 <= row["logit_scale"] <= 100.0
        assert row["steps"] == STEPS
        assert 0 < row["trained_parameters"] < row["parameters"]


def test_rows_really_differ_as_their_recipes_do(run):
    rows = run[0]["rows"]
    # Only the sigmoid model has (and learns) a logit bias; SigLIP initialises it at -10.
    assert rows["sigmoid"]["logit_bias"] is not None and rows["sigmoid"]["logit_bias"] != -10.0
    assert all(rows[n]["logit_bias"] is None for n in RECIPES if n != "sigmoid")
    # Batch 32: every ITC loss over 32 pairs. GradCache 4x32: the loss over all 128 cached pairs (each micro-batch's
    # forward also computes its own 32-pair loss, which no gradient uses), while the towers only ever ran 32 at a
    # time. Plain 128: 128 in one forward.
    assert rows["infonce"]["itc_loss_rows"] == [32] and rows["infonce"]["forward_rows"] == [32]
    assert rows["infonce_gc"]["itc_loss_rows"] == [32, 128] and rows["infonce_gc"]["forward_rows"] == [32]
    assert rows["infonce_b128"]["itc_loss_rows"] == [128] and rows["infonce_b128"]["forward_rows"] == [128]
    assert rows["infonce_gc"]["pairs_seen"] == rows["infonce_b128"]["pairs_seen"] == 4 * rows["infonce"]["pairs_seen"]
    # Momentum distillation scores against the teacher and its queue (the plain ITC loss never runs); the queue
    # holds every pair seen, up to its size.
    assert rows["infonce_md"]["itc_loss_rows"] == []
    assert rows["infonce_md"]["queue_filled"] == min(48, STEPS * 32)
    # GradCache trains the batch of 128 exactly (frozen BatchNorm, no dropout): same loss and temperature.
    gc, plain = rows["infonce_gc"], rows["infonce_b128"]
    assert gc["final_itc_loss"] == pytest.approx(plain["final_itc_loss"], abs=1e-3)
    assert gc["logit_scale"] == pytest.approx(plain["logit_scale"], abs=1e-3)
    assert gc["final_itc_loss"] != rows["infonce"]["final_itc_loss"]


def test_same_pairs_in_the_same_order_for_every_recipe(run):
    rows = run[0]["rows"]
    # The pairs read, in order (the data loader also reads one batch ahead): the first 2 x 32 are those of
    # both batch-32 steps, the first 2 x 128 those of both batch-128 steps.
    first = rows["infonce"]["order"][: STEPS * 32]
    assert len(first) == STEPS * 32 and len(set(first)) == len(first)
    for name in RECIPES:
        assert rows[name]["order"][: len(first)] == first, name


def test_report_files(run):
    results, out, results_file, root = run
    text = out.read_text()
    assert text.startswith("## Pretraining recipes on real images")
    assert "Command: `python benchmarks/recipes_ablation.py --recipes" in text
    for row in results["rows"].values():
        assert row["label"] in text
    saved = json.loads((root / "outputs" / "results.json").read_text())
    assert list(saved["rows"]) == RECIPES
    assert "| 128 | 256 |" in text  # the GradCache and batch-128 rows: 128 negatives, 2 steps x 128 pairs
    # The RESULTS.md section is appended; the other sections are kept.
    merged = results_file.read_text()
    assert "## Someone else's section\n\nkept" in merged and text.strip() in merged
