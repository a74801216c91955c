"""Benchmarks of the MM model family against transformers' FLAVA, BLIP and CLIP at matched dimensions.

Every model is randomly initialised from a config (nothing is downloaded) and measured in the same run:

1. pretraining step (forward + backward + AdamW): `MMForPreTraining` (hybrid; itc+itm+mlm) vs `FlavaForPreTraining`;
2. captioning-loss step: `MMForConditionalGeneration` vs `BlipForConditionalGeneration`;
3. late-fusion ITC step: `MMForPreTraining(fusion="late", objectives=["itc"])` vs `CLIPModel`;
4. embedding inference (get_image_features + get_text_features): the same two;
5. greedy caption `generate()` tokens/s vs `BlipForConditionalGeneration.generate`;
6. peak memory of each training step, and what gradient checkpointing saves on ours;
7. FLIP: step time and vision-tower time at image_mask_ratio 0 / 0.5 / 0.75;
8. scaling of the pretraining step with the number of image patches and the text length (PNG plots);
plus FLOP utilisation (FlopCounterMode FLOPs / step time / the matmul peak measured in this run), the targets, and a
torch.profiler summary of our step behind every missed target.

Usage:
    python benchmarks/run_benchmarks.py [--quick] [--device cpu|cuda] [--out BENCHMARKS.md]

Timings are the median of `iters` timed calls after `warmup` untimed ones, ours and the peer called in turns. fp32 on
CPU, bf16 autocast on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


# On a shared CPU, OpenMP workers that spin at barriers lose their core to other processes and then stall every other
# worker: steps get 10x slower and erratic. Passive waiting keeps timings stable; set OMP_WAIT_POLICY to override.
# It must be set before torch loads its OpenMP runtime, and only when run as a script (importers keep their own).
if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402


ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    BlipConfig,
    BlipForConditionalGeneration,
    CLIPConfig,
    CLIPModel,
    FlavaConfig,
    FlavaForPreTraining,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from modeling_mm import MMConfig, MMForConditionalGeneration, MMForPreTraining  # noqa: E402
from modeling_mm.modeling_mm_pretraining import random_keep_indices  # noqa: E402


__all__ = [
    "ALL_SECTIONS",
    "SIZES",
    "BenchSizes",
    "Case",
    "build_case",
    "compare_inference",
    "compare_training",
    "count_step_flops",
    "make_vision_fn",
    "matmul_peak_flops",
    "measure_step_memory",
    "profile_case",
    "run_benchmarks",
    "time_interleaved",
    "write_report",
]

# Token ids shared by every model (BERT WordPiece layout): [PAD]=0, [CLS]=101, [SEP]=102, [MASK]=103.
PAD, CLS, SEP, MASK = 0, 101, 102, 103
FIRST_WORD_ID = 1000  # random "words" are drawn from [1000, vocab)


# ----------------------------------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class BenchSizes:
    r"""
    Dimensions shared by every model of a comparison, and how long to measure.

    Args:
        hidden_size, num_layers, num_heads, intermediate_size: Every tower (vision, text, fusion, decoder) uses these.
        num_fusion_layers: Ours: hybrid cross-attention layers; FLAVA: multimodal encoder layers.
        num_decoder_layers: Ours: captioning decoder layers; BLIP: text decoder layers.
        image_size, patch_size, text_length, batch_size, vocab_size, projection_dim: Inputs and heads.
        gen_tokens: New tokens per caption in the generation benchmark (min_new_tokens = max_new_tokens).
        warmup, iters: Untimed and timed calls of every measurement; the median of the timed ones is reported.
        scaling_image_sizes, scaling_text_lengths: Points of the scaling curves.
        scaling_iters: Timed calls per scaling point (one warmup call each).
        matmul_size: Side of the square fp32 (bf16 on CUDA) torch.mm that measures the machine's matmul peak.
        profile_steps: Steps recorded by torch.profiler for each missed target.
    """

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    num_fusion_layers: int = 2
    num_decoder_layers: int = 2
    image_size: int = 128
    patch_size: int = 16
    text_length: int = 32
    batch_size: int = 8
    vocab_size: int = 30522
    projection_dim: int = 256
    gen_tokens: int = 16
    warmup: int = 2
    iters: int = 9
    scaling_image_sizes: tuple[int, ...] = (64, 96, 128, 160, 192)
    scaling_text_lengths: tuple[int, ...] = (16, 32, 64, 128)
    scaling_iters: int = 2
    matmul_size: int = 2048
    profile_steps: int = 2

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SIZES: dict[str, BenchSizes] = {
    # The default CPU run: small enough for ~6 minutes on 2 cores, big enough that matmuls dominate.
    "default": BenchSizes(),
    # `--quick`: a toy size that checks the whole pipeline in well under a minute.
    "quick": BenchSizes(
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=256,
        num_fusion_layers=1,
        num_decoder_layers=1,
        image_size=64,
        patch_size=16,
        text_length=16,
        batch_size=4,
        vocab_size=4096,
        projection_dim=64,
        gen_tokens=8,
        warmup=1,
        iters=3,
        scaling_image_sizes=(32, 64, 96),
        scaling_text_lengths=(8, 16, 32),
        scaling_iters=1,
        matmul_size=1024,
        profile_steps=1,
    ),
    # Used by tests/test_benchmarks_smoke.py: the smallest size every model accepts.
    "toy": BenchSizes(
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        num_fusion_layers=1,
        num_decoder_layers=1,
        image_size=32,
        patch_size=16,
        text_length=8,
        batch_size=2,
        vocab_size=1024,
        projection_dim=16,
        gen_tokens=3,
        warmup=1,
        iters=1,
        scaling_image_sizes=(32, 48),
        scaling_text_lengths=(8, 12),
        scaling_iters=1,
        matmul_size=128,
        profile_steps=1,
    ),
}


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------


def make_text(sizes: BenchSizes, length: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A padded batch `[CLS] words [SEP] [PAD]...` (lengths vary from full to half) plus its 15% MLM-masked copy."""
    length = length or sizes.text_length
    gen = torch.Generator().manual_seed(seed)
    batch = sizes.batch_size
    input_ids = torch.randint(FIRST_WORD_ID, sizes.vocab_size, (batch, length), generator=gen)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(batch):
        real = max(3, length - (i % 4) * length // 8)  # (B,) real lengths: L, 7L/8, 3L/4, 5L/8, L, ...
        input_ids[i, real - 1] = SEP
        input_ids[i, real:] = PAD
        attention_mask[i, real:] = 0
    input_ids[:, 0] = CLS
    maskable = (input_ids >= FIRST_WORD_ID) & attention_mask.bool()
    masked = maskable & (torch.rand(batch, length, generator=gen) < 0.15)
    masked[:, 1] = True  # at least one target per row
    mlm_labels = torch.where(masked, input_ids, torch.full_like(input_ids, -100))
    mlm_input_ids = input_ids.masked_fill(masked, MASK)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mlm_input_ids": mlm_input_ids,
        "mlm_labels": mlm_labels,
    }


