"""Size sweep: the MM models against transformers' FLAVA, BLIP and CLIP at several batch / patch / text sizes.

At each point of `POINTS` (batch 8 / 32 / 64, 16 / 64 / 256 image patches, 16 / 32 / 64 tokens; a few representative
combinations, not the full grid), with the models, inputs and timers of `run_benchmarks.py`:

1. the four comparisons: pretraining step vs `FlavaForPreTraining`, captioning-loss step and greedy `generate()` vs
   `BlipForConditionalGeneration`, late-fusion ITC step vs `CLIPModel`; throughput ratio, FLOPs per sample of both and
   the work-matched ratio (achieved FLOP/s ours / peer), our FLOP utilisation, and the FLIP 0.75 vision-tower ratio;
2. every target of `SWEEP_GOALS` with its status at that point, and a torch.profiler summary behind each miss;
3. the rate of the run scripts' data path (`input_pipeline.data_path_rate`) at that batch and image size, next to the
   step rates: whether data or compute bounds the run;
4. with `--compile`, the training steps under `torch.compile(model)` (what Trainer's `torch_compile=True` does through
   accelerate: the default inductor backend), ours and the peer's in turns, with dynamo's frame and graph counters read
   before and after the timed steps: a frame compiled during them is a recompilation;
5. with `--loss-chunk-size N` (once `MMConfig` has `loss_chunk_size`), an "ours + fused loss" contender in the
   pretraining and captioning comparisons, timed in the same turns.

Usage:
    python benchmarks/size_sweep.py [--repeats 3] [--points main,b32-p64-t16,...] [--compile] [--out BENCHMARKS.md]
    python benchmarks/size_sweep.py --device cuda --dtype bf16 --attn flash_attention_2 --compile --json out.json
    python benchmarks/size_sweep.py --quick          # toy sizes: checks the whole sweep in well under a minute

Each repeat times every contender `iters` times in turns (after warm-up calls in the first repeat) and takes the
median; the report gives the median of the repeat medians and their min–max range. The section is written into
`--out` between `SECTION_BEGIN` / `SECTION_END` markers (replacing an earlier one), the rest of the file untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


if __name__ == "__main__":
    # As in run_benchmarks.py: passive OpenMP waiting keeps timings stable on shared cores; set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from benchmarks import run_benchmarks as rb  # noqa: E402
from modeling_mm import MMConfig  # noqa: E402
from modeling_mm.modeling_mm_pretraining import random_keep_indices  # noqa: E402


__all__ = [
    "COMPARISONS",
    "POINTS",
    "SWEEP_GOALS",
    "SweepPoint",
    "dynamo_counts",
    "evaluate_point",
    "main",
    "measure_compiled",
    "measure_point",
    "point_sizes",
    "render_section",
    "run_sweep",
    "target_met",
    "write_section",
]

SECTION_BEGIN = "<!-- size-sweep:begin -->"
SECTION_END = "<!-- size-sweep:end -->"


# ----------------------------------------------------------------------------------------------------------------------
# Points and goals
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPoint:
    r"""
    One size of the sweep; every other dimension is the base `BenchSizes` (hidden 256, 4 layers per tower, ...).

    Args:
        name: Key in `POINTS` and column of the report.
        batch_size, num_patches, text_length: The swept dimensions (`num_patches` a square of whole patches).
        iters: Timed calls of every contender per repeat.
    """

    name: str
    batch_size: int
    num_patches: int
    text_length: int
    iters: int = 3

    @property
    def label(self) -> str:
        return f"B{self.batch_size} · {self.num_patches}p · {self.text_length}t"


POINTS: dict[str, SweepPoint] = {
    p.name: p
    for p in (
        # Timed calls per repeat keep the default CPU sweep (4 points, 3 repeats, compile rows) near 30 minutes on 2
        # shared cores; the bigger points take 3-8x the main point's time per step.
        SweepPoint("main", 8, 64, 32, iters=3),  # = run_benchmarks.py's single point
        SweepPoint("b32-p64-t16", 32, 64, 16, iters=2),
        SweepPoint("b8-p256-t64", 8, 256, 64, iters=2),
        SweepPoint("b64-p16-t16", 64, 16, 16, iters=2),
        SweepPoint("b32-p256-t32", 32, 256, 32, iters=2),  # the heaviest: ~10x the main point's work; not by default
    )
}
DEFAULT_POINTS = ("main", "b32-p64-t16", "b8-p256-t64", "b64-p16-t16")

# `--quick`: toy models (SIZES["toy"]) at two points, one timed call per repeat.
QUICK_POINTS: dict[str, SweepPoint] = {
    p.name: p for p in (SweepPoint("toy-a", 2, 4, 8, iters=1), SweepPoint("toy-b", 4, 16, 8, iters=1))
}

# The raised goals of the sweep, keyed by `run_benchmarks.TARGETS` names (direction and format come from there). They
# must hold at every point. Embedding inference has no sweep goal and is not measured here.
SWEEP_GOALS: dict[str, float] = {
    "Pretraining step throughput vs FLAVA": 1.6,
    "Captioning-loss step throughput vs BLIP": 1.5,
    "Generation tokens/s vs BLIP": 1.6,
    "Late-fusion ITC step throughput vs CLIP": 1.3,
    "Pretraining-step FLOP utilisation (of the matmul rate timed in turns)": 0.65,
    "FLIP 0.75: vision-tower time vs unmasked": 0.35,
}

# (key, our case, the peer's case, kind): the comparisons measured at every point.
COMPARISONS: tuple[tuple[str, str, str, str], ...] = (
    ("pretrain", "mm_pretraining", "flava_pretraining", "train"),
    ("caption", "mm_captioning", "blip_captioning", "train"),
    ("generate", "mm_captioning", "blip_captioning", "generate"),
    ("itc", "mm_itc", "clip_itc", "train"),
)
# Which measured value each goal reads: (comparison key, field) of a point's results.
_GOAL_SOURCES: dict[str, tuple[str, str]] = {
    "Pretraining step throughput vs FLAVA": ("pretrain", "ratio"),
    "Captioning-loss step throughput vs BLIP": ("caption", "ratio"),
    "Generation tokens/s vs BLIP": ("generate", "ratio"),
    "Late-fusion ITC step throughput vs CLIP": ("itc", "ratio"),
    "Pretraining-step FLOP utilisation (of the matmul rate timed in turns)": ("pretrain", "utilisation"),
    "FLIP 0.75: vision-tower time vs unmasked": ("flip", "vision_ratio"),
}
# Our steps with a vocabulary loss, where a fused chunked loss (`MMConfig.loss_chunk_size`) applies.
FUSED_LOSS_CASES = ("mm_pretraining", "mm_captioning")

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched against torch.cuda.get_device_name().
# More specific names first ("H100 PCIe" before "H100").
GPU_BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)


def point_sizes(point: SweepPoint, base: rb.BenchSizes) -> rb.BenchSizes:
    """`base` at the point's batch, image size (`patch_size * sqrt(num_patches)`) and text length."""
    side = math.isqrt(point.num_patches)
    if side * side != point.num_patches:
        raise ValueError(f"num_patches must be a square, got {point.num_patches}")
    return dataclasses.replace(
        base,
        batch_size=point.batch_size,
        image_size=base.patch_size * side,
        text_length=point.text_length,
        iters=point.iters,
    )


