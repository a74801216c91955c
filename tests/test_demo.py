"""The README's main job, at toy size (`--quick`), end to end: every stage runs and the summary is complete."""

import json
import os
import subprocess
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_scripts", "demo.py"), "--quick", "--output_dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    for stage in range(1, 7):
        assert f"[{stage}/6]" in result.stdout
    summary = json.loads((out / "demo_summary.json").read_text())
    for key in ("zero_shot_top1", "vqa_accuracy", "lora_trainable_fraction", "total_seconds"):
        assert isinstance(summary[key], (int, float)), key
    assert 0 < summary["lora_trainable_fraction"] < 0.05
    assert len(summary["pipelines"]) == 3
    for row in summary["pipelines"]:
        assert row["zero_shot"].startswith("a ") and isinstance(row["caption"], str)
        assert set(row["answers"]) == {"what color is the shape?", "what shape is in the image?", "is there a blue shape?"}
    for folder in ("hub_vqa", "hub_captioning"):
        files = os.listdir(out / folder)
        assert "README.md" in files and "model.safetensors" in files and "modeling_mm.py" in files
        assert not any(name.endswith(".bin") for name in files)
    assert "Results (quick smoke run)" in result.stdout and "Outputs:" in result.stdout
