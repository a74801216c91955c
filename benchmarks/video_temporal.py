"""Does the video model use time? Per-question-type accuracy on the moving-shapes clips for (a) the model, (b) the same
model with each test clip's frames shuffled, (c) a frame-average baseline (the same architecture trained and tested on
the mean of the frames).

    python benchmarks/video_temporal.py --data_dir /tmp/moving_shapes --out benchmarks/video_temporal.md

Writes the data first when `--data_dir` has none (`mm make-moving-shapes`). Frames go through `MMVideoProcessor`
(`--num_frames` sampled by count, resized to `--image_size`) once and are cached in memory; the model is
`MMForVisualQuestionAnswering` with the built-in ViT (`vision_config.num_frames` set, so the zero-initialised temporal
embeddings are used) and the built-in text tower, trained from scratch with AdamW on the CPU. Chance is
`1 / len(ANSWERS[type])`. With `--vision_checkpoint DIR` (e.g. the ImageNet EfficientNet-Lite0 from
`mm convert-efficientnet-lite --output_dir DIR`) that tower replaces the built-in ViT: it encodes each frame, and
`--video_temporal_layers` Transformer layers over the per-frame states model time (`MMConfig.video_temporal_layers`),
or, with `--video_temporal_tokens N`, over all N tokens of every frame with spatial embeddings;
`--freeze_vision_tower` keeps it as loaded (and computes its outputs once per distinct frame, which is exact for a
frozen tower in eval mode and makes later epochs cost only the trainable parts). The time-blind ceiling is what a model that sees every frame but not
their order can reach (it narrows each temporal answer to two: the axis of motion, the two shapes, the two colours).
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from transformers import AutoConfig, BertTokenizerFast, PreTrainedConfig, PreTrainedModel  # noqa: E402
from transformers.modeling_outputs import BaseModelOutputWithPooling  # noqa: E402

from modeling_mm import MMConfig, MMForVisualQuestionAnswering  # noqa: E402
from modeling_mm.modeling_mm import _pooled  # noqa: E402
from processing import MMVideoProcessor  # noqa: E402
from processing.data import default_tokenizer_path  # noqa: E402
from processing.moving_shapes import (  # noqa: E402
    ANSWERS,
    QUESTION_TYPES,
    TEMPORAL_QUESTION_TYPES,
    generate_moving_shapes,
    load_moving_shapes,
)
from training.lora import freeze_parts  # noqa: E402
from training.real_benchmark import clipped_step  # noqa: E402


def encode_split(rows, processor: MMVideoProcessor, tokenizer, label2id: dict[str, int]) -> dict[str, torch.Tensor]:
    """Decodes every clip once (rows share clips) and tokenises every question."""
    clips, clip_index = [], {}
    for path in rows["video"]:
        if path not in clip_index:
            clip_index[path] = len(clips)
            clips.append(processor(path)["pixel_values_videos"][0])  # (T, 3, H, W)
    text = tokenizer(list(rows["question"]), padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    return {
        "clips": torch.stack(clips),  # (num_clips, T, 3, H, W)
        "clip": torch.tensor([clip_index[p] for p in rows["video"]]),
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
        "labels": torch.tensor([label2id[a] for a in rows["answer"]]),
        "types": list(rows["question_type"]),
    }


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that reproduces a run of `benchmarks/<script>` with `argv` (the process's own when `None`)."""
    return " ".join([f"python benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def publish(title: str, table: str, out: str | None) -> str:
    """Prints a benchmark's report and, with `out`, writes it there under `# title`; returns it."""
    print(table)
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(f"# {title}\n\n{table}\n")
    return table


def visual(data: dict, index: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    clips = data["clips"][data["clip"][index]]  # (B, T, 3, H, W)
    if mode == "average":
        return clips.mean(1)  # (B, 3, H, W): one image, the mean frame
    if mode == "shuffled":
        order = torch.stack([torch.randperm(clips.shape[1], generator=generator) for _ in range(len(clips))])
        return clips[torch.arange(len(clips))[:, None], order]
    return clips


def vision_tower(args: argparse.Namespace, tower: dict) -> tuple[dict | PreTrainedConfig, dict]:
    """The vision side of the moving-shapes models: the vision config and the `MMConfig` fields it needs. The built-in
    ViT (sized by `tower`, as the text tower) models time itself; a `--vision_checkpoint` tower encodes frame by frame
    and `--video_temporal_layers` layers over its per-frame states model time."""
    if args.vision_checkpoint:
        temporal = dict(video_temporal_layers=args.video_temporal_layers, video_max_frames=args.num_frames,
                        video_temporal_tokens=args.video_temporal_tokens,
                        video_temporal_hidden_size=args.video_temporal_hidden_size,
                        video_motion_embedding=args.video_motion_embedding)
        return AutoConfig.from_pretrained(args.vision_checkpoint), temporal
    vision_config = dict(image_size=args.image_size, patch_size=args.patch_size, num_frames=args.num_frames,
                         video_attention=args.video_attention, patch_embedding_type=args.patch_embedding_type,
                         tubelet_size=args.tubelet_size, **tower)
    return vision_config, {}


def describe_vision_tower(args: argparse.Namespace) -> str:
    """The vision tower in the words of the reports."""
    if args.vision_checkpoint:
        frozen = ", frozen (its outputs computed once per distinct frame)" if args.freeze_vision_tower else ""
        model_type = AutoConfig.from_pretrained(args.vision_checkpoint).model_type
        over = (f" over all {args.video_temporal_tokens} tokens of each frame" if args.video_temporal_tokens
                else " over pooled frame states")
        width = (f" at width {args.video_temporal_hidden_size}" if args.video_temporal_hidden_size else "")
        motion = ", with the motion embedding of pixel differences" if args.video_motion_embedding else ""
        return (f"`{model_type}` tower from `{args.vision_checkpoint}` (frame by frame, {args.video_temporal_layers} "
                f"temporal layer(s){width}{over}{motion}){frozen}")
    tubelet = f", tubelets of {args.tubelet_size} frames" if args.tubelet_size > 1 else ""
    return (f"built-in ViT (patch {args.patch_size} {args.patch_embedding_type}, `num_frames={args.num_frames}`, "
            f"{args.video_attention} space-time attention{tubelet})")


def build_model(model_class: type[PreTrainedModel], config: MMConfig, args: argparse.Namespace) -> PreTrainedModel:
    """A fresh `model_class` from `config`, or, with `--vision_checkpoint`, one whose vision tower is loaded from that
    folder (frozen with `--freeze_vision_tower`) and the rest as in `config`."""
    if not args.vision_checkpoint:
        return model_class(config)
    towers = ("vision_config", "text_config", "model_type", "transformers_version")
    fields = {k: v for k, v in config.to_diff_dict().items() if k not in towers}
    model = model_class.from_vision_text_pretrained(args.vision_checkpoint, text_config=config.text_config, **fields)
    if args.freeze_vision_tower:
        freeze_parts(model, {"vision": "frozen"})  # the tower only: the temporal layers over it still train
        memoise_frozen_tower(model.mm.vision_model)
    return model


def memoise_frozen_tower(tower: torch.nn.Module) -> dict[bytes, tuple[torch.Tensor, torch.Tensor]]:
    """Makes a frozen tower in eval mode compute each distinct frame once: its outputs (`last_hidden_state`,
    `pooler_output`) are kept per frame, keyed by a digest of the frame's bytes, so that later epochs (and the
    shuffled-frames test, which reorders the same frames) read them back. Exact, since the tower's weights do not
    change and eval mode makes a frame's output independent of its batch; a call in training mode, or one asking for
    attentions or hidden states, raises or runs the tower. The cache holds `(tokens + 1) * width` floats per distinct
    frame (about 25 KB for EfficientNet-Lite0 at 64 px). Returns the cache."""
    forward, cache = tower.forward, {}

    def cached_forward(pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            return forward(pixel_values=pixel_values, **kwargs)
        if tower.training or any(p.requires_grad for p in tower.parameters()):
            raise RuntimeError("memoise_frozen_tower: the tower must stay frozen and in eval mode (start_training).")
        keys = [hashlib.blake2b(frame.contiguous().numpy().tobytes(), digest_size=16).digest() for frame in pixel_values]
        first = {}  # each new frame's key -> its first place in the batch
        for i, k in enumerate(keys):
            if k not in cache:
                first.setdefault(k, i)
        if first:
            with torch.no_grad():
                out = forward(pixel_values=pixel_values[list(first.values())], **kwargs)
            pooled = _pooled(out)
            for j, k in enumerate(first):
                cache[k] = (out.last_hidden_state[j].clone(), pooled[j].clone())
        return BaseModelOutputWithPooling(
            last_hidden_state=torch.stack([cache[k][0] for k in keys]),
            pooler_output=torch.stack([cache[k][1] for k in keys]),
        )

    tower.forward = cached_forward
    return cache


def start_training(model: PreTrainedModel) -> list[torch.nn.Parameter]:
    """Puts `model` in training mode and a frozen vision tower in eval mode (no dropout, its batch-norm statistics as
    loaded); returns the parameters to optimise."""
    model.train()
    if not any(p.requires_grad for p in model.mm.vision_model.parameters()):
        model.mm.vision_model.eval()
    return [p for p in model.parameters() if p.requires_grad]


def check_tower_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses built-in-ViT options with a --vision_checkpoint tower, and --freeze_vision_tower without one."""
    if args.vision_checkpoint and (args.tubelet_size != 1 or args.video_attention != "joint"
                                   or args.patch_embedding_type != "patchify"):
        parser.error("--tubelet_size / --video_attention / --patch_embedding_type shape the built-in ViT; "
                     "with --vision_checkpoint, time is modelled by --video_temporal_layers.")
    if args.freeze_vision_tower and not args.vision_checkpoint:
        parser.error("--freeze_vision_tower keeps a pretrained tower as it is; it needs --vision_checkpoint.")
    for name in ("video_temporal_tokens", "video_temporal_hidden_size", "video_motion_embedding"):
        if getattr(args, name) and not args.vision_checkpoint:
            parser.error(f"--{name} shapes the temporal layers over a --vision_checkpoint tower; the built-in ViT "
                         "models time itself.")


def train(config: MMConfig, data: dict, mode: str, args: argparse.Namespace) -> MMForVisualQuestionAnswering:
    torch.manual_seed(args.seed)
    model = build_model(MMForVisualQuestionAnswering, config, args)
    optimizer = torch.optim.AdamW(start_training(model), lr=args.lr, weight_decay=0.01)
    num_rows = len(data["labels"])
    steps = args.epochs * (num_rows // args.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    step, started = 0, time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(num_rows, generator=generator)
        for start in range(0, num_rows - args.batch + 1, args.batch):
            index = order[start : start + args.batch]
            loss = model(
                input_ids=data["input_ids"][index],
                attention_mask=data["attention_mask"][index],
                pixel_values=visual(data, index, mode),
                labels=data["labels"][index],
            ).loss
            clipped_step(model, loss, optimizer, schedule)
            step += 1
        print(f"[{mode}] epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)")
    return model.eval()


@torch.no_grad()
def accuracy(
    model: MMForVisualQuestionAnswering, data: dict, mode: str, seed: int, types: tuple[str, ...] = QUESTION_TYPES
) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    correct = []
    for start in range(0, len(data["labels"]), 256):
        index = torch.arange(start, min(start + 256, len(data["labels"])))
        logits = model(
            input_ids=data["input_ids"][index],
            attention_mask=data["attention_mask"][index],
            pixel_values=visual(data, index, mode, generator),
        ).logits
        correct += (logits.argmax(-1) == data["labels"][index]).tolist()
    return {t: sum(c for c, k in zip(correct, data["types"]) if k == t) / data["types"].count(t) for t in types}


def add_clip_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The data, tower and training options the moving-shapes benchmarks share (this one and `video_text.py`)."""
    parser.add_argument("--data_dir", default="/tmp/moving_shapes")
    parser.add_argument("--num_train", type=int, default=3000, help="Clips to generate when --data_dir has none.")
    parser.add_argument("--num_test", type=int, default=600)
    parser.add_argument("--num_frames", type=int, default=8, help="Frames sampled per clip by count.")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--patch_size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--video_attention", default="joint", choices=["joint", "divided"],
                        help="The ViT's attention over a clip: joint space-time, or TimeSformer's divided.")
    parser.add_argument("--patch_embedding_type", default="patchify", choices=["patchify", "conv_stem"])
    parser.add_argument("--tubelet_size", type=int, default=1,
                        help="Consecutive frames per video token (vision_config.tubelet_size).")
    parser.add_argument("--vision_checkpoint", default=None,
                        help="Folder of a vision tower to start from (e.g. `mm convert-efficientnet-lite`), used frame "
                             "by frame under --video_temporal_layers; replaces the built-in ViT and its options.")
    parser.add_argument("--video_temporal_layers", type=int, default=1,
                        help="Temporal layers over the per-frame states of a --vision_checkpoint tower.")
    parser.add_argument("--video_temporal_tokens", type=int, default=0,
                        help="0: the temporal layers read each frame's pooled state; N: they read all N tokens of "
                             "every frame with spatial embeddings (MMConfig.video_temporal_tokens; N = "
                             "(image_size / 32) ** 2 for the CNN tower).")
    parser.add_argument("--video_temporal_hidden_size", type=int, default=None,
                        help="Width of the temporal layers (MMConfig.video_temporal_hidden_size); default: the "
                             "tower's width.")
    parser.add_argument("--video_motion_embedding", action="store_true",
                        help="With --video_temporal_tokens: add a zero-initialised embedding of each token cell's "
                             "pixel change since the previous frame (MMConfig.video_motion_embedding).")
    parser.add_argument("--freeze_vision_tower", action="store_true",
                        help="Keep the --vision_checkpoint tower as loaded; the temporal layers and everything else "
                             "train.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    return parser


def main(argv: list[str] | None = None) -> str:
    """Runs the benchmark; returns the report table."""
    parser = add_clip_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--fusion", default="late", choices=["late", "hybrid"])
    parser.add_argument("--question_types", default=",".join(QUESTION_TYPES),
                        help="Comma-separated question types to train and test on (all by default).")
    args = parser.parse_args(argv)
    types = tuple(t for t in args.question_types.split(",") if t)
    unknown = sorted(set(types) - set(QUESTION_TYPES))
    if unknown or not types:
        parser.error(f"--question_types: unknown {unknown or 'empty list'}; choose from {', '.join(QUESTION_TYPES)}.")
    check_tower_arguments(parser, args)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if not os.path.isfile(os.path.join(args.data_dir, "train.jsonl")):
        print(json.dumps(generate_moving_shapes(args.data_dir, num_train=args.num_train, num_test=args.num_test)))
    train_rows, test_rows = load_moving_shapes(args.data_dir)
    if len(types) < len(QUESTION_TYPES):
        train_rows = train_rows.filter(lambda row: row["question_type"] in types)
        test_rows = test_rows.filter(lambda row: row["question_type"] in types)
    answers = list(dict.fromkeys(a for t in QUESTION_TYPES for a in ANSWERS[t]))
    label2id = {a: i for i, a in enumerate(answers)}
    tokenizer = BertTokenizerFast.from_pretrained(default_tokenizer_path())
    processor = MMVideoProcessor(size={"height": args.image_size, "width": args.image_size}, num_frames=args.num_frames)
    train_data = encode_split(train_rows, processor, tokenizer, label2id)
    test_data = encode_split(test_rows, processor, tokenizer, label2id)
    decode_s = time.perf_counter() - started
    print(f"decoded {len(train_data['clips'])} + {len(test_data['clips'])} clips in {decode_s:.0f} s")

    tower = dict(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4, intermediate_size=4 * args.hidden
    )
    vision_config, temporal = vision_tower(args, tower)
    config = MMConfig(
        fusion=args.fusion,
        vision_config=vision_config,
        text_config=dict(vocab_size=tokenizer.vocab_size, max_position_embeddings=32, **tower),
        num_fusion_layers=2,
        id2label=dict(enumerate(answers)),
        label2id=label2id,
        **temporal,
    )
    video_model = train(config, train_data, "video", args)
    average_model = train(config, train_data, "average", args)
    results = {
        "(a) model": accuracy(video_model, test_data, "video", args.seed, types),
        "(b) model, frames shuffled": accuracy(video_model, test_data, "shuffled", args.seed, types),
        "(c) frame average": accuracy(average_model, test_data, "average", args.seed, types),
    }
    total_s = time.perf_counter() - started

    command = command_line("video_temporal.py", argv)
    lines = [
        f"Command: `{command}`",
        "",
        f"Data: {len(train_data['clips'])} train / {len(test_data['clips'])} test clips ({len(train_data['labels'])} / "
        f"{len(test_data['labels'])} questions) from `{args.data_dir}`; {args.num_frames} frames sampled by count, "
        f"{args.image_size} px. Model: `MMForVisualQuestionAnswering`, {args.fusion} fusion, {describe_vision_tower(args)} "
        f"and the built-in text tower (hidden {args.hidden}, {args.layers} layers), "
        f"{sum(p.numel() for p in video_model.parameters()) / 1e6:.2f} M parameters; AdamW lr {args.lr} "
        f"(one-cycle), batch {args.batch}, {args.epochs} epochs, seed {args.seed}. {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), torch {torch.__version__}; {total_s / 60:.1f} min in all (decoding {decode_s:.0f} s).",
        "",
        "| test accuracy | " + " | ".join(types) + " |",
        "|---|" + "---:|" * len(types),
    ]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[t]:.1f}%" for t in types) + " |")
    lines.append("| chance (1 / answers of the type) | " + " | ".join(f"{100 / len(ANSWERS[t]):.1f}%" for t in types) + " |")
    lines.append(
        "| time-blind ceiling | "
        + " | ".join("50.0%" if t in TEMPORAL_QUESTION_TYPES else "100.0%" for t in types)
        + " |"
    )
    return publish("Video questions that need time", "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
