"""The pretraining recipes on real images: InfoNCE vs sigmoid (SigLIP), with and without ALBEF momentum distillation,
batch 32 vs gradient-cached 4 x 32 (GradCache), each trained through `MMTrainer` on OpenClipArt with the same data
order, seed, learning rate and steps, then title-level retrieval recall@1/5/10 both ways on the held-out drawings.

    python benchmarks/recipes_ablation.py [--steps 40] [--recipes infonce,sigmoid,...] [--num_threads 2]
        [--out benchmarks/recipes_ablation.md] [--results_file RESULTS.md]
    python benchmarks/recipes_ablation.py --render_only [--note TEXT] [--results_file RESULTS.md]   # re-render

Model: `MMForPreTraining`, late fusion, objectives ["itc"], built by `training.real_benchmark.build_tower_model`:
the pretrained EfficientNet-Lite0 vision tower with only its head convolution and last `--trainable_blocks` MBConv
block(s) trained, and the pretrained MiniLM-L6 text tower locked (LiT, Zhai et al. 2022); the two ITC projections and
the temperature (and the sigmoid's bias) learn from scratch. Every BatchNorm of the vision tower stays in eval mode
("frozen BN", with its pretrained statistics; its affine weights in the trained blocks still learn): batch statistics
would otherwise make a batch of 128 and four micro-batches of 32 train different functions, and the batch-32 rows
would train on noisier statistics than the batch-128 ones. The locked text tower runs in eval mode (no dropout).

Data: `processing.real_datasets.load_openclipart` (Debian `openclipart-png` / `openclipart-svg`), the same seeded
subset and split as `run_scripts.real_benchmark`; images resized once (`pixel_cache`), titles tokenised once, padded
per batch. Drawings sharing a title are positives of each other (`image_ids`). Every recipe gets the same seeded
initialisation and the same shuffled order of pairs (accelerate's seedable sampler): a step of batch 128 holds the
pairs of four consecutive batch-32 steps, which the script checks and reports.

Retrieval: over the held-out drawings and their distinct titles, at title level (`evaluation.tasks.class_level_recall`,
as the real-image benchmark scores it), from the projected pooled features (`encode_pooled_images`,
`encode_pooled_texts`).
"""

import argparse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
import json
import logging
import os
import shlex
import sys
import tempfile
import time

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from modeling_mm import MMForPreTraining  # noqa: E402
from training.real_benchmark import (  # noqa: E402
    _normalise,
    build_tower_model,
    encode_pooled_images,
    encode_pooled_texts,
    pixel_cache,
    update_results_section,
)


__all__ = ["RECIPES", "RESULTS_SECTION_TITLE", "ClipartData", "Recipe", "load_clipart", "main", "markdown", "run_recipe"]

logger = logging.getLogger(__name__)

RESULTS_SECTION_TITLE = (
    "## Pretraining recipes on real images: InfoNCE vs sigmoid, momentum distillation, GradCache"
)


@dataclass
class Recipe:
    """One row of the ablation: the knobs of `run_scripts/pretrain.py` it turns."""

    label: str
    contrastive_loss: str = "infonce"  # MMConfig.contrastive_loss
    batch_size: int = 32  # per_device_train_batch_size: pairs (and ITC negatives) per optimizer step
    itc_accumulation_steps: int = 1  # MMTrainer(itc_accumulation_steps=k): k micro-batches of batch_size / k
    momentum_distillation: bool = False  # MMTrainer(momentum_distillation=MomentumDistillation(...))
    steps_multiplier: int = 1  # x --steps (the equal-pairs row)
    seed_offset: int = 0  # + --seed for initialisation and data order (the spread row); the split stays put


