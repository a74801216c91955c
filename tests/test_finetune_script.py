"""`mm finetune` (run_scripts/finetune.py) end to end, in-process, on a tiny checkpoint and a few easy-VQA rows (a few seconds each)."""

import json
import os

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoModelForVisualQuestionAnswering

from modeling_mm import (
    MMConfig,
    MMForConditionalGeneration,
    MMForImageTextClassification,
    MMForImageTextRetrieval,
    MMForPreTraining,
    MMForVisualQuestionAnswering,
)
from processing import MMProcessor
from processing.collators import DataCollatorForVQA
from processing.data import build_default_processor, easy_vqa_answers, load_easy_vqa
from run_scripts.finetune import SUMMARY_FILE, DataArguments, load_task_data, main


SUMMARY_FIELDS = {
    "task", "model", "fusion", "dataset", "train_fraction", "train_samples", "eval_samples", "lora", "freeze",
    "trainable_parameters", "total_parameters", "trainable_fraction", "global_step", "train_loss",
    "wall_time_seconds", "eval_metrics", "output_dir", "merged_dir", "args",
}
# A handful of steps on 32 rows; no intermediate evaluation or checkpoints (the final evaluation always runs).
FAST = [
    "--max_train_samples", "32", "--max_eval_samples", "16", "--max_steps", "4",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--logging_steps", "1",
    "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true",
]


