"""Regenerates the easy-VQA sections of RESULTS.md: runs (or, with --collect, only reads) their experiments.

Each row is written with the exact command that produced it. Only the sections these experiments measured are
rewritten; the benchmarks' sections and the rest of the file are kept.

    mm make-results                 # run what is missing, then write RESULTS.md
    mm make-results --collect       # only rebuild RESULTS.md from outputs/results/*

Experiments (all on the easy-VQA test split, CPU, fp32):
- pretraining: the default `mm pretrain` run: zero-shot accuracy (24 colour x shape prompts) and
  class-level image<->text recall@1/5 (outputs/pretrain);
- data efficiency: VQA accuracy after fine-tuning on 1%, 10% and 100% of the training questions, starting from the
  default pretrained checkpoint or from the same architecture without multimodal pretraining (fresh vision tower and
  fusion, the same MiniLM text tower), same steps, same seed; plus a learning-curve plot;
- VQA with LoRA from the pretrained checkpoint, and captioning (exact match, BLEU-4).
"""

import argparse
import json
import os
import shlex
import time

RESULTS_DIR = "outputs/results"
PRETRAINED = "outputs/pretrain"
SCRATCH = os.path.join(RESULTS_DIR, "scratch_init")
FRACTIONS = (0.01, 0.1, 1.0)
# Same optimisation budget for both starts: a fixed number of steps per data fraction (batch 64).
STEPS = {0.01: 100, 0.1: 200, 1.0: 400}
COMMON_VQA = [
    "--task", "vqa", "--freeze_text", "frozen", "--learning_rate", "3e-4", "--per_device_train_batch_size", "64",
    "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "20", "--seed", "0",
]


def _cmd(command: str, args: list[str]) -> str:
    return f"mm {command} " + " ".join(shlex.quote(a) for a in args)


def make_scratch_init(path: str = SCRATCH) -> str:
    """The pretrained checkpoint's architecture with no multimodal pretraining: the same config, a new vision tower,
    fusion and projections, and the same MiniLM text tower (which both starts share)."""
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return path
    import torch

    from modeling_mm import MMConfig, MMForPreTraining
    from processing import MMProcessor
    from training.trainer import default_text_tower_path

    torch.manual_seed(0)
    config = MMConfig.from_pretrained(PRETRAINED)
    model = MMForPreTraining.from_vision_text_pretrained(
        None,
        default_text_tower_path(),
        vision_config=config.vision_config,
        **{k: getattr(config, k) for k in ("fusion", "num_fusion_layers", "num_decoder_layers", "projection_dim",
                                            "objectives")},
    )
    model.save_pretrained(path)
    MMProcessor.from_pretrained(PRETRAINED).save_pretrained(path)
    return path


def vqa_runs() -> list[dict]:
    runs = []
    for start, init in (("pretrained", PRETRAINED), ("scratch", SCRATCH)):
        for fraction in FRACTIONS:
            out = os.path.join(RESULTS_DIR, f"vqa_{start}_{fraction:g}")
            args = ["--model_name_or_path", init, "--output_dir", out, "--train_fraction", str(fraction),
                    "--max_steps", str(STEPS[fraction]), *COMMON_VQA]
            runs.append({"name": f"vqa_{start}_{fraction:g}", "start": start, "fraction": fraction, "out": out,
                         "args": args})
    lora_out = os.path.join(RESULTS_DIR, "vqa_pretrained_lora")
    runs.append({"name": "vqa_pretrained_lora", "start": "pretrained", "fraction": 1.0, "out": lora_out, "lora": True,
                 "args": ["--model_name_or_path", PRETRAINED, "--output_dir", lora_out, "--lora", "true",
                          "--max_steps", str(STEPS[1.0]), *[a if a != "3e-4" else "1e-3" for a in COMMON_VQA]]})
    return runs


def run_vqa(run: dict) -> dict:
    from run_scripts.cli import run_command
    from run_scripts.finetune import SUMMARY_FILE

    summary_file = os.path.join(run["out"], SUMMARY_FILE)
    if not os.path.isfile(summary_file):
        run_command("finetune", run["args"])
    eval_file = os.path.join(run["out"], "eval_vqa.json")
    model_path = run["out"]
    if not os.path.isfile(eval_file):
        run_command("evaluate", ["--model_name_or_path", model_path, "--task", "vqa", "--output_file", eval_file])
    summary = json.load(open(summary_file))
    result = json.load(open(eval_file))["results"]
    return {**run, "summary": summary, "eval": result}