def make_pixels(sizes: BenchSizes, image_size: int | None = None, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    side = image_size or sizes.image_size
    return torch.randn(sizes.batch_size, 3, side, side, generator=gen)  # (B, 3, H, W)


# ----------------------------------------------------------------------------------------------------------------------
# Models: one builder per benchmarked model, all at the same dimensions
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    r"""
    One benchmarked model with its inputs.

    Args:
        name: Key in `BUILDERS` (`mm_pretraining`, `flava_pretraining`, ...).
        label: Human-readable model description for the tables.
        model: The randomly initialised model (already on the device, in train mode).
        inputs: Keyword inputs of `loss_fn` (already on the device).
        loss_fn: `(model, inputs) -> scalar loss` for one training forward.
        breakdown: Module-name prefixes whose forward time is reported in profiles.
    """

    name: str
    label: str
    model: nn.Module
    inputs: dict[str, torch.Tensor]
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    breakdown: tuple[str, ...] = ()

    @property
    def attn_implementation(self) -> str:
        return self.model.config._attn_implementation or "eager"

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _mm_tower_dicts(sizes: BenchSizes, image_size: int | None = None) -> tuple[dict, dict]:
    common = dict(
        hidden_size=sizes.hidden_size,
        num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads,
        intermediate_size=sizes.intermediate_size,
        hidden_dropout_prob=0.0,  # the peers default to no dropout; so do we here
        attention_probs_dropout_prob=0.0,
    )
    vision = dict(common, image_size=image_size or sizes.image_size, patch_size=sizes.patch_size)
    text = dict(common, vocab_size=sizes.vocab_size, max_position_embeddings=max(512, *sizes.scaling_text_lengths))
    return vision, text


def build_mm_pretraining(
    sizes: BenchSizes, image_size: int | None = None, config_overrides: dict | None = None
) -> Case:
    vision, text = _mm_tower_dicts(sizes, image_size)
    config = MMConfig(
        fusion="hybrid",
        vision_config=vision,
        text_config=text,
        num_fusion_layers=sizes.num_fusion_layers,
        # No "lm" objective here, so no decoder: MMForPreTraining would otherwise build an idle one.
        num_decoder_layers=0,
        projection_dim=sizes.projection_dim,
        objectives=["itc", "itm", "mlm"],  # FLIP is off here; run_flip() sets image_mask_ratio
        **(config_overrides or {}),  # e.g. size_sweep.py's --loss-chunk-size
    )
    model = MMForPreTraining(config)
    text_inputs = make_text(sizes)
    inputs = dict(text_inputs, pixel_values=make_pixels(sizes, image_size))
    return Case(
        name="mm_pretraining",
        label="MMForPreTraining (hybrid; itc + itm + mlm)",
        model=model,
        inputs=inputs,
        loss_fn=lambda m, x: m(**x).loss,
        breakdown=("mm.vision_model", "mm.text_model", "mm.fusion_layers", "mlm_head", "itm_head"),
    )


def build_flava_pretraining(sizes: BenchSizes, image_size: int | None = None) -> Case:
    def tower(**extra) -> dict:
        return dict(
            hidden_size=sizes.hidden_size,
            num_hidden_layers=sizes.num_layers,
            num_attention_heads=sizes.num_heads,
            intermediate_size=sizes.intermediate_size,
            **extra,
        )

    side = image_size or sizes.image_size
    config = FlavaConfig(
        image_config=tower(image_size=side, patch_size=sizes.patch_size),
        text_config=tower(vocab_size=sizes.vocab_size, max_position_embeddings=max(512, *sizes.scaling_text_lengths)),
        multimodal_config=dict(tower(), num_hidden_layers=sizes.num_fusion_layers),
        hidden_size=sizes.hidden_size,
        projection_dim=sizes.projection_dim,
        # MIM needs the DALL-E codebook (not downloadable here) and has no counterpart in ours: both image
        # objectives are off, and the codebook is not built.
        init_codebook=False,
        mim_weight=0.0,
        mmm_image_weight=0.0,
    )
    model = FlavaForPreTraining(config)
    text_inputs = make_text(sizes)
    batch, patches = sizes.batch_size, (side // sizes.patch_size) ** 2
    inputs = {
        "input_ids": text_inputs["input_ids"],
        "input_ids_masked": text_inputs["mlm_input_ids"],
        "attention_mask": text_inputs["attention_mask"],
        "mlm_labels": text_inputs["mlm_labels"],
        "pixel_values": make_pixels(sizes, image_size),
        # FLAVA's collator puts its ITM negatives into the batch: every other pair is labelled a mismatch.
        "itm_labels": (torch.arange(batch) % 2 == 0).long(),
        # No image patch is masked and every MIM label is ignored: these only satisfy FLAVA's codebook check.
        "bool_masked_pos": torch.zeros(batch, patches, dtype=torch.bool),
        "mim_labels": torch.full((batch, patches), -100, dtype=torch.long),
    }
    return Case(
        name="flava_pretraining",
        label="FlavaForPreTraining (global contrastive + itm + mmm_text)",
        model=model,
        inputs=inputs,
        loss_fn=lambda m, x: m(**x, return_loss=True).loss,
        breakdown=("flava.image_model", "flava.text_model", "flava.multimodal_model", "mmm_text_head", "itm_head"),
    )


def _mm_late_config(sizes: BenchSizes, config_overrides: dict | None = None) -> MMConfig:
    vision, text = _mm_tower_dicts(sizes)
    return MMConfig(
        fusion="late",
        vision_config=vision,
        text_config=text,
        num_decoder_layers=sizes.num_decoder_layers,
        projection_dim=sizes.projection_dim,
        objectives=["itc"],
        **(config_overrides or {}),
    )


def _captioning_inputs(sizes: BenchSizes) -> dict[str, torch.Tensor]:
    text = make_text(sizes)
    labels = text["input_ids"].masked_fill(text["attention_mask"] == 0, -100)
    return {
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
        "labels": labels,
        "pixel_values": make_pixels(sizes),
    }


def build_mm_captioning(sizes: BenchSizes, config_overrides: dict | None = None) -> Case:
    model = MMForConditionalGeneration(_mm_late_config(sizes, config_overrides))
    return Case(
        name="mm_captioning",
        label="MMForConditionalGeneration (late; captioning loss)",
        model=model,
        inputs=_captioning_inputs(sizes),
        loss_fn=lambda m, x: m(**x).loss,
        breakdown=("mm.vision_model", "text_decoder.layers", "text_decoder.lm_head"),
    )


def build_blip_captioning(sizes: BenchSizes) -> Case:
    config = BlipConfig(
        vision_config=dict(
            hidden_size=sizes.hidden_size,
            num_hidden_layers=sizes.num_layers,
            num_attention_heads=sizes.num_heads,
            intermediate_size=sizes.intermediate_size,
            image_size=sizes.image_size,
            patch_size=sizes.patch_size,
        ),
        text_config=dict(
            vocab_size=sizes.vocab_size,
            hidden_size=sizes.hidden_size,
            encoder_hidden_size=sizes.hidden_size,
            num_hidden_layers=sizes.num_decoder_layers,
            num_attention_heads=sizes.num_heads,
            intermediate_size=sizes.intermediate_size,
            bos_token_id=CLS,
            sep_token_id=SEP,
            eos_token_id=SEP,
            pad_token_id=PAD,
        ),
        projection_dim=sizes.projection_dim,
    )
    model = BlipForConditionalGeneration(config)
    return Case(
        name="blip_captioning",
        label="BlipForConditionalGeneration (captioning loss)",
        model=model,
        inputs=_captioning_inputs(sizes),
        loss_fn=lambda m, x: m(**x).loss,
        breakdown=("vision_model", "text_decoder.bert", "text_decoder.cls"),
    )


def _itc_inputs(sizes: BenchSizes) -> dict[str, torch.Tensor]:
    text = make_text(sizes)
    return {
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
        "pixel_values": make_pixels(sizes),
    }


def build_mm_itc(sizes: BenchSizes, config_overrides: dict | None = None) -> Case:
    # The late-fusion ITC pretraining step (what pretrain.py trains with --fusion late): no decoder ("lm" is off).
    return Case(
        name="mm_itc",
        label="MMForPreTraining (late; ITC loss)",
        model=MMForPreTraining(_mm_late_config(sizes, config_overrides)),
        inputs=_itc_inputs(sizes),
        loss_fn=lambda m, x: m(**x).loss,
        breakdown=("mm.vision_model", "mm.text_model"),
    )


def build_clip_itc(sizes: BenchSizes) -> Case:
    def tower(**extra) -> dict:
        return dict(
            hidden_size=sizes.hidden_size,
            num_hidden_layers=sizes.num_layers,
            num_attention_heads=sizes.num_heads,
            intermediate_size=sizes.intermediate_size,
            hidden_act="gelu",  # CLIP defaults to quick_gelu; ours uses exact gelu
            **extra,
        )

    config = CLIPConfig(
        vision_config=tower(image_size=sizes.image_size, patch_size=sizes.patch_size),
        text_config=tower(
            vocab_size=sizes.vocab_size,
            max_position_embeddings=max(sizes.text_length, *sizes.scaling_text_lengths),
            bos_token_id=CLS,
            eos_token_id=SEP,  # CLIP pools the first eos position
            pad_token_id=PAD,
        ),
        projection_dim=sizes.projection_dim,
    )
    return Case(
        name="clip_itc",
        label="CLIPModel (ITC loss)",
        model=CLIPModel(config),
        inputs=_itc_inputs(sizes),
        loss_fn=lambda m, x: m(**x, return_loss=True).loss,
        breakdown=("vision_model", "text_model"),
    )


BUILDERS: dict[str, Callable[..., Case]] = {
    "mm_pretraining": build_mm_pretraining,
    "flava_pretraining": build_flava_pretraining,
    "mm_captioning": build_mm_captioning,
    "blip_captioning": build_blip_captioning,
    "mm_itc": build_mm_itc,
    "clip_itc": build_clip_itc,
}


def build_case(name: str, sizes: BenchSizes, device: str = "cpu", seed: int = 0, **kwargs) -> Case:
    """Builds `BUILDERS[name]` with a fixed seed, moves model and inputs to `device`, puts the model in train mode."""
    torch.manual_seed(seed)
    case = BUILDERS[name](sizes, **kwargs)
    case.model.to(device).train()
    case.inputs = {k: v.to(device) for k, v in case.inputs.items()}
    return case


# ----------------------------------------------------------------------------------------------------------------------
# Measurement primitives
# ----------------------------------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# Autocast dtype per device; None runs fp32. The weights and the AdamW state stay fp32 either way.
# size_sweep.py's --dtype changes these.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"cpu": None, "cuda": torch.bfloat16}


def _autocast(device: str) -> contextlib.AbstractContextManager:
    # fp32 on CPU; bf16 autocast on CUDA (unless AUTOCAST_DTYPES says otherwise).
    dtype = AUTOCAST_DTYPES.get(device)
    if dtype is not None:
        return torch.autocast(device, dtype=dtype)
    return contextlib.nullcontext()


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    warmup: int,
    iters: int,
    device: str = "cpu",
    cpu_times: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Calls each `fn` `warmup` times untimed, then times them in turns (a, b, a, b, ...) `iters` times each.

    Taking turns means a change in machine load (the cores are shared) hits every contender alike, so the ratios
    stay fair even when the absolute times drift. Returns the timed wall-clock durations in seconds per key; when
    `cpu_times` is given, it is filled with each call's process CPU time (all threads), which other jobs on the
    machine barely affect.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(iters):
        for key, fn in fns.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            times[key].append(time.perf_counter() - start)
            if cpu_times is not None:
                cpu_times.setdefault(key, []).append(time.process_time() - cpu_start)
    return times


def make_train_step(case: Case, device: str) -> Callable[[], torch.Tensor]:
    """One optimisation step: forward (loss), backward, AdamW step, zero grads. Returns the detached loss; the
    optimizer is `step.optimizer`. AdamW is the fused kernel, as with Trainer's default `optim="adamw_torch_fused"`."""
    optimizer = torch.optim.AdamW(case.model.parameters(), lr=1e-5, fused=True)

    def step() -> torch.Tensor:
        with _autocast(device):
            loss = case.loss_fn(case.model, case.inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    step.optimizer = optimizer
    return step


def make_embed_fn(case: Case, device: str) -> Callable[[], None]:
    """`get_image_features` + `get_text_features` under no_grad (call with the model in eval mode)."""
    model, x = getattr(case.model, "mm", case.model), case.inputs  # MMForPreTraining -> its MMModel

    @torch.no_grad()
    def embed() -> None:
        with _autocast(device):
            model.get_image_features(pixel_values=x["pixel_values"])
            model.get_text_features(input_ids=x["input_ids"], attention_mask=x["attention_mask"])

    return embed


def make_generate_fn(case: Case, sizes: BenchSizes, device: str) -> Callable[[], torch.Tensor]:
    """Greedy `generate()` of exactly `gen_tokens` new tokens per image (call with the model in eval mode)."""
    kwargs = dict(
        pixel_values=case.inputs["pixel_values"],
        max_new_tokens=sizes.gen_tokens,
        min_new_tokens=sizes.gen_tokens,
        do_sample=False,
        num_beams=1,
    )

    @torch.no_grad()
    def generate() -> torch.Tensor:
        with _autocast(device):
            return case.model.generate(**kwargs)

    return generate


def count_step_flops(case: Case, device: str) -> int:
    """FLOPs of one training forward + backward (the optimizer's elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with _autocast(device):
            loss = case.loss_fn(case.model, case.inputs)
        loss.backward()
    case.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def make_matmul_fn(device: str, size: int) -> Callable[[], None]:
    """One square `size` x `size` torch.mm in the autocast dtype (fp32 on CPU with all threads, bf16 on CUDA);
    `2 * size**3` FLOPs."""
    dtype = AUTOCAST_DTYPES.get(device) or torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return lambda: torch.mm(a, b)


def matmul_peak_flops(device: str, size: int, min_seconds: float = 1.5) -> float:
    """Best FLOP/s of repeated square `torch.mm` calls (`make_matmul_fn`): the machine's matmul peak."""
    matmul = make_matmul_fn(device, size)
    reps = 10 if device == "cuda" else 1  # amortise launch latency on GPU
    for _ in range(2):
        matmul()
    _sync(device)
    best, spent, trials = 0.0, 0.0, 0
    while trials < 3 or (spent < min_seconds and trials < 50):
        start = time.perf_counter()
        for _ in range(reps):
            matmul()
        _sync(device)
        elapsed = time.perf_counter() - start
        spent += elapsed
        trials += 1
        best = max(best, reps * 2 * size**3 / elapsed)
    return best


# ----------------------------------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------------------------------
# CPU: tracemalloc does not see torch's allocations, so we read the kernel's resident-set high-water mark. After the
# warmup steps (AdamW state allocated), `gc.collect()` + glibc `malloc_trim(0)` return freed memory to the OS, the
# baseline is VmRSS (model + grads-free optimizer state + inputs), `/proc/self/clear_refs` ("5") resets VmHWM, one
# step runs, and the step's peak is VmHWM - baseline. This runs in one fresh worker process (separate from the timing
# process), one case after the other, each freed before the next. Without a writable clear_refs, every case gets its
# own fresh process and the peak is `resource.getrusage(RUSAGE_SELF).ru_maxrss` - baseline over its first step.
# CUDA: torch.cuda.max_memory_allocated() - memory_allocated() before the step, after reset_peak_memory_stats().


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def _trim_host_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_step_memory(
    name: str, sizes: BenchSizes, device: str, gradient_checkpointing: bool = False, warm: bool = True
) -> dict:
    """Peak extra memory (MiB) of one training step of `BUILDERS[name]`, above the memory held between steps."""
    case = build_case(name, sizes, device)
    if gradient_checkpointing:
        case.model.gradient_checkpointing_enable()
    step = make_train_step(case, device)
    if device == "cuda":
        for _ in range(2):
            step()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        method = "torch.cuda.max_memory_allocated"
    elif warm:
        for _ in range(2):
            step()
        _trim_host_memory()
        base = _proc_status_kib("VmRSS") * 1024
        if not _reset_hwm():
            raise OSError("/proc/self/clear_refs is not writable")
        step()
        peak = _proc_status_kib("VmHWM") * 1024 - base
        method = "VmHWM reset by clear_refs"
    else:
        # Fresh-process fallback: the high-water mark cannot be reset, so the AdamW state is created by a zero-gradient
        # step and the first real step is measured; it only counts if it raised the process's mark.
        for p in case.model.parameters():
            p.grad = torch.zeros_like(p)
        step.optimizer.step()
        case.model.zero_grad(set_to_none=True)
        _trim_host_memory()
        base = _proc_status_kib("VmRSS") * 1024
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = after - base if after > before else float("nan")  # nan: below the model-building peak
        method = "ru_maxrss in a fresh process"
    result = {
        "name": name,
        "gradient_checkpointing": gradient_checkpointing,
        "peak_mib": peak / 2**20,
        "method": method,
    }
    del case, step  # collected by the next measurement's _trim_host_memory()
    return result


MEMORY_JOBS: tuple[tuple[str, bool], ...] = (
    ("mm_pretraining", False),
    ("mm_pretraining", True),
    ("flava_pretraining", False),
    ("mm_captioning", False),
    ("blip_captioning", False),
    ("mm_itc", False),
    ("clip_itc", False),
)


def _memory_worker(size_name: str, device: str, jobs: list[tuple[str, bool]], warm: bool) -> list[dict]:
    _setup_process()
    gc.freeze()  # the imported modules' objects never die: keep them out of every gc.collect() (5x faster)
    sizes = SIZES[size_name]
    return [measure_step_memory(name, sizes, device, gc_on, warm=warm) for name, gc_on in jobs]


def run_memory(size_name: str, device: str, in_process: bool = False) -> list[dict]:
    """Measures every `MEMORY_JOBS` entry; see the comment above for the method."""
    jobs = list(MEMORY_JOBS)
    if in_process or device == "cuda":
        return _memory_worker(size_name, device, jobs, warm=True)

    def spawn(sub_jobs: list, warm: bool) -> list[dict]:
        payload = json.dumps({"size": size_name, "device": device, "jobs": sub_jobs, "warm": warm})
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--memory-worker", payload],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(proc.stdout.strip().splitlines()[-1])

    if _reset_hwm():
        return spawn(jobs, warm=True)
    return [r for job in jobs for r in spawn([job], warm=False)]


# ----------------------------------------------------------------------------------------------------------------------
# Profiling
# ----------------------------------------------------------------------------------------------------------------------

# Kernels that are matrix multiplications (incl. fused attention and convolution) in the profiler's op names.
GEMM_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_efficient_attention_backward",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_backward",
    "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_cudnn_attention_backward",
    "aten::mkldnn_convolution",
    "aten::convolution_backward",
    "aten::cudnn_convolution",
)


def _group_of(name: str, groups: tuple[str, ...]) -> str | None:
    """The `groups` entry a module name belongs to: the name itself, or a numbered layer of it (`layers.3`)."""
    return next((g for g in groups if name == g or re.fullmatch(re.escape(g) + r"\.\d+", name)), None)


def module_forward_breakdown(
    case: Case, forward: Callable[[], object], device: str, iters: int = 2
) -> dict[str, dict[str, float]]:
    """Time (ms, mean of `iters` calls of `forward`, run under no_grad) and GFLOPs of each `case.breakdown` group.

    Forward hooks on the group's modules read the clock (timed passes) and the running FlopCounterMode total (one
    counted pass). Only forward work is attributed; the key `"(whole forward)"` holds the totals.
    """
    from torch.utils.flop_counter import FlopCounterMode

    groups = case.breakdown
    seconds, flops = dict.fromkeys(groups, 0.0), dict.fromkeys(groups, 0)
    counter: FlopCounterMode | None = None
    starts: dict[int, tuple[float, int]] = {}
    handles = []
    for name, module in case.model.named_modules():
        group = _group_of(name, groups)
        if group is None:
            continue

        def pre(mod, args, _id=id(module)):
            _sync(device)
            starts[_id] = (time.perf_counter(), counter.get_total_flops() if counter else 0)

        def post(mod, args, out, _id=id(module), _group=group):
            _sync(device)
            start, flops_before = starts.pop(_id)
            if counter is None:
                seconds[_group] += time.perf_counter() - start
            else:
                flops[_group] += counter.get_total_flops() - flops_before

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with torch.no_grad():
            whole = time_interleaved({"forward": forward}, 0, iters, device)["forward"]
            with FlopCounterMode(display=False) as counter:
                forward()
    finally:
        for handle in handles:
            handle.remove()
    result = {g: {"ms": seconds[g] / iters * 1e3, "gflop": flops[g] / 1e9} for g in groups}
    result["(whole forward)"] = {"ms": sum(whole) / iters * 1e3, "gflop": counter.get_total_flops() / 1e9}
    return result


def profile_case(case: Case, sizes: BenchSizes, device: str, kind: str = "train", top: int = 8) -> dict:
    """torch.profiler over `sizes.profile_steps` calls of our `kind` ("train", "embed" or "generate") step: top ops by
    self time, GEMM share, optimizer time, and the time / FLOPs of each module group (`module_forward_breakdown`)."""
    from torch.profiler import ProfilerActivity, profile

    if kind == "train":
        fn = make_train_step(case, device)

        def forward() -> None:
            with _autocast(device):
                case.loss_fn(case.model, case.inputs)

    else:
        case.model.eval()
        fn = forward = make_embed_fn(case, device) if kind == "embed" else make_generate_fn(case, sizes, device)
    fn()  # warm
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(sizes.profile_steps):
            fn()
        _sync(device)
    steps = sizes.profile_steps
    events = prof.key_averages()
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    ops = [e for e in events if getattr(e, attr, 0) > 0 and not e.key.startswith(("Optimizer.", "ProfilerStep"))]
    total = sum(getattr(e, attr) for e in ops) or 1.0
    ops.sort(key=lambda e: getattr(e, attr), reverse=True)
    rows = [
        {
            "op": e.key,
            "self_ms": getattr(e, attr) / 1e3 / steps,
            "share": getattr(e, attr) / total,
            "calls": e.count // steps,
        }
        for e in ops[:top]
    ]
    optimizer = next((e.cpu_time_total for e in events if e.key.startswith("Optimizer.step")), 0.0)
    gemm_ms = sum(getattr(e, attr) for e in ops if e.key in GEMM_OPS) / 1e3 / steps
    breakdown = module_forward_breakdown(case, forward, device)
    flops = count_step_flops(case, device) if kind == "train" else breakdown["(whole forward)"]["gflop"] * 1e9
    return {
        "kind": kind,
        "gemm_gflop_per_s": flops / 1e9 / (gemm_ms / 1e3) if gemm_ms else 0.0,
        "rows": rows,
        "gemm_share": sum(getattr(e, attr) for e in ops if e.key in GEMM_OPS) / total,
        "optimizer_ms": optimizer / 1e3 / steps,
        "total_self_ms": total / 1e3 / steps,
        "forward_breakdown": breakdown,
        "time_kind": "self CUDA" if device == "cuda" else "self CPU",
    }


# ----------------------------------------------------------------------------------------------------------------------
# The benchmark run
# ----------------------------------------------------------------------------------------------------------------------


def _setup_process() -> None:
    torch.set_num_threads(torch.get_num_threads())  # the default: all the cores torch sees


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _median(times: list[float]) -> float:
    return statistics.median(times)


def compare_training(ours: Case, peer: Case, sizes: BenchSizes, device: str) -> dict[str, dict]:
    """Training step of `ours` and `peer`, timed in turns; also their loss (must be finite) and FLOPs per step.

    A `matmul_size` torch.mm takes its turn with the two steps: its median FLOP/s (`matmul_flops_per_s`) is the matmul
    rate the machine gave under the same load, which the FLOP utilisation is measured against.
    """
    cases = {ours.name: ours, peer.name: peer}
    steps = {name: make_train_step(case, device) for name, case in cases.items()}
    results = {}
    for name, case in cases.items():
        loss = float(steps[name]())  # first (warmup) step
        if not math.isfinite(loss):
            raise RuntimeError(f"{name}: the training loss is not finite ({loss}).")
        results[name] = {
            "label": case.label,
            "attn": case.attn_implementation,
            "params_m": case.num_params / 1e6,
            "loss": loss,
            "flops": count_step_flops(case, device),
        }
    matmul, cpu = "(matmul)", {}
    fns = steps | {matmul: make_matmul_fn(device, sizes.matmul_size)}
    times = time_interleaved(fns, sizes.warmup - 1, sizes.iters, device, cpu)
    matmul_rate = 2 * sizes.matmul_size**3 / _median(times[matmul])
    for name, result in results.items():
        result.update(median_s=_median(times[name]), times_s=times[name], cpu_s=_median(cpu[name]))
        result["matmul_flops_per_s"] = matmul_rate
        result["samples_per_s"] = sizes.batch_size / result["median_s"]
        result["utilisation"] = result["flops"] / result["median_s"] / matmul_rate
    return results


def compare_inference(ours: Case, peer: Case, sizes: BenchSizes, device: str, kind: str) -> dict[str, dict]:
    """`kind="embed"`: pairs/s of get_image_features + get_text_features; `"generate"`: new tokens/s of generate()."""
    cases = (ours, peer)
    for case in cases:
        case.model.eval()
    if kind == "embed":
        fns = {case.name: make_embed_fn(case, device) for case in cases}
    else:
        fns = {case.name: make_generate_fn(case, sizes, device) for case in cases}
    results = {}
    if kind == "generate":
        for case in cases:
            out = fns[case.name]()
            results[case.name] = {"new_tokens": out.shape[1] - 1}  # both models start from one [CLS] token
    cpu: dict[str, list[float]] = {}
    times = time_interleaved(fns, sizes.warmup - (kind == "generate"), sizes.iters, device, cpu)
    for case in cases:
        case.model.train()
        result = results.setdefault(case.name, {})
        result.update(median_s=_median(times[case.name]), cpu_s=_median(cpu[case.name]))
        if kind == "embed":
            result["samples_per_s"] = sizes.batch_size / result["median_s"]
        else:
            result["tokens_per_s"] = sizes.batch_size * result["new_tokens"] / result["median_s"]
    return results


def run_gradient_checkpointing_time(sizes: BenchSizes, device: str) -> dict:
    """Our pretraining step with and without gradient checkpointing, timed in turns."""
    plain = build_case("mm_pretraining", sizes, device)
    checkpointed = build_case("mm_pretraining", sizes, device)
    checkpointed.model.gradient_checkpointing_enable()
    times = time_interleaved(
        {"off": make_train_step(plain, device), "on": make_train_step(checkpointed, device)},
        sizes.warmup,
        sizes.iters,
        device,
    )
    return {"off_s": _median(times["off"]), "on_s": _median(times["on"])}


def make_vision_fn(
    model: MMForPreTraining, pixel_values: torch.Tensor, keep: torch.Tensor | None, device: str
) -> Callable[[], None]:
    """Forward + backward of `model.mm.vision_model` alone over the kept patches `keep` (B, K) (all when None)."""

    def run() -> None:
        with _autocast(device):
            out = model.mm.vision_model(pixel_values, image_keep_indices=keep)
        out.last_hidden_state.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    return run


def run_flip(sizes: BenchSizes, device: str) -> list[dict]:
    """Step time and vision-tower forward + backward time at FLIP mask ratios 0 / 0.5 / 0.75 (train mode)."""
    case = build_case("mm_pretraining", sizes, device)
    model, pixel_values = case.model, case.inputs["pixel_values"]
    step = make_train_step(case, device)
    ratios = (0.0, 0.5, 0.75)
    gen = torch.Generator(device=device).manual_seed(0)
    keep = {
        r: random_keep_indices(sizes.batch_size, sizes.num_patches, r, torch.device(device), gen) if r else None
        for r in ratios
    }

    def step_at(ratio: float) -> Callable[[], None]:
        def run() -> None:
            model.config.image_mask_ratio = ratio  # read at every forward (MMForPreTraining._vision_keep_indices)
            step()

        return run

    _log("FLIP: step at mask ratios " + " / ".join(map(str, ratios)))
    step_times = time_interleaved({r: step_at(r) for r in ratios}, sizes.warmup, sizes.iters, device)
    _log("FLIP: vision tower alone")
    vision_cpu: dict[float, list[float]] = {}
    vision_fns = {r: make_vision_fn(model, pixel_values, keep[r], device) for r in ratios}
    vision_times = time_interleaved(vision_fns, sizes.warmup, sizes.iters, device, vision_cpu)
    model.config.image_mask_ratio = 0.0
    rows = []
    for r in ratios:
        step_s, vision_s = _median(step_times[r]), _median(vision_times[r])
        rows.append(
            {
                "mask_ratio": r,
                "kept_patches": sizes.num_patches if keep[r] is None else keep[r].shape[1],
                "step_s": step_s,
                "vision_s": vision_s,
                "vision_share": vision_s / step_s,
                "step_vs_unmasked": step_s / _median(step_times[0.0]),
                "vision_vs_unmasked": vision_s / _median(vision_times[0.0]),
                "vision_cpu_vs_unmasked": _median(vision_cpu[r]) / _median(vision_cpu[0.0]),
            }
        )
    return rows


def _set_text(case: Case, text: dict[str, torch.Tensor]) -> None:
    if case.name == "flava_pretraining":
        text = {
            "input_ids": text["input_ids"],
            "input_ids_masked": text["mlm_input_ids"],
            "attention_mask": text["attention_mask"],
            "mlm_labels": text["mlm_labels"],
        }
    case.inputs.update(text)


def run_scaling(sizes: BenchSizes, device: str) -> dict:
    """Pretraining step time (ours and FLAVA, in turns) against image patches (image_size) and text length."""
    names = ("mm_pretraining", "flava_pretraining")
    out: dict[str, list[dict]] = {"patches": [], "text": []}
    for side in sizes.scaling_image_sizes:
        _log(f"scaling: image size {side}")
        cases = [build_case(name, sizes, device, image_size=side) for name in names]
        times = time_interleaved({c.name: make_train_step(c, device) for c in cases}, 1, sizes.scaling_iters, device)
        row = {"image_size": side, "patches": (side // sizes.patch_size) ** 2}
        out["patches"].append(row | {name: _median(t) for name, t in times.items()})
        del cases
    cases = [build_case(name, sizes, device) for name in names]
    steps = {c.name: make_train_step(c, device) for c in cases}
    for length in sizes.scaling_text_lengths:
        _log(f"scaling: text length {length}")
        text = {k: v.to(device) for k, v in make_text(sizes, length).items()}
        for case in cases:
            _set_text(case, text)
        times = time_interleaved(steps, 1, sizes.scaling_iters, device)
        out["text"].append({"text_length": length} | {name: _median(t) for name, t in times.items()})
    return out


ALL_SECTIONS = ("train", "embed", "generate", "checkpointing", "flip", "scaling", "memory", "profile")


def run_benchmarks(
    sizes: BenchSizes,
    device: str = "cpu",
    size_name: str = "default",
    memory: str = "subprocess",
    plots_dir: Path | None = None,
    sections: tuple[str, ...] = ALL_SECTIONS,
) -> dict:
    """Runs the measurements named in `sections` and returns them (rendered by `write_report`).

    Args:
        sizes: The dimensions and iteration counts (`SIZES[size_name]`).
        device: `"cpu"` (fp32) or `"cuda"` (bf16 autocast).
        size_name: Name of `sizes` in `SIZES` (the memory worker process rebuilds them by name).
        memory: `"subprocess"` (a fresh worker process), `"inprocess"` or `"off"`.
        plots_dir: Where the scaling PNGs are written (none if `None`).
        sections: Any of `ALL_SECTIONS`.
    """
    _setup_process()
    results: dict = {"sizes": dataclasses.asdict(sizes), "size_name": size_name, "device": device}
    results["machine"] = machine_info(device)
    _log(f"matmul peak ({sizes.matmul_size}x{sizes.matmul_size})")
    results["matmul_peak"] = matmul_peak_flops(device, sizes.matmul_size)

    results["train"], results["embed"], results["generate"] = {}, {}, {}
    for ours_name, peer_name, inference in (
        ("mm_pretraining", "flava_pretraining", None),
        ("mm_captioning", "blip_captioning", "generate"),
        ("mm_itc", "clip_itc", "embed"),
    ):
        if "train" not in sections and inference not in sections:
            continue
        ours, peer = build_case(ours_name, sizes, device), build_case(peer_name, sizes, device)
        if "train" in sections:
            _log(f"training step: {ours_name} vs {peer_name}")
            results["train"].update(compare_training(ours, peer, sizes, device))
        if inference in sections:
            _log(f"{inference}: {ours_name} vs {peer_name}")
            results[inference].update(compare_inference(ours, peer, sizes, device, inference))
        del ours, peer
        gc.collect()

    if "checkpointing" in sections:
        _log("training step with / without gradient checkpointing: mm_pretraining")
        results["checkpointing"] = run_gradient_checkpointing_time(sizes, device)
    if "flip" in sections:
        results["flip"] = run_flip(sizes, device)
    if "scaling" in sections:
        results["scaling"] = run_scaling(sizes, device)
        if plots_dir is not None:
            results["plots"] = plot_scaling(results["scaling"], Path(plots_dir))
    if "memory" in sections and memory != "off":
        _log(f"memory ({'in process' if memory == 'inprocess' else 'worker process'})")
        results["memory"] = run_memory(size_name, device, in_process=memory == "inprocess")
        results["memory_process"] = "in-process" if memory == "inprocess" or device == "cuda" else "worker"

    _log("matmul peak, again")
    results["matmul_peak"] = max(results["matmul_peak"], matmul_peak_flops(device, sizes.matmul_size))
    results["targets"] = evaluate_targets(results)
    results["profiles"] = {}
    if "profile" in sections:
        for target in results["targets"]:
            name, kind = target["profile"]
            if target["met"] is False and f"{name}/{kind}" not in results["profiles"]:
                _log(f"profile: {name} ({kind})")
                case = build_case(name, sizes, device)
                results["profiles"][f"{name}/{kind}"] = profile_case(case, sizes, device, kind)
    return results


def plot_scaling(scaling: dict, plots_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, xkey, xlabel, fname in (
        ("patches", "patches", "image patches per sample (image_size / patch_size)^2", "scaling_patches.png"),
        ("text", "text_length", "text length (tokens)", "scaling_text.png"),
    ):
        rows = scaling[key]
        fig, ax = plt.subplots(figsize=(4.8, 3.2), dpi=80)
        for name, label, style in (
            ("mm_pretraining", "MM (ours, hybrid)", "o-"),
            ("flava_pretraining", "FLAVA", "s--"),
        ):
            ax.plot([r[xkey] for r in rows], [r[name] * 1e3 for r in rows], style, label=label)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("pretraining step (ms, median)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = plots_dir / fname
        fig.savefig(path)
        plt.close(fig)
        paths[key] = str(path)
    return paths


# ----------------------------------------------------------------------------------------------------------------------
# Targets and report
# ----------------------------------------------------------------------------------------------------------------------


# (name, goal, "at least" or "at most", value format, which of our steps to profile when missed)
TARGETS: tuple[tuple[str, float, str, str, tuple[str, str]], ...] = (
    ("Pretraining step throughput vs FLAVA", 1.5, "at least", "{:.2f}×", ("mm_pretraining", "train")),
    ("Captioning-loss step throughput vs BLIP", 1.5, "at least", "{:.2f}×", ("mm_captioning", "train")),
    ("Generation tokens/s vs BLIP", 1.5, "at least", "{:.2f}×", ("mm_captioning", "generate")),
    ("Late-fusion ITC step throughput vs CLIP", 1.1, "at least", "{:.2f}×", ("mm_itc", "train")),
    ("Embedding inference throughput vs CLIP", 1.1, "at least", "{:.2f}×", ("mm_itc", "embed")),
    (
        "Pretraining-step FLOP utilisation (of the matmul rate timed in turns)",
        0.6,
        "at least",
        "{:.0%}",
        ("mm_pretraining", "train"),
    ),
    ("FLIP 0.75: vision-tower time vs unmasked", 0.35, "at most", "{:.2f}×", ("mm_pretraining", "train")),
)


def evaluate_targets(results: dict) -> list[dict]:
    """Each of `TARGETS` with its measured value and whether it is met (None when it was not measured)."""
    train, embed, gen = results.get("train", {}), results.get("embed", {}), results.get("generate", {})
    flip = {row["mask_ratio"]: row for row in results.get("flip", [])}

    def ratio(measured: dict, ours: str, peer: str, key: str = "samples_per_s") -> float | None:
        return measured[ours][key] / measured[peer][key] if ours in measured and peer in measured else None

    pretraining = train.get("mm_pretraining")
    values = [
        ratio(train, "mm_pretraining", "flava_pretraining"),
        ratio(train, "mm_captioning", "blip_captioning"),
        ratio(gen, "mm_captioning", "blip_captioning", "tokens_per_s"),
        ratio(train, "mm_itc", "clip_itc"),
        ratio(embed, "mm_itc", "clip_itc"),
        pretraining["utilisation"] if pretraining else None,
        flip.get(0.75, {}).get("vision_vs_unmasked"),
    ]
    targets = []
    for (name, goal, direction, fmt, profile), value in zip(TARGETS, values):
        met = None if value is None else (value >= goal if direction == "at least" else value <= goal)
        sign = "≥" if direction == "at least" else "≤"
        targets.append(
            {
                "target": name,
                "value": value,
                "goal": f"{sign} {fmt.format(goal)}",
                "fmt": fmt,
                "met": met,
                "profile": profile,
            }
        )
    return targets


def machine_info(device: str) -> dict:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu = match.group(1).strip() if match else cpu
    info = {
        "cpu": cpu,
        "cores_visible": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
    }
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "modeling_mm"], capture_output=True, text=True)
        info["commit"] = commit.stdout.strip() + (" (modeling_mm/ modified)" if dirty.stdout.strip() else "")
    with contextlib.suppress(OSError):
        info["loadavg_start"] = os.getloadavg()[0]
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _fmt(value: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if value is None else fmt.format(value)


def _status(met: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[met]


def _comparison_table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["| | ours | peer | ours / peer |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return lines


def _cpu_row(o: dict, p: dict) -> tuple[str, str, str, str]:
    return (
        "CPU time per call, median (ms, all threads)",
        f"{o['cpu_s'] * 1e3:.1f}",
        f"{p['cpu_s'] * 1e3:.1f}",
        f"{o['cpu_s'] / p['cpu_s']:.2f}",
    )


def _train_rows(results: dict, ours: str, peer: str) -> list[tuple[str, str, str, str]]:
    train = results["train"]
    o, p = train.get(ours), train.get(peer)
    if not o or not p:
        return []
    peak = results["matmul_peak"]
    mem = {(m["name"], m["gradient_checkpointing"]): m["peak_mib"] for m in results.get("memory", [])}
    rows = [
        ("model", o["label"], p["label"], ""),
        ("attn_implementation", o["attn"], p["attn"], ""),
        ("parameters (M)", f"{o['params_m']:.2f}", f"{p['params_m']:.2f}", f"{o['params_m'] / p['params_m']:.2f}"),
        ("loss after warmup (finite)", f"{o['loss']:.3f}", f"{p['loss']:.3f}", ""),
        (
            "step time, median (ms)",
            f"{o['median_s'] * 1e3:.1f}",
            f"{p['median_s'] * 1e3:.1f}",
            f"{o['median_s'] / p['median_s']:.2f}",
        ),
        _cpu_row(o, p),
        (
            "**throughput (samples/s)**",
            f"{o['samples_per_s']:.2f}",
            f"{p['samples_per_s']:.2f}",
            f"**{o['samples_per_s'] / p['samples_per_s']:.2f}×**",
        ),
        (
            "model GFLOP / step (fwd + bwd)",
            f"{o['flops'] / 1e9:.2f}",
            f"{p['flops'] / 1e9:.2f}",
            f"{o['flops'] / p['flops']:.2f}",
        ),
        (
            "achieved GFLOP/s",
            f"{o['flops'] / o['median_s'] / 1e9:.1f}",
            f"{p['flops'] / p['median_s'] / 1e9:.1f}",
            f"{o['flops'] / o['median_s'] / (p['flops'] / p['median_s']):.2f}",
        ),
        (
            f"FLOP utilisation: of the in-turn matmul rate ({o['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s)",
            f"{o['utilisation']:.0%}",
            f"{p['utilisation']:.0%}",
            "",
        ),
        (
            f"FLOP utilisation: of the best matmul peak ({peak / 1e9:.0f} GFLOP/s)",
            f"{o['flops'] / o['median_s'] / peak:.0%}",
            f"{p['flops'] / p['median_s'] / peak:.0%}",
            "",
        ),
    ]
    if (ours, False) in mem and (peer, False) in mem:
        rows.append(
            (
                "peak step memory (MiB)",
                f"{mem[(ours, False)]:.0f}",
                f"{mem[(peer, False)]:.0f}",
                f"{mem[(ours, False)] / mem[(peer, False)]:.2f} (lower is better)",
            )
        )
    return rows


def write_report(results: dict, out: Path, command: str) -> str:
    """Renders `results` (from `run_benchmarks`) as markdown into `out`; returns the text."""
    s, m = results["sizes"], results["machine"]
    device, peak = results["device"], results["matmul_peak"]
    precision = "bf16 autocast (fp32 weights)" if device == "cuda" else "fp32"
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/run_benchmarks.py`; every number below was measured in one run of the command "
        "below, except in the sections that state their own (the size sweep of `benchmarks/size_sweep.py`):",
        "",
        "```",
        command,
        "```",
        "",
        "## Machine",
        "",
        f"- {'GPU: ' + m['gpu'] + '; ' if 'gpu' in m else ''}CPU: {m['cpu']} — {m['cores_visible']} cores visible, "
        f"torch threads: {m['torch_threads']} (torch default), OMP_WAIT_POLICY={m['omp_wait_policy']}",
        f"- torch {m['torch']}, transformers {m['transformers']}, Python {m['python']}; device `{device}`, {precision}"
        + (f"; code at commit `{m['commit']}`" if "commit" in m else ""),
        f"- run started {m['date']}; 1-min load average at start {m.get('loadavg_start', float('nan')):.2f}"
        + (f", at end {m['loadavg_end']:.2f}" if "loadavg_end" in m else "")
        + " (the cores are shared with other jobs, so absolute times are noisy; every ratio compares models timed in "
        "turns, so load changes hit both sides alike)",
        f"- measured matmul peak: **{peak / 1e9:.1f} GFLOP/s** "
        f"({'bf16' if device == 'cuda' else 'fp32'} `torch.mm` {s['matmul_size']}×{s['matmul_size']}, all threads, "
        "best of repeated calls at the start and at the end of the run)",
        "",
        "## Configuration (matched across models)",
        "",
        "| hidden | layers / tower | heads | intermediate | fusion layers | decoder layers | image | patch | patches "
        "| text length | batch | vocab | projection |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s['hidden_size']} | {s['num_layers']} | {s['num_heads']} | {s['intermediate_size']} "
        f"| {s['num_fusion_layers']} | {s['num_decoder_layers']} | {s['image_size']} | {s['patch_size']} "
        f"| {(s['image_size'] // s['patch_size']) ** 2} | {s['text_length']} | {s['batch_size']} | {s['vocab_size']} "
        f"| {s['projection_dim']} |",
        "",
        "- Randomly initialised (`torch.manual_seed(0)` before each build), dropout 0 everywhere (the peers' "
        f"default). Texts are padded to {s['text_length']} tokens with real lengths from 100% down to 62.5%; MLM "
        "masks 15% of the words.",
        f"- Timing: {s['warmup']} warmup calls, then the **median of {s['iters']}** timed calls, ours and the peer "
        "called in turns (ours, peer, ours, peer, ...). A training step is "
        "forward + backward + `torch.optim.AdamW(fused=True).step()` (Trainer's default `adamw_torch_fused`) + "
        "`zero_grad`; samples/s = batch / step time. Throughput ratios ours / peer above 1 mean we are faster; "
        "time ratios below 1 do. The targets use wall-clock time. The process CPU time of each call (all threads, "
        "`time.process_time`) is shown as a cross-check that other jobs on the machine barely move.",
        "- FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one forward + backward (optimizer not counted); "
        "utilisation = FLOPs / median step time / matmul rate. The matmul rate used for the targets is the median "
        f"FLOP/s of the same {s['matmul_size']}×{s['matmul_size']} `torch.mm` timed in turns with the two steps (the "
        "machine's rate under the same load); utilisation against the best peak is shown as well.",
        "- What each peer computes:",
        "  - **FLAVA** (`FlavaForPreTraining`): image, text and multimodal encoders with "
        f"{s['num_layers']} / {s['num_layers']} / {s['num_fusion_layers']} layers. Losses: global contrastive + ITM + "
        "MMM-text (its masked-text objective on the multimodal encoder). MIM and MMM-image are off "
        "(`mim_weight = mmm_image_weight = 0`, `init_codebook=False`; they need the DALL-E codebook); "
        "`bool_masked_pos` is all False and `mim_labels` all -100, passed only to satisfy its codebook check. "
        'As implemented in transformers it runs the image encoder twice (an unmasked and a "masked" pass) and the '
        "text encoder twice; the multimodal encoder runs once over [image ; text]. ITM pairs come from the batch "
        "(every other pair labelled a mismatch, as its collator does).",
        "  - **Ours** (`MMForPreTraining`, hybrid, objectives itc + itm + mlm): vision tower once, text tower once "
        f"over the 2B rows [clean ; masked], {s['num_fusion_layers']} cross-attention fusion layers run once over 3B "
        "ITM pairs (B positives + 2B ALBEF hard negatives mined from the ITC similarity) and B masked texts, their "
        "last layer only at [CLS] (ITM) and at the masked tokens (MLM). More fused pairs than FLAVA.",
        "  - **BLIP** (`BlipForConditionalGeneration`): ViT + a BERT text decoder with cross-attention in every "
        f"layer, {s['num_decoder_layers']} layers (= our `num_decoder_layers`). Ours: ViT + "
        f"{s['num_decoder_layers']}-layer causal decoder with cross-attention in every layer "
        "(`MMForConditionalGeneration`, late fusion; its text tower exists but is idle for captioning).",
        '  - **CLIP** (`CLIPModel`, `hidden_act="gelu"` to match ours): ViT + causal text transformer, '
        "symmetric InfoNCE (`return_loss=True`), which also computes and returns every token's states. Ours: "
        '`MMForPreTraining(fusion="late", objectives=["itc"])`, the late-fusion pretraining step: the same loss '
        "from the pooled [CLS] states, so each tower's last layer runs for [CLS] only. (`MMModel(..., "
        "return_loss=True)` returns every token's states, as CLIPModel does, and costs about what CLIP costs: "
        "1.04× in the previous run of this benchmark, commit `553372f`.) The "
        "embedding rows call `get_image_features` + `get_text_features` of both.",
        "",
    ]
    targets = results.get("targets", [])
    lines += ["## Targets", "", "| target | measured | goal | status |", "|---|---:|---:|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {_fmt(t['value'], t['fmt'])} | {t['goal']} | {_status(t['met'])} |")
    lines.append("")

    for title, ours, peer in (
        ("1. Pretraining step: MMForPreTraining vs FlavaForPreTraining", "mm_pretraining", "flava_pretraining"),
        (
            "2. Captioning-loss step: MMForConditionalGeneration vs BlipForConditionalGeneration",
            "mm_captioning",
            "blip_captioning",
        ),
        ('3. Late-fusion ITC step: MMForPreTraining(fusion="late", ITC) vs CLIPModel', "mm_itc", "clip_itc"),
    ):
        rows = _train_rows(results, ours, peer)
        if rows:
            lines += [f"## {title}", ""] + _comparison_table(rows) + [""]

    embed = results.get("embed", {})
    if "mm_itc" in embed and "clip_itc" in embed:
        o, p = embed["mm_itc"], embed["clip_itc"]
        lines += [
            "## 4. Embedding inference: get_image_features + get_text_features (no_grad, eval)",
            "",
            *_comparison_table(
                [
                    (
                        "attn_implementation",
                        results["train"].get("mm_itc", {}).get("attn", "sdpa"),
                        results["train"].get("clip_itc", {}).get("attn", "sdpa"),
                        "",
                    ),
                    (
                        "time per batch, median (ms)",
                        f"{o['median_s'] * 1e3:.1f}",
                        f"{p['median_s'] * 1e3:.1f}",
                        f"{o['median_s'] / p['median_s']:.2f}",
                    ),
                    _cpu_row(o, p),
                    (
                        "**throughput (pairs/s)**",
                        f"{o['samples_per_s']:.1f}",
                        f"{p['samples_per_s']:.1f}",
                        f"**{o['samples_per_s'] / p['samples_per_s']:.2f}×**",
                    ),
                ]
            ),
            "",
        ]
    gen = results.get("generate", {})
    if "mm_captioning" in gen and "blip_captioning" in gen:
        o, p = gen["mm_captioning"], gen["blip_captioning"]
        lines += [
            "## 5. Caption generation: greedy generate(), KV cache",
            "",
            f"Batch {s['batch_size']}, `max_new_tokens = min_new_tokens = {s['gen_tokens']}`, `do_sample=False`, "
            "`num_beams=1`; both start from one [CLS] token. Tokens/s counts new tokens over the batch and includes "
            "the image encoding.",
            "",
            *_comparison_table(
                [
                    (
                        "attn_implementation",
                        results["train"].get("mm_captioning", {}).get("attn", "sdpa"),
                        results["train"].get("blip_captioning", {}).get("attn", "eager"),
                        "",
                    ),
                    ("new tokens per caption", str(o["new_tokens"]), str(p["new_tokens"]), ""),
                    (
                        "generate() time, median (ms)",
                        f"{o['median_s'] * 1e3:.1f}",
                        f"{p['median_s'] * 1e3:.1f}",
                        f"{o['median_s'] / p['median_s']:.2f}",
                    ),
                    _cpu_row(o, p),
                    (
                        "**tokens/s**",
                        f"{o['tokens_per_s']:.1f}",
                        f"{p['tokens_per_s']:.1f}",
                        f"**{o['tokens_per_s'] / p['tokens_per_s']:.2f}×**",
                    ),
                ]
            ),
            "",
        ]

    memory = results.get("memory", [])
    if memory:
        method = memory[0]["method"]
        lines += [
            "## 6. Peak memory of one training step, and gradient checkpointing",
            "",
            "Peak memory *above* what the process holds between steps (weights, AdamW state, inputs): i.e. "
            "activations, gradients and temporaries of one step. "
            + (
                "Measured with `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`."
                if device == "cuda"
                else "CPU method: after two warmup steps, `gc.collect()` + glibc `malloc_trim(0)`, baseline = VmRSS, "
                "VmHWM reset through `/proc/self/clear_refs`, one step, peak = VmHWM − baseline "
                f"(method used: {method}). "
                + (
                    "Run in a fresh worker process (not the timing process), "
                    if results.get("memory_process") == "worker"
                    else "Run in the benchmark process, "
                )
                + "one model at a time, each freed before the next."
            ),
            "",
            "| model | attn | gradient checkpointing | peak step memory (MiB) |",
            "|---|---|---|---:|",
        ]
        attn = {k: v["attn"] for k, v in results.get("train", {}).items()}
        for row in memory:
            lines.append(
                f"| {row['name']} | {attn.get(row['name'], '')} | {'on' if row['gradient_checkpointing'] else 'off'} "
                f"| {row['peak_mib']:.0f} |"
            )
        mem = {(r["name"], r["gradient_checkpointing"]): r["peak_mib"] for r in memory}
        if ("mm_pretraining", True) in mem and ("mm_pretraining", False) in mem:
            off, on = mem[("mm_pretraining", False)], mem[("mm_pretraining", True)]
            line = (
                f"\nGradient checkpointing on our pretraining step saves **{off - on:.0f} MiB "
                f"({(off - on) / off:.0%})** of step memory"
            )
            if "checkpointing" in results:
                t = results["checkpointing"]
                line += (
                    f"; the step then takes {t['on_s'] / t['off_s']:.2f}× as long ({t['on_s'] * 1e3:.0f} vs "
                    f"{t['off_s'] * 1e3:.0f} ms, timed in turns)"
                )
            lines += [line + ".", ""]
        else:
            lines.append("")

    flip = results.get("flip", [])
    if flip:
        lines += [
            "## 7. FLIP: image_mask_ratio on our pretraining step (train mode)",
            "",
            "Vision tower = `model.mm.vision_model` forward + backward alone, with the kept-patch indices of that "
            "ratio. Target: vision time at 0.75 ≤ 0.35× unmasked.",
            "",
            "| mask ratio | kept patches | step (ms) | step vs unmasked | vision tower (ms) | vision vs unmasked "
            "| vision vs unmasked, by CPU time | vision share of step |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in flip:
            lines.append(
                f"| {r['mask_ratio']:.2f} | {r['kept_patches']} | {r['step_s'] * 1e3:.1f} "
                f"| {r['step_vs_unmasked']:.2f}× | {r['vision_s'] * 1e3:.1f} | {r['vision_vs_unmasked']:.2f}× "
                f"| {r['vision_cpu_vs_unmasked']:.2f}× | {r['vision_share']:.0%} |"
            )
        lines.append("")

    scaling = results.get("scaling")
    if scaling:
        lines += [
            "## 8. Scaling of the pretraining step",
            "",
            f"Median of {s['scaling_iters']} steps after one warmup step per point (fewer than above: these are "
            "curves, not headline numbers).",
            "",
            "![step time vs image patches](benchmarks/scaling_patches.png) "
            "![step time vs text length](benchmarks/scaling_text.png)",
            "",
            "| image size | patches | ours (ms) | FLAVA (ms) | ours / FLAVA throughput |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in scaling["patches"]:
            lines.append(
                f"| {r['image_size']} | {r['patches']} | {r['mm_pretraining'] * 1e3:.1f} "
                f"| {r['flava_pretraining'] * 1e3:.1f} | {r['flava_pretraining'] / r['mm_pretraining']:.2f}× |"
            )
        lines += ["", "| text length | ours (ms) | FLAVA (ms) | ours / FLAVA throughput |", "|---:|---:|---:|---:|"]
        for r in scaling["text"]:
            lines.append(
                f"| {r['text_length']} | {r['mm_pretraining'] * 1e3:.1f} | {r['flava_pretraining'] * 1e3:.1f} "
                f"| {r['flava_pretraining'] / r['mm_pretraining']:.2f}× |"
            )
        lines.append("")

    lines += [
        "## What makes our steps faster, and what was tried",
        "",
        "In the model code (each checked against the plain computation by a test):",
        "",
        "- Pretraining: one text-tower pass over [clean ; masked] and one fusion pass over the ITM and MLM pairs "
        "(twice the rows per matmul, half the kernel calls); the last fusion layer computes only the positions the "
        "heads read (`MMModel.fuse(output_positions=...)`); the MLM and captioning heads project only the masked / "
        "real target rows onto the vocabulary; each image's keys/values are projected once and shared by its ITM "
        "negatives. Before these, the same benchmark on the 2-core CPU measured our step at 1.02× FLAVA's (commit "
        "`553372f`).",
        "- Generation: `logits_to_keep=1` (only the last position is projected in the prompt pass) and, on CPU, the "
        "decoding step's vocabulary projection computed as `(W @ h^T)^T`: for 8 rows and a 30,522-word vocabulary "
        "that orientation of the matmul took 4.8 ms instead of 11.7 ms here. Before these, generation measured 1.11× "
        "BLIP's (commit `553372f`).",
        "- ITC and embeddings: where only the pooled [CLS] state is read (`embed_image`, `embed_text`, ITC-only "
        "pretraining, late-fusion classifiers), each tower's last layer computes queries, attention output and MLP "
        "for [CLS] alone (`pooled_only`). `get_image_features` / `get_text_features` return the whole tower output, "
        "as CLIP's do, so the embedding rows compare the same work.",
        "- FLIP: only the kept patches are embedded (the patch convolution as a linear map of the unfolded pixels).",
        "- SDPA attention everywhere (FLAVA and BLIP run eager attention in transformers).",
        "",
        "Tried and not kept (micro-benchmarks on the 2-core AVX2 CPU, fp32):",
        "",
        "- One fused QKV matmul instead of three projections: forward + backward 5.3 → 3.7 ms at 256 rows but "
        "12.2 → 13.6 ms at 1,024 rows; no consistent gain at these sizes, and it would change the LoRA target names.",
        "- The `(W @ h^T)^T` vocabulary projection in training: about 8% faster for the head alone (fwd + bwd + "
        "cross-entropy, 256 rows), but the loss needs the logits transposed back; not worth a second code path.",
        "- Sparse gradients for the tied word embeddings: they would save the dense (V, D) zero-fill and add "
        "(about 30 ms of a pretraining step here), but a sparse gradient reaches fused AdamW whenever the tie is "
        "not in play (e.g. fine-tuning without the MLM head), which it rejects.",
        "",
        "What bounds the rest on the CPU: the GEMMs already run at roughly the matmul rate measured in turns "
        "(see the profiles below); what is left is memory-bound work that both sides pay: the 30,522 × 256 "
        "vocabulary matrix (31 MB) read by every vocabulary projection, its dense gradient, and fused AdamW over "
        "every parameter.",
        "",
    ]

    profiles = results.get("profiles", {})
    if profiles:
        lines += ["## Profiles of our steps behind missed targets", ""]
        for name, prof in profiles.items():
            missed = [t["target"] for t in targets if t["met"] is False and "/".join(t["profile"]) == name]
            lines += [f"### `{name}` (for: {'; '.join(missed)})", ""] + _profile_lines(
                prof, s["profile_steps"], peak, s["matmul_size"]
            )
    text = "\n".join(lines).rstrip() + "\n"
    # Keep the size sweep's section (size_sweep.py writes it between these markers) when the rest is regenerated.
    begin, end = "<!-- size-sweep:begin -->", "<!-- size-sweep:end -->"
    old = Path(out).read_text() if Path(out).exists() else ""
    if begin in old and end in old:
        text += "\n" + begin + old.split(begin, 1)[1].split(end, 1)[0] + end + "\n"
    Path(out).write_text(text)
    return text


def _profile_lines(prof: dict, steps: int, peak: float, matmul_size: int) -> list[str]:
    kind = prof["time_kind"]
    what = {"train": "training step(s)", "embed": "embedding call(s)", "generate": "generate() call(s)"}[prof["kind"]]
    optimizer = f", AdamW.step {prof['optimizer_ms']:.0f} ms of it" if prof["kind"] == "train" else ""
    lines = [
        f"torch.profiler over {steps} {what} (per call: {prof['total_self_ms']:.0f} ms of {kind} time{optimizer}). "
        f"Top ops by {kind} time:",
        "",
        f"| op | {kind} ms / call | share | calls / call |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| `{r['op']}` | {r['self_ms']:.1f} | {r['share']:.0%} | {r['calls']} |" for r in prof["rows"]]
    fwd = dict(prof["forward_breakdown"])
    whole = fwd.pop("(whole forward)")
    lines += [
        "",
        f"Forward pass by module (no_grad, forward hooks; whole forward {whole['ms']:.0f} ms, "
        f"{whole['gflop']:.2f} GFLOP):",
        "",
        "| module | forward ms | share of forward time | forward GFLOP | share of forward FLOPs | GFLOP/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for group, v in sorted(fwd.items(), key=lambda kv: -kv[1]["ms"]):
        rate = v["gflop"] / v["ms"] * 1e3 if v["ms"] else 0.0
        lines.append(
            f"| `{group}` | {v['ms']:.1f} | {v['ms'] / whole['ms']:.0%} | {v['gflop']:.2f} "
            f"| {v['gflop'] / max(whole['gflop'], 1e-12):.0%} | {rate:.1f} |"
        )
    top_module = max(fwd, key=lambda g: fwd[g]["ms"]) if fwd else None
    bound = (
        f"matmul-bound: GEMM kernels (mm / addmm / bmm / fused SDPA / convolution) take {prof['gemm_share']:.0%} of "
        f"{kind} time, and run at {prof['gemm_gflop_per_s']:.0f} GFLOP/s on average (model FLOPs ÷ GEMM time; the "
        f"best {matmul_size}² matmul reached {peak / 1e9:.0f}), so it gets faster only by doing fewer FLOPs or by "
        "running its GEMMs closer to peak (the module rows above with low GFLOP/s hold the skinny ones)"
        if prof["gemm_share"] >= 0.6
        else f"bound by non-matmul work: GEMM kernels take only {prof['gemm_share']:.0%} of {kind} time; the rest is "
        "elementwise ops, softmax / layer norm, copies, the optimizer and framework overhead"
    )
    lines += ["", f"**Verdict:** {bound}."]
    if top_module is not None:
        lines[-1] += (
            f" The largest forward cost is `{top_module}` ({fwd[top_module]['ms'] / whole['ms']:.0%} of forward time, "
            f"{fwd[top_module]['gflop'] / max(whole['gflop'], 1e-12):.0%} of forward FLOPs)."
        )
    return lines + [""]


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Toy sizes; finishes in well under a minute.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default="BENCHMARKS.md", help="Markdown report (relative to the repo root).")
    parser.add_argument(
        "--plots-dir", default="benchmarks", help="Where the scaling PNGs go (relative to the repo root)."
    )
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    hf_logging.set_verbosity_error()  # keep the progress log readable
    if args.memory_worker:
        job = json.loads(args.memory_worker)
        results = _memory_worker(job["size"], job["device"], [tuple(j) for j in job["jobs"]], job["warm"])
        print(json.dumps(results))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available.")
    size_name = "quick" if args.quick else "default"
    command = "python benchmarks/run_benchmarks.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    start = time.perf_counter()
    results = run_benchmarks(
        SIZES[size_name],
        device=args.device,
        size_name=size_name,
        memory="inprocess" if args.quick else "subprocess",
        plots_dir=ROOT / args.plots_dir,
    )
    with contextlib.suppress(OSError):
        results["machine"]["loadavg_end"] = os.getloadavg()[0]
    results["wall_s"] = time.perf_counter() - start
    out = ROOT / args.out
    write_report(results, out, command)
    _log(f"wrote {out} in {results['wall_s']:.0f} s")
    for t in results["targets"]:
        print(f"  {t['target']}: {_fmt(t['value'], t['fmt'])} (goal {t['goal']}) -> {_status(t['met'])}")


if __name__ == "__main__":
    main()
