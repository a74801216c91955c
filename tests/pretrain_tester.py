"""Tiny pretraining runs of `mm pretrain` (`run_scripts/pretrain.py`) for the reliability tests (resume, crash safety, security).

A run uses a 1-layer, 32-wide BERT text tower saved next to the real MiniLM WordPiece tokenizer files, a 1-layer
32-wide built-in ViT on 32 px images (8 px patches), 64 easy-VQA images and batches of 8: one step takes a fraction
of a second on one CPU thread.
"""

import json
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def save_tiny_text_tower(folder: str) -> str:
    """A random 1-layer BERT (hidden 32, 4 heads) plus the real MiniLM tokenizer files, saved to `folder`."""
    import torch
    from transformers import BertConfig, BertModel

    from processing.data import default_tokenizer_path

    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    source = default_tokenizer_path()
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(folder, name))
    return folder


def tiny_pretrain_args(text_tower: str, output_dir: str, **overrides) -> list[str]:
    """Command-line arguments of a tiny, deterministic CPU run: seed 0, fp32, no workers, log every step.

    `overrides` replace or add options (`max_steps=8` -> `--max_steps 8`, a list gives several values); a value of
    `None` drops the option.
    """
    options = {
        "text_model_name_or_path": text_tower,
        "output_dir": output_dir,
        "image_size": 32,
        "patch_size": 8,
        "vision_hidden_size": 32,
        "vision_num_layers": 1,
        "vision_num_heads": 4,
        "num_fusion_layers": 1,
        "num_decoder_layers": 1,
        "projection_dim": 16,
        "objectives": ["itc", "itm", "mlm"],
        "max_train_samples": 64,
        "per_device_train_batch_size": 8,
        "max_length": 16,
        "max_steps": 8,
        "save_steps": 4,
        "logging_steps": 1,
        "warmup_steps": 0,
        "learning_rate": 1e-3,
        "seed": 0,
        "dataloader_num_workers": 0,
        "zero_shot_eval": "false",
        "report_to": "none",
        "use_cpu": "true",
        "disable_tqdm": "true",
    }
    options.update(overrides)
    args = []
    for key, value in options.items():
        if isinstance(value, (list, tuple)):
            args += [f"--{key}", *map(str, value)]
        elif value is not None:
            args += [f"--{key}", str(value)]
    return args


def step_losses(trainer_state: str | dict) -> dict[int, float]:
    """`{step: loss}` of every training log row of a `trainer_state.json` (path or dict)."""
    if isinstance(trainer_state, str):
        with open(trainer_state, encoding="utf-8") as f:
            trainer_state = json.load(f)
    return {row["step"]: row["loss"] for row in trainer_state["log_history"] if "loss" in row}


def subprocess_env() -> dict[str, str]:
    """Environment of a `pretrain.py` child: one thread, offline, the repository importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


def pretrain_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "run_scripts.pretrain", *args]