def plot_learning_curve(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for start, style in (("pretrained", "o-"), ("scratch", "s--")):
        pts = sorted((r["fraction"], r["eval"]["vqa_accuracy"]) for r in rows if r["start"] == start and not r.get("lora"))
        if pts:
            ax.plot([100 * f for f, _ in pts], [100 * a for _, a in pts], style, label=start)
    ax.set_xscale("log")
    ax.set_xlabel("% of training questions")
    ax.set_ylabel("VQA accuracy (%)")
    ax.set_title("easy-VQA test: pretrained vs scratch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


HEADER = ("# Results\n\nEvery number below was produced by this repository's code on a 2-core CPU (fp32); the command "
          "under each table reproduces it. `mm make-results` reruns the easy-VQA experiments (`--collect`: only reads "
          "their outputs) and rewrites only their sections; the other sections (the benchmarks', each with its "
          "command) are kept.\n")


def write_results(rows: list[dict], path: str = "RESULTS.md") -> str:
    """
    Writes the sections these experiments measured into `path`: each replaces its namesake where the file has it (or
    is appended); every other section (the benchmarks' own, e.g. the real-image, visual-entailment and video ones, and
    these experiments' sections whose outputs are absent here) is kept as it is. A new file starts with `HEADER`.
    """
    from training.real_benchmark import update_results_section

    lines: list[str] = []
    pre_file = os.path.join(PRETRAINED, "pretrain_summary.json")
    if os.path.isfile(pre_file):
        pre = json.load(open(pre_file))
        zs = pre.get("zero_shot", {})
        lines += ["## Pretraining (default run)", "",
                  "| metric | value |", "|---|---|",
                  f"| zero-shot top-1, 24 colour x shape classes, 1,000 test images | {100 * zs.get('zero_shot_top1', float('nan')):.1f}% |",
                  f"| image->text recall@1 / @5 (class level) | {100 * zs.get('i2t_recall@1', float('nan')):.1f}% / {100 * zs.get('i2t_recall@5', float('nan')):.1f}% |",
                  f"| text->image recall@1 / @5 (class level) | {100 * zs.get('t2i_recall@1', float('nan')):.1f}% / {100 * zs.get('t2i_recall@5', float('nan')):.1f}% |",
                  f"| wall time (training + evaluation) | {pre.get('wall_time_s', float('nan')) / 60:.1f} min |",
                  f"| parameters (trained) | {pre['parameters'] / 1e6:.1f}M ({pre.get('trainable_parameters', 0) / 1e6:.1f}M) |",
                  "", "Final per-objective losses: " + ", ".join(f"{k} {v:.3f}" for k, v in pre.get("final_losses", {}).items()),
                  "", "Command: `mm pretrain --output_dir outputs/pretrain`", "",
                  "Recall is class level: easy-VQA has 24 distinct captions for 1,000 test images, so a hit is a top-K "
                  "item of the right colour and shape (see `evaluation/tasks.py:class_level_recall`).", ""]
    vqa = [r for r in rows if not r.get("lora")]
    if vqa:
        lines += ["## Data efficiency: VQA accuracy vs labelled data", "",
                  "Fine-tuning for the same number of steps from the default pretrained checkpoint or from the same "
                  "architecture without multimodal pretraining (both with the MiniLM text tower, kept fixed). "
                  "Accuracy on the 9,673 easy-VQA test questions.", "",
                  "| training questions | steps | pretrained | scratch | pretrained - scratch |", "|---|---|---|---|---|"]
        for fraction in FRACTIONS:
            p = next((r for r in vqa if r["start"] == "pretrained" and r["fraction"] == fraction), None)
            s = next((r for r in vqa if r["start"] == "scratch" and r["fraction"] == fraction), None)
            if p is None or s is None:
                continue
            pa, sa = p["eval"]["vqa_accuracy"], s["eval"]["vqa_accuracy"]
            lines.append(f"| {100 * fraction:g}% ({p['summary']['train_samples']:,}) | {STEPS[fraction]} | "
                         f"{100 * pa:.1f}% | {100 * sa:.1f}% | {100 * (pa - sa):+.1f} |")
        lines += ["", "![learning curve](docs/images/learning_curve.png)", "", "Commands:", "", "```bash"]
        lines += [_cmd("finetune", r["args"]) for r in vqa]
        lines += ["mm evaluate --model_name_or_path <output_dir> --task vqa", "```", ""]
    full = next((r for r in rows if r["name"] == "vqa_pretrained_1"), None)
    lora = next((r for r in rows if r.get("lora")), None)
    if full or lora:
        lines += ["## VQA: full fine-tuning vs LoRA (target 98%, LoRA within 1 point)", "",
                  "From the default pretrained checkpoint, 400 steps of batch 64 (0.66 epoch) over the 38,575 training "
                  "questions, MiniLM text tower fixed; accuracy on the 9,673 test questions.", "",
                  "| fine-tuning | trainable parameters | wall time (training) | VQA accuracy |", "|---|---|---|---|"]
        for label, r in (("full (vision tower, fusion, head)", full), ("LoRA r=8 on the default targets (q_proj, v_proj) + head", lora)):
            if r is None:
                continue
            s_ = r["summary"]
            lines.append(f"| {label} | {s_['trainable_parameters']:,} ({100 * s_['trainable_fraction']:.2f}%) | "
                         f"{s_['wall_time_seconds'] / 60:.1f} min | {100 * r['eval']['vqa_accuracy']:.2f}% |")
        lines += ["", "Commands:", "", "```bash"]
        lines += [_cmd("finetune", r["args"]) for r in (full, lora) if r is not None]
        lines += ["mm evaluate --model_name_or_path <output_dir> --task vqa", "```", ""]
    demo_file = "outputs/demo/demo_summary.json"
    if os.path.isfile(demo_file):
        d = json.load(open(demo_file))
        stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in d["stage_seconds"].items())
        lines += ["## The main job (`make demo`)", "",
                  "| metric | value |", "|---|---|",
                  f"| zero-shot top-1 (1,000 test images) | {100 * d['zero_shot_top1']:.1f}% |",
                  f"| VQA accuracy after 1 epoch of LoRA on q/k/v/out/fc1/fc2, merged ({d['vqa_questions']:,} questions) | "
                  f"{100 * d['vqa_accuracy']:.2f}% ({100 * d['lora_trainable_fraction']:.2f}% of parameters trained) |",
                  f"| captioning exact match / BLEU-4 (greedy, 200 test images) | "
                  f"{100 * (d['captioning_exact_match'] or 0):.1f}% / {100 * (d['captioning_bleu_4'] or 0):.1f} |",
                  f"| wall time | {d['total_seconds'] / 60:.1f} min (stages, min: {stages}) |", "",
                  "Command: `make demo` (`mm demo`; outputs in `outputs/demo/`).", ""]
    caption_file = "outputs/demo/eval_captioning.json"
    if os.path.isfile(caption_file):
        c = json.load(open(caption_file))["results"]
        lines += ["## Captioning", "",
                  "The caption decoder trained by `make demo` (2 epochs over the 4,000 training images, towers fixed), "
                  f"greedy decoding on all {c['num_images']:,} test images against their captions (\"a red circle\").", "",
                  "| exact match | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L | CIDEr-D |", "|---|---|---|---|---|---|---|",
                  f"| {100 * c['exact_match']:.1f}% | {100 * c['bleu_1']:.1f} | {100 * c['bleu_2']:.1f} | "
                  f"{100 * c['bleu_3']:.1f} | {100 * c['bleu_4']:.1f} | {100 * c['rouge_l']:.1f} | {c['cider']:.2f} |", "",
                  "easy-VQA captions are three words long, so they have no 4-grams: BLEU-4 is near zero even for an "
                  "exact match (the scorer's smoothing is all that is left), and exact match / BLEU-3 are the telling "
                  "numbers here.", "",
                  "Command: `mm evaluate --model_name_or_path outputs/demo/captioning --task "
                  "captioning`", ""]
    grounding_file = os.path.join(PRETRAINED, "grounding_eval.json")
    if os.path.isfile(grounding_file):
        g = json.load(open(grounding_file))
        lines += ["## Grounding: does the heatmap point at the named object?", "",
                  f"{g['num_composites']} composites of two easy-VQA test images side by side (64x128, different colour "
                  f"and shape), each half named once: {g['num_queries']} queries. A hit is the map's peak (or most of "
                  "its mass) on the named half; chance is 50%. Shown each half alone, the model prefers the named one "
                  f"{100 * g['half_recognition']:.0f}% of the time.", "",
                  "| method | peak on the named half | mass on the named half |", "|---|---|---|"]
        for name, m in g["methods"].items():
            lines.append(f"| {name} | {100 * m['peak_hit_rate']:.1f}% | {100 * m['mass_hit_rate']:.1f}% |")
        lines += ["", f"Default method for this hybrid model: `{g['default_method']}`.", "",
                  "Command: `mm grounding-eval --model_name_or_path outputs/pretrain`", ""]
    if not os.path.isfile(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(HEADER)
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")] + [len(lines)]
    for begin, end in zip(starts, starts[1:]):
        update_results_section(path, "\n".join(lines[begin:end]), lines[begin])
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", action="store_true", help="Do not run anything; read existing outputs.")
    parser.add_argument("--only", nargs="*", default=None, help="Run only these experiment names.")
    args = parser.parse_args(argv)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    if not args.collect:
        make_scratch_init()
    rows = []
    for run in vqa_runs():
        done = os.path.isfile(os.path.join(run["out"], "eval_vqa.json"))
        if args.collect or (args.only is not None and run["name"] not in args.only):
            if done:
                rows.append(run_vqa(run))
            continue
        started = time.time()
        rows.append(run_vqa(run))
        print(f"[make_results] {run['name']}: {100 * rows[-1]['eval']['vqa_accuracy']:.1f}% "
              f"({time.time() - started:.0f}s)", flush=True)
    os.makedirs("docs/images", exist_ok=True)
    if rows:
        plot_learning_curve(rows, "docs/images/learning_curve.png")
    print(f"Wrote {write_results(rows)}")


if __name__ == "__main__":
    main()
