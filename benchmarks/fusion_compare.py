"""Co-attention (LXMERT-style) against hybrid (ALBEF-style) fusion on the same easy-VQA budget.

    python benchmarks/fusion_compare.py [--epochs 2] [--vqa_steps 150] [--out benchmarks/fusion_compare.md]

For each fusion: `mm pretrain` with its default objectives (ITC, ITM, MLM, LM) for `--epochs` passes, then on the
1,000 easy-VQA test images against the 24 colour x shape captions: ITC zero-shot top-1 and class-level recall, and
ITM-reranked image->text recall@1 (`MMForImageTextRetrieval.rank_texts`, top 8 re-scored); then `mm finetune --task
vqa` from that checkpoint for `--vqa_steps` steps and its accuracy on the 9,673 test questions. Everything else is
each command's default, so the two rows differ only in `--fusion`.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def itm_reranked_recall(checkpoint: str, top_k: int = 8, batch_size: int = 100) -> float:
    """Class-level image->text recall@1 after ITM re-ranking of each image's top-k ITC captions."""
    from evaluation.tasks import class_level_recall
    from modeling_mm import MMForImageTextRetrieval
    from processing import MMProcessor
    from processing.data import EASY_VQA_COLORS, EASY_VQA_SHAPES, load_easy_vqa

    model = MMForImageTextRetrieval.from_pretrained(checkpoint).eval()
    processor = MMProcessor.from_pretrained(checkpoint)
    prompts = [f"a {c} {s}" for c in EASY_VQA_COLORS for s in EASY_VQA_SHAPES]
    texts = processor(text=prompts, padding=True, return_tensors="pt")
    test = load_easy_vqa(view="images")["test"]
    scores, labels = [], []
    with torch.no_grad():
        for start in range(0, len(test), batch_size):
            batch = test[start : start + batch_size]
            pixels = processor(images=batch["image"], return_tensors="pt")["pixel_values"]
            scores.append(model.rank_texts(pixels, texts["input_ids"], texts["attention_mask"], top_k=top_k))
            labels += [prompts.index(f"a {c} {s}") for c, s in zip(batch["color"], batch["shape"])]
    recall = class_level_recall(torch.cat(scores), torch.tensor(labels), torch.arange(len(prompts)), ks=(1,))
    return recall["i2t_recall@1"]


def run(fusion: str, root: str, epochs: float, vqa_steps: int) -> dict:
    from run_scripts.cli import run_command

    folder = os.path.join(root, fusion)
    pretrain, vqa = os.path.join(folder, "pretrain"), os.path.join(folder, "vqa")
    row: dict = {"fusion": fusion}
    start = time.time()
    run_command("pretrain", ["--fusion", fusion, "--output_dir", pretrain, "--num_train_epochs", str(epochs),
                             "--seed", "0"])
    row["pretrain_min"] = (time.time() - start) / 60
    with open(os.path.join(pretrain, "pretrain_summary.json")) as f:
        row["pretrain"] = json.load(f)["zero_shot"]
    row["itm_i2t_recall@1"] = itm_reranked_recall(pretrain)
    start = time.time()
    run_command("finetune", ["--model_name_or_path", pretrain, "--output_dir", vqa, "--task", "vqa",
                             "--max_steps", str(vqa_steps), "--freeze_text", "frozen", "--learning_rate", "3e-4",
                             "--per_device_train_batch_size", "64", "--eval_strategy", "no", "--save_strategy", "no",
                             "--seed", "0"])
    row["vqa_min"] = (time.time() - start) / 60
    run_command("evaluate", ["--model_name_or_path", vqa, "--task", "vqa", "--output_file",
                             os.path.join(vqa, "vqa_eval.json")])
    with open(os.path.join(vqa, "vqa_eval.json")) as f:
        row["vqa"] = json.load(f)["results"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--vqa_steps", type=int, default=150)
    parser.add_argument("--root", default="outputs/fusion_compare")
    parser.add_argument("--out", default="benchmarks/fusion_compare.md")
    args = parser.parse_args()
    rows = [run(fusion, args.root, args.epochs, args.vqa_steps) for fusion in ("hybrid", "coattention")]
    with open(os.path.join(args.root, "rows.json"), "w") as f:
        json.dump(rows, f, indent=2)
    lines = [
        f"# Co-attention vs hybrid fusion, same budget ({args.epochs:g} pretraining epochs, {args.vqa_steps} VQA steps)",
        "",
        "| fusion | zero-shot top-1 (ITC) | i2t R@1 (ITC) | i2t R@1 (ITM re-ranked) | VQA accuracy | pretrain min | VQA min |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["pretrain"]
        lines.append(
            f"| {r['fusion']} | {100 * p['zero_shot_top1']:.1f}% | {100 * p['i2t_recall@1']:.1f}% | "
            f"{100 * r['itm_i2t_recall@1']:.1f}% | {100 * r['vqa']['vqa_accuracy']:.2f}% | {r['pretrain_min']:.1f} | "
            f"{r['vqa_min']:.1f} |"
        )
    lines += ["", f"Command: `python benchmarks/fusion_compare.py --epochs {args.epochs:g} --vqa_steps {args.vqa_steps}`",
              f"({torch.get_num_threads()} CPU threads, fp32)", ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
