"""Benchmark on real images: ITC pretraining and zero-shot / retrieval / linear-probe evaluation on Fashion-MNIST
and OpenClipArt (Debian packages `dataset-fashion-mnist`, `openclipart-png`, `openclipart-svg`), for a pretrained
locked EfficientNet-Lite0, the same network from scratch, and the built-in ViT from scratch.

    python -m run_scripts.real_benchmark                      # default run; rewrites its section of RESULTS.md
    python -m run_scripts.real_benchmark --quick --results_file ''   # smoke run, a minute
    python -m run_scripts.real_benchmark --towers vit_scratch --datasets fashion_mnist
    python -m run_scripts.real_benchmark --towers '' --fusions late,hybrid,coattention \
        --output_dir outputs/real_benchmark_fusion      # hybrid vs co-attention (ITC + ITM), their own section

The recipe and the metrics are described in `training/real_benchmark.py`.
"""

import json
import logging
import shlex
import sys

from training import parse_args, setup_logging
from training.real_benchmark import RealBenchmarkArguments, run_real_benchmark


logger = logging.getLogger("real_benchmark")


def main(args: list[str] | None = None) -> dict:
    # 1. Arguments
    (bench_args,) = parse_args((RealBenchmarkArguments,), args)
    setup_logging()
    argv = sys.argv[1:] if args is None else args
    command = " ".join(["python -m run_scripts.real_benchmark", *map(shlex.quote, argv)])

    # 2. Run (data, training per tower, evaluation, JSON and Markdown)
    results = run_real_benchmark(bench_args, command=command)

    # 3. Report
    print(results["markdown"])
    print(json.dumps(results["targets"], indent=2))
    print(f"Wall time: {results['wall_time_s'] / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()
