"""Image+text classification that needs both modalities: visual entailment (entails / contradicts / unrelated) on
easy-VQA and OpenClipArt, and a multi-label attribute check on easy-VQA, each trained three ways on the same budget.

    OMP_NUM_THREADS=1 python benchmarks/visual_entailment.py --out benchmarks/visual_entailment.md --results_file RESULTS.md
    python benchmarks/visual_entailment.py --quick --out /tmp/ve.md      # smoke run on generated stand-ins

Data (`processing.entailment`): easy-VQA train images -> training rows, easy-VQA test images -> held-out rows;
OpenClipArt (`load_openclipart`, Debian `openclipart-png` / `-svg`) split by drawing. Held-out rows never share an
image with training rows (`check_disjoint_images`). Images are decoded and resized once (`pixel_cache`), statements
tokenised once with the default tokenizer.

Model: `MMForImageTextClassification` with the built-in ViT and text tower (late fusion by default: the classifier MLP
reads both towers' pooled states), trained with AdamW (one-cycle). Its towers start from a warm start shared by the
task's three rows: `--warm_start_steps` of ITC on the training images and their captions ("a red circle"; OpenClipArt:
"a colour drawing of food", from the category and the colour mode), see `warm_start`. From a random start the loss
stays at ln 3 for hundreds of steps (neither modality alone carries any signal). The three rows of each task share the
architecture, the warm start, initialisation seed, data order, steps and batch:

- **multimodal**: the image and its statement;
- **image only**: every statement replaced by the empty one (`[CLS] [SEP]`), in training and at test;
- **text only**: every image replaced by one constant mid-grey image (all zeros after normalisation), ditto.

Scores on the held-out rows: accuracy and macro-F1 (`metrics/classification`); multi-label: exact match, micro-F1
and macro-F1 with a label predicted when its sigmoid is >= 0.5.
"""

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from metrics.classification.classification import classification_scores  # noqa: E402
from modeling_mm import MMConfig, MMForImageTextClassification  # noqa: E402
from processing.entailment import (  # noqa: E402
    ATTRIBUTE_CHECK_LABELS,
    ENTAILMENT_LABELS,
    build_easy_vqa_attribute_check,
    build_easy_vqa_entailment,
    build_openclipart_entailment,
    check_disjoint_images,
    colour_mode,
    label_balance,
    multi_hot,
)
from training.real_benchmark import _normalise, clipped_step, pixel_cache, update_results_section  # noqa: E402


__all__ = ["RESULTS_SECTION_TITLE", "TASKS", "VARIANTS", "TaskData", "main", "markdown", "run"]

RESULTS_SECTION_TITLE = "## Visual entailment: image + text classification that needs both"
TASKS = ("easy_vqa", "openclipart", "attributes")
TASK_LABELS = {
    "easy_vqa": "easy-VQA entailment (3 classes)",
    "openclipart": "OpenClipArt entailment (3 classes)",
    "attributes": "easy-VQA attribute check (4 labels, multi-label)",
}
VARIANTS = ("multimodal", "image only", "text only")
TARGET_MARGIN = 20.0  # points over the better unimodal baseline


@dataclass
class TaskData:
    """One task's encoded rows: `pixels` uint8 `(num_images, 3, S, S)`, per row an `image` index, token ids, labels."""

    pixels: torch.Tensor
    image: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    description: str = ""
    caption_ids: torch.Tensor | None = None  # (num_images, L) per-image caption tokens, for the ITC warm start
    caption_mask: torch.Tensor | None = None
    caption_class: torch.Tensor | None = None  # (num_images,) equal captions share an id (ITC positives)


# ---------------------------------------------------------------------------------------------------- data


