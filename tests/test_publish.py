"""Hub publication (`mm publish`, run_scripts/publish.py): the published folder loads with the Auto classes and runs every
`pipeline()` task with `trust_remote_code=True` in a process that cannot import this package, with outputs equal to
the original model's; the card validates and carries the eval results; dry run, mocked push, LoRA both ways.

One module-scoped fixture trains and publishes the tiny models once; one subprocess runs every remote check and
writes a JSON report that the tests read.
"""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap

import PIL.Image
import PIL.ImageDraw
import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel

from modeling_mm import (
    MMConfig,
    MMForConditionalGeneration,
    MMForImageTextRetrieval,
    MMForPreTraining,
    MMForVisualQuestionAnswering,
    MMModel,
)
from processing import build_default_processor
from publishing import check_model_card, eval_results_from_files, tower_base_models
from publishing import hub
from run_scripts import publish
from training.lora import apply_lora


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [("red", "circle"), ("blue", "triangle"), ("green", "rectangle"), ("yellow", "circle")]
TEXTS = ["a red circle", "a blue triangle", "a green rectangle"]
LABELS = ["red circle", "blue triangle", "green rectangle"]
ANSWERS = ["red", "blue", "green", "yellow"]
QUESTION = "what color is the shape?"
PROMPT = "a red"
MAX_NEW_TOKENS = 6
ATOL = 1e-6
CUSTOM_CODE_ERROR = "contains custom code which must be executed"


def _draw(color: str, shape: str) -> PIL.Image.Image:
    image = PIL.Image.new("RGB", (64, 64), "white")
    draw = PIL.ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((16, 16, 48, 48), fill=color)
    elif shape == "triangle":
        draw.polygon([(32, 12), (52, 50), (12, 50)], fill=color)
    else:
        draw.rectangle((12, 20, 52, 44), fill=color)
    return image


def _config(fusion: str) -> MMConfig:
    # Tiny, but with the real MiniLM WordPiece vocabulary so the published tokenizer fits the embeddings.
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37)
    text = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    objectives = ["itc", "itm", "mlm", "lm"] if fusion == "hybrid" else ["itc", "lm"]
    return MMConfig(fusion=fusion, vision_config=vision, text_config=text, projection_dim=16, num_fusion_layers=1,
                    num_decoder_layers=1, objectives=objectives)


def _train(model: torch.nn.Module, batch: dict, steps: int = 5) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _pretraining_batch(processor, images) -> dict:
    batch = dict(processor(images=images, text=[f"a {c} {s}" for c, s in SHAPES]))
    masked = batch["input_ids"].clone()
    labels = torch.full_like(masked, -100)
    labels[:, 2], masked[:, 2] = masked[:, 2], processor.tokenizer.mask_token_id  # mask the shape word
    return {**batch, "mlm_input_ids": masked, "mlm_labels": labels, "image_ids": torch.arange(len(images))}


