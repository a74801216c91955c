"""Smoke test of `benchmarks/run_benchmarks.py`: every measurement runs at a toy size and the report holds its tables.

It checks structure only (keys, finite positive numbers, table headings), never speed.
"""

import importlib.util
import math
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("run_benchmarks", ROOT / "benchmarks" / "run_benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Toy shapes gain nothing from threads, and on a shared CPU spinning OpenMP workers make them seconds slower.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_run(bench, tmp_path_factory):
    plots_dir = tmp_path_factory.mktemp("plots")
    sections = tuple(s for s in bench.ALL_SECTIONS if s != "memory")  # memory has its own, lighter test
    results = bench.run_benchmarks(
        bench.SIZES["toy"], size_name="toy", memory="off", plots_dir=plots_dir, sections=sections
    )
    return results, plots_dir


def _positive(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_every_training_step_is_measured(toy_run):
    results, _ = toy_run
    expected = {"mm_pretraining", "flava_pretraining", "mm_captioning", "blip_captioning", "mm_itc", "clip_itc"}
    assert set(results["train"]) == expected
    for name, row in results["train"].items():
        assert math.isfinite(row["loss"]), name
        assert _positive(row["median_s"]) and _positive(row["samples_per_s"]) and row["cpu_s"] >= 0, name
        assert _positive(row["utilisation"]), name
        assert row["flops"] > 0, name
        assert len(row["times_s"]) == 1  # SIZES["toy"].iters
    assert results["train"]["mm_pretraining"]["attn"] == "sdpa"
    assert results["train"]["flava_pretraining"]["attn"] == "eager"


def test_inference_comparisons(bench, toy_run):
    results, _ = toy_run
    tokens = bench.SIZES["toy"].gen_tokens
    assert {r["new_tokens"] for r in results["generate"].values()} == {tokens}  # both models produce the same count
    assert all(_positive(r["tokens_per_s"]) for r in results["generate"].values())
    assert set(results["embed"]) == {"mm_itc", "clip_itc"}
    assert all(_positive(r["samples_per_s"]) for r in results["embed"].values())


def test_flip_scaling_and_targets(bench, toy_run):
    results, plots_dir = toy_run
    assert [r["mask_ratio"] for r in results["flip"]] == [0.0, 0.5, 0.75]
    kept = [r["kept_patches"] for r in results["flip"]]
    assert kept[0] > kept[1] > kept[2]
    assert len(results["scaling"]["patches"]) == len(bench.SIZES["toy"].scaling_image_sizes)
    assert len(results["scaling"]["text"]) == len(bench.SIZES["toy"].scaling_text_lengths)
    for name in ("scaling_patches.png", "scaling_text.png"):
        assert (plots_dir / name).read_bytes()[:4] == b"\x89PNG"
    assert len(results["targets"]) == len(bench.TARGETS)
    for target in results["targets"]:
        assert target["met"] in (True, False)
        if target["met"] is False:
            assert "/".join(target["profile"]) in results["profiles"]


def test_report_tables(bench, toy_run, tmp_path):
    results, _ = toy_run
    out = tmp_path / "BENCHMARKS.md"
    text = bench.write_report(results, out, "python benchmarks/run_benchmarks.py --toy")
    assert out.read_text() == text
    for heading in (
        "## Machine",
        "## Targets",
        "## 1. Pretraining step",
        "## 2. Captioning-loss step",
        "## 3. Late-fusion ITC step",
        "## 4. Embedding inference",
        "## 5. Caption generation",
        "## 7. FLIP",
        "## 8. Scaling",
    ):
        assert heading in text
    assert "python benchmarks/run_benchmarks.py --toy" in text
    assert "| **throughput (samples/s)** |" in text
    assert text.count("| target | measured | goal | status |") == 1
    for target in bench.TARGETS:
        assert target[0] in text


def test_step_memory_measurement(bench):
    row = bench.measure_step_memory("mm_itc", bench.SIZES["toy"], "cpu")
    assert row["name"] == "mm_itc" and math.isfinite(row["peak_mib"]) and row["peak_mib"] >= 0