RECIPES = {
    "infonce": Recipe("1. InfoNCE, batch 32"),
    "sigmoid": Recipe("2. sigmoid (SigLIP), batch 32", contrastive_loss="sigmoid"),
    "infonce_md": Recipe("3. InfoNCE + momentum distillation, batch 32", momentum_distillation=True),
    "infonce_gc": Recipe("4. InfoNCE, GradCache 4x32", batch_size=128, itc_accumulation_steps=4),
    "sigmoid_gc": Recipe("5. sigmoid, GradCache 4x32", contrastive_loss="sigmoid", batch_size=128,
                         itc_accumulation_steps=4),
    "infonce_b128": Recipe("6. InfoNCE, plain batch 128", batch_size=128),
    "infonce_4x_steps": Recipe("7. InfoNCE, batch 32, 4x the steps (the pairs of 4 and 6)", steps_multiplier=4),
    "infonce_seed1": Recipe("1'. InfoNCE, batch 32, another seed", seed_offset=1),
}
DEFAULT_RECIPES = ("infonce", "sigmoid", "infonce_md", "infonce_gc", "infonce_b128", "infonce_seed1", "infonce_4x_steps")


# ---------------------------------------------------------------------------------------------------- data


@dataclass
class ClipartData:
    """Training pairs and the held-out retrieval split, decoded and tokenised once."""

    train_pixels: torch.Tensor  # (N, 3, S, S) uint8
    train_input_ids: list[list[int]]  # tokenised title of each training drawing
    train_title_ids: torch.Tensor  # (N,) long: equal ids are positives of each other
    test_pixels: torch.Tensor  # (M, 3, S, S) uint8
    test_titles: list[str]  # the distinct held-out titles (the text gallery)
    test_image_title: torch.Tensor  # (M,) long: row of `test_titles` of each held-out drawing
    tokenizer: object
    max_length: int


def load_clipart(args: argparse.Namespace, text_path: str) -> ClipartData:
    """OpenClipArt as `run_scripts.real_benchmark` loads and splits it, cached for `MMTrainer`."""
    from processing.data import build_default_processor
    from processing.real_datasets import OPENCLIPART_PNG_DIR, OPENCLIPART_SVG_DIR, load_openclipart

    data = load_openclipart(
        args.openclipart_png_dir or OPENCLIPART_PNG_DIR,
        args.openclipart_svg_dir or OPENCLIPART_SVG_DIR,
        test_size=args.test_size,
        seed=args.seed,
        max_samples=args.max_samples,
    )
    train, test = data["train"], data["test"]
    tokenizer = build_default_processor(max_length=args.max_length, tokenizer_path=text_path).tokenizer
    titles = sorted(set(train["caption"]))
    title_id = {t: i for i, t in enumerate(titles)}
    test_titles = sorted(set(test["caption"]))
    test_row = {t: i for i, t in enumerate(test_titles)}
    return ClipartData(
        train_pixels=pixel_cache(train["image"], args.image_size, batch_size=64),
        train_input_ids=tokenizer(list(train["caption"]), truncation=True, max_length=args.max_length)["input_ids"],
        train_title_ids=torch.tensor([title_id[t] for t in train["caption"]], dtype=torch.long),
        test_pixels=pixel_cache(test["image"], args.image_size, batch_size=64),
        test_titles=test_titles,
        test_image_title=torch.tensor([test_row[t] for t in test["caption"]], dtype=torch.long),
        tokenizer=tokenizer,
        max_length=args.max_length,
    )


class PairDataset(torch.utils.data.Dataset):
    """`(pixel_values, input_ids, image_ids)` rows of `ClipartData`; remembers the order Trainer reads them in."""

    def __init__(self, data: ClipartData):
        self.data = data
        self.order: list[int] = []

    def __len__(self) -> int:
        return len(self.data.train_input_ids)

    def __getitem__(self, i: int) -> dict:
        self.order.append(int(i))
        return {
            "pixel_values": _normalise(self.data.train_pixels[i]),  # (3, S, S) in [-1, 1], as MMImageProcessor
            "input_ids": self.data.train_input_ids[i],
            "image_ids": self.data.train_title_ids[i],
        }