def _publish(*argv: str) -> dict:
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        result = publish.main(list(argv))
    result["stdout"] = stdout.getvalue()
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Expected outputs, computed here with the original classes
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _expected_embedding_tasks(ckpt: str, processor, images) -> dict:
    mm = MMModel.from_pretrained(ckpt).eval()
    retrieval = MMForImageTextRetrieval.from_pretrained(ckpt).eval()
    captioner = MMForConditionalGeneration.from_pretrained(ckpt).eval()
    pixel_values = processor(images=images[:1])["pixel_values"]
    all_pixels = processor(images=images)["pixel_values"]
    expected = {}

    # Zero-shot: softmax over the scaled ITC similarities with "a {label}".
    labels = processor(text=[f"a {label}" for label in LABELS])
    logits = mm.clamped_logit_scale() * mm.embed_image(pixel_values) @ mm.embed_text(**labels).t()
    expected["zero_shot"] = dict(zip(LABELS, logits[0].softmax(-1).tolist()))

    # Retrieval, image query: rank_texts (ITC, then ITM on the top 16 for hybrid).
    texts = processor(text=TEXTS)
    if mm.config.fusion == "hybrid":
        expected["rank_texts"] = retrieval.rank_texts(pixel_values, texts["input_ids"], texts["attention_mask"])[0]
    else:
        expected["rank_texts"] = (mm.embed_image(pixel_values) @ mm.embed_text(**texts).t())[0]
    # Text query: every image is within the top 16, so for hybrid each gets 1 + p(match) of its pair.
    query = processor(text=TEXTS[:1])
    n = len(images)
    if mm.config.fusion == "hybrid":
        expected["rank_images"] = 1 + retrieval.itm_scores(
            query["input_ids"].expand(n, -1), all_pixels, query["attention_mask"].expand(n, -1)
        )
    else:
        expected["rank_images"] = (mm.embed_image(all_pixels) @ mm.embed_text(**query).t())[:, 0]

    expected["image_features"] = mm.embed_image(pixel_values)
    expected["text_features"] = mm.embed_text(**query)

    # Captioning: greedy decoding from [CLS] (empty prompt) and from [CLS] + prompt tokens (no closing [SEP]).
    cls = processor.tokenizer.cls_token_id
    prompt_ids = [cls] + processor.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    for name, ids in (("caption_empty", [cls]), ("caption_prompt", prompt_ids)):
        generated = captioner.generate(pixel_values=pixel_values, input_ids=torch.tensor([ids]),
                                       max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        expected[name] = processor.batch_decode(generated, skip_special_tokens=True)[0].strip()

    # AutoModel on a paired batch.
    inputs = processor(images=images[:2], text=TEXTS[:2])
    out = mm(**inputs)
    expected["auto_inputs"] = dict(inputs)
    expected["auto_outputs"] = {k: getattr(out, k) for k in ("text_embeds", "image_embeds", "logits_per_image",
                                                             "pooler_output") if getattr(out, k) is not None}
    return expected


@torch.no_grad()
def _expected_vqa(model, processor, images) -> dict:
    logits = model(**processor(images=images[:1], text=[QUESTION])).logits[0]
    scores, ids = logits.softmax(-1).topk(3)
    return {"vqa": [{"answer": model.config.id2label[i], "score": s} for s, i in zip(scores.tolist(), ids.tolist())],
            "logits": logits}


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures: train, publish, run the remote checks once
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("publish")
    images_dir = root / "images"
    images_dir.mkdir()
    image_files = []
    for color, shape in SHAPES:
        path = images_dir / f"{color}_{shape}.png"
        _draw(color, shape).save(path)
        image_files.append(str(path))
    images = [PIL.Image.open(path).convert("RGB") for path in image_files]
    processor = build_default_processor(image_size=32)
    ctx = {"root": root, "image_files": image_files, "folders": {}, "expected": {}, "results": {}}

    for fusion in ("hybrid", "late"):
        ckpt = str(root / f"ckpt_{fusion}")
        model = MMForPreTraining(_config(fusion))
        _train(model, _pretraining_batch(processor, images))
        model.save_pretrained(ckpt)
        processor.save_pretrained(ckpt)
        eval_file = root / f"eval_{fusion}.json"
        eval_file.write_text(json.dumps({
            "model": ckpt, "task": "zero_shot", "dataset": "easy_vqa", "split": "test",
            "results": {"zero_shot_top1": 0.375, "i2t_recall@1": 0.5, "num_images": 8, "eval_seconds": 0.2},
        }))
        retrieval_file = root / f"eval_{fusion}_retrieval.json"
        retrieval_file.write_text(json.dumps({
            "model": ckpt, "task": "retrieval", "dataset": "easy_vqa", "split": "test",
            "results": {"t2i_recall@1": 0.25, "num_images": 8},
        }))
        out = str(root / f"published_{fusion}")
        extra = ["--max_shard_size", "2MB"] if fusion == "hybrid" else []  # ~8 MB of weights: several shards
        ctx["results"][fusion] = _publish("--checkpoint", ckpt, "--output_dir", out, "--eval_results", str(eval_file),
                                          str(retrieval_file), "--max_new_tokens", str(MAX_NEW_TOKENS), *extra)
        ctx["folders"][fusion] = out
        ctx["expected"][fusion] = _expected_embedding_tasks(ckpt, processor, images)
        ctx[f"ckpt_{fusion}"] = ckpt

    # VQA head fine-tuned from the late checkpoint, then a LoRA adapter on it (B matrices randomised so the adapter
    # changes the outputs), published merged and as an adapter repo.
    vqa = MMForVisualQuestionAnswering.from_pretrained(
        ctx["ckpt_late"], num_labels=len(ANSWERS), id2label=dict(enumerate(ANSWERS)),
        label2id={a: i for i, a in enumerate(ANSWERS)},
    )
    batch = dict(processor(images=images, text=[QUESTION] * len(images)))
    _train(vqa, {**batch, "labels": torch.arange(len(images))})
    vqa_ckpt = str(root / "ckpt_vqa")
    vqa.save_pretrained(vqa_ckpt)
    processor.save_pretrained(vqa_ckpt)
    peft_model = apply_lora(MMForVisualQuestionAnswering.from_pretrained(vqa_ckpt), r=4, dropout=0.0).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    adapter_dir = str(root / "adapter")
    peft_model.save_pretrained(adapter_dir)
    processor.save_pretrained(adapter_dir)
    ctx["peft_model"], ctx["adapter_dir"], ctx["vqa_ckpt"] = peft_model, adapter_dir, vqa_ckpt
    ctx["folders"]["merged"] = str(root / "published_merged")
    ctx["results"]["merged"] = _publish("--adapter_path", adapter_dir, "--merge_adapter", "--output_dir",
                                        ctx["folders"]["merged"])
    merged = PeftModel.from_pretrained(MMForVisualQuestionAnswering.from_pretrained(vqa_ckpt), adapter_dir)
    ctx["expected"]["merged"] = _expected_vqa(merged.merge_and_unload().eval(), processor, images)
    ctx["expected"]["unmerged"] = _expected_vqa(peft_model, processor, images)
    ctx["folders"]["adapter"] = str(root / "published_adapter")
    ctx["results"]["adapter"] = _publish("--adapter_path", adapter_dir, "--base_model", "tiny-org/mm-vqa",
                                         "--output_dir", ctx["folders"]["adapter"])
    ctx["processor"], ctx["images"] = processor, images
    return ctx


REMOTE_SCRIPT = r"""
import json, re, sys
sys.path = [p for p in sys.path if p not in ("", REPO_ROOT)]
# An editable install (`pip install -e .`) maps the package through a meta-path finder: drop it too.
sys.meta_path = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]
report = {"importable": {}}
for name in ("modeling_mm", "processing", "publishing", "run_scripts", "training", "evaluation"):
    try:
        __import__(name)
        report["importable"][name] = True
    except ImportError:
        report["importable"][name] = False

import PIL.Image, torch
from transformers import AutoConfig, AutoModel, AutoModelForVisualQuestionAnswering, AutoProcessor, pipeline

images = [PIL.Image.open(path).convert("RGB") for path in IMAGE_FILES]


def check(name, fn):
    try:
        report[name] = {"value": fn()}
    except Exception as err:  # recorded, asserted on by the test that owns the check
        report[name] = {"error": f"{type(err).__name__}: {err}"}


def expect_error(fn):
    try:
        fn()
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


def auto(folder, name):
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(images=images[:2], text=TEXTS[:2])
    with torch.no_grad():
        out = model(**inputs)
    outputs = {k: getattr(out, k) for k in ("text_embeds", "image_embeds", "logits_per_image", "pooler_output")
               if getattr(out, k) is not None}
    torch.save({"inputs": dict(inputs), "outputs": outputs}, f"{OUT}/{name}_auto.pt")
    return [type(config).__module__, type(model).__module__, type(processor).__module__,
            type(processor.image_processor).__module__]


for name in ("hybrid", "late"):
    folder = FOLDERS[name]
    check(f"{name}/auto", lambda: auto(folder, name))
    check(f"{name}/zero_shot", lambda: pipeline("zero-shot-image-classification", model=folder,
          trust_remote_code=True)(images[0], candidate_labels=LABELS, hypothesis_template="a {}"))
    def retrieval():
        retriever = pipeline("image-text-retrieval", model=folder, trust_remote_code=True)
        return {"module": type(retriever).__module__, "texts": retriever(images[0], candidate_texts=TEXTS),
                "images": retriever(TEXTS[0], candidate_images=IMAGE_FILES)}
    check(f"{name}/retrieval", retrieval)
    check(f"{name}/image_features", lambda: pipeline("image-feature-extraction", model=folder,
          trust_remote_code=True)(images[0]))
    check(f"{name}/text_features", lambda: pipeline("feature-extraction", model=folder,
          trust_remote_code=True)(TEXTS[0]))
    check(f"{name}/caption_empty", lambda: pipeline("image-text-to-text", model=folder, trust_remote_code=True)(
        images=images[0], text=""))
    check(f"{name}/caption_prompt", lambda: pipeline("image-text-to-text", model=folder, trust_remote_code=True)(
        images=images[0], text=PROMPT))
    check(f"{name}/untrusted", lambda: expect_error(lambda: AutoModel.from_pretrained(folder, trust_remote_code=False)))

merged = FOLDERS["merged"]
def vqa_model():
    model = AutoModelForVisualQuestionAnswering.from_pretrained(merged, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(merged, trust_remote_code=True)
    with torch.no_grad():
        logits = model(**processor(images=images[:1], text=[QUESTION])).logits[0]
    torch.save(logits, f"{OUT}/merged_logits.pt")
    return type(model).__name__
check("merged/auto", vqa_model)
check("merged/vqa", lambda: pipeline("visual-question-answering", model=merged, trust_remote_code=True)(
    images[0], question=QUESTION, top_k=3))
check("merged/untrusted", lambda: expect_error(lambda: pipeline("visual-question-answering", model=merged,
      trust_remote_code=False)))

# The card's usage snippets, run as pasted (the dry-run cards load from the local folder).
def run_card(folder):
    with open(f"{folder}/README.md", encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    namespace = {}
    for block in blocks:
        exec(compile(block, f"{folder}/README.md", "exec"), namespace)
    return len(blocks)
check("hybrid/card_snippets", lambda: run_card(FOLDERS["hybrid"]))
check("merged/card_snippets", lambda: run_card(merged))

with open(f"{OUT}/report.json", "w") as f:
    json.dump(report, f, indent=1, default=str)
"""


@pytest.fixture(scope="module")
def remote(published):
    out = published["root"] / "remote"
    out.mkdir()
    constants = {
        "REPO_ROOT": REPO_ROOT, "IMAGE_FILES": published["image_files"], "FOLDERS": published["folders"],
        "OUT": str(out), "TEXTS": TEXTS, "LABELS": LABELS, "PROMPT": PROMPT, "QUESTION": QUESTION,
    }
    header = "".join(f"{name} = {value!r}\n" for name, value in constants.items())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(published["root"] / "modules"), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [sys.executable, "-c", header + textwrap.dedent(REMOTE_SCRIPT)], cwd=str(out), env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    with open(out / "report.json") as f:
        report = json.load(f)
    report["_out"] = out
    return report


def _value(remote: dict, name: str):
    entry = remote[name]
    assert "error" not in entry, f"{name}: {entry.get('error')}"
    return entry["value"]


# ----------------------------------------------------------------------------------------------------------------------
# The published folder
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hybrid", "late", "merged"])
def test_published_folder_layout(published, name):
    folder = published["folders"][name]
    files = dict(published["results"][name]["files"])
    config = json.loads(open(os.path.join(folder, "config.json")).read())
    assert set(config["auto_map"]) >= {
        "AutoConfig", "AutoModel", "AutoModelForPreTraining", "AutoModelForVisualQuestionAnswering",
        "AutoModelForImageTextToText", "AutoModelForZeroShotImageClassification",
        "AutoModelForSequenceClassification", "AutoProcessor", "AutoImageProcessor",
    }
    for code in ("configuration_mm.py", "modeling_mm.py", "modeling_mm_heads.py", "modeling_mm_pretraining.py",
                 "losses.py", "processing_mm.py",
                 "image_processing_mm.py", "pipelines_mm.py"):
        assert code in files, code
    for other in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert other in files, other
    assert not [f for f in files if f.endswith(hub.PICKLE_SUFFIXES)]
    weights = [f for f in files if f.endswith(".safetensors")]
    if name == "hybrid":
        assert len(weights) > 1 and "model.safetensors.index.json" in files  # --max_shard_size 2MB
    else:
        assert weights == ["model.safetensors"]
    if name == "merged":
        assert "adapter_config.json" not in files and "generation_config.json" not in files
        assert config["architectures"] == ["MMForVisualQuestionAnswering"]
        assert list(config["custom_pipelines"]) == ["visual-question-answering"]
        assert published["results"][name]["tasks"] == ["visual-question-answering"]
    else:
        generation = json.loads(open(os.path.join(folder, "generation_config.json")).read())
        assert (generation["bos_token_id"], generation["eos_token_id"], generation["max_new_tokens"]) == (
            101, 102, MAX_NEW_TOKENS)
        assert config["custom_pipelines"] == {"image-text-retrieval": hub.CUSTOM_PIPELINES["image-text-retrieval"]}
        assert published["results"][name]["tasks"] == [
            "zero-shot-image-classification", "image-text-retrieval", "image-text-to-text",
            "image-feature-extraction", "feature-extraction",
        ]


def test_dry_run_lists_files_and_sizes(published):
    stdout = published["results"]["late"]["stdout"]
    assert "Dry run: would upload" in stdout and "--push" in stdout
    for name, _ in published["results"]["late"]["files"]:
        assert re.search(rf"^\s+{re.escape(name)}\s+[\d.]+ (B|KB|MB)$", stdout, flags=re.M), name
    assert re.search(r"^\s+total\s+[\d.]+ MB$", stdout, flags=re.M)
    assert published["results"]["late"]["commit"] is None


def test_model_card_validates_and_carries_eval_results(published):
    card = ModelCard.load(os.path.join(published["folders"]["hybrid"], "README.md"))
    data = check_model_card(card)
    assert data.library_name == "transformers" and data.license == "apache-2.0"
    assert data.pipeline_tag == "zero-shot-image-classification"
    results = {(r.task_type, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {
        ("zero-shot-image-classification", "zero_shot_top1"): 0.375,
        ("zero-shot-image-classification", "i2t_recall@1"): 0.5,
        ("image-text-retrieval", "t2i_recall@1"): 0.25,
    }
    assert all(r.dataset_type == "easy-vqa" and r.dataset_split == "test" for r in data.eval_results)
    text = card.text
    assert "| Zero-shot image classification | easy-VQA | test | zero_shot_top1 | 0.375 |" in text
    assert "num_images" not in text  # counts are not results
    for section in ("## Training data", "easy-VQA", "## Limitations", "code_revision", "revision="):
        assert section in text, section
    for task in ("zero-shot-image-classification", "image-text-retrieval", "image-text-to-text",
                 "image-feature-extraction", "feature-extraction"):
        assert f'pipeline("{task}"' in text, task
    merged = check_model_card(ModelCard.load(os.path.join(published["folders"]["merged"], "README.md")))
    assert merged.pipeline_tag == "visual-question-answering" and not merged.eval_results


def test_card_base_model_comes_from_the_towers_original_ids(tmp_path):
    tower = tmp_path / "minilm"
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps({"_name_or_path": "nreimers/MiniLM-L6-H384-uncased"}))
    config = MMConfig(fusion="late", text_config={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                                  "num_attention_heads": 4, "intermediate_size": 37})
    config.text_config._name_or_path = str(tower)
    config.vision_config._name_or_path = "google/vit-base-patch16-224"
    assert tower_base_models(config) == ["google/vit-base-patch16-224", "nreimers/MiniLM-L6-H384-uncased"]
    config.vision_config._name_or_path = str(tmp_path / "my_local_vit")  # local and unknown: not a base model
    assert tower_base_models(config) == ["nreimers/MiniLM-L6-H384-uncased"]


def test_check_model_card_rejects_bad_metadata():
    good = "---\nlicense: mit\nlibrary_name: transformers\npipeline_tag: image-text-to-text\n---\n# x\n"
    check_model_card(good)
    with pytest.raises(ValueError, match="lacks \\['pipeline_tag'\\]"):
        check_model_card(good.replace("pipeline_tag: image-text-to-text\n", ""))
    with pytest.raises(ValueError, match="base_model entry '/home/me/ckpt' is not a Hub repo id"):
        check_model_card(good.replace("license: mit\n", "license: mit\nbase_model: /home/me/ckpt\n"))
    with pytest.raises(ValueError, match="no YAML metadata"):
        check_model_card("# no metadata\n")


def test_eval_results_skip_counts_and_reject_unknown_tasks(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"model": "m", "task": "vqa", "dataset": "easy_vqa", "split": "test",
                                "results": {"vqa_accuracy": 0.9, "num_questions": 10, "eval_seconds": 1.0}}))
    results, rows = eval_results_from_files([str(path)])
    assert [(r.task_type, r.metric_type, r.metric_value) for r in results] == [
        ("visual-question-answering", "vqa_accuracy", 0.9)]
    assert rows[0]["dataset"] == "easy-VQA"
    path.write_text(json.dumps({"model": "m", "task": "dance", "dataset": "d", "split": "s", "results": {"a": 1}}))
    with pytest.raises(ValueError, match="unknown task 'dance'"):
        eval_results_from_files([str(path)])


