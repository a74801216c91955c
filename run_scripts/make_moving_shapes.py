"""Write the moving-shapes video data: short MP4 clips of easy-VQA shapes whose questions need time to answer
(direction of motion, order of appearance, colour change) plus per-frame control questions.

    mm make-moving-shapes --output_dir data/moving_shapes
    mm make-moving-shapes --output_dir data/moving_shapes_tiny --num_train 300 --num_test 90 --seed 1

then train on `train.jsonl` / `test.jsonl` like any file data:
`--train_file data/moving_shapes/train.jsonl --validation_file data/moving_shapes/test.jsonl`.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from processing.moving_shapes import generate_moving_shapes
from training import parse_args


__all__ = ["MovingShapesArguments", "main"]


@dataclass
class MovingShapesArguments:
    output_dir: str = field(metadata={"help": "Folder for videos/, train.jsonl, test.jsonl and question_types.json."})
    num_train: int = field(default=3000, metadata={"help": "Training clips (two question rows each)."})
    num_test: int = field(default=600, metadata={"help": "Held-out clips (two question rows each)."})
    num_frames: int = field(default=16, metadata={"help": "Frames per clip (at least 6)."})
    size: int = field(default=64, metadata={"help": "Frame side in pixels; even, since yuv420p stores 2x2 chroma."})
    fps: int = field(default=8, metadata={"help": "Frame rate written in the MP4 container."})
    seed: int = field(default=0, metadata={"help": "Seed; the same arguments write the same files."})
    codec: str = field(default="libx264", metadata={"help": "PyAV encoder: 'libx264' (H.264) or 'mpeg4'."})
    crf: int = field(default=10, metadata={"help": "x264 CRF (lower keeps colours closer; 0 is lossless)."})
    pix_fmt: str = field(default="yuv420p", metadata={"help": "Stored pixel format (yuv420p plays everywhere)."})


def main(args: list[str] | None = None) -> dict[str, Any]:
    (shape_args,) = parse_args((MovingShapesArguments,), args)
    summary = generate_moving_shapes(**vars(shape_args))
    print(json.dumps(summary))
    print(
        f"Train with: --train_file {shape_args.output_dir}/train.jsonl "
        f"--validation_file {shape_args.output_dir}/test.jsonl"
    )
    return summary


if __name__ == "__main__":
    main()
