"""Input-pipeline throughput: samples/s of decode + transform + collate alone, against the training-step rate.

    python -m benchmarks.input_pipeline [--samples 1024] [--batch 64] [--out benchmarks/input_pipeline.md]

Pipelines (each feeds `DataCollatorForMMPretraining`, batch `--batch`, 64 px images, 0 and 2 DataLoader workers):

- **files, collator decodes**: easy-VQA's PNG files as a map-style `Dataset`, the collator decoding each image
  (the path the run scripts used before `processing.sources`);
- **files, set_transform**: the same files through `prepare_dataset` (tokenised once in `map`, decoded and
  transformed once in `set_transform`, the collator only stacks and masks);
- **shards**: the same images written by `write_shards` as 16 WebDataset shards (64 px JPEG), streamed by
  `ShardStream` (decoded and transformed once in its streaming `map`).

The training step is `run_scripts/pretrain.py`'s default model (hybrid, itc + itm + mlm, 64 px, frozen MiniLM text
tower) at the default batch, forward + backward + AdamW step, median of `--steps` after one warm-up. Pipeline rates
are measured after the first batch (worker start-up excluded) over `--samples` samples.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch
from datasets import Image
from torch.utils.data import DataLoader

from processing.collators import DataCollatorForMMPretraining
from processing.data import build_default_processor, load_easy_vqa
from processing.shards import ShardStream, write_shards
from processing.sources import prepare_dataset


def pipeline_rate(loader: DataLoader, samples: int) -> float:
    """Samples/s after the first batch, over about `samples` samples."""
    iterator = iter(loader)
    next(iterator)  # worker start-up and first decode excluded
    seen, start = 0, time.perf_counter()
    for batch in iterator:
        seen += batch["pixel_values"].shape[0]
        if seen >= samples:
            break
    return seen / (time.perf_counter() - start)


def data_path_rate(batch_size: int, image_size: int, text_length: int, samples: int, num_workers: int = 0) -> float:
    """Samples/s of the run scripts' data path ("files, set_transform" above) at this batch, image size and token
    budget: easy-VQA's PNG files through `prepare_dataset` and `DataCollatorForMMPretraining`, after the first batch."""
    processor = build_default_processor(image_size=image_size, max_length=text_length)
    images = load_easy_vqa("train", view="images").cast_column("image", Image(decode=False))
    collator = DataCollatorForMMPretraining(processor, seed=0)
    loader = DataLoader(
        prepare_dataset(images, processor), batch_size=batch_size, shuffle=True, num_workers=num_workers,
        collate_fn=collator,
    )
    return pipeline_rate(loader, samples)


def step_rate(batch_size: int, steps: int, processor) -> float:
    """Samples/s of the default pretraining step (model of `run_scripts/pretrain.py` with its defaults)."""
    from run_scripts.pretrain import ModelArguments, build_model

    model_args = ModelArguments()
    model = build_model(model_args)
    model.mm.text_model.requires_grad_(False)  # pretrain.py's default (--freeze_text_tower)
    model.train()
    rows = [dict(r) for r in load_easy_vqa("train", view="images").select(range(batch_size))]
    batch = DataCollatorForMMPretraining(processor, seed=0)(rows)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i:
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None, help="Write the markdown table here too.")
    args = parser.parse_args()

    processor = build_default_processor(image_size=64)
    images = load_easy_vqa("train", view="images")  # 4,000 PNG files, 64x64
    collator = DataCollatorForMMPretraining(processor, seed=0)
    shard_dir = tempfile.mkdtemp(prefix="input_pipeline_shards_")
    write_shards(images, shard_dir, num_shards=16, resolution=64)
    pattern = os.path.join(shard_dir, "shard-{00000..00015}.tar")

    rows = []
    for workers in (0, 2):
        common = dict(batch_size=args.batch, num_workers=workers, collate_fn=collator)
        raw = DataLoader(images, shuffle=True, **common)
        undecoded = images.cast_column("image", Image(decode=False))
        ready = DataLoader(prepare_dataset(undecoded, processor), shuffle=True, **common)
        stream = ShardStream(pattern, num_workers=workers).to_iterable_dataset(processor)
        shards = DataLoader(stream, **common)
        for name, loader in (("files, collator decodes", raw), ("files, set_transform", ready), ("shards", shards)):
            rate = pipeline_rate(loader, args.samples)
            rows.append((name, workers, rate))
            print(f"{name:26s} workers={workers}: {rate:8.1f} samples/s", flush=True)
    train_rate = step_rate(args.batch, args.steps, processor)
    print(f"training step (default pretraining model, batch {args.batch}): {train_rate:.1f} samples/s", flush=True)

    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; {args.samples} samples per row, batch {args.batch}.",
        "",
        "| pipeline | DataLoader workers | samples/s | × training-step rate |",
        "|---|---:|---:|---:|",
    ]
    for name, workers, rate in rows:
        lines.append(f"| {name} | {workers} | {rate:.0f} | {rate / train_rate:.1f}× |")
    lines.append(f"| training step (default pretraining model, forward + backward + AdamW) | - | {train_rate:.0f} | 1.0× |")
    best = max(rate for name, _, rate in rows if name == "shards")
    lines += ["", f"Target: shards deliver ≥ 3× the step rate: **{best / train_rate:.1f}×** "
              f"({'met' if best >= 3 * train_rate else 'missed'})."]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