# ----------------------------------------------------------------------------------------------------------------------
# Remote loading, in a process without this package
# ----------------------------------------------------------------------------------------------------------------------


def test_remote_process_cannot_import_the_package(remote):
    assert remote["importable"] == {"modeling_mm": False, "processing": False, "publishing": False,
                                    "run_scripts": False, "training": False, "evaluation": False}


@pytest.mark.parametrize("name", ["hybrid", "late"])
def test_auto_classes_load_the_copied_code_with_equal_outputs(published, remote, name):
    modules = _value(remote, f"{name}/auto")
    assert all(module.startswith("transformers_modules.") for module in modules), modules
    saved = torch.load(remote["_out"] / f"{name}_auto.pt", weights_only=True)
    expected = published["expected"][name]
    for key, value in expected["auto_inputs"].items():
        assert torch.equal(saved["inputs"][key], value), key
    assert set(saved["outputs"]) == set(expected["auto_outputs"])
    for key, value in expected["auto_outputs"].items():
        # Relative slack of a few float32 ulps too: the logits are ~14x the cosines, and two processes with several
        # threads may sum a matmul in different orders.
        torch.testing.assert_close(saved["outputs"][key], value, atol=ATOL, rtol=2e-6, msg=key)


@pytest.mark.parametrize("name", ["hybrid", "late"])
def test_zero_shot_image_classification_pipeline(published, remote, name):
    result = _value(remote, f"{name}/zero_shot")
    expected = published["expected"][name]["zero_shot"]
    assert sorted(r["label"] for r in result) == sorted(LABELS)
    for row in result:
        assert abs(row["score"] - expected[row["label"]]) <= ATOL, row
    assert [r["score"] for r in result] == sorted((r["score"] for r in result), reverse=True)