def _tiny_checkpoint(path, objectives: list[str] | None = None) -> str:
    """A tiny hybrid MMForPreTraining checkpoint with a processor: the real MiniLM tokenizer, hence the BERT
    vocabulary of 30,522 tokens at hidden size 32."""
    torch.manual_seed(0)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37)
    text = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=64)
    config = MMConfig(fusion="hybrid", vision_config=vision, text_config=text, projection_dim=16, num_fusion_layers=1,
                      num_decoder_layers=1, objectives=objectives)
    MMForPreTraining(config).save_pretrained(path)
    build_default_processor(image_size=32).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """All hybrid objectives, so the captioning decoder is part of the checkpoint."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("pretrained"))


def _summary(output_dir) -> dict:
    with open(os.path.join(output_dir, SUMMARY_FILE), encoding="utf-8") as f:
        summary = json.load(f)
    assert SUMMARY_FIELDS <= set(summary), SUMMARY_FIELDS - set(summary)
    assert os.path.isfile(os.path.join(output_dir, "training_curves.png"))
    assert os.path.isfile(os.path.join(output_dir, "trainer_state.json"))
    return summary


def _vqa_batch(processor: MMProcessor) -> dict[str, torch.Tensor]:
    rows = [load_easy_vqa("test")[i] for i in range(4)]
    label2id = {answer: i for i, answer in enumerate(easy_vqa_answers())}
    batch = DataCollatorForVQA(processor, label2id)(rows)
    batch.pop("labels")
    return batch


def test_vqa_full_finetuning(checkpoint, tmp_path):
    # remove_unused_columns=True would starve the collators: refused with a message, never overridden silently.
    with pytest.raises(SystemExit, match="--remove_unused_columns true cannot work here"):
        main(["--task", "vqa", "--model_name_or_path", checkpoint, "--output_dir", str(tmp_path),
              "--remove_unused_columns", "true", *FAST])
    with pytest.raises(SystemExit, match=r"--label_names \['answer'\] cannot work here.*\['labels'\]"):
        main(["--task", "vqa", "--model_name_or_path", checkpoint, "--output_dir", str(tmp_path),
              "--label_names", "answer", *FAST])
    returned = main(["--task", "vqa", "--model_name_or_path", checkpoint, "--output_dir", str(tmp_path), *FAST])
    saved = _summary(tmp_path)
    assert returned["trainable_parameters"] == saved["trainable_parameters"]
    assert saved["task"] == "vqa" and saved["global_step"] == 4 and saved["train_samples"] == 32
    assert saved["trainable_fraction"] == 1.0 and saved["lora"] is None
    assert {"eval_loss", "eval_vqa_accuracy", "eval_exact_match"} <= set(saved["eval_metrics"])

    model = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path).eval()
    assert isinstance(model, MMForVisualQuestionAnswering)
    assert [model.config.id2label[i] for i in range(13)] == easy_vqa_answers()
    processor = MMProcessor.from_pretrained(tmp_path)
    with torch.no_grad():
        logits = model(**_vqa_batch(processor)).logits
    assert logits.shape == (4, 13)


def test_vqa_lora_saves_adapter_and_merged_model(checkpoint, tmp_path):
    from peft import PeftModel

    main(["--task", "vqa", "--model_name_or_path", checkpoint, "--output_dir", str(tmp_path), "--lora",
          "--merge_lora", "--freeze_vision", "frozen", *FAST])
    summary = _summary(tmp_path)
    assert summary["lora"] == {"r": 8, "alpha": 16, "dropout": 0.05}
    assert summary["freeze"] == {"vision": "frozen", "text": "lora", "fusion": "lora"}  # a VQA head has no decoder
    assert summary["new_parts"] == []  # the classifier is the head, not a part
    assert 0 < summary["trainable_fraction"] < 0.1
    assert os.path.isfile(tmp_path / "adapter_config.json") and not os.path.isfile(tmp_path / "model.safetensors")

    processor = MMProcessor.from_pretrained(tmp_path)
    batch = _vqa_batch(processor)
    base = MMForVisualQuestionAnswering.from_pretrained(checkpoint, num_labels=13)
    adapted = PeftModel.from_pretrained(base, tmp_path).eval()
    merged = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "merged").eval()
    assert summary["merged_dir"] == str(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, adapted(**batch).logits, atol=1e-4, rtol=0)
    assert MMProcessor.from_pretrained(tmp_path / "merged").image_processor.size == {"height": 32, "width": 32}
    # The adapter folder alone (its base is the pretraining checkpoint, without an answer vocabulary) is enough for
    # evaluate.py: the head config saved next to the adapter rebuilds the 13-answer classifier.
    assert json.load(open(tmp_path / "config.json"))["architectures"] == ["MMForVisualQuestionAnswering"]
    from evaluation.tasks import load_for_task

    reloaded, _ = load_for_task(str(tmp_path), "vqa")
    assert reloaded.config.num_labels == 13 and reloaded.config.id2label == merged.config.id2label
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, adapted(**batch).logits, atol=1e-4, rtol=0)


def test_captioning_with_generated_caption_metrics(checkpoint, tmp_path):
    main(["--task", "captioning", "--model_name_or_path", checkpoint, "--output_dir", str(tmp_path),
          "--max_length", "12", *FAST])
    summary = _summary(tmp_path)
    metrics = summary["eval_metrics"]
    assert {"eval_loss", "eval_exact_match", "eval_bleu_4", "eval_cider", "eval_examples"} <= set(metrics)
    assert 0.0 <= metrics["eval_bleu_4"] <= 1.0 and 0.0 <= metrics["eval_exact_match"] <= 1.0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert isinstance(model, MMForConditionalGeneration)
    ids = model.generate(pixel_values=torch.randn(2, 3, 32, 32), max_new_tokens=4)
    assert ids.shape == (2, 5)


def test_lora_trains_a_new_decoder_in_full(tmp_path):
    """Pretrained without the LM objective, the checkpoint has no decoder: under --lora the new decoder trains in
    full (saved with the adapter), while the towers get adapters."""
    checkpoint = _tiny_checkpoint(tmp_path / "pretrained", objectives=["itc", "itm", "mlm"])
    main(["--task", "captioning", "--model_name_or_path", checkpoint, "--output_dir", str(tmp_path / "out"), "--lora",
          "--max_length", "12", *FAST])
    summary = _summary(tmp_path / "out")
    assert summary["new_parts"] == ["decoder"]
    # The captioning head has no text tower or fusion layers: only its own parts get a mode.
    assert summary["freeze"] == {"vision": "lora", "decoder": "full"}
    from peft import PeftConfig

    saved = PeftConfig.from_pretrained(tmp_path / "out").modules_to_save
    assert "text_decoder" in set(saved)


def test_retrieval_reports_recall(checkpoint, tmp_path):
    main(["--task", "retrieval", "--model_name_or_path", checkpoint, "--output_dir", str(tmp_path), *FAST])
    metrics = _summary(tmp_path)["eval_metrics"]
    assert {"eval_loss", "eval_i2t_recall@1", "eval_t2i_recall@5", "eval_mean_recall"} <= set(metrics)
    assert isinstance(MMForImageTextRetrieval.from_pretrained(tmp_path), MMForImageTextRetrieval)


def test_multi_label_classification_on_an_image_folder(checkpoint, tmp_path):
    """A user folder (train/ and test/ with metadata.jsonl) with a list of labels per image."""
    colors = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    for split, count in (("train", 12), ("test", 6)):
        folder = tmp_path / "data" / split
        folder.mkdir(parents=True)
        with open(folder / "metadata.jsonl", "w") as f:
            for i in range(count):
                names = sorted({list(colors)[i % 3], list(colors)[(i // 3) % 3]})
                image = Image.new("RGB", (40, 40), colors[names[0]])
                image.paste(colors[names[-1]], (0, 0, 20, 40))
                image.save(folder / f"{i}.png")
                f.write(json.dumps({"file_name": f"{i}.png", "text": "which colours?", "label": names}) + "\n")
    main(["--task", "classification", "--model_name_or_path", checkpoint, "--dataset", str(tmp_path / "data"),
          "--multi_label", "--lora", "--output_dir", str(tmp_path / "out"), *FAST])
    summary = _summary(tmp_path / "out")
    assert summary["train_samples"] == 12 and summary["eval_samples"] == 6
    assert {"eval_accuracy", "eval_macro_f1", "eval_micro_f1"} <= set(summary["eval_metrics"])
    from peft import PeftModel

    # Three labels, read from the folder; the adapter's classifier only fits a head of that size.
    base = MMForImageTextClassification.from_pretrained(checkpoint, num_labels=3)
    model = PeftModel.from_pretrained(base, tmp_path / "out")
    assert set(model.peft_config["default"].modules_to_save) == {"classifier"}


def test_classification_from_towers(tmp_path):
    """No checkpoint: a (tiny) BERT text tower with its tokenizer, a fresh built-in ViT, late fusion; the processor is
    built from the tower's tokenizer at `--image_size`. Default classification data: easy-VQA shapes."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from processing.data import default_tokenizer_path

    torch.manual_seed(0)
    text_path = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
              add_pooling_layer=False).save_pretrained(text_path)
    BertTokenizerFast.from_pretrained(default_tokenizer_path()).save_pretrained(text_path)
    main(["--task", "classification", "--text_model_name_or_path", str(text_path), "--fusion", "late",
          "--image_size", "32", "--patch_size", "8", "--projection_dim", "16", "--output_dir", str(tmp_path / "out"),
          *FAST])
    summary = _summary(tmp_path / "out")
    assert summary["model"] == {"vision": None, "text": str(text_path)} and summary["fusion"] == "late"
    model = MMForImageTextClassification.from_pretrained(tmp_path / "out")
    assert model.config.text_config.model_type == "bert" and model.config.vision_config.image_size == 32
    assert model.config.id2label == {0: "circle", 1: "rectangle", 2: "triangle"}
    assert model.config.problem_type == "single_label_classification"
    assert MMProcessor.from_pretrained(tmp_path / "out").image_processor.size == {"height": 32, "width": 32}


