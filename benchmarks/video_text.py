"""Video-text retrieval and video captioning on the moving-shapes clips, each for (a) the video model, (b) the same
model with each test clip's frames shuffled, (c) the same architecture trained and tested on the mean frame.

    python benchmarks/video_text.py --data_dir /tmp/moving_shapes --out benchmarks/video_text.md

Every clip has one caption ("a red circle moves to the left while ...", "a blue rectangle appears, then a red
triangle", "a gray circle turns green"); captions repeat across clips, so a retrieved item counts as a hit when its
caption equals the query's (caption-level relevance). Retrieval: `MMForPreTraining` with late fusion and the `itc`
objective (clips sharing a caption are positives of each other), R@1/5 in both directions over the test clips.
Captioning: `MMForConditionalGeneration` (late fusion), greedy decoding, exact match of the whole caption, per
caption type (the clip's temporal question type: direction, order, change). A time-blind model can tell the axis of
motion, the two shapes, the two colours, but not which way round, so its exact match on those captions is bounded by
about half of what a model that sees time gets. The tower options are `video_temporal.py`'s: the built-in ViT, or a
`--vision_checkpoint` tower (e.g. the converted EfficientNet-Lite0) encoding frame by frame under
`--video_temporal_layers`, optionally `--freeze_vision_tower`.
"""

import argparse
import os
import re
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from transformers import BertTokenizerFast  # noqa: E402

from benchmarks.video_temporal import (  # noqa: E402
    add_clip_arguments,
    build_model,
    check_tower_arguments,
    command_line,
    describe_vision_tower,
    publish,
    start_training,
    vision_tower,
    visual,
)
from modeling_mm import MMConfig, MMForConditionalGeneration, MMForPreTraining  # noqa: E402
from processing import MMVideoProcessor  # noqa: E402
from processing.data import default_tokenizer_path  # noqa: E402
from processing.moving_shapes import TEMPORAL_QUESTION_TYPES, generate_moving_shapes, load_moving_shapes  # noqa: E402
from training.real_benchmark import clipped_step  # noqa: E402

MODES = {"(a) model": ("video", "video"), "(b) model, frames shuffled": ("video", "shuffled"),
         "(c) frame average": ("average", "average")}