@pytest.mark.parametrize("name", ["hybrid", "late"])
def test_image_text_retrieval_pipeline(published, remote, name):
    result = _value(remote, f"{name}/retrieval")
    assert result["module"].startswith("transformers_modules.") and result["module"].endswith(".pipelines_mm")
    expected = published["expected"][name]
    for rows, scores in ((result["texts"], expected["rank_texts"]), (result["images"], expected["rank_images"])):
        assert sorted(r["index"] for r in rows) == list(range(len(scores)))
        for row in rows:
            assert abs(row["score"] - float(scores[row["index"]])) <= ATOL, row
        assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert all(row["text"] == TEXTS[row["index"]] for row in result["texts"])
    if name == "hybrid":  # ITM re-scored: 1 + p(match)
        assert all(1.0 <= row["score"] <= 2.0 for row in result["texts"] + result["images"])


@pytest.mark.parametrize("name", ["hybrid", "late"])
def test_feature_extraction_pipelines_return_the_itc_embeddings(published, remote, name):
    expected = published["expected"][name]
    image = torch.tensor(_value(remote, f"{name}/image_features"))
    text = torch.tensor(_value(remote, f"{name}/text_features"))
    torch.testing.assert_close(image, expected["image_features"], atol=ATOL, rtol=0)
    torch.testing.assert_close(text, expected["text_features"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["hybrid", "late"])
def test_image_text_to_text_pipeline_captions_from_an_empty_prompt(published, remote, name):
    expected = published["expected"][name]["caption_empty"]
    assert _value(remote, f"{name}/caption_empty") == [{"input_text": "", "generated_text": expected}]


@pytest.mark.parametrize("name", ["hybrid", "late"])
def test_image_text_to_text_pipeline_continues_a_prompt(published, remote, name):
    expected = published["expected"][name]["caption_prompt"]
    assert expected.startswith(PROMPT)
    assert _value(remote, f"{name}/caption_prompt") == [{"input_text": PROMPT, "generated_text": expected}]


def test_visual_question_answering_pipeline_on_the_merged_adapter(published, remote):
    assert _value(remote, "merged/auto") == "MMForVisualQuestionAnswering"
    torch.testing.assert_close(torch.load(remote["_out"] / "merged_logits.pt", weights_only=True),
                               published["expected"]["merged"]["logits"], atol=ATOL, rtol=0)
    result = _value(remote, "merged/vqa")
    expected = published["expected"]["merged"]["vqa"]
    assert [r["answer"] for r in result] == [r["answer"] for r in expected]
    for row, want in zip(result, expected):
        assert abs(row["score"] - want["score"]) <= ATOL
    # Merging folds the adapter in: the merged model computes what the adapter-wrapped one does.
    torch.testing.assert_close(published["expected"]["merged"]["logits"], published["expected"]["unmerged"]["logits"],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["hybrid", "late", "merged"])
def test_loading_without_trust_remote_code_is_transformers_error(remote, name):
    error = _value(remote, f"{name}/untrusted")
    assert error is not None and CUSTOM_CODE_ERROR in error and "trust_remote_code=True" in error, error


@pytest.mark.parametrize("name", ["hybrid", "merged"])
def test_card_usage_snippets_run_as_pasted(remote, name):
    assert _value(remote, f"{name}/card_snippets") >= 3


# ----------------------------------------------------------------------------------------------------------------------
# What the built-in pipelines need from the model and processor (in-process, without publishing)
# ----------------------------------------------------------------------------------------------------------------------


def test_hybrid_model_scores_one_image_against_many_texts():
    """zero-shot-image-classification calls `model(**texts, pixel_values=...)` with N labels and one image."""
    torch.manual_seed(0)
    model = MMModel(_config("hybrid")).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[101, 1037, 102], [101, 1038, 102], [101, 1039, 102]]),
                    pixel_values=torch.randn(1, 3, 32, 32))
    assert out.logits_per_image.shape == (1, 3) and out.last_hidden_state is None and out.pooler_output is None


