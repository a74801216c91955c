"""Write any data source as WebDataset shards for streaming pretraining: images resized to one resolution, their
texts, and a `sizes.json`.

    python -m run_scripts.make_shards --output_dir data/easy_vqa_shards --num_shards 16          # embedded easy-VQA
    python -m run_scripts.make_shards --dataset path/to/image_folder --output_dir data/shards --samples_per_shard 1000
    python -m run_scripts.make_shards --train_file pairs.csv --caption_column text --output_dir data/shards --num_shards 8

then train on them with `--train_shards 'data/shards/shard-{00000..00015}.tar' --max_steps N`.
"""

import json
import logging
from dataclasses import dataclass, field

from processing.collators import BadSampleCounter
from processing.shards import write_shards
from processing.sources import MMDataArguments, load_mm_datasets
from training import parse_args, setup_logging


__all__ = ["ShardArguments", "main"]

logger = logging.getLogger("make_shards")


@dataclass
class ShardArguments:
    output_dir: str = field(metadata={"help": "Folder for the shards and sizes.json."})
    num_shards: int | None = field(
        default=None,
        metadata={"help": "Number of shards; their sizes differ by at most one sample (the default: 16 shards)."},
    )
    samples_per_shard: int | None = field(
        default=None, metadata={"help": "Samples per shard instead of --num_shards (the last shard may be smaller)."}
    )
    resolution: int = field(default=64, metadata={"help": "Stored images are resized and centre-cropped to this side."})
    image_format: str = field(default="jpg", metadata={"help": "Stored image format.", "choices": ["jpg", "png", "webp"]})
    quality: int = field(default=95, metadata={"help": "JPEG / WebP quality."})
    prefix: str = field(default="shard", metadata={"help": "Shard file name prefix: <prefix>-00000.tar, ..."})
    split: str = field(default="train", metadata={"help": "Which split to write: 'train' or 'eval'.", "choices": ["train", "eval"]})


def main(args: list[str] | None = None) -> dict[str, int]:
    shard_args, data_args = parse_args((ShardArguments, MMDataArguments), args)
    setup_logging()
    if data_args.source == "shards":
        raise SystemExit("make_shards reads a dataset, an image folder or train files, not --train_shards.")
    if shard_args.num_shards is None and shard_args.samples_per_shard is None:
        shard_args.num_shards = 16
    bad_samples = BadSampleCounter("bad images")
    train, evaluation = load_mm_datasets(data_args, required=("image",), bad_samples=bad_samples)
    dataset = train if shard_args.split == "train" else evaluation
    if dataset is None:
        raise SystemExit(f"{data_args.source} has no evaluation split.")
    sizes = write_shards(
        dataset,
        shard_args.output_dir,
        num_shards=shard_args.num_shards,
        samples_per_shard=shard_args.samples_per_shard,
        resolution=shard_args.resolution,
        image_format=shard_args.image_format,
        quality=shard_args.quality,
        prefix=shard_args.prefix,
        skip_bad_samples=data_args.skip_bad_samples,
        bad_samples=bad_samples,
    )
    last = f"{shard_args.prefix}-{len(sizes) - 1:05d}.tar"
    print(json.dumps({"shards": len(sizes), "samples": sum(sizes.values()), "skipped_bad_samples": bad_samples.count}))
    print(bad_samples.report())
    print(f"Train with: --train_shards '{shard_args.output_dir}/{shard_args.prefix}-{{00000..{last[-9:-4]}}}.tar'")
    return sizes


if __name__ == "__main__":
    main()
