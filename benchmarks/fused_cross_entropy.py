"""Step time and peak memory of the vocabulary projection + token cross-entropy (the MLM / LM loss): the unfused path
(`(N, V)` logits, then `token_cross_entropy`) against `losses.fused_linear_cross_entropy` in chunks of C rows, which
`config.loss_chunk_size = C` selects and which gives the same loss and gradients (`tests/test_fused_cross_entropy.py`).

    OMP_NUM_THREADS=1 python benchmarks/fused_cross_entropy.py [--rows 1024 4096] [--chunks 256 1024] [--vocab 30522]
        [--hidden 256] [--repeats 3] [--out benchmarks/fused_cross_entropy.md]

A step is forward + backward of the loss alone, from `(N, H)` states and a `(V, H)` projection with bias, both
requiring gradients, 10% of the targets ignored; fp32 on CPU. The cases run one after the other in one worker process
started with `WORKER_ENV` (a fixed glibc mmap threshold, see there): for each, one warm-up step, then the resident-set
high-water mark is reset (`/proc/self/clear_refs`) above a baseline taken between steps (inputs and weights, no
gradients), one step runs, and its peak is VmHWM - baseline; without a writable clear_refs the warm-up is skipped and
the first step's `ru_maxrss` rise is used (meaningful for the first case only: run one case per call then). Time: the
median wall and process-CPU time of `--repeats` steps, the measured one included (about 1 min of CPU time in all).
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
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


__all__ = ["WORKER_ENV", "measure", "main"]

# A fixed glibc mmap threshold: with the default dynamic one, freeing a large (C, V) chunk raises the threshold, later
# chunks come from the heap and stay resident after they are freed, and the fused peak varied by 2x between runs.
# Fixed, every buffer above 128 KiB is mapped and returned when freed, so VmHWM follows the live tensors (both paths),
# and the cases can run one after the other in one worker process.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def measure(rows: int, chunk: int, vocab: int, hidden: int, repeats: int) -> dict:
    """One case in this process (`chunk = 0`: unfused): peak step memory above the between-steps baseline, step time."""
    import torch

    # The same resident-set measurement as the main benchmarks (see the comment above these helpers there); imported
    # here, by the worker only, as that module loads every peer model of transformers.
    from run_benchmarks import _proc_status_kib, _reset_hwm, _trim_host_memory

    from modeling_mm.losses import fused_linear_cross_entropy, token_cross_entropy

    g = torch.Generator().manual_seed(0)
    states = torch.randn(rows, hidden, generator=g, requires_grad=True)
    weight = (0.02 * torch.randn(vocab, hidden, generator=g)).requires_grad_()
    bias = torch.zeros(vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[::10] = -100

    def step() -> float:
        if chunk:
            loss = fused_linear_cross_entropy(states, weight, bias, targets, chunk)
        else:
            loss = token_cross_entropy(torch.nn.functional.linear(states, weight, bias), targets)
        loss.backward()
        for tensor in (states, weight, bias):
            tensor.grad = None
        return loss.item()

    def timed_step() -> float:
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        return loss

    times, cpu_times = [], []
    resettable = _reset_hwm()
    if resettable:
        step()  # warm-up: allocator pools, kernels
    _trim_host_memory()
    base = _proc_status_kib("VmRSS") * 1024
    if resettable:
        _reset_hwm()
        loss = timed_step()
        peak = _proc_status_kib("VmHWM") * 1024 - base
        method = "VmHWM after clear_refs"
    else:
        loss = step()  # a cold first step: not timed
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        method = "ru_maxrss, first step"
    while len(times) < repeats:
        timed_step()
    return {"rows": rows, "chunk": chunk, "loss": loss, "peak_mib": peak / 2**20, "step_s": statistics.median(times),
            "cpu_s": statistics.median(cpu_times), "method": method, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1024, 4096], help="N, the scored rows per step")
    parser.add_argument("--chunks", type=int, nargs="+", default=[256, 1024], help="fused chunk sizes (rows)")
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "fused_cross_entropy.md"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = [(rows, chunk) for rows in args.rows for chunk in [0, *args.chunks]]
    if args.worker:
        for rows, chunk in cases:
            print(json.dumps(measure(rows, chunk, args.vocab, args.hidden, args.repeats)), flush=True)
        return
    # The worker is a child process because glibc reads WORKER_ENV at start-up.
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--worker"],
        check=True, capture_output=True, text=True, env={**os.environ, **WORKER_ENV, "PYTHONPATH": ROOT},
    )
    results = [json.loads(line) for line in out.stdout.strip().splitlines()]
    command = "python benchmarks/fused_cross_entropy.py " + " ".join(sys.argv[1:])
    logits_mib = {rows: rows * args.vocab * 4 / 2**20 for rows in args.rows}
    lines = [
        "# Fused vocabulary projection + cross-entropy: step time and peak memory",
        "",
        f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} {command.strip()}` "
        f"({results[0]['threads']} torch thread(s), CPU fp32; memory: {results[0]['method']} before each case's "
        f"measured step, in a worker process started with {' '.join(f'{k}={v}' for k, v in WORKER_ENV.items())} so "
        "that freed buffers leave the resident set). Run on a 2-core machine shared with other jobs, hence one thread: "
        "compare CPU times and ratios, not absolute wall times.",
        "",
        f"The loss alone, forward + backward: `(N, {args.hidden})` states onto a `({args.vocab}, {args.hidden})` "
        "projection with bias, 10% of the targets ignored. *unfused*: the `(N, V)` logits, then `token_cross_entropy` "
        "(what `config.loss_chunk_size = None` does); *fused C*: `fused_linear_cross_entropy` over chunks of C rows "
        "(`config.loss_chunk_size = C`), same loss and gradients.",
        "",
        "| N | path | peak step memory (MiB) | vs unfused | step CPU time (s) | vs unfused | step wall time (s) "
        "| loss |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        unfused = next(u for u in results if u["rows"] == r["rows"] and u["chunk"] == 0)
        path = f"fused {r['chunk']}" if r["chunk"] else "unfused"
        lines.append(
            f"| {r['rows']} | {path} | {r['peak_mib']:.0f} | {r['peak_mib'] / unfused['peak_mib']:.2f}x | "
            f"{r['cpu_s']:.2f} | {r['cpu_s'] / unfused['cpu_s']:.2f}x | {r['step_s']:.2f} | {r['loss']:.4f} |"
        )
    lines += [
        "",
        "One `(N, V)` float32 buffer is " + ", ".join(f"{mib:.0f} MiB at N = {n}" for n, mib in logits_mib.items())
        + ". The unfused step holds several at once (logits, the log-probabilities saved for the backward, their "
        "gradient); the fused one holds one `(C, V)` chunk plus the `(N, H)`, `(V, H)` and `(V,)` gradients it "
        "computes in the forward, so its peak stays nearly flat in N. It does the same matmuls (three per row: "
        "logits, the states' and the weight's gradients), in N / C pieces.",
    ]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