def test_processor_takes_an_empty_captioning_prompt_next_to_an_image():
    """image-text-to-text needs `text=""` for plain captioning; a lone empty text stays an error."""
    processor = build_default_processor(image_size=32)
    inputs = processor(images=[_draw("red", "circle")], text="")
    assert inputs["input_ids"].tolist() == [[101, 102]] and inputs["pixel_values"].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="batch index 0 is empty"):
        processor(text="")


def test_generate_continues_a_processor_prompt_not_its_closing_sep():
    """The processor closes every text with [SEP]; generate drops it so the decoder continues the prompt."""
    torch.manual_seed(0)
    model = MMForConditionalGeneration(_config("late")).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    kwargs = dict(pixel_values=pixel_values, max_new_tokens=3, do_sample=False)
    with_sep = model.generate(input_ids=torch.tensor([[101, 1037, 2417, 102]]), **kwargs)
    without = model.generate(input_ids=torch.tensor([[101, 1037, 2417]]), **kwargs)
    assert torch.equal(with_sep, without)
    assert torch.equal(model.generate(input_ids=torch.tensor([[101, 102]]), **kwargs),
                       model.generate(input_ids=torch.tensor([[101]]), **kwargs))


# ----------------------------------------------------------------------------------------------------------------------
# LoRA adapter repo, push, arguments
# ----------------------------------------------------------------------------------------------------------------------