def _encode(rows, pixels: torch.Tensor, key_to_image: dict[str, int], tokenizer, max_length: int, multi: bool) -> TaskData:
    text = tokenizer(list(rows["statement"]), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    labels = torch.from_numpy(multi_hot(rows["label"])) if multi else torch.tensor(rows["label"])
    return TaskData(
        pixels=pixels,
        image=torch.tensor([key_to_image[k] for k in rows["image_key"]]),
        input_ids=text["input_ids"],
        attention_mask=text["attention_mask"],
        labels=labels,
    )


def _attach_captions(data: TaskData, captions: list[str], tokenizer, max_length: int) -> None:
    text = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    data.caption_ids, data.caption_mask = text["input_ids"], text["attention_mask"]
    classes = {c: i for i, c in enumerate(sorted(set(captions)))}
    data.caption_class = torch.tensor([classes[c] for c in captions])


def _limit(images, count: int | None, seed: int):
    if count is None or count >= len(images):
        return images
    return images.shuffle(seed=seed).select(range(count))


def easy_vqa_tasks(args: argparse.Namespace, tokenizer, images: dict | None = None) -> dict[str, tuple[TaskData, TaskData]]:
    """The easy-VQA entailment and attribute-check tasks (train, test); `images` replaces `load_easy_vqa` (tests)."""
    if images is None:
        from processing.data import load_easy_vqa

        images = {split: load_easy_vqa(split, view="images") for split in ("train", "test")}
    out = {}
    encoded = {}
    for split in ("train", "test"):
        source = _limit(images[split], args.max_train_images if split == "train" else args.max_test_images, args.seed)
        pixels = pixel_cache(source["image"], args.image_size)
        prefix = str(source.split) if source.split is not None else "images"
        keys = {f"{prefix}/{image_id}": i for i, image_id in enumerate(source["image_id"])}
        encoded[split] = (source, pixels, keys)
    for task, builder, multi in (
        ("easy_vqa", build_easy_vqa_entailment, False),
        ("attributes", build_easy_vqa_attribute_check, True),
    ):
        if task not in args.tasks:
            continue
        pair = []
        built = {}
        for split_index, split in enumerate(("train", "test")):
            source, pixels, keys = encoded[split]
            built[split] = builder(source, seed=args.seed + split_index)
            pair.append(_encode(built[split], pixels, keys, tokenizer, args.max_length, multi))
        source = encoded["train"][0]
        captions = [f"a {c} {s}" for c, s in zip(source["color"], source["shape"])]  # as `load_easy_vqa` captions
        _attach_captions(pair[0], captions, tokenizer, args.max_length)
        check_disjoint_images(built["train"], built["test"])
        pair[0].description = (
            f"{len(built['train'])} / {len(built['test'])} train / held-out rows on {len(set(built['train']['image_key']))}"
            f" / {len(set(built['test']['image_key']))} images (easy-VQA train / test, balanced colour x shape)"
        )
        if not multi:
            text, image = label_balance(built["test"], "statement"), label_balance(built["test"], "image_key")
            pair[0].description += (
                f"; held-out: {text['under_all_labels']} of {text['values']} statements and {image['under_all_labels']}"
                f" of {image['values']} images occur under all three labels"
            )
        out[task] = tuple(pair)
    return out


def openclipart_task(args: argparse.Namespace, tokenizer, drawings=None) -> tuple[TaskData, TaskData]:
    """The OpenClipArt entailment task (train, test); `drawings` replaces `load_openclipart` (tests)."""
    if drawings is None:
        from processing.real_datasets import load_openclipart

        drawings = load_openclipart(test_size=args.openclipart_test_size, seed=args.seed)
    cached = {}
    for split in ("train", "test"):
        pixels = pixel_cache(drawings[split]["image"], args.image_size)
        modes = [colour_mode(p.numpy()) for p in pixels]
        cached[split] = (pixels, modes)
    categories = args.categories or _largest_categories(drawings["train"]["category_name"], cached["train"][1], args.num_categories)
    pair, built = [], {}
    for split_index, split in enumerate(("train", "test")):
        pixels, modes = cached[split]
        built[split] = build_openclipart_entailment(drawings[split], categories, modes=modes, seed=args.seed + split_index)
        keys = {path: i for i, path in enumerate(drawings[split]["path"])}
        pair.append(_encode(built[split], pixels, keys, tokenizer, args.max_length, multi=False))
    pixels, modes = cached["train"]
    captions = [f"a {m} drawing of {c}" if m else "a drawing" for m, c in zip(modes, drawings["train"]["category_name"])]
    _attach_captions(pair[0], captions, tokenizer, args.max_length)
    check_disjoint_images(built["train"], built["test"])
    text, image = label_balance(built["test"], "statement"), label_balance(built["test"], "image_key")
    pair[0].description = (
        f"{len(built['train'])} / {len(built['test'])} train / held-out rows on {len(set(built['train']['image_key']))} / "
        f"{len(set(built['test']['image_key']))} drawings (seeded split by drawing, balanced category x colour mode), "
        f"categories: {', '.join(categories)}; held-out: {text['under_all_labels']} of {text['values']} statements and "
        f"{image['under_all_labels']} of {image['values']} drawings occur under all three labels"
    )
    return tuple(pair)


def _largest_categories(names: list[str], modes: list[str | None], count: int) -> list[str]:
    """The `count` categories whose smaller colour-mode cell is largest (the balanced size they allow)."""
    cells: dict[tuple[str, str], int] = {}
    for name, mode in zip(names, modes):
        if mode is not None:
            cells[(name, mode)] = cells.get((name, mode), 0) + 1
    sizes = {name: min(cells.get((name, m), 0) for m in ("colour", "black and white")) for name in set(names)}
    return sorted(sorted(sizes, key=lambda n: (-sizes[n], n))[:count])


# ---------------------------------------------------------------------------------------------------- training


def compact_vocabulary(tasks: dict[str, tuple[TaskData, TaskData]], empty_ids: torch.Tensor) -> int:
    """Renumbers the token ids of every task to the ids that occur (`[PAD]` stays 0), in place; returns the size.

    The statements use a few dozen WordPiece tokens: a 30,522-row embedding trained from scratch would only add
    optimizer work and parameters, the same for every row of the table."""
    ids = [d.input_ids for pair in tasks.values() for d in pair] + [
        d.caption_ids for pair in tasks.values() for d in pair if d.caption_ids is not None
    ]
    used = torch.unique(torch.cat([empty_ids.flatten()] + [i.flatten() for i in ids]))
    used = torch.cat([torch.tensor([0]), used[used != 0]])  # [PAD] first, so the config's pad_token_id 0 holds
    lookup = torch.zeros(int(used.max()) + 1, dtype=torch.long)
    lookup[used] = torch.arange(len(used))
    for pair in tasks.values():
        for data in pair:
            data.input_ids = lookup[data.input_ids]
            if data.caption_ids is not None:
                data.caption_ids = lookup[data.caption_ids]
    empty_ids.copy_(lookup[empty_ids])
    return len(used)


def _inputs(data: TaskData, index: torch.Tensor, variant: str, empty_ids: torch.Tensor, empty_mask: torch.Tensor) -> dict:
    pixels = _normalise(data.pixels[data.image[index]])  # (B, 3, S, S) in [-1, 1]
    if variant == "text only":
        pixels = torch.zeros_like(pixels)  # one constant mid-grey image for every row
    ids, mask = data.input_ids[index], data.attention_mask[index]
    if variant == "image only":
        ids, mask = empty_ids.expand_as(ids), empty_mask.expand_as(mask)  # the empty statement for every row
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def build_config(args: argparse.Namespace, vocab_size: int, multi: bool) -> MMConfig:
    tower = dict(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4, intermediate_size=4 * args.hidden
    )
    labels = ATTRIBUTE_CHECK_LABELS if multi else ENTAILMENT_LABELS
    return MMConfig(
        fusion=args.fusion,
        vision_config=dict(image_size=args.image_size, patch_size=args.patch_size, **tower),
        text_config=dict(vocab_size=vocab_size, max_position_embeddings=max(32, args.max_length), **tower),
        num_fusion_layers=args.fusion_layers,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type="multi_label_classification" if multi else "single_label_classification",
    )


def warm_start(config: MMConfig, data: TaskData, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """`--warm_start_steps` of ITC (CLIP's contrastive loss) on the training images and their captions: the towers'
    weights every row of the task then starts from. The label needs an interaction of the two modalities and neither
    alone carries any signal, so from a random start the classifier's gradient has nothing first-order to follow
    (the loss sits at ln 3); ITC's similarity is bilinear in the two towers' features, so each tower learns from the
    other's features at once."""
    from modeling_mm import MMForPreTraining

    torch.manual_seed(args.seed)
    model = MMForPreTraining(MMConfig(**{**config.to_dict(), "objectives": ["itc"]})).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.warm_start_steps
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    started, losses = time.perf_counter(), []
    for step in range(steps):
        index = torch.randperm(len(data.pixels), generator=generator)[: args.batch]
        loss = model(
            input_ids=data.caption_ids[index],
            attention_mask=data.caption_mask[index],
            pixel_values=_normalise(data.pixels[index]),
            image_ids=data.caption_class[index],
        ).loss
        clipped_step(model, loss, optimizer, schedule)
        losses.append(loss.item())
        if (step + 1) % max(1, min(100, steps // 5)) == 0:
            print(f"  [warm start, ITC] step {step + 1}/{steps} loss {np.mean(losses[-20:]):.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return {k: v for k, v in model.state_dict().items() if k.startswith("mm.")}


def train(
    config: MMConfig, data: TaskData, variant: str, args: argparse.Namespace, empty: tuple, init: dict | None = None
) -> tuple:
    torch.manual_seed(args.seed)
    model = MMForImageTextClassification(config).train()
    if init is not None:
        missing, unexpected = model.load_state_dict(init, strict=False)
        towers = [k for k in missing if k.startswith(("mm.text_model.", "mm.vision_model."))]
        assert not towers, towers  # the towers come from the warm start; fusion layers and classifier are new
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)  # the same data order for every variant
    num_rows, order, position = len(data.labels), torch.empty(0, dtype=torch.long), 0
    started, losses = time.perf_counter(), []
    for step in range(args.steps):
        if position + args.batch > len(order):
            order, position = torch.randperm(num_rows, generator=generator), 0
        index = order[position : position + args.batch]
        position += args.batch
        loss = model(**_inputs(data, index, variant, *empty), labels=data.labels[index]).loss
        clipped_step(model, loss, optimizer, schedule)
        losses.append(loss.item())
        if (step + 1) % max(1, min(100, args.steps // 5)) == 0:
            print(f"  [{variant}] step {step + 1}/{args.steps} loss {np.mean(losses[-20:]):.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return model.eval(), time.perf_counter() - started


@torch.no_grad()
def evaluate(model: MMForImageTextClassification, data: TaskData, variant: str, empty: tuple, multi: bool) -> dict:
    logits = torch.cat(
        [
            model(**_inputs(data, torch.arange(s, min(s + 256, len(data.labels))), variant, *empty)).logits
            for s in range(0, len(data.labels), 256)
        ]
    )
    if multi:
        predictions = (logits >= 0).long().numpy()  # sigmoid >= 0.5
        scores = classification_scores(predictions, data.labels.long().numpy(), multi_label=True)
        return {"exact_match": scores["accuracy"], "micro_f1": scores["micro_f1"], "macro_f1": scores["macro_f1"]}
    scores = classification_scores(logits.argmax(-1).numpy(), data.labels.numpy())
    return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}


def run(args: argparse.Namespace, easy_vqa_images: dict | None = None, drawings=None) -> dict:
    """Builds the data, trains every variant of every task, returns `{task: {...}}`."""
    from transformers import BertTokenizerFast

    from processing.data import default_tokenizer_path

    torch.set_num_threads(args.threads)
    tokenizer = BertTokenizerFast.from_pretrained(default_tokenizer_path())
    empty_text = tokenizer([""], padding="max_length", max_length=args.max_length, return_tensors="pt")
    empty = (empty_text["input_ids"], empty_text["attention_mask"])  # (1, L)
    started = time.perf_counter()
    tasks: dict[str, tuple[TaskData, TaskData]] = {}
    if "easy_vqa" in args.tasks or "attributes" in args.tasks:
        tasks.update(easy_vqa_tasks(args, tokenizer, easy_vqa_images))
    if "openclipart" in args.tasks:
        tasks["openclipart"] = openclipart_task(args, tokenizer, drawings)
    vocab_size = compact_vocabulary(tasks, empty[0])
    results = {"data_s": time.perf_counter() - started, "tasks": {}, "vocab_size": vocab_size}
    print(f"data ready in {results['data_s']:.0f} s", flush=True)
    for task in args.tasks:
        train_data, test_data = tasks[task]
        multi = task == "attributes"
        config = build_config(args, vocab_size, multi)
        rows, init, warm_s = {}, None, 0.0
        if args.warm_start_steps:
            print(f"{task}: warm start", flush=True)
            began = time.perf_counter()
            init = warm_start(config, train_data, args)
            warm_s = time.perf_counter() - began
        for variant in args.variants:
            print(f"{task}: {variant}", flush=True)
            model, seconds = train(config, train_data, variant, args, empty, init)
            rows[variant] = evaluate(model, test_data, variant, empty, multi) | {"train_s": seconds}
            print(f"  {rows[variant]}", flush=True)
        results["tasks"][task] = {
            "rows": rows,
            "description": train_data.description,
            "parameters": sum(p.numel() for p in model.parameters()),
            "warm_start_s": warm_s,
        }
    results["total_s"] = time.perf_counter() - started
    return results


# ---------------------------------------------------------------------------------------------------- report


def markdown(results: dict, args: argparse.Namespace, command: str) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [
        RESULTS_SECTION_TITLE,
        "",
        f"Command: `{command}`",
        "",
        f"`MMForImageTextClassification`, {args.fusion} fusion"
        + (f" ({args.fusion_layers} fusion layers)" if args.fusion in ("hybrid", "coattention") else "")
        + ", built-in ViT "
        f"({args.image_size} px, patch {args.patch_size}) and text tower (vocabulary: the {results['vocab_size']} tokens "
        f"of the statements and captions), hidden {args.hidden}, {args.layers} layers; towers from {args.warm_start_steps} "
        f"ITC steps on the task's training images and captions (shared by its three rows; 0: random), fusion and "
        f"classifier new; AdamW lr {args.lr} (one-cycle), {args.steps} steps of batch {args.batch} per row, seed "
        f"{args.seed}. Image only: every statement replaced by the empty one; text only: every image replaced by one "
        f"constant mid-grey image; same architecture, initialisation, data order and steps. "
        f"{platform.machine()}, {args.threads} thread(s), torch {torch.__version__}; {results['total_s'] / 60:.1f} min "
        f"in all (data {results['data_s']:.0f} s).",
        "",
    ]
    single = [t for t in results["tasks"] if t != "attributes"]
    if single:
        lines += [
            "| task | multimodal acc / macro-F1 | image only acc / macro-F1 | text only acc / macro-F1 | margin over the better baseline (acc) | target (>= +20 points) |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for task in single:
            rows = results["tasks"][task]["rows"]
            cells = [f"{pct(rows[v]['accuracy'])} / {pct(rows[v]['macro_f1'])}" if v in rows else "-" for v in VARIANTS]
            if set(VARIANTS) <= set(rows):
                margin = 100 * (rows["multimodal"]["accuracy"] - max(rows["image only"]["accuracy"], rows["text only"]["accuracy"]))
                verdict = "met" if margin >= TARGET_MARGIN else "missed"
                lines.append(f"| {TASK_LABELS[task]} | " + " | ".join(cells) + f" | {margin:+.1f} | {verdict} |")
            else:
                lines.append(f"| {TASK_LABELS[task]} | " + " | ".join(cells) + " | - | - |")
        lines.append("")
    if "attributes" in results["tasks"]:
        rows = results["tasks"]["attributes"]["rows"]
        lines += [
            "| multi-label task | variant | exact match | micro-F1 | macro-F1 |",
            "|---|---|---:|---:|---:|",
        ]
        for variant in rows:
            r = rows[variant]
            lines.append(
                f"| {TASK_LABELS['attributes']} | {variant} | {pct(r['exact_match'])} | {pct(r['micro_f1'])} | {pct(r['macro_f1'])} |"
            )
        lines.append("")
    lines.append("Chance: 33.3% accuracy for the 3-class tasks; 11.1% exact match for the attribute check (3 x 3 "
                 "equally likely answer patterns).")
    lines.append("")
    for task, result in results["tasks"].items():
        lines.append(
            f"- {TASK_LABELS[task]}: {result['description']}; {result['parameters'] / 1e6:.2f} M parameters; warm start "
            f"{result['warm_start_s']:.0f} s, rows " + ", ".join(f"{r['train_s']:.0f}" for r in result["rows"].values()) + " s."
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"Comma-separated subset of {','.join(TASKS)}.")
    parser.add_argument("--fusion", default="late", choices=["early", "late", "hybrid", "coattention"])
    parser.add_argument("--fusion_layers", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--patch_size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max_length", type=int, default=24)
    parser.add_argument("--steps", type=int, default=600, help="Optimizer steps per row (task x variant).")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--warm_start_steps", type=int, default=300,
        help="ITC steps on the training images and captions before each task's rows (0: random start).",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max_train_images", type=int, default=None, help="easy-VQA training images (seeded subset).")
    parser.add_argument("--max_test_images", type=int, default=None, help="easy-VQA held-out images (seeded subset).")
    parser.add_argument("--openclipart_test_size", type=int, default=1500, help="Held-out OpenClipArt drawings.")
    parser.add_argument("--num_categories", type=int, default=4, help="OpenClipArt categories (largest balanced cells).")
    parser.add_argument("--categories", default="", help="Comma-separated OpenClipArt category names (overrides).")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated subset of the rows.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="Tiny smoke run (numbers meaningless).")
    parser.add_argument("--out", default=None, help="Markdown report to write.")
    parser.add_argument("--results_file", default=None, help="Markdown file whose section is (re)written (RESULTS.md).")
    args = parser.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown:
        parser.error(f"--tasks: unknown {unknown}; choose from {list(TASKS)}.")
    args.categories = [c for c in args.categories.split(",") if c]
    args.variants = [v for v in args.variants.split(",") if v]
    if sorted(set(args.variants) - set(VARIANTS)):
        parser.error(f"--variants: choose from {list(VARIANTS)}.")
    if args.quick:
        args.steps, args.batch, args.hidden, args.layers, args.fusion_layers = min(args.steps, 3), 8, 32, 1, 1
        args.max_train_images, args.max_test_images = min(args.max_train_images or 48, 48), min(args.max_test_images or 24, 24)
        args.warm_start_steps = min(args.warm_start_steps, 2)
    return args


def main(argv: list[str] | None = None, easy_vqa_images: dict | None = None, drawings=None) -> dict:
    args = parse_args(argv)
    results = run(args, easy_vqa_images, drawings)
    command = shlex.join(["python", "benchmarks/visual_entailment.py", *(sys.argv[1:] if argv is None else argv)])
    report = markdown(results, args, command)
    print(report)
    if args.out:
        title = "# Visual entailment: image + text classification that needs both\n\n"
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(title + report.split("\n", 2)[2])
    if args.results_file:
        update_results_section(args.results_file, report, RESULTS_SECTION_TITLE)
    return results


if __name__ == "__main__":
    main()
