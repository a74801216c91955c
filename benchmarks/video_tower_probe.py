"""Does a frame-by-frame vision tower's output still hold the direction of motion? Linear probes on the moving-shapes
`direction` clips, from the tower's features of the first and the last sampled frame.

    python benchmarks/video_tower_probe.py --vision_checkpoint /tmp/effnet --image_size 64

The tower (e.g. the ImageNet EfficientNet-Lite0 from `mm convert-efficientnet-lite --output_dir DIR`) runs frozen on
every frame; each probe is a linear classifier (4 directions; features standardised on the training clips, AdamW,
full batch) trained on the training clips and scored on the test clips. Four inputs are compared: the pooled state of
the first and the last frame, side by side and as a difference (what temporal layers over pooled frame states see,
`MMConfig.video_temporal_tokens=0`), and the same for all token states of the two frames (what temporal layers over
all tokens see, `video_temporal_tokens=N`). Chance is 25%; a probe that finds only the axis of motion reaches 50%.
"""

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from transformers import AutoModel  # noqa: E402

import modeling_mm  # noqa: E402,F401  (registers the package's towers with AutoModel)
from benchmarks.video_temporal import command_line, publish  # noqa: E402
from processing import MMVideoProcessor  # noqa: E402
from processing.moving_shapes import ANSWERS, generate_moving_shapes, load_moving_shapes  # noqa: E402

PROBES = {
    "pooled states, first and last frame": lambda t: torch.cat([t[:, 0].mean(1), t[:, -1].mean(1)], 1),
    "pooled states, last minus first frame": lambda t: t[:, -1].mean(1) - t[:, 0].mean(1),
    "all tokens, first and last frame": lambda t: torch.cat([t[:, 0], t[:, -1]], 1),
    "all tokens, last minus first frame": lambda t: t[:, -1] - t[:, 0],
}


@torch.no_grad()
def tower_tokens(rows, tower, processor: MMVideoProcessor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(clips, T, N, D)` token states of the `direction` clips in `rows` and their answer ids."""
    rows = rows.filter(lambda row: row["question_type"] == "direction")
    if not len(rows):
        raise ValueError("The split has no `direction` questions to probe.")
    labels = torch.tensor([ANSWERS["direction"].index(a) for a in rows["answer"]])
    states = []
    for start in range(0, len(rows), batch):
        clips = torch.stack([processor(p)["pixel_values_videos"][0] for p in rows["video"][start : start + batch]])
        tokens = tower(pixel_values=clips.flatten(0, 1)).last_hidden_state  # (B * T, N, D)
        states.append(tokens.reshape(*clips.shape[:2], *tokens.shape[1:]))
    return torch.cat(states), labels


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 steps: int, seed: int) -> tuple[float, float]:
    """Train and test accuracy of a linear classifier on flattened, standardised features."""
    train_x, test_x = train_x.flatten(1), test_x.flatten(1)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-4
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(seed)
    probe = torch.nn.Linear(train_x.shape[1], len(ANSWERS["direction"]))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(probe(train_x), train_y).backward()
        optimizer.step()
    with torch.no_grad():
        return ((probe(train_x).argmax(1) == train_y).float().mean().item(),
                (probe(test_x).argmax(1) == test_y).float().mean().item())


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision_checkpoint", required=True, help="Folder of the vision tower to probe.")
    parser.add_argument("--data_dir", default="/tmp/moving_shapes")
    parser.add_argument("--num_train", type=int, default=3000, help="Clips to generate when --data_dir has none.")
    parser.add_argument("--num_test", type=int, default=600)
    parser.add_argument("--num_frames", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300, help="Full-batch AdamW steps per probe.")
    parser.add_argument("--batch", type=int, default=64, help="Clips per tower forward.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if not os.path.isfile(os.path.join(args.data_dir, "train.jsonl")):
        generate_moving_shapes(args.data_dir, num_train=args.num_train, num_test=args.num_test)
    train_rows, test_rows = load_moving_shapes(args.data_dir)
    tower = AutoModel.from_pretrained(args.vision_checkpoint).eval()  # the package's towers are registered
    processor = MMVideoProcessor(size={"height": args.image_size, "width": args.image_size}, num_frames=args.num_frames)
    train_tokens, train_y = tower_tokens(train_rows, tower, processor, args.batch)
    test_tokens, test_y = tower_tokens(test_rows, tower, processor, args.batch)
    command = command_line("video_tower_probe.py", argv)
    lines = [
        f"Command: `{command}`",
        "",
        f"Data: {len(train_y)} train / {len(test_y)} test `direction` clips from `{args.data_dir}`; {args.num_frames} "
        f"frames by count, {args.image_size} px. Tower: `{tower.config.model_type}` from `{args.vision_checkpoint}`, "
        f"frozen, {train_tokens.shape[2]} tokens of width {train_tokens.shape[3]} per frame. Linear probes, AdamW lr "
        f"0.001, weight decay 0.1, {args.steps} full-batch steps, seed {args.seed}. "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}; "
        "{minutes} min in all.",
        "",
        "| probe input | train accuracy | test accuracy |",
        "|---|---:|---:|",
    ]
    for name, features in PROBES.items():
        train_acc, test_acc = linear_probe(features(train_tokens), train_y, features(test_tokens), test_y,
                                           args.steps, args.seed)
        lines.append(f"| {name} | {100 * train_acc:.1f}% | {100 * test_acc:.1f}% |")
    lines.append("| chance / axis of motion only | 25.0% / 50.0% | 25.0% / 50.0% |")
    table = "\n".join(lines).replace("{minutes}", f"{(time.perf_counter() - started) / 60:.1f}")
    return publish("Direction of motion in a frozen tower's per-frame features", table, args.out)


if __name__ == "__main__":
    main()