def test_adapter_repo_names_its_base_and_reloads(published):
    folder = published["folders"]["adapter"]
    files = dict(published["results"]["adapter"]["files"])
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "processor_config.json",
            "processing_mm.py", "image_processing_mm.py", "tokenizer.json"} <= set(files)
    assert "config.json" not in files and not [f for f in files if f.endswith(hub.PICKLE_SUFFIXES)]
    adapter_config = json.loads(open(os.path.join(folder, "adapter_config.json")).read())
    assert adapter_config["base_model_name_or_path"] == "tiny-org/mm-vqa"
    data = check_model_card(ModelCard.load(os.path.join(folder, "README.md")))
    assert data.base_model == ["tiny-org/mm-vqa"] and data.library_name == "peft"
    assert data.pipeline_tag == "visual-question-answering" and "lora" in data.tags
    # The published adapter, put back on its base, computes what the trained adapter did.
    reloaded = PeftModel.from_pretrained(MMForVisualQuestionAnswering.from_pretrained(published["vqa_ckpt"]), folder)
    expected = _expected_vqa(reloaded.eval(), published["processor"], published["images"])
    torch.testing.assert_close(expected["logits"], published["expected"]["unmerged"]["logits"], atol=ATOL, rtol=0)


class _FakeHfApi:
    calls: list = []

    def __init__(self, *args, **kwargs):
        _FakeHfApi.calls.append(("init", args, kwargs))

    def create_repo(self, **kwargs):
        _FakeHfApi.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        _FakeHfApi.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        _FakeHfApi.calls.append(("upload_folder", kwargs))
        return "https://huggingface.co/tiny-org/mm-late/commit/0"