def _collate(tokenizer) -> Callable[[list[dict]], dict]:
    def collate(rows: list[dict]) -> dict:
        text = tokenizer.pad({"input_ids": [r["input_ids"] for r in rows]}, return_tensors="pt")  # to the batch's longest
        return {
            "pixel_values": torch.stack([r["pixel_values"] for r in rows]),  # (B, 3, S, S)
            "input_ids": text["input_ids"],  # (B, L)
            "attention_mask": text["attention_mask"],
            "image_ids": torch.stack([r["image_ids"] for r in rows]),  # (B,)
        }

    return collate


# ---------------------------------------------------------------------------------------------------- model


def _keep_eval(module: nn.Module, kinds: tuple[type, ...] | None = None) -> None:
    """Puts `module` (or its submodules of `kinds`) in eval mode before each of its forwards, whatever Trainer's
    `model.train()` said: a locked tower gives fixed features, a frozen BatchNorm its pretrained statistics."""

    def hook(mod: nn.Module, _args) -> None:
        for sub in mod.modules() if kinds else (mod,):
            if kinds is None or isinstance(sub, kinds):
                sub.eval()

    module.register_forward_pre_hook(hook)


def build_model(recipe: Recipe, args: argparse.Namespace, text_path: str, seed: int) -> MMForPreTraining:
    """The pretraining model of `recipe`, seeded: pretrained towers, text locked, vision trained in its last blocks."""
    torch.manual_seed(seed)
    model = build_tower_model(
        "effnet_lite0_locked", text_path, args.image_size, args.projection_dim, args.effnet_dir,
        model_class=MMForPreTraining, contrastive_loss=recipe.contrastive_loss,
    )
    text, vision = model.mm.text_model, model.mm.vision_model
    text.requires_grad_(False)
    _keep_eval(text)
    vision.requires_grad_(False)
    trained = [vision.head, *list(vision.blocks)[len(vision.blocks) - args.trainable_blocks :]]
    for part in trained:
        part.requires_grad_(True)
    _keep_eval(vision, (nn.modules.batchnorm._BatchNorm,))
    return model


