"""`benchmarks/size_sweep.py` on toy models: the report's structure, target statuses computed from the measured numbers,
the fused-loss and compile rows, and the recompilation check. Structure and logic only, never speed.
"""

import math
import sys
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import run_benchmarks as rb  # noqa: E402
from benchmarks import size_sweep as sweep  # noqa: E402


@pytest.fixture(scope="module")
def toy_sweep():
    """One toy point, two repeats, with the data path, profiles, an "ours + fused loss" contender and compile rows.

    The fused contender is forced on: `MMConfig` keeps unknown keyword arguments as attributes, so the contender is
    built and timed like the real one will be (here it computes the plain loss). The compile rows use the "eager"
    backend (dynamo capture without inductor's code generation, which takes minutes per model on a CPU); the counter
    logic is the same.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy shapes gain nothing from threads
    point = sweep.QUICK_POINTS["toy-a"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep, "fused_loss_supported", lambda: True)
        results = sweep.run_sweep(
            [point],
            rb.SIZES["toy"],
            repeats=2,
            loss_chunk_size=4,
            compile_points=[point],
            compile_backend="eager",
            compile_keys=("itc",),
            profile="main",
        )
    torch.set_num_threads(threads)
    return results


def test_every_comparison_is_measured_per_repeat(toy_sweep):
    (point,) = toy_sweep["points"]
    for key, ours, peer, _ in sweep.COMPARISONS:
        assert len(point[key]["ratio"]) == 2 and len(point[key]["work_ratio"]) == 2, key
        assert all(math.isfinite(r) and r > 0 for r in point[key]["ratio"]), key
        assert point[key]["flops_per_sample"][ours] > 0 and point[key]["flops_per_sample"][peer] > 0
    assert len(point["pretrain"]["utilisation"]) == 2
    assert len(point["flip"]["vision_ratio"]) == 2
    # the fused-loss contender ran in the turns of the loss comparisons, and only there
    assert "mm_pretraining+fused" in point["pretrain"]["rows"] and len(point["pretrain"]["fused_ratio"]) == 2
    assert "mm_captioning+fused" in point["caption"]["rows"]
    assert "fused_ratio" not in point["itc"]
    assert set(point["data"]["samples_per_s"]) == {0, 2}


def test_targets_follow_the_measured_numbers(toy_sweep):
    (point,) = toy_sweep["points"]
    assert [t["target"] for t in point["targets"]] == list(sweep.SWEEP_GOALS)
    for target in point["targets"]:
        key, field = sweep._GOAL_SOURCES[target["target"]]
        assert target["value"] == pytest.approx(sorted(point[key][field])[0] / 2 + sorted(point[key][field])[1] / 2)
        assert target["met"] == sweep.target_met(target["value"], target["goal"], target["direction"])
        if target["met"] is False:  # a profile says where the time goes
            assert "/".join(target["profile"]) in point["profiles"]


def test_status_from_fabricated_numbers():
    measured = {
        "pretrain": {"ratio": [1.7, 1.62, 1.55], "utilisation": [0.7, 0.6, 0.64]},
        "caption": {"ratio": [1.4, 1.45, 1.49]},
        "generate": {"ratio": [1.6, 1.7, 1.8]},
        "itc": {"ratio": []},  # not measured
        "flip": {"vision_ratio": [0.30, 0.34, 0.40]},
    }
    rows = {t["target"]: t for t in sweep.evaluate_point(measured)}
    flava = rows["Pretraining step throughput vs FLAVA"]
    assert flava["value"] == 1.62 and flava["met"] is True and flava["met_every_repeat"] is False
    assert flava["range"] == (1.55, 1.7)
    assert rows["Captioning-loss step throughput vs BLIP"]["met"] is False
    generate = rows["Generation tokens/s vs BLIP"]
    assert generate["met"] is True and generate["met_every_repeat"] is True
    assert rows["Late-fusion ITC step throughput vs CLIP"]["met"] is None
    assert rows["Pretraining-step FLOP utilisation (of the matmul rate timed in turns)"]["met"] is False  # 64% < 65%
    flip = rows["FLIP 0.75: vision-tower time vs unmasked"]  # "at most": 0.34 <= 0.35
    assert flip["met"] is True and flip["goal_text"] == "≤ 0.35×"
    assert sweep.target_met(0.36, 0.35, "at most") is False
    assert sweep.target_met(float("nan"), 1.0, "at least") is None


def test_report_section(toy_sweep, tmp_path):
    text = sweep.render_section(toy_sweep, "python benchmarks/size_sweep.py --quick")
    for heading in (
        "## Size sweep",
        "### Targets at every point",
        "### Throughput, FLOPs per sample and work-matched ratios",
        "### Step rate against the data path",
        "### torch.compile",
    ):
        assert heading in text
    assert "python benchmarks/size_sweep.py --quick" in text
    assert "B2 · 4p · 8t" in text
    for name in sweep.SWEEP_GOALS:
        assert f"| {name} |" in text
    assert "ours + fused loss" in text
    assert "compute (" in text or "**data**" in text
    # written between markers, the rest of the file kept; a second write replaces the section
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nearlier sections\n")
    sweep.write_section(out, text)
    sweep.write_section(out, text)
    written = out.read_text()
    assert written.startswith("# Benchmarks\n\nearlier sections\n")
    assert written.count(sweep.SECTION_BEGIN) == 1 and written.count("## Size sweep") == 1


def test_compiled_rows_count_no_recompiles(toy_sweep):
    (compiled,) = toy_sweep["compiled"]
    itc = compiled["comparisons"]["itc"]
    assert set(itc["rows"]) == {"mm_itc", "clip_itc"}
    for row in itc["rows"].values():
        assert row["compiled"]["frames"] >= 1 and len(row["samples_per_s"]) == 2
    assert itc["recompiles"] == 0


def test_recompile_check_detects_a_new_shape():
    # backend="eager": dynamo's capture (and so its counters) without inductor's slow code generation.
    torch._dynamo.reset()
    double = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
    double(torch.ones(3))
    before = sweep.dynamo_counts()
    double(torch.ones(3))
    assert sweep.dynamo_counts()["frames"] == before["frames"]  # same shape: no compilation
    double(torch.ones(5))
    assert sweep.dynamo_counts()["frames"] == before["frames"] + 1  # new shape: recompiled


def test_attention_falls_back_and_gpu_peaks():
    case = rb.build_case("mm_itc", rb.SIZES["toy"])
    assert sweep.apply_attn(case, "flash_attention_2") in ("flash_attention_2", "sdpa")
    flava = rb.build_case("flava_pretraining", rb.SIZES["toy"])
    assert sweep.apply_attn(flava, "sdpa") == "eager"  # FLAVA has no sdpa path in transformers: kept as it is
    assert sweep.gpu_bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert sweep.gpu_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert sweep.gpu_bf16_peak("NVIDIA H200") == 989e12
    assert sweep.gpu_bf16_peak("Some Other GPU") is None
    sizes = sweep.point_sizes(sweep.POINTS["b8-p256-t64"], rb.SIZES["default"])
    assert (sizes.batch_size, sizes.num_patches, sizes.text_length) == (8, 256, 64)
    with pytest.raises(ValueError, match="num_patches"):
        sweep.point_sizes(sweep.SweepPoint("bad", 2, 10, 8), rb.SIZES["toy"])


def test_render_from_saved_json(toy_sweep, tmp_path):
    # --render-json re-renders an earlier run's section from its --json (keys come back as strings), measuring nothing
    import json

    saved = tmp_path / "sweep.json"
    saved.write_text(json.dumps(toy_sweep | {"command": "python benchmarks/size_sweep.py --quick"}, default=str))
    out = tmp_path / "B.md"
    sweep.main(["--render-json", str(saved), "--out", str(out)])
    text = out.read_text()
    assert "python benchmarks/size_sweep.py --quick" in text and "### Step rate against the data path" in text