def test_push_uploads_the_folder_with_a_mocked_hub(published, monkeypatch, tmp_path):
    _FakeHfApi.calls = []
    validated = []
    monkeypatch.setattr(hub, "HfApi", _FakeHfApi)
    monkeypatch.setattr(ModelCard, "validate", lambda self, repo_type=None: validated.append(self.data.pipeline_tag))
    out = str(tmp_path / "push")
    result = _publish("--checkpoint", published["ckpt_late"], "--output_dir", out, "--push", "--repo_id",
                      "tiny-org/mm-late", "--private", "--revision", "dev")
    assert validated == ["zero-shot-image-classification"]
    calls = {name: rest[-1] for name, *rest in _FakeHfApi.calls}
    assert calls["create_repo"] == {"repo_id": "tiny-org/mm-late", "repo_type": "model", "private": True,
                                    "exist_ok": True}
    assert calls["create_branch"] == {"repo_id": "tiny-org/mm-late", "branch": "dev", "repo_type": "model",
                                      "exist_ok": True}
    upload = calls["upload_folder"]
    assert (upload["repo_id"], upload["folder_path"], upload["revision"]) == ("tiny-org/mm-late", out, "dev")
    assert result["commit"] == "https://huggingface.co/tiny-org/mm-late/commit/0" and "Dry run" not in result["stdout"]
    assert 'REPO = "tiny-org/mm-late"' in open(os.path.join(out, "README.md")).read()


