"""What temporal layers over a frame-by-frame tower cost next to the tower: the frozen tower's forward pass over a
batch of clips against one training step (forward and backward) of `MMFrameTemporalEncoder` over all its tokens, at
the tower's width and at bottleneck widths (`MMConfig.video_temporal_hidden_size`).

    python benchmarks/video_temporal_cost.py --vision_checkpoint /tmp/effnet --image_size 64

Inputs are random pixels (the cost does not depend on them); each time is the median of `--repeats` runs after one
warm-up run.
"""

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from transformers import AutoConfig, AutoModel  # noqa: E402

import modeling_mm  # noqa: E402,F401  (registers the package's towers with AutoModel)
from benchmarks.video_temporal import command_line, publish  # noqa: E402
from modeling_mm import MMConfig  # noqa: E402
from modeling_mm.modeling_mm import MMFrameTemporalEncoder  # noqa: E402


def median_seconds(step, repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision_checkpoint", required=True, help="Folder of the frame-by-frame vision tower.")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--num_frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64, help="Clips per step.")
    parser.add_argument("--layers", type=int, default=1, help="MMConfig.video_temporal_layers.")
    parser.add_argument("--widths", type=int, nargs="+", default=[0, 256, 128],
                        help="Temporal widths to time; 0 is the tower's own width.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tower = AutoModel.from_pretrained(args.vision_checkpoint).eval()
    frames = torch.randn(args.batch * args.num_frames, 3, args.image_size, args.image_size)
    with torch.no_grad():
        tokens = tower(pixel_values=frames).last_hidden_state
    count, tower_width = tokens.shape[1:]
    tokens = tokens.reshape(args.batch, args.num_frames, count, tower_width)

    def tower_forward():
        with torch.no_grad():
            tower(pixel_values=frames)

    tower_seconds = median_seconds(tower_forward, args.repeats)
    command = command_line("video_temporal_cost.py", argv)
    lines = [
        f"Command: `{command}`",
        "",
        f"`{tower.config.model_type}` tower from `{args.vision_checkpoint}`, {args.batch} clips of {args.num_frames} "
        f"frames at {args.image_size} px ({count} tokens of width {tower_width} per frame); {args.layers} temporal "
        f"layer(s) over all {args.num_frames * count} tokens of a clip. Median of {args.repeats} runs. "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}.",
        "",
        "| part | width | parameters | seconds per step | vs the tower's forward |",
        "|---|---:|---:|---:|---:|",
        f"| frozen tower, forward | {tower_width} | "
        f"{sum(p.numel() for p in tower.parameters()) / 1e6:.2f} M | {tower_seconds:.3f} | 100% |",
    ]
    for width in args.widths:
        config = MMConfig(vision_config=AutoConfig.from_pretrained(args.vision_checkpoint),
                          video_temporal_layers=args.layers, video_max_frames=args.num_frames,
                          video_temporal_tokens=count, video_temporal_hidden_size=width or None)
        encoder = MMFrameTemporalEncoder(config)

        def temporal_step():
            encoder.zero_grad()
            pooled, states = encoder(tokens.mean(2), tokens)
            (pooled.sum() + states.sum()).backward()

        seconds = median_seconds(temporal_step, args.repeats)
        lines.append(f"| temporal layers, forward and backward | {width or tower_width} | "
                     f"{sum(p.numel() for p in encoder.parameters()) / 1e6:.2f} M | {seconds:.3f} | "
                     f"{100 * seconds / tower_seconds:.0f}% |")
    return publish("The cost of temporal layers over a frame-by-frame tower", "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
