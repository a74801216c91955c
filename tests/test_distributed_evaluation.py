"""Evaluation across processes: under `torchrun --nproc_per_node 2` (gloo, CPU) each process evaluates its block of
the split and the per-row results are gathered, so `mm evaluate`'s zero-shot/retrieval and captioning (generate)
metrics, `mm grounding-eval`'s hit rates and `mm explain --gallery`'s scores equal the one-process ones. The file is
also the worker the launch runs (`python tests/test_distributed_evaluation.py`)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# An odd number of rows: the two processes' blocks differ in size (11 and 10).
NUM_ROWS = 21
TASKS = ("zero_shot", "captioning")


def _evaluate_all(checkpoint: str, out: str) -> None:
    """Runs `mm evaluate` for every task of TASKS on the first NUM_ROWS test rows, results in `out/<task>.json`."""
    from run_scripts.evaluate_model import main

    for task in TASKS:
        main(["--model_name_or_path", checkpoint, "--task", task, "--max_samples", str(NUM_ROWS), "--batch_size", "4",
              "--max_new_tokens", "5", "--device", "cpu", "--output_file", os.path.join(out, f"{task}.json")])
    from evaluation.distributed import is_main_process
    from evaluation.explain import load_explainer, retrieval_scores
    from processing.data import load_easy_vqa
    from run_scripts.explain import main as explain
    from run_scripts.grounding_eval import main as grounding

    # 5 composites = 10 queries in batches of 4: the blocks (5 and 5) split a batch.
    grounding(["--model_name_or_path", checkpoint, "--num_composites", "5", "--batch_size", "4", "--device", "cpu",
               "--output_file", os.path.join(out, "grounding.json")])
    gallery = os.path.join(out, "gallery.png")
    explain(["--model_name_or_path", checkpoint, "--gallery", "--text", "a blue circle", "--max_candidates",
             str(NUM_ROWS), "--device", "cpu", "--output", gallery])
    model, processor = load_explainer(checkpoint)
    images = list(load_easy_vqa(split="test", view="images").select(range(NUM_ROWS))["image"])
    scores = retrieval_scores(model, processor, "a blue circle", images, batch_size=4)
    if is_main_process():
        with open(os.path.join(out, "gallery_scores.json"), "w") as f:
            json.dump(scores.tolist(), f)


def _metrics(out, task: str) -> dict:
    with open(os.path.join(out, f"{task}.json")) as f:
        results = json.load(f)["results"]
    results.pop("eval_seconds")
    return results


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny hybrid pretraining checkpoint (ITC, ITM and captioning heads) with the real MiniLM tokenizer's
    processor."""
    from modeling_mm import MMConfig, MMForPreTraining
    from processing.data import build_default_processor

    path = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37)
    text = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=64)
    config = MMConfig(fusion="hybrid", vision_config=vision, text_config=text, projection_dim=16, num_fusion_layers=1,
                      num_decoder_layers=1, objectives=["itc", "itm", "lm"])
    MMForPreTraining(config).save_pretrained(path)
    build_default_processor(image_size=32).save_pretrained(path)
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_evaluation_gives_the_one_process_metrics(checkpoint, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    _evaluate_all(checkpoint, str(single))

    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         __file__, checkpoint, str(double)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    for task in TASKS:
        one, two = _metrics(single, task), _metrics(double, task)
        assert set(one) == set(two), task
        for key, value in one.items():
            if isinstance(value, float):
                assert two[key] == pytest.approx(value, abs=1e-6), (task, key)
            else:
                assert two[key] == value, (task, key)
    assert _metrics(double, "zero_shot")["num_images"] == NUM_ROWS
    assert _metrics(double, "captioning")["num_images"] == NUM_ROWS
    with open(single / "grounding.json") as f:
        one = json.load(f)
    with open(double / "grounding.json") as f:
        two = json.load(f)
    assert two["num_queries"] == one["num_queries"] == 10
    assert one["methods"] and set(one["methods"]) == set(two["methods"])
    assert one["half_recognition"] is not None and two["half_recognition"] == pytest.approx(one["half_recognition"])
    for name, rates in one["methods"].items():
        for key, value in rates.items():
            assert two["methods"][name][key] == pytest.approx(value, abs=1e-6), (name, key)
    with open(single / "gallery_scores.json") as f:
        one_scores = json.load(f)
    with open(double / "gallery_scores.json") as f:
        two_scores = json.load(f)
    assert len(two_scores) == NUM_ROWS
    assert two_scores == pytest.approx(one_scores, abs=1e-6)
    assert (double / "gallery.png").is_file()


if __name__ == "__main__":
    _evaluate_all(sys.argv[1], sys.argv[2])