def test_argument_errors(published, tmp_path):
    with pytest.raises(ValueError, match="--push needs --repo_id"):
        publish.main(["--checkpoint", published["ckpt_late"], "--output_dir", str(tmp_path / "a"), "--push"])
    with pytest.raises(ValueError, match="--merge_adapter needs --adapter_path"):
        publish.main(["--checkpoint", published["ckpt_late"], "--output_dir", str(tmp_path / "a"), "--merge_adapter"])
    with pytest.raises(SystemExit, match="not empty; pass --overwrite_output_dir"):
        publish.main(["--checkpoint", published["ckpt_late"], "--output_dir", published["folders"]["late"]])
    with pytest.raises(SystemExit, match="publish that base first and pass its Hub id"):
        publish.main(["--adapter_path", published["adapter_dir"], "--output_dir", str(tmp_path / "b")])


def test_trainer_push_to_hub_writes_the_published_layout(monkeypatch, tmp_path):
    """`mm pretrain --push_to_hub` uploads the same repo `mm publish` writes (card, code, pipelines, processor), not
    Trainer's raw output folder, once at the end; a hub strategy that would push checkpoints is refused."""
    import types

    import transformers.trainer

    from pretrain_tester import save_tiny_text_tower, tiny_pretrain_args
    from run_scripts.cli import run_command

    uploaded = {}

    class _RecordingHfApi(_FakeHfApi):
        def upload_folder(self, **kwargs):
            uploaded.setdefault("calls", []).append(kwargs)
            uploaded["files"] = sorted(
                os.path.relpath(os.path.join(root, name), kwargs["folder_path"])
                for root, _, names in os.walk(kwargs["folder_path"]) for name in names
            )
            return "https://huggingface.co/tiny-org/mm-pretrained/commit/0"

    created = []
    fake_api = types.SimpleNamespace(
        create_repo=lambda repo_id, **kwargs: created.append(repo_id) or types.SimpleNamespace(repo_id=repo_id)
    )
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: fake_api)
    monkeypatch.setattr(hub, "HfApi", _RecordingHfApi)
    monkeypatch.setattr(ModelCard, "validate", lambda self, repo_type=None: None)
    tower = save_tiny_text_tower(str(tmp_path / "tower"))
    args = tiny_pretrain_args(tower, str(tmp_path / "run"), max_steps=2, save_steps=2, objectives=["itc"],
                              fusion="late", push_to_hub="true", hub_model_id="tiny-org/mm-pretrained")
    with pytest.raises(SystemExit, match="--hub_strategy every_save cannot work here"):
        run_command("pretrain", args + ["--hub_strategy", "every_save"])
    run_command("pretrain", args)
    assert created == ["tiny-org/mm-pretrained"]
    assert len(uploaded["calls"]) == 1 and uploaded["calls"][0]["repo_id"] == "tiny-org/mm-pretrained"
    files = uploaded["files"]
    for name in ("README.md", "config.json", "model.safetensors", "modeling_mm.py", "pipelines_mm.py",
                 "processor_config.json", "tokenizer.json"):
        assert name in files, (name, files)
    assert not [f for f in files if f.startswith("checkpoint-") or f.endswith(hub.PICKLE_SUFFIXES)], files
