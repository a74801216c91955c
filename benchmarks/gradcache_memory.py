"""Peak memory and time of one ITC training step: a plain batch of B against gradient caching (`training.gradcache`)
in k micro-batches of B/k, which trains on the same B negatives with the same gradients.

    python benchmarks/gradcache_memory.py [--batch 64] [--splits 1 4 8] [--plain 16 8] [--repeats 3]
        [--out benchmarks/gradcache_memory.md]

`--plain` adds plain steps of those (smaller) batches: the memory of one micro-batch alone, with only its negatives.

Model: late fusion, built-in ViT at 64 px with 8 px patches (64 patches), 4 layers x 256 wide on both towers, text
of 32 tokens, ITC (InfoNCE) only, fp32 on CPU. A step is forward + backward (the optimizer is the same in every
case and left out). Each configuration runs in its own fresh process: one warm-up step, then the resident-set
high-water mark is reset (`/proc/self/clear_refs`) above a baseline taken between steps (model, inputs, no
gradients), one step runs, and its peak is VmHWM - baseline; without a writable clear_refs the warm-up is skipped and
the first step's `ru_maxrss` rise is used. Time: the median wall and process-CPU time of `--repeats` further steps
(on a shared machine the CPU time is the steadier).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The same resident-set measurement as the main benchmarks (see the comment above these helpers there).
from run_benchmarks import _proc_status_kib, _reset_hwm, _trim_host_memory  # noqa: E402


def _status_bytes(key: str) -> int:
    return _proc_status_kib(key) * 1024


def measure(batch: int, splits: int, repeats: int) -> dict:
    """One configuration, in this process: peak step memory (bytes above the between-steps baseline) and step time."""
    import torch

    from modeling_mm import MMConfig, MMForPreTraining
    from training.gradcache import gradcache_backward

    torch.manual_seed(0)
    width = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    config = MMConfig(
        fusion="late",
        objectives=["itc"],
        projection_dim=256,
        vision_config=dict(image_size=64, patch_size=8, **width),
        text_config=dict(vocab_size=30522, max_position_embeddings=64, **width),
    )
    model = MMForPreTraining(config).train()
    g = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(3, 30522, (batch, 32), generator=g),
        "attention_mask": torch.ones(batch, 32, dtype=torch.long),
        "pixel_values": torch.randn(batch, 3, 64, 64, generator=g),
    }

    def step() -> None:
        if splits == 1:
            model(**inputs).loss.backward()
        else:
            gradcache_backward(model, inputs, splits)
        model.zero_grad(set_to_none=True)

    resettable = _reset_hwm()
    if resettable:
        step()  # warm-up: allocator pools, kernels
        _trim_host_memory()
        base = _status_bytes("VmRSS")
        _reset_hwm()
        step()
        peak = _status_bytes("VmHWM") - base
        method = "VmHWM after clear_refs"
    else:
        _trim_host_memory()
        base = _status_bytes("VmRSS")
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        method = "ru_maxrss, first step"
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {"batch": batch, "splits": splits, "peak_mib": peak / 2**20, "step_s": statistics.median(times),
            "cpu_s": statistics.median(cpu_times), "method": method, "threads": torch.get_num_threads(),
            "grad_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--splits", type=int, nargs="+", default=[1, 4, 8], help="k values; 1 = the plain step")
    parser.add_argument("--plain", type=int, nargs="*", default=[16, 8], help="extra plain batches (micro-batch sizes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "gradcache_memory.md"))
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(measure(args.batch, args.worker, args.repeats)))
        return
    rows = []
    for batch, k in [(args.batch, k) for k in args.splits] + [(b, 1) for b in args.plain]:
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--batch", str(batch), "--repeats", str(args.repeats),
             "--worker", str(k)],
            check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    plain = next((r for r in rows if r["splits"] == 1 and r["batch"] == args.batch), rows[0])
    command = "python benchmarks/gradcache_memory.py " + " ".join(sys.argv[1:])
    lines = [
        "# GradCache: peak step memory, plain batch vs k micro-batches",
        "",
        f"`{command.strip()}` (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"{rows[0]['threads']} torch thread(s), CPU fp32; memory: {rows[0]['method']}, one fresh process per row).",
        "",
        "Late fusion, built-in ViT 64 px / 8 px patches, 4 x 256 towers, 32 text tokens, ITC only; a step is forward"
        f" + backward. The GradCache rows train on the same {args.batch} negatives with the same gradients as plain"
        f" {args.batch} (`tests/test_gradcache.py`).",
        "",
        f"| configuration | ITC negatives | peak step memory (MiB) | vs plain {args.batch} | step CPU time (s) | "
        f"vs plain {args.batch} | step wall time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        k, b = r["splits"], r["batch"]
        name = f"plain batch {b}" if k == 1 else f"GradCache {k} x {b // k}"
        lines.append(
            f"| {name} | {r['batch']} | {r['peak_mib']:.0f} | {r['peak_mib'] / plain['peak_mib']:.2f}x | "
            f"{r['cpu_s']:.2f} | {r['cpu_s'] / plain['cpu_s']:.2f}x | {r['step_s']:.2f} |"
        )
    micro = [r for r in rows if r["splits"] > 1]
    if micro:
        lines += [
            "",
            "A GradCache step sits above a plain step of one micro-batch by about one set of parameter gradients "
            f"({rows[0]['grad_mib']:.0f} MiB here): from the second micro-batch on, the accumulated gradients are "
            "alive while its activations are, as in any gradient accumulation; the k·b cached embeddings are "
            "negligible. The time is one extra no-grad forward per micro-batch, plus smaller, less efficient matmuls. "
            "Wall times on a shared machine vary with its load; compare CPU times.",
        ]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