def encode_clips(rows, processor: MMVideoProcessor, tokenizer, caption_ids: dict[str, int], max_length: int) -> dict:
    """One entry per clip: its frames (decoded once), caption tokens, caption id and temporal caption type."""
    clips, captions, kinds = {}, {}, {}
    for path, caption, kind in zip(rows["video"], rows["caption"], rows["question_type"]):
        if path not in clips:
            clips[path] = processor(path)["pixel_values_videos"][0]  # (T, 3, H, W)
            captions[path] = caption
        if kind in TEMPORAL_QUESTION_TYPES:
            kinds[path] = kind
    paths = list(clips)
    text = tokenizer([captions[p] for p in paths], padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt")
    for path in paths:
        caption_ids.setdefault(captions[path], len(caption_ids))
    return {
        "clips": torch.stack([clips[p] for p in paths]),  # (N, T, 3, H, W)
        "clip": torch.arange(len(paths)),
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
        "caption_ids": torch.tensor([caption_ids[captions[p]] for p in paths]),
        "captions": [captions[p] for p in paths],
        "kinds": [kinds[p] for p in paths],
    }


def train(model: torch.nn.Module, data: dict, mode: str, args: argparse.Namespace, task: str) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    optimizer = torch.optim.AdamW(start_training(model), lr=args.lr, weight_decay=0.01)
    rows = len(data["clip"])
    steps = args.epochs * (rows // args.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(rows, generator=generator)
        for start in range(0, rows - args.batch + 1, args.batch):
            index = order[start : start + args.batch]
            inputs = {"input_ids": data["input_ids"][index], "attention_mask": data["attention_mask"][index],
                      "pixel_values": visual(data, index, mode)}
            if task == "retrieval":
                loss = model(**inputs, image_ids=data["caption_ids"][index]).loss
            else:
                labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
                loss = model(**inputs, labels=labels).loss
            clipped_step(model, loss, optimizer, schedule)
        print(f"[{task} {mode}] epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return model.eval()


def caption_recall(similarity: torch.Tensor, caption_ids: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """R@k of a square `(N, N)` video-to-text similarity where row i and column i are clip i's pair and a hit is any
    retrieved item whose caption equals the query's."""
    same = caption_ids[:, None] == caption_ids[None, :]  # (N, N)
    out = {}
    for k in ks:
        top_v2t = similarity.topk(k, dim=1).indices  # (N, k) texts per clip
        top_t2v = similarity.t().topk(k, dim=1).indices  # (N, k) clips per text
        out[f"video-to-text R@{k}"] = same.gather(1, top_v2t).any(1).float().mean().item()
        out[f"text-to-video R@{k}"] = same.gather(1, top_t2v).any(1).float().mean().item()
    return out


@torch.no_grad()
def retrieval_scores(model: MMForPreTraining, data: dict, mode: str, seed: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    image, text = [], []
    for start in range(0, len(data["clip"]), 200):
        index = torch.arange(start, min(start + 200, len(data["clip"])))
        image.append(model.mm.embed_image(visual(data, index, mode, generator)))
        text.append(model.mm.embed_text(data["input_ids"][index], data["attention_mask"][index]))
    return caption_recall(torch.cat(image) @ torch.cat(text).t(), data["caption_ids"])


def _normal(caption: str) -> str:
    """Lower case, single spaces, no space before punctuation (WordPiece decoding writes "appears , then")."""
    return re.sub(r"\s+([,.])", r"\1", " ".join(caption.lower().split()))


@torch.no_grad()
def caption_scores(model: MMForConditionalGeneration, data: dict, mode: str, seed: int, tokenizer) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    predictions = []
    for start in range(0, len(data["clip"]), 100):
        index = torch.arange(start, min(start + 100, len(data["clip"])))
        ids = model.generate(pixel_values=visual(data, index, mode, generator), max_new_tokens=20, do_sample=False)
        predictions += tokenizer.batch_decode(ids, skip_special_tokens=True)
    exact = [_normal(p) == _normal(c) for p, c in zip(predictions, data["captions"])]
    out = {}
    for kind in TEMPORAL_QUESTION_TYPES:
        hits = [e for e, k in zip(exact, data["kinds"]) if k == kind]
        out[f"EM {kind}"] = sum(hits) / max(len(hits), 1)
    out["EM all"] = sum(exact) / len(exact)
    out["examples"] = list(zip(predictions[:3], data["captions"][:3]))
    return out


def build_config(args: argparse.Namespace, tokenizer, objectives: list[str]) -> MMConfig:
    tower = dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4,
                 intermediate_size=4 * args.hidden)
    vision_config, temporal = vision_tower(args, tower)
    return MMConfig(
        fusion="late",
        vision_config=vision_config,
        **temporal,
        text_config=dict(vocab_size=tokenizer.vocab_size, max_position_embeddings=32, bos_token_id=tokenizer.cls_token_id,
                         eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id, **tower),
        num_decoder_layers=args.layers,
        projection_dim=args.hidden,
        objectives=objectives,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = add_clip_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--tasks", nargs="+", default=["retrieval", "captioning"], choices=["retrieval", "captioning"])
    args = parser.parse_args(argv)
    check_tower_arguments(parser, args)
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if not os.path.isfile(os.path.join(args.data_dir, "train.jsonl")):
        generate_moving_shapes(args.data_dir, num_train=args.num_train, num_test=args.num_test)
    train_rows, test_rows = load_moving_shapes(args.data_dir)
    tokenizer = BertTokenizerFast.from_pretrained(default_tokenizer_path())
    processor = MMVideoProcessor(size={"height": args.image_size, "width": args.image_size}, num_frames=args.num_frames)
    caption_ids: dict[str, int] = {}
    train_data = encode_clips(train_rows, processor, tokenizer, caption_ids, max_length=20)
    test_data = encode_clips(test_rows, processor, tokenizer, caption_ids, max_length=20)
    decode_s = time.perf_counter() - started
    results: dict[str, dict[str, dict]] = {}
    for task in args.tasks:
        models = {}
        for train_mode in ("video", "average"):
            torch.manual_seed(args.seed)
            if task == "retrieval":
                model = build_model(MMForPreTraining, build_config(args, tokenizer, ["itc"]), args)
            else:
                model = build_model(MMForConditionalGeneration, build_config(args, tokenizer, ["lm"]), args)
            models[train_mode] = train(model, train_data, train_mode, args, task)
        results[task] = {}
        for name, (train_mode, test_mode) in MODES.items():  # (b) tests (a)'s model on shuffled frames
            model = models[train_mode]
            if task == "retrieval":
                results[task][name] = retrieval_scores(model, test_data, test_mode, args.seed)
            else:
                results[task][name] = caption_scores(model, test_data, test_mode, args.seed, tokenizer)
            print(name, results[task][name], flush=True)
    total_s = time.perf_counter() - started

    command = command_line("video_text.py", argv)
    lines = [
        f"Command: `{command}`",
        "",
        f"Data: {len(train_data['clip'])} train / {len(test_data['clip'])} test clips from `{args.data_dir}`, one caption "
        f"each ({len(set(test_data['captions']))} distinct test captions); {args.num_frames} frames by count, "
        f"{args.image_size} px. Models: late fusion, {describe_vision_tower(args)} and the built-in text tower / decoder "
        f"(hidden {args.hidden}, {args.layers} layers); AdamW lr {args.lr} (one-cycle), batch {args.batch}, {args.epochs} epochs, seed {args.seed}. "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}; "
        f"{total_s / 60:.1f} min in all (decoding {decode_s:.0f} s).",
    ]
    for task, rows in results.items():
        keys = [k for k in next(iter(rows.values())) if k != "examples"]
        lines += ["", f"### {task}", "", "| | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for name, row in rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * row[k]:.1f}%" for k in keys) + " |")
        if task == "captioning":
            lines += ["", "First test clips, (a) model: " + "; ".join(
                f"`{p}` (reference `{c}`)" for p, c in rows["(a) model"]["examples"])]
    return publish("Video-text retrieval and video captioning", "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