def gpu_bf16_peak(name: str) -> float | None:
    """The data-sheet dense bf16 peak of the GPU called `name`, or None when it is not in `GPU_BF16_PEAKS`."""
    return next((peak for key, peak in GPU_BF16_PEAKS if key.lower() in name.lower()), None)


# ----------------------------------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------------------------------


def target_met(value: float | None, goal: float, direction: str) -> bool | None:
    """Whether `value` meets `goal` (`direction` "at least" or "at most"); None when it was not measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value >= goal if direction == "at least" else value <= goal


def evaluate_point(measured: dict) -> list[dict]:
    """Every `SWEEP_GOALS` target at one point: the median and range of its repeats, and whether the median meets it.

    Args:
        measured: `measure_point`'s result; only `measured[comparison][field]` lists (one value per repeat) are read.
    """
    spec = {name: (direction, fmt, profile) for name, _, direction, fmt, profile in rb.TARGETS}
    rows = []
    for name, goal in SWEEP_GOALS.items():
        direction, fmt, profile = spec[name]
        key, field = _GOAL_SOURCES[name]
        values = measured.get(key, {}).get(field) or []
        value = statistics.median(values) if values else None
        sign = "≥" if direction == "at least" else "≤"
        rows.append(
            {
                "target": name,
                "value": value,
                "range": (min(values), max(values)) if values else None,
                "goal": goal,
                "goal_text": f"{sign} {fmt.format(goal)}",
                "direction": direction,
                "fmt": fmt,
                "met": target_met(value, goal, direction),
                # Met even by the worst repeat: the ratio holds across the load changes of the run.
                "met_every_repeat": all(target_met(v, goal, direction) for v in values) if values else None,
                "profile": profile,
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def apply_attn(case: rb.Case, attn: str) -> str:
    """Switches `case.model` to `attn` ("sdpa", "flash_attention_2"; "default" keeps the model's own); falls back to
    sdpa, then to the model's own, where the kernel or the model does not support it. Returns what it runs."""
    if attn != "default":
        for choice in (attn, "sdpa") if attn != "sdpa" else ("sdpa",):
            try:
                case.model.set_attn_implementation(choice)
                break
            except (ValueError, ImportError):
                continue
    return case.attn_implementation


def fused_loss_supported() -> bool:
    """Whether `MMConfig` has the fused chunked vocabulary loss (`loss_chunk_size`)."""
    return hasattr(MMConfig(), "loss_chunk_size")


def _timed_repeats(
    fns: dict[str, Callable[[], object]], sizes: rb.BenchSizes, repeats: int, device: str, warmup: int
) -> list[dict[str, float]]:
    """`repeats` rounds of `rb.time_interleaved` (warm-up calls in the first only); each round's median per key."""
    rounds = []
    for r in range(repeats):
        times = rb.time_interleaved(fns, warmup if r == 0 else 0, sizes.iters, device)
        rounds.append({key: _median(t) for key, t in times.items()})
    return rounds


def _step_peak_mib(step: Callable[[], object], device: str) -> float | None:
    """Peak allocated CUDA memory (MiB) over one more step; None on CPU (run_benchmarks.py measures CPU memory)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def measure_training(
    cases: dict[str, rb.Case], sizes: rb.BenchSizes, device: str, repeats: int
) -> tuple[dict[str, dict], list[float]]:
    """Training steps of `cases` (ours first, the peer last) and an `rb.make_matmul_fn` call, timed in turns.

    Returns per case its loss after one step, FLOPs per step and per-repeat samples/s (plus peak CUDA memory), and the
    per-repeat matmul FLOP/s measured under the same load.
    """
    steps = {key: rb.make_train_step(case, device) for key, case in cases.items()}
    out = {}
    for key, case in cases.items():
        loss = float(steps[key]())
        if not math.isfinite(loss):
            raise RuntimeError(f"{key}: the training loss is not finite ({loss}).")
        out[key] = {
            "label": case.label,
            "attn": case.attn_implementation,
            "loss": loss,
            "flops": rb.count_step_flops(case, device),
        }
    matmul = "(matmul)"
    rounds = _timed_repeats(
        steps | {matmul: rb.make_matmul_fn(device, sizes.matmul_size)}, sizes, repeats, device, sizes.warmup - 1
    )
    for key, row in out.items():
        row["samples_per_s"] = [sizes.batch_size / r[key] for r in rounds]
        row["peak_mib"] = _step_peak_mib(steps[key], device)
    return out, [2 * sizes.matmul_size**3 / r[matmul] for r in rounds]


def count_call_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure_generate(cases: dict[str, rb.Case], sizes: rb.BenchSizes, device: str, repeats: int) -> dict[str, dict]:
    """Greedy `generate()` of `sizes.gen_tokens` new tokens per image, in turns; per-repeat new tokens/s."""
    for case in cases.values():
        case.model.eval()
    fns = {key: rb.make_generate_fn(case, sizes, device) for key, case in cases.items()}
    out = {}
    for key, case in cases.items():
        new_tokens = fns[key]().shape[1] - 1  # both start from one [CLS] token; this call is the first warm-up
        out[key] = {"label": case.label, "attn": case.attn_implementation, "new_tokens": new_tokens}
        out[key]["flops"] = count_call_flops(fns[key])
    rounds = _timed_repeats(fns, sizes, repeats, device, sizes.warmup - 1)
    for key, row in out.items():
        row["tokens_per_s"] = [sizes.batch_size * row["new_tokens"] / r[key] for r in rounds]
        row["samples_per_s"] = [sizes.batch_size / r[key] for r in rounds]
    for case in cases.values():
        case.model.train()
    return out


def measure_flip(case: rb.Case, sizes: rb.BenchSizes, device: str, repeats: int) -> dict:
    """Vision-tower forward + backward at FLIP mask ratio 0.75 vs unmasked (`rb.make_vision_fn`), in turns."""
    model, pixel_values = case.model, case.inputs["pixel_values"]
    gen = torch.Generator(device=device).manual_seed(0)
    keep = random_keep_indices(sizes.batch_size, sizes.num_patches, 0.75, torch.device(device), gen)
    fns = {
        "unmasked": rb.make_vision_fn(model, pixel_values, None, device),
        "masked": rb.make_vision_fn(model, pixel_values, keep, device),
    }
    rounds = _timed_repeats(fns, sizes, repeats, device, sizes.warmup)
    return {
        "kept_patches": keep.shape[1],
        "vision_ratio": [r["masked"] / r["unmasked"] for r in rounds],
        "unmasked_ms": [r["unmasked"] * 1e3 for r in rounds],
    }


def _pair_summary(rows: dict[str, dict], ours: str, peer: str, rate: str, batch: int) -> dict:
    """Per-repeat throughput ratio and work-matched ratio (achieved FLOP/s ratio) of `ours` against `peer`."""
    o, p = rows[ours], rows[peer]
    ratio = [a / b for a, b in zip(o[rate], p[rate])]
    flops_ratio = o["flops"] / p["flops"]
    return {
        "ratio": ratio,
        # achieved FLOP/s ours / peer = throughput ratio x FLOPs-per-sample ratio
        "work_ratio": [r * flops_ratio for r in ratio],
        "flops_per_sample": {key: rows[key]["flops"] / batch for key in rows},
    }


def measure_data_path(sizes: rb.BenchSizes, workers: tuple[int, ...] = (0, 2)) -> dict:
    """Samples/s of the run scripts' data path at this batch / image size / token budget, for each worker count."""
    samples = max(256, 4 * sizes.batch_size)
    try:
        import datasets

        from benchmarks.input_pipeline import data_path_rate

        datasets.disable_progress_bars()
        rates = {w: data_path_rate(sizes.batch_size, sizes.image_size, sizes.text_length, samples, w) for w in workers}
    except (ImportError, OSError) as error:  # the GPU machine may lack `datasets` or the easy-VQA files: say so
        return {"error": f"not measured ({type(error).__name__}: {error})"}
    return {"samples_per_s": rates, "samples": samples}


def measure_point(
    point: SweepPoint,
    base: rb.BenchSizes,
    device: str,
    repeats: int,
    attn: str = "default",
    loss_chunk_size: int | None = None,
    data_path: bool = True,
    profile: bool = True,
) -> dict:
    """Everything of one sweep point (see the module docstring); `evaluate_point` reads the result.

    Args:
        point, base: The point, and the `BenchSizes` it changes (`point_sizes`).
        device, repeats: Where, and how many rounds of turns each timing gets.
        attn: Attention kernel for every model that supports it (`apply_attn`).
        loss_chunk_size: Adds an "ours + fused loss" contender to the pretraining and captioning steps, when
            `MMConfig` has `loss_chunk_size`.
        data_path, profile: Measure the data path; profile our step behind every missed target.
    """
    sizes = point_sizes(point, base)
    result: dict = {"point": dataclasses.asdict(point), "label": point.label, "sizes": dataclasses.asdict(sizes)}
    overrides = {"loss_chunk_size": loss_chunk_size} if loss_chunk_size else None
    fused = bool(overrides) and fused_loss_supported()
    result["fused_loss"] = loss_chunk_size if fused else None
    matmul_rates: list[float] = []

    def case(name: str, **kwargs) -> rb.Case:
        c = rb.build_case(name, sizes, device, **kwargs)
        apply_attn(c, attn)
        return c

    cases: dict[str, rb.Case] = {}
    for key, ours_name, peer_name, kind in COMPARISONS:
        _log(f"{point.name}: {key} ({ours_name} vs {peer_name})")
        if kind == "generate":
            # The captioning models of the comparison before (`COMPARISONS` orders them so), without the fused copy.
            cases = {name: cases[name] for name in (ours_name, peer_name)}
            rows = measure_generate(cases, sizes, device, repeats)
            result[key] = _pair_summary(rows, ours_name, peer_name, "tokens_per_s", sizes.batch_size) | {"rows": rows}
            continue
        cases = {ours_name: case(ours_name)}  # the previous pair is freed here
        if fused and ours_name in FUSED_LOSS_CASES:
            cases[ours_name + "+fused"] = case(ours_name, config_overrides=overrides)
        cases[peer_name] = case(peer_name)
        rows, rates = measure_training(cases, sizes, device, repeats)
        matmul_rates += rates
        summary = _pair_summary(rows, ours_name, peer_name, "samples_per_s", sizes.batch_size)
        flops, ours_rates = rows[ours_name]["flops"], rows[ours_name]["samples_per_s"]
        summary["utilisation"] = [flops * sps / sizes.batch_size / rate for sps, rate in zip(ours_rates, rates)]
        if ours_name + "+fused" in rows:
            fused_rows = {k: rows[k] for k in (ours_name + "+fused", peer_name)}
            summary["fused_ratio"] = _pair_summary(
                fused_rows, ours_name + "+fused", peer_name, "samples_per_s", sizes.batch_size
            )["ratio"]
        result[key] = summary | {"rows": rows}
        if key == "pretrain":
            _log(f"{point.name}: FLIP vision tower 0.75 vs unmasked")
            result["flip"] = measure_flip(cases[ours_name], sizes, device, repeats)
    del cases
    result["matmul_flops_per_s"] = matmul_rates
    if data_path:
        _log(f"{point.name}: data path")
        result["data"] = measure_data_path(sizes)
    result["targets"] = evaluate_point(result)
    result["profiles"] = {}
    if profile:
        for target in result["targets"]:
            name, kind = target["profile"]
            if target["met"] is False and f"{name}/{kind}" not in result["profiles"]:
                _log(f"{point.name}: profile {name} ({kind})")
                result["profiles"][f"{name}/{kind}"] = rb.profile_case(case(name), sizes, device, kind)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------------------------------


def dynamo_counts() -> dict[str, int]:
    """Dynamo's running totals: frames compiled (every (re)compilation of a frame adds one), graphs, graph breaks."""
    from torch._dynamo.utils import counters

    return {
        "frames": counters["frames"]["total"],
        "graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
        # inductor's on-disk FX graph cache: hits make a first step far shorter than a cold compilation
        "cache_hits": counters["inductor"]["fxgraph_cache_hit"],
        "cache_misses": counters["inductor"]["fxgraph_cache_miss"],
    }


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def measure_compiled(
    point: SweepPoint,
    base: rb.BenchSizes,
    device: str,
    repeats: int,
    attn: str = "default",
    backend: str = "inductor",
    keys: tuple[str, ...] = ("pretrain", "caption", "itc"),
    out: dict | None = None,
) -> dict:
    """The training comparisons with `torch.compile(model, backend=backend)` (Trainer's `torch_compile=True`).

    Per model: the first step's time (compilation included), the frames / graphs / graph breaks it compiled, then the
    timed steps in turns with the counters read before and after: `recompiles` is the number of frames compiled during
    the timed steps (must be 0). A model that fails to compile is reported with its error, and its comparison skipped.
    `keys` picks the training comparisons of `COMPARISONS`, measured in that order; `out` is filled in place (each
    comparison once it is complete) and returned.
    """
    sizes = point_sizes(point, base)
    out = {} if out is None else out
    out.update(point=point.name, label=point.label, backend=backend, comparisons={})
    known = {key: (ours, peer) for key, ours, peer, kind in COMPARISONS if kind == "train"}
    for key in keys:
        if key not in known:
            raise ValueError(f"compile comparisons are among {', '.join(known)}, got {key!r}")
        ours_name, peer_name = known[key]
        rows, steps = {}, {}
        for name in (ours_name, peer_name):
            _log(f"{point.name}: compile {name}")
            case = rb.build_case(name, sizes, device)
            apply_attn(case, attn)
            case.model = torch.compile(case.model, backend=backend)
            step = rb.make_train_step(case, device)
            before = dynamo_counts()
            start = time.perf_counter()
            try:
                loss = float(step())
                rb._sync(device)
            except Exception as error:  # noqa: BLE001 - the table reports it
                rows[name] = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"}
                continue
            rows[name] = {
                "label": case.label,
                "attn": case.attn_implementation,
                "loss": loss,
                "first_step_s": time.perf_counter() - start,
                "compiled": _delta(dynamo_counts(), before),
            }
            steps[name] = step
        if len(steps) == 2:
            for step in steps.values():  # one more step each (the optimizer state exists from here on)
                step()
            rb._sync(device)
            before = dynamo_counts()
            rounds = _timed_repeats(steps, sizes, repeats, device, warmup=0)
            timed = _delta(dynamo_counts(), before)
            for name, row in rows.items():
                row["samples_per_s"] = [sizes.batch_size / r[name] for r in rounds]
                row["peak_mib"] = _step_peak_mib(steps[name], device)
            out["comparisons"][key] = {
                "rows": rows,
                "ratio": [a / b for a, b in zip(rows[ours_name]["samples_per_s"], rows[peer_name]["samples_per_s"])],
                "recompiles": timed["frames"],
                "timed_counts": timed,
            }
        else:
            out["comparisons"][key] = {"rows": rows, "ratio": [], "recompiles": None}
        del steps
        torch._dynamo.reset()  # each model's compiled code is dropped before the next pair
    return out


# ----------------------------------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------------------------------


def run_sweep(
    points: list[SweepPoint],
    base: rb.BenchSizes,
    device: str = "cpu",
    repeats: int = 3,
    attn: str = "default",
    loss_chunk_size: int | None = None,
    compile_points: list[SweepPoint] | None = None,
    compile_backend: str = "inductor",
    compile_keys: tuple[str, ...] = ("pretrain", "caption", "itc"),
    data_path: bool = True,
    profile: str = "all",
    results: dict | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Measures every point (`measure_point`), then the compiled rows of `compile_points` (`measure_compiled`).

    Args:
        profile: "all" (a profile behind every missed target at every point), "main" (the first point only), "none".
        results: Filled in place and returned (so that a caller keeps what was measured when the run is stopped).
        progress: Called with `results` after every point and every compiled point.
    """
    rb._setup_process()
    results = {} if results is None else results
    results.update(device=device, repeats=repeats, attn=attn, machine=rb.machine_info(device))
    dtype = rb.AUTOCAST_DTYPES.get(device)
    results["dtype"] = "fp32" if dtype is None else str(dtype).removeprefix("torch.")
    _log(f"matmul peak ({base.matmul_size}x{base.matmul_size})")
    results["matmul_peak"] = rb.matmul_peak_flops(device, base.matmul_size)
    if device == "cuda":
        results["gpu_peak"] = gpu_bf16_peak(torch.cuda.get_device_name()) if dtype == torch.bfloat16 else None
    results["fused_loss"] = {"requested": loss_chunk_size, "supported": fused_loss_supported()}
    results["points"], results["compiled"] = [], []
    for i, point in enumerate(points):
        do_profile = profile == "all" or (profile == "main" and i == 0)
        results["points"].append(
            measure_point(point, base, device, repeats, attn, loss_chunk_size, data_path, do_profile)
        )
        if progress:
            progress(results)
    for point in compile_points or []:
        results["compiled"].append({})  # filled in place: a stopped run keeps the comparisons already complete
        measure_compiled(point, base, device, repeats, attn, compile_backend, compile_keys, results["compiled"][-1])
        if progress:
            progress(results)
    results["matmul_peak"] = max(results["matmul_peak"], rb.matmul_peak_flops(device, base.matmul_size))
    with contextlib.suppress(OSError):
        results["machine"]["loadavg_end"] = os.getloadavg()[0]
    return results


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def _range(values: list[float], fmt: str = "{:.2f}×") -> str:
    """`median [min–max]` of per-repeat values."""
    if not values:
        return "—"
    med = fmt.format(_median(values))
    return med if len(values) == 1 else f"{med} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


def _status(target: dict) -> str:
    if target["met"] is None:
        return "not measured"
    if target["met"]:
        return "met" if target["met_every_repeat"] else "met (median; not every repeat)"
    return "**missed**"


_NAMES = {
    "pretrain": ("pretraining step", "FLAVA"),
    "caption": ("captioning-loss step", "BLIP"),
    "generate": ("generate() tokens/s", "BLIP"),
    "itc": ("late-fusion ITC step", "CLIP"),
}


def render_section(results: dict, command: str) -> str:
    """The sweep's markdown section (without the markers)."""
    m, points = results["machine"], results["points"]
    s = points[0]["sizes"]
    device, peak = results["device"], results["matmul_peak"]
    lines = [
        "## Size sweep: ours vs FLAVA / BLIP / CLIP at several sizes",
        "",
        "Generated by `benchmarks/size_sweep.py`; every number in this section was measured in one run of:",
        "",
        "```",
        command,
        "```",
        "",
        f"- {'GPU: ' + m['gpu'] + '; ' if 'gpu' in m else ''}CPU: {m['cpu']}, {m['cores_visible']} cores visible, "
        f"{m['torch_threads']} torch threads; torch {m['torch']}, transformers {m['transformers']}; device `{device}`, "
        f"{results['dtype']}" + (" autocast (fp32 weights)" if results["dtype"] != "fp32" else "")
        + f", attention `{results['attn']}`" + (f"; code at commit `{m['commit']}`" if "commit" in m else ""),
        f"- run started {m['date']}; 1-min load average at start {m.get('loadavg_start', float('nan')):.2f}"
        + (f", at end {m['loadavg_end']:.2f}" if "loadavg_end" in m else "")
        + " (shared cores: absolute times are noisy; every ratio compares models timed in turns)",
        f"- matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s"
        + (
            f"; data-sheet dense bf16 peak of this GPU: {results['gpu_peak'] / 1e12:.0f} TFLOP/s"
            if results.get("gpu_peak")
            else ""
        ),
        f"- Each of {results['repeats']} repeats times every contender in turns (warm-up calls in the first repeat "
        "only) and takes the median of its calls; cells give the **median of the repeat medians [min–max over "
        f"repeats]**. Other dimensions: hidden {s['hidden_size']}, {s['num_layers']} layers per tower, "
        f"{s['num_fusion_layers']} fusion / {s['num_decoder_layers']} decoder layers, {s['patch_size']} px patches, "
        f"vocabulary {s['vocab_size']:,}, {s['gen_tokens']} new tokens per caption.",
        "- Throughput ratio = ours / peer samples/s (tokens/s for generate); work-matched ratio = achieved FLOP/s ours "
        "/ peer (the throughput ratio × the FLOPs-per-sample ratio; FlopCounterMode, forward + backward). FLOP "
        "utilisation = our pretraining step's FLOP/s ÷ the matmul rate timed in turns with it. Targets are met when "
        "the median meets the goal; \"not every repeat\" marks a median that meets it while a repeat does not.",
        *(["- **Stopped early** (time guard): only the points below were measured."]
          if results.get("interrupted") else []),
        *(["- A CPU run. GPU numbers are not in this section: `benchmarks/gpu_check.sh` measures them on an NVIDIA GPU "
           "(bf16, flash / sdpa attention, compile, MFU against the GPU's peak, peak memory); as of this run they are "
           "not yet measured."] if device == "cpu" else []),
        "",
        "### Targets at every point",
        "",
        "| target | goal | " + " | ".join(f"{p['label']}" for p in points) + " |",
        "|---|---:|" + "---:|" * len(points),
    ]
    for i, (name, _) in enumerate(SWEEP_GOALS.items()):
        cells = []
        for p in points:
            t = p["targets"][i]
            values = _values_of(p, name)
            cells.append(f"{_range(values, t['fmt'])} {_status(t)}")
        lines.append(f"| {name} | {points[0]['targets'][i]['goal_text']} | " + " | ".join(cells) + " |")
    every = [all(p["targets"][i]["met"] for p in points) for i in range(len(SWEEP_GOALS))]
    lines += [
        "",
        f"Targets met at every point: **{sum(every)} of {len(every)}**"
        + (f" ({'; '.join(n for n, ok in zip(SWEEP_GOALS, every) if ok)})" if any(every) else "")
        + ".",
        "",
        "### Throughput, FLOPs per sample and work-matched ratios",
        "",
        "| point | comparison | ours | peer | peer attn | throughput ratio | GFLOP / sample ours / peer "
        "| work-matched ratio | peak memory ours / peer (MiB) |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for p in points:
        for key, ours, peer, kind in COMPARISONS:
            c = p[key]
            rows, rate = c["rows"], "tokens_per_s" if kind == "generate" else "samples_per_s"
            unit = "tokens/s" if kind == "generate" else "samples/s"
            fps = c["flops_per_sample"]
            mem = [rows[n].get("peak_mib") for n in (ours, peer)]
            lines.append(
                f"| {p['label']} | {_NAMES[key][0]} vs {_NAMES[key][1]} | {_median(rows[ours][rate]):.1f} {unit} "
                f"| {_median(rows[peer][rate]):.1f} | {rows[peer]['attn']} | **{_range(c['ratio'])}** "
                f"| {fps[ours] / 1e9:.3g} / {fps[peer] / 1e9:.3g} | {_range(c['work_ratio'])} "
                f"| {' / '.join('—' if v is None else f'{v:.0f}' for v in mem)} |"
            )
            if "fused_ratio" in c:
                fused_mem = rows[ours + "+fused"].get("peak_mib")
                fused_work = [r * fps[ours + "+fused"] / fps[peer] for r in c["fused_ratio"]]
                # the fused contender against our unfused step, repeat by repeat (same turns)
                vs_plain = [a / b for a, b in zip(rows[ours + "+fused"][rate], rows[ours][rate])]
                lines.append(
                    f"| {p['label']} | {_NAMES[key][0]}, **ours + fused loss** (loss_chunk_size "
                    f"{p['fused_loss']}) vs {_NAMES[key][1]}; vs ours unfused: {_range(vs_plain)} "
                    f"| {_median(rows[ours + '+fused'][rate]):.1f} {unit} "
                    f"| {_median(rows[peer][rate]):.1f} | {rows[peer]['attn']} | **{_range(c['fused_ratio'])}** "
                    f"| {fps[ours + '+fused'] / 1e9:.3g} / {fps[peer] / 1e9:.3g} | {_range(fused_work)} "
                    f"| {'—' if fused_mem is None else f'{fused_mem:.0f}'} / {'—' if mem[1] is None else f'{mem[1]:.0f}'} |"
                )
    fused = results["fused_loss"]
    if not fused["supported"]:
        lines += [
            "",
            "No \"ours + fused loss\" rows: this code's `MMConfig` has no `loss_chunk_size` yet (`--loss-chunk-size N` "
            "adds them, timed in the same turns, once it has).",
        ]
    elif not fused["requested"]:
        lines += ["", "No \"ours + fused loss\" rows: run with `--loss-chunk-size N` to add them."]
    if any(p.get("flip") for p in points):
        lines += [
            "",
            "FLIP: our vision tower's forward + backward at mask ratio 0.75 vs unmasked (in turns): "
            + "; ".join(
                f"{p['label']}: {_range(p['flip']['vision_ratio'])} ({p['flip']['kept_patches']} of "
                f"{p['point']['num_patches']} patches kept)"
                for p in points
                if p.get("flip")
            )
            + ".",
        ]

    lines += [
        "",
        "### Step rate against the data path",
        "",
        "Data path = the run scripts' path (`input_pipeline.data_path_rate`: easy-VQA PNG files through "
        "`prepare_dataset` and `DataCollatorForMMPretraining`, images resized to the point's size, the point's token "
        "budget), samples/s after the first batch, measured in this run on the same machine. Bound by: data when the "
        "best data-path rate is below the step rate, else compute.",
        "",
        "| point | data path, 0 / 2 workers (samples/s) | our pretraining step | our captioning step | our ITC step "
        "| bound by |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for p in points:
        data = p.get("data")
        steps = [_median(p[key]["rows"][ours]["samples_per_s"]) for key, ours, _, kind in COMPARISONS
                 if kind == "train"]
        if not data or "error" in data:
            rate_cell, bound = (data or {}).get("error", "not measured"), "—"
        else:
            rates = data["samples_per_s"]
            rate_cell = " / ".join(f"{rates[w]:.0f}" for w in sorted(rates))
            best = max(rates.values())
            # "compute (40×)": the data path delivers 40x what the step consumes
            bound = "; ".join(
                f"{label}: {'**data**' if best < s else 'compute'} ({best / s:.1f}×)"
                for label, s in zip(("pretraining", "captioning", "ITC"), steps)
            )
        lines.append(
            f"| {p['label']} | {rate_cell} | " + " | ".join(f"{s:.1f}" for s in steps) + f" | {bound} |"
        )

    compiled = results.get("compiled") or []
    if compiled:
        lines += [
            "",
            "### torch.compile",
            "",
            "Trainer's `torch_compile=True` hands the model to accelerate, which calls `torch.compile(model)` with "
            "the default inductor backend (optimizer and backward outside the compiled forward; AOTAutograd compiles "
            "the backward). Here: `torch.compile(model, backend=...)`, then the same training step as above, ours and "
            "the peer's in turns. First step = compilation + one step. Frames / graphs / graph breaks: dynamo's "
            "counters (`torch._dynamo.utils.counters`) over the first step; recompiles = frames compiled during the "
            "timed steps (counters read before and after them; must be 0).",
            "",
            "| point | comparison | model | first step (s) | frames / graphs / graph breaks compiled "
            "| inductor cache hits / misses | compiled samples/s | ours / peer compiled | recompiles in timed steps |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in compiled:
            for key, comp in c["comparisons"].items():
                for name, row in comp["rows"].items():
                    if "error" in row:
                        lines.append(
                            f"| {c['label']} | {_NAMES[key][0]} | `{name}` | failed to compile: `{row['error']}` "
                            "| | | | | |"
                        )
                        continue
                    n = row["compiled"]
                    lines.append(
                        f"| {c['label']} | {_NAMES[key][0]} vs {_NAMES[key][1]} (backend {c['backend']}) | `{name}` "
                        f"| {row['first_step_s']:.1f} | {n['frames']} / {n['graphs']} / {n['graph_breaks']} "
                        f"| {n['cache_hits']} / {n['cache_misses']} "
                        f"| {_range(row.get('samples_per_s', []), '{:.1f}')} | {_range(comp['ratio'])} "
                        f"| {'—' if comp['recompiles'] is None else comp['recompiles']} |"
                    )
        hits = [row["compiled"]["cache_hits"] for c in compiled for comp in c["comparisons"].values()
                for row in comp["rows"].values() if "compiled" in row]
        if any(hits):
            lines += ["", "A first step with inductor cache hits reuses kernels compiled by an earlier run on this "
                      "machine (same graphs); the rows with no hits show a cold compilation."]
        eager = {p["point"]["name"]: p for p in points}
        notes = []
        for c in compiled:
            for key, comp in c["comparisons"].items():
                if comp["ratio"] and c["point"] in eager:
                    e = eager[c["point"]][key]
                    ours = next(o for k, o, _, _ in COMPARISONS if k == key)
                    speedup = _median(comp["rows"][ours]["samples_per_s"]) / _median(e["rows"][ours]["samples_per_s"])
                    notes.append(f"{_NAMES[key][0]} {speedup:.2f}×")
        if notes:
            lines += ["", "Ours compiled vs ours eager at the same point (eager from the table above, a different "
                      "set of turns): " + "; ".join(notes) + "."]

    if device == "cuda":
        lines += _mfu_lines(results)
    profiled = [(p, name, prof) for p in points for name, prof in p["profiles"].items()]
    if profiled:
        lines += ["", "### Where the time goes behind the missed targets", ""]
        for p, name, prof in profiled:
            missed = [t["target"] for t in p["targets"] if t["met"] is False and "/".join(t["profile"]) == name]
            s = p["sizes"]
            lines += [f"#### {p['label']}: `{name}` (for: {'; '.join(missed)})", ""]
            lines += rb._profile_lines(prof, s["profile_steps"], peak, s["matmul_size"])
    return "\n".join(lines).rstrip() + "\n"


def _values_of(point: dict, target: str) -> list[float]:
    key, field = _GOAL_SOURCES[target]
    return point.get(key, {}).get(field) or []


def _mfu_lines(results: dict) -> list[str]:
    """MFU of each of our training steps against the measured matmul peak and the GPU's data-sheet peak."""
    peak, sheet = results["matmul_peak"], results.get("gpu_peak")
    lines = [
        "",
        "### MFU on the GPU",
        "",
        f"Model FLOP/s of our training steps ÷ the best bf16 matmul measured in this run ({peak / 1e12:.0f} TFLOP/s)"
        + (f" and ÷ the data-sheet dense bf16 peak ({sheet / 1e12:.0f} TFLOP/s)." if sheet else "."),
        "",
        "| point | step | model TFLOP/s | MFU (measured peak) | MFU (data sheet) |",
        "|---|---|---:|---:|---:|",
    ]
    for p in results["points"]:
        for key, ours, _, kind in COMPARISONS:
            if kind != "train":
                continue
            row = p[key]["rows"][ours]
            rate = row["flops"] * _median(row["samples_per_s"]) / p["point"]["batch_size"]
            lines.append(
                f"| {p['label']} | {_NAMES[key][0]} | {rate / 1e12:.1f} | {rate / peak:.1%} "
                f"| {'—' if not sheet else f'{rate / sheet:.1%}'} |"
            )
    return lines


def write_section(path: Path, section: str) -> str:
    """Puts `section` between the markers in `path` (replacing an earlier one, else appending); returns the file."""
    block = f"{SECTION_BEGIN}\n{section.rstrip()}\n{SECTION_END}\n"
    text = path.read_text() if path.exists() else ""
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        text = head + block + rest.split(SECTION_END, 1)[1].lstrip("\n")
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block
    path.write_text(text)
    return text


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Toy models at two toy points; well under a minute.")
    parser.add_argument("--points", default=",".join(DEFAULT_POINTS), help=f"Comma-separated, of: {', '.join(POINTS)}.")
    parser.add_argument("--repeats", type=int, default=3, help="Repeats of every timing (median and range reported).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                        help="Autocast dtype (weights stay fp32); default fp32 on CPU, bf16 on CUDA.")
    parser.add_argument("--attn", choices=("default", "sdpa", "flash_attention_2"), default="default",
                        help="Attention kernel for every model that supports it (sdpa where flash is unavailable); "
                        "default keeps each model's own.")
    parser.add_argument("--compile", action="store_true", help="Add the torch.compile rows at --compile-points.")
    parser.add_argument("--compile-points", default="main", help="Points of the compile rows (comma-separated).")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (Trainer's: inductor).")
    parser.add_argument("--compile-comparisons", default="pretrain,caption,itc",
                        help="Training comparisons of the compile rows (comma-separated: pretrain, caption, itc).")
    parser.add_argument("--loss-chunk-size", type=int, default=None,
                        help="Adds an 'ours + fused loss' contender (MMConfig.loss_chunk_size) where MMConfig has it.")
    parser.add_argument("--matmul-size", type=int, default=None, help="Side of the peak matmul (default 2048 on CPU, "
                        "8192 on CUDA).")
    parser.add_argument("--no-data-path", action="store_true", help="Skip the data-path rates.")
    parser.add_argument("--profile", choices=("all", "main", "none"), default="all",
                        help="Profiles behind missed targets: at every point, the first point only, or none.")
    parser.add_argument("--out", default="BENCHMARKS.md", help="Markdown file that gets the section ('' for none).")
    parser.add_argument("--json", default=None, help="Also write the raw results here.")
    parser.add_argument("--render-json", default=None,
                        help="Measure nothing: render the section from an earlier run's --json (and its command).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available.")
    dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    rb.AUTOCAST_DTYPES[args.device] = torch.bfloat16 if dtype == "bf16" else None
    catalogue = QUICK_POINTS if args.quick else POINTS
    # --quick measures every toy point unless --points names some of them
    every = args.quick and args.points == ",".join(DEFAULT_POINTS)
    names = list(catalogue) if every else [n for n in args.points.split(",") if n]
    compile_names = ([names[0]] if args.quick else [n for n in args.compile_points.split(",") if n]) if args.compile \
        else []
    unknown = [n for n in names + compile_names if n not in catalogue]
    if unknown:
        raise SystemExit(f"unknown point(s) {unknown}; known: {', '.join(catalogue)}")
    base = rb.SIZES["toy" if args.quick else "default"]
    if args.matmul_size or args.device == "cuda":
        base = dataclasses.replace(base, matmul_size=args.matmul_size or 8192)
    command = "python benchmarks/size_sweep.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    if args.render_json:
        results = json.loads(Path(args.render_json).read_text())
        section = render_section(results, results["command"])
        if args.out:
            write_section(Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out, section)
        return results
    start = time.perf_counter()

    def save_json(res: dict) -> None:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(res, indent=1, default=str))

    results: dict = {"command": command}
    try:
        run_sweep(
            [catalogue[n] for n in names],
            base,
            device=args.device,
            repeats=args.repeats,
            attn=args.attn,
            loss_chunk_size=args.loss_chunk_size,
            compile_points=[catalogue[n] for n in compile_names],
            compile_backend=args.compile_backend,
            compile_keys=tuple(k for k in args.compile_comparisons.split(",") if k),
            data_path=not args.no_data_path,
            profile=args.profile,
            results=results,
            progress=save_json,
        )
    except KeyboardInterrupt:  # `timeout --signal=INT` (gpu_check.sh): report the points measured so far
        if not results.get("points"):
            raise
        results["interrupted"] = True
        _log(f"interrupted: reporting the {len(results['points'])} point(s) measured")
    results["wall_s"] = time.perf_counter() - start
    section = render_section(results, command)
    if args.out:
        out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
        write_section(out, section)
        _log(f"wrote the sweep section into {out} ({results['wall_s']:.0f} s)")
    save_json(results)
    for p in results["points"]:
        for t in p["targets"]:
            print(f"  {p['label']}: {t['target']}: {rb._fmt(t['value'], t['fmt'])} ({t['goal_text']}) -> {_status(t)}")
    for c in results.get("compiled", []):
        for key, comp in c["comparisons"].items():
            print(f"  compiled {c['label']} {key}: recompiles in timed steps = {comp['recompiles']}")
    return results


if __name__ == "__main__":
    main()