def test_train_fraction_subsamples_questions_with_a_fixed_seed():
    args = DataArguments(train_fraction=0.01)
    first, test, labels = load_task_data("vqa", args)
    again, _, _ = load_task_data("vqa", args)
    other, _, _ = load_task_data("vqa", DataArguments(train_fraction=0.01, subsample_seed=1))
    assert len(first) == 385  # floor(0.01 * 38,575 questions)
    assert first["question"] == again["question"] and first["question"] != other["question"]
    assert len(test) == 9673 and labels == easy_vqa_answers()
    capped, _, _ = load_task_data("vqa", DataArguments(train_fraction=0.1, max_train_samples=50))
    assert len(capped) == 50
    images, _, shapes = load_task_data("classification", DataArguments(max_train_samples=8))
    assert shapes == ["circle", "rectangle", "triangle"]
    assert set(images[0]) >= {"image", "text", "label"} and images[0]["text"] == "what shape is this?"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--merge_lora"], "--merge_lora needs --lora"),
        (["--freeze_vision", "lora"], "needs --lora"),
        (["--train_fraction", "0"], "train_fraction must be in"),
    ],
)
def test_bad_arguments_are_clear_errors(argv, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        main(["--task", "vqa", "--output_dir", str(tmp_path), *argv])


def _csv_source(folder, rows: list[dict]) -> str:
    """A CSV of image paths (relative to the file) with the other columns, as users' own data comes."""
    import csv

    from PIL import Image

    os.makedirs(folder / "images", exist_ok=True)
    for i, row in enumerate(rows):
        Image.new("RGB", (40, 40), row.pop("_color")).save(folder / "images" / f"{i}.png")
        row["file"] = f"images/{i}.png"
    path = folder / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_vqa_and_classification_from_a_csv_train_file(checkpoint, tmp_path):
    """The shared data flags reach fine-tuning: a CSV with its own column names, mapped by --image_column and
    friends; the answer / label vocabulary comes from the rows; a wrong column name is named."""
    colors = {"red": (220, 20, 20), "blue": (20, 20, 220)}
    rows = [{"_color": colors[c], "q": "what color is it?", "ans": c, "note": f"a {c} square", "kind": c}
            for c in ["red", "blue"] * 10]
    train_file = _csv_source(tmp_path / "data", rows)
    common = ["--model_name_or_path", checkpoint, "--train_file", train_file, "--image_column", "file", *FAST]
    vqa = main(["--task", "vqa", "--question_column", "q", "--answer_column", "ans",
                "--output_dir", str(tmp_path / "vqa"), *common])
    assert vqa["train_samples"] == 18 and vqa["eval_samples"] == 2  # 10% held out without a validation file
    assert vqa["global_step"] == 4 and "eval_vqa_accuracy" in vqa["eval_metrics"]
    assert AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "vqa").config.id2label == {0: "blue", 1: "red"}
    classification = main(["--task", "classification", "--caption_column", "note", "--label_column", "kind",
                           "--output_dir", str(tmp_path / "cls"), *common])
    assert "eval_accuracy" in classification["eval_metrics"]
    with pytest.raises(ValueError, match=r"question.*'nope'.*(file|q)"):
        main(["--task", "vqa", "--question_column", "nope", "--answer_column", "ans",
              "--output_dir", str(tmp_path / "bad"), *common])
    with pytest.raises(ValueError, match="Fine-tuning reads map-style data"):
        main(["--task", "captioning", "--model_name_or_path", checkpoint, "--train_shards", "x-{0..1}.tar",
              "--output_dir", str(tmp_path / "shards"), *FAST])
    # `mm evaluate` takes the same flags (here the whole train file: no validation file).
    from run_scripts.cli import run_command

    evaluated = run_command("evaluate", [
        "--model_name_or_path", str(tmp_path / "vqa"), "--task", "vqa", "--train_file", train_file,
        "--image_column", "file", "--question_column", "q", "--answer_column", "ans",
        "--output_file", str(tmp_path / "eval_vqa.json"),
    ])
    assert evaluated["results"]["num_questions"] == 20 and evaluated["dataset"] == train_file
    assert 0.0 <= evaluated["results"]["vqa_accuracy"] <= 1.0