class _ITCProbe:
    """Records the rows of every ITC loss (`MMModel.itc_loss_and_logits`, which every plain and gradient-cached ITC
    goes through) and of every vision-tower forward: the negatives a loss saw, and the micro-batch that ran."""

    def __init__(self, model: MMForPreTraining):
        self.loss_rows: list[int] = []
        self.forward_rows: list[int] = []
        inner = model.mm.itc_loss_and_logits

        def itc_loss_and_logits(image_embeds, text_embeds, ids=None):
            self.loss_rows.append(int(image_embeds.shape[0]))
            return inner(image_embeds, text_embeds, ids)

        model.mm.itc_loss_and_logits = itc_loss_and_logits
        def record(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            if model.training:
                self.forward_rows.append(int(kwargs.get("pixel_values", args[0] if args else None).shape[0]))

        model.mm.vision_model.register_forward_pre_hook(record, with_kwargs=True)


# ---------------------------------------------------------------------------------------------------- one row


@torch.no_grad()
def retrieval(model: MMForPreTraining, data: ClipartData, batch_size: int) -> dict[str, float]:
    """Title-level recall@1/5/10 both ways over the held-out drawings and their distinct titles."""
    from evaluation.tasks import class_level_recall

    mm = model.mm
    image_pooled = encode_pooled_images(mm, data.test_pixels, batch_size)  # (M, Dv)
    text_pooled = encode_pooled_texts(mm, data.tokenizer, data.test_titles, data.max_length, batch_size)  # (T, Dt)
    image_embeds = nn.functional.normalize(mm.visual_projection(image_pooled), dim=-1)  # (M, P)
    text_embeds = nn.functional.normalize(mm.text_projection(text_pooled), dim=-1)  # (T, P)
    return class_level_recall(
        image_embeds @ text_embeds.t(), data.test_image_title, torch.arange(len(data.test_titles)), ks=(1, 5, 10)
    )


def run_recipe(recipe: Recipe, data: ClipartData, args: argparse.Namespace, text_path: str) -> dict:
    """Trains `recipe` through `MMTrainer` and evaluates it; returns its row (metrics, temperature, cost, checks)."""
    from transformers import TrainingArguments

    from training.momentum import MomentumDistillation
    from training.trainer import MMTrainer

    seed = args.seed + recipe.seed_offset
    steps = args.steps * recipe.steps_multiplier
    model = build_model(recipe, args, text_path, seed)
    dataset = PairDataset(data)
    distillation = None
    if recipe.momentum_distillation:
        distillation = MomentumDistillation(
            model, momentum=args.momentum, queue_size=args.queue_size, alpha=args.distillation_alpha,
            warmup_steps=round(args.distillation_warmup_fraction * steps),
        )
    probe = _ITCProbe(model)  # after the teacher's copy: it records the student only
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=recipe.batch_size,
            learning_rate=args.learning_rate,
            warmup_steps=round(args.warmup_fraction * steps),
            lr_scheduler_type="cosine",
            weight_decay=args.weight_decay,
            logging_steps=max(1, steps // 10),
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=seed,
            dataloader_num_workers=0,
            dataloader_drop_last=True,  # every step a full batch, also at an epoch's end
            remove_unused_columns=False,
            disable_tqdm=True,
        )
        trainer = MMTrainer(
            model=model,
            args=training_args,
            train_dataset=dataset,
            data_collator=_collate(data.tokenizer),
            itc_accumulation_steps=recipe.itc_accumulation_steps,
            momentum_distillation=distillation,
        )
        start, cpu_start = time.time(), time.process_time()
        trainer.train()
        train_seconds, train_cpu = time.time() - start, time.process_time() - cpu_start
    model.eval()
    eval_start = time.time()
    recall = retrieval(model, data, args.eval_batch_size)
    itc_logs = [row["itc_loss"] for row in trainer.state.log_history if "itc_loss" in row]
    mm = model.mm
    row = {
        "label": recipe.label,
        "recipe": asdict(recipe),
        **recall,
        "final_itc_loss": round(itc_logs[-1], 4) if itc_logs else None,  # mean over the last logging window
        "logit_scale": round(float(mm.clamped_logit_scale().detach()), 3),
        "logit_bias": round(float(mm.logit_bias.detach()), 3) if getattr(mm, "logit_bias", None) is not None else None,
        "steps": trainer.state.global_step,
        "pairs_seen": trainer.state.global_step * recipe.batch_size,
        # Rows of the ITC losses computed (GradCache: the k·b loss and each micro-batch forward's own); [] with
        # distillation, whose loss does not go through `itc_loss_and_logits`.
        "itc_loss_rows": sorted(set(probe.loss_rows)),
        "forward_rows": sorted(set(probe.forward_rows)),  # rows of each vision forward (micro-batch)
        "queue_filled": distillation.filled if distillation is not None else None,
        "order": dataset.order,
        "trained_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu, 1),
        "eval_seconds": round(time.time() - eval_start, 1),
    }
    logger.info("%s: %s", recipe.label, {k: v for k, v in row.items() if k != "order"})
    return row


# ---------------------------------------------------------------------------------------------------- report


def _same_order(rows: dict, name: str) -> str:
    """Whether `name` read the pairs in the order of the first row with the same seed (its prefix, or vice versa)."""
    this = rows[name]
    for other_name, other in rows.items():
        if other_name == name:
            continue
        if other["recipe"]["seed_offset"] == this["recipe"]["seed_offset"]:
            n = min(len(this["order"]), len(other["order"]))
            return "yes" if this["order"][:n] == other["order"][:n] else f"no (vs {other_name})"
    return "-"


def _negatives(row: dict) -> str:
    """The pairs the ITC loss that trains the step scores against: the batch (GradCache: all k micro-batches, the
    largest loss; each micro-batch's forward also computes its own b-pair loss, which no gradient uses), or the batch
    and the teacher's queue."""
    if row["queue_filled"] is not None:
        return f"{row['recipe']['batch_size']} + queue {row['queue_filled']}"
    return str(max(row["itc_loss_rows"])) if row["itc_loss_rows"] else "-"


def markdown(results: dict, command: str) -> str:
    """The report: setup, one table, the command."""
    a = results["arguments"]
    setup = results["setup"]
    lines = [
        RESULTS_SECTION_TITLE,
        "",
        f"OpenClipArt, {setup['train_images']:,} training / {setup['test_images']:,} held-out drawings (the seeded "
        f"subset and split of the real-image benchmark), retrieval over the held-out drawings and their "
        f"{setup['test_titles']} distinct titles at title level. `MMForPreTraining`, late fusion, ITC only, trained "
        f"through `MMTrainer`: pretrained EfficientNet-Lite0 with its head convolution and last "
        f"{a['trainable_blocks']} MBConv block(s) trained (BatchNorm frozen), pretrained MiniLM-L6 text tower locked; "
        f"{setup['trained_parameters'] / 1e6:.2f}M of {setup['parameters'] / 1e6:.1f}M parameters train. Every row: "
        f"{a['steps']} optimizer steps (row 7: {4 * a['steps']}), AdamW at {a['learning_rate']:g} (warmup "
        f"{a['warmup_fraction']:.0%} of the steps, cosine), weight decay {a['weight_decay']:g}, {a['image_size']} px, "
        f"seed {a['seed']} (initialisation and data order; row 1' seed {a['seed'] + 1}). Momentum distillation: "
        f"momentum {a['momentum']}, queue {a['queue_size']}, alpha {a['distillation_alpha']} ramped over "
        f"{a['distillation_warmup_fraction']:.0%} of the steps. Whole run {results['wall_time_s'] / 60:.1f} min on "
        f"{a['num_threads']} shared CPU thread(s); train times are wall (process CPU) and depend on the load of the "
        "shared machine.",
        "",
        "| recipe | text->image R@1 / R@5 / R@10 | image->text R@1 / R@5 / R@10 | final ITC loss | logit_scale | "
        "logit_bias | negatives per ITC loss | pairs seen | same pair order | train time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["rows"].items():
        t2i = " / ".join(f"{100 * r[f't2i_recall@{k}']:.1f}%" for k in (1, 5, 10))
        i2t = " / ".join(f"{100 * r[f'i2t_recall@{k}']:.1f}%" for k in (1, 5, 10))
        bias = "-" if r["logit_bias"] is None else f"{r['logit_bias']:.2f}"
        loss = "-" if r["final_itc_loss"] is None else f"{r['final_itc_loss']:.3f}"
        lines.append(
            f"| {r['label']} | {t2i} | {i2t} | {loss} | {r['logit_scale']:.2f} | {bias} | {_negatives(r)} | "
            f"{r['pairs_seen']:,} | {_same_order(results['rows'], name)} | {r['train_seconds'] / 60:.1f} min "
            f"({r['train_cpu_seconds'] / 60:.1f}) |"
        )
    if results.get("note"):
        lines += ["", results["note"]]
    lines += [
        "",
        "The final ITC loss is the mean over the last tenth of the steps; it is comparable only between rows of the same "
        "loss and batch (InfoNCE over B negatives starts at ln B, the sigmoid loss is a sum over B pairs per row). "
        "Same pair order: the pairs the row read begin with those of the first row of its seed, in the same order "
        "(a batch of 128 is four batches of 32); '-' where no other row has its seed.",
        "",
        f"Command: `{command}`",
        "",
    ]
    return "\n".join(lines)


def _write(results: dict, command: str, args: argparse.Namespace) -> str:
    text = markdown(results, command)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help=f"Comma-separated subset of {','.join(RECIPES)}.")
    p.add_argument("--steps", type=int, default=40, help="Optimizer steps of every row (row 7: 4x).")
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--warmup_fraction", type=float, default=0.1, help="Linear warmup, as a fraction of the steps.")
    p.add_argument("--weight_decay", type=float, default=0.02)
    p.add_argument("--trainable_blocks", type=int, default=1, help="Last MBConv blocks of EfficientNet-Lite0 trained.")
    p.add_argument("--momentum", type=float, default=0.995, help="Momentum distillation: EMA momentum.")
    p.add_argument("--queue_size", type=int, default=1024, help="Momentum distillation: queue entries.")
    p.add_argument("--distillation_alpha", type=float, default=0.4)
    p.add_argument("--distillation_warmup_fraction", type=float, default=0.25,
                   help="Momentum distillation: steps over which alpha ramps from 0, as a fraction of the steps.")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--projection_dim", type=int, default=256)
    p.add_argument("--max_length", type=int, default=32)
    p.add_argument("--test_size", type=int, default=1000, help="Held-out drawings.")
    p.add_argument("--max_samples", type=int, default=4000, help="Drawings used (seeded subset).")
    p.add_argument("--openclipart_png_dir", default=None)
    p.add_argument("--openclipart_svg_dir", default=None)
    p.add_argument("--text_model_name_or_path", default=None, help="Text tower folder (default: MiniLM-L6).")
    p.add_argument("--effnet_dir", default="outputs/effnet_lite0", help="Converted EfficientNet-Lite0 folder.")
    p.add_argument("--eval_batch_size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=2)
    p.add_argument("--output_dir", default="outputs/recipes_ablation", help="Where results.json goes.")
    p.add_argument("--out", default="benchmarks/recipes_ablation.md", help="The Markdown report ('' for none).")
    p.add_argument("--render_only", action="store_true",
                   help="Rewrite the report(s) from <output_dir>/results.json without training anything.")
    p.add_argument("--note", default=None, help="With --render_only: a paragraph (the reading) under the table.")
    p.add_argument("--results_file", default="", help=f"Also write the report as the section {RESULTS_SECTION_TITLE!r} "
                                                       "of this Markdown file (e.g. RESULTS.md); '' for none.")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stdout)
    torch.set_num_threads(args.num_threads)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        raise SystemExit(f"--recipes: unknown {unknown}; choose from {list(RECIPES)}.")
    if args.render_only:
        with open(os.path.join(args.output_dir, "results.json"), encoding="utf-8") as f:
            results = json.load(f)
        if args.note is not None:
            results["note"] = args.note
        return _finish(results, args)
    from training.trainer import default_text_tower_path

    command = "python benchmarks/recipes_ablation.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    start = time.time()
    text_path = args.text_model_name_or_path or default_text_tower_path()
    data = load_clipart(args, text_path)
    logger.info("OpenClipArt: %d train / %d test drawings (%.1fs)", len(data.train_input_ids), len(data.test_pixels),
                time.time() - start)
    results: dict = {"arguments": vars(args), "command": command.strip(), "rows": {}}
    for name in names:
        row = run_recipe(RECIPES[name], data, args, text_path)
        results["rows"][name] = row
        results["setup"] = {
            "train_images": len(data.train_input_ids),
            "test_images": len(data.test_pixels),
            "test_titles": len(data.test_titles),
            "trained_parameters": row["trained_parameters"],
            "parameters": row["parameters"],
        }
        results["wall_time_s"] = round(time.time() - start, 1)
        _write(results, results["command"], args)  # after every row: a cut-short run keeps what it measured
    return _finish(results, args)


def _finish(results: dict, args: argparse.Namespace) -> dict:
    results["markdown"] = _write(results, results["command"], args)
    if args.results_file:
        update_results_section(args.results_file, results["markdown"], RESULTS_SECTION_TITLE)
    print(results["markdown"])
    return results


if __name__ == "__main__":
    main()
