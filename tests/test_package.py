"""The package as users install and call it: the `mm` console script and every subcommand's `--help`, a
non-editable install from a clean copy of the repository that runs the README's main job at toy size (`mm demo
--quick`) from outside the repository, and the registrations that make local folders work like Hub repos (peft's
default LoRA targets, `AutoModelForSequenceClassification`, the local `pipeline()` tasks)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import modeling_mm
from run_scripts.cli import COMMANDS, main as mm_main


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------------------------------
# The console script, in this process
# ----------------------------------------------------------------------------------------------------------------------


def test_mm_without_a_command_lists_every_command(capsys):
    assert mm_main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: mm <command>")
    for name in COMMANDS:
        assert f"  {name} " in out, name


def test_unknown_command_is_named():
    with pytest.raises(SystemExit, match="mm: unknown command 'pretrian'; commands: pretrain, finetune"):
        mm_main(["pretrian"])


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_answers_help(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # mm_main names the program through sys.argv[0]
    with pytest.raises(SystemExit) as info:
        mm_main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mm {name}"), out[:300]
    if name in ("pretrain", "finetune"):
        # Trainer's own flag, with the `auto` value our checkpoints add.
        assert "'auto' continues from the last complete checkpoint" in " ".join(out.split())


def test_choices_and_lists_are_declared(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    for name, flag, values in (
        ("pretrain", "--objectives", "{itc,itm,mlm,lm} [{itc,itm,mlm,lm} ...]"),
        ("pretrain", "--fusion", "{coattention,early,hybrid,late}"),
        ("finetune", "--task", "{captioning,classification,retrieval,vqa}"),
        ("evaluate", "--task", "{captioning,classification,retrieval,vqa,zero_shot}"),
        ("explain", "--method", "{gradcam,itc_gradcam,occlusion,rollout,similarity}"),
    ):
        with pytest.raises(SystemExit):
            mm_main([name, "--help"])
        assert f"{flag} {values}" in capsys.readouterr().out, (name, flag)


# ----------------------------------------------------------------------------------------------------------------------
# Registrations: local folders work like Hub repos
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_config():
    from mm_tester import MMModelTester

    return MMModelTester()


@pytest.mark.parametrize("fusion", ["early", "late", "hybrid"])
def test_plain_lora_config_finds_targets_in_every_fusion(tiny_config, fusion):
    from peft import LoraConfig, get_peft_model

    model = modeling_mm.MMModel(tiny_config.get_config(fusion))
    peft_model = get_peft_model(model, LoraConfig(r=8))  # no target_modules: peft's mapping for model_type "mm"
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in peft_model.named_parameters() if ".lora_A" in name}
    assert adapted and adapted <= set(modeling_mm.PEFT_TARGET_MODULES), adapted


def test_sequence_classification_auto_class_loads_the_classifier_head(tiny_config, tmp_path):
    from transformers import AutoModelForSequenceClassification

    config = tiny_config.get_config("hybrid", num_labels=3)
    modeling_mm.MMForImageTextClassification(config).save_pretrained(tmp_path)
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path)).__name__ == "MMForImageTextClassification"


def _local_processor(tmp_path, image_size: int):
    from processing import build_default_processor

    processor = build_default_processor(image_size=image_size, max_length=16)
    processor.save_pretrained(tmp_path)
    return processor


def test_local_vqa_and_retrieval_pipelines_on_unpublished_folders(tmp_path):
    """`pipeline(task, model=<folder>)` on folders as `save_pretrained` writes them (no `custom_pipelines`, no remote
    code needed): the tasks are registered by `import modeling_mm`."""
    from PIL import Image
    from transformers import BertConfig, pipeline

    from modeling_mm import MMConfig, MMForPreTraining, MMForVisualQuestionAnswering, MMVisionConfig

    torch.manual_seed(0)
    text = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
    vision = MMVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=37)
    labels = ["red", "green", "blue"]
    vqa_dir, retrieval_dir = tmp_path / "vqa", tmp_path / "retrieval"
    MMForVisualQuestionAnswering(MMConfig(
        vision_config=vision, text_config=text, fusion="hybrid", num_fusion_layers=1, projection_dim=16,
        num_labels=3, id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)},
    )).save_pretrained(vqa_dir)
    MMForPreTraining(MMConfig(vision_config=vision, text_config=text, fusion="late", projection_dim=16,
                              objectives=["itc"])).save_pretrained(retrieval_dir)
    for folder in (vqa_dir, retrieval_dir):
        _local_processor(folder, 32)
    image = Image.new("RGB", (40, 40), (200, 30, 30))

    vqa = pipeline(modeling_mm.LOCAL_VQA_TASK, model=str(vqa_dir))
    answers = vqa(image, question="what color is the shape?", top_k=3)
    assert [a["answer"] for a in answers] and {a["answer"] for a in answers} == set(labels)
    assert abs(sum(a["score"] for a in answers) - 1) < 1e-5

    retrieval = pipeline("image-text-retrieval", model=str(retrieval_dir))
    ranked = retrieval(image, candidate_texts=["a red circle", "a blue square"])
    assert sorted(r["text"] for r in ranked) == ["a blue square", "a red circle"]


# ----------------------------------------------------------------------------------------------------------------------
# A non-editable install, used from outside the repository
# ----------------------------------------------------------------------------------------------------------------------


def _clean_copy(destination) -> None:
    """The files a clone of the current tree would have: tracked and untracked-but-not-ignored ones."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = os.path.join(ROOT, name)
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(os.path.join(destination, name)), exist_ok=True)
            shutil.copyfile(source, os.path.join(destination, name))


@pytest.mark.slow
def test_installed_package_runs_every_help_and_the_quick_demo(tmp_path):
    source, venv_dir, work = tmp_path / "src", tmp_path / "venv", tmp_path / "work"
    _clean_copy(source)
    work.mkdir()
    # The venv sees the installed dependencies (torch, transformers...) and this interpreter's pip and setuptools
    # (a venv's own bootstrap setuptools is too old for PEP 639 metadata); the package itself is installed into it
    # from the copy, as a wheel, not editable.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv_dir)], check=True)
    python, mm = str(venv_dir / "bin" / "python"), str(venv_dir / "bin" / "mm")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PATH=f"{venv_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}")

    def run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)

    where = run([python, "-c", "import modeling_mm, model_cards, run_scripts; print(modeling_mm.__file__); "
                 "print(model_cards.__file__)"])
    assert where.returncode == 0, where.stderr[-3000:]
    for line in where.stdout.split():
        assert line.startswith(str(venv_dir)), f"imported from outside the install: {line}"

    listing = run([mm, "--help"])
    assert listing.returncode == 0 and "commands:" in listing.stdout, listing.stderr[-2000:]
    for name in COMMANDS:
        helped = run([mm, name, "--help"])
        assert helped.returncode == 0, f"mm {name} --help: {helped.stderr[-3000:]}"
        assert helped.stdout.startswith(f"usage: mm {name}"), helped.stdout[:300]

    out = work / "demo"
    demo = run([mm, "demo", "--quick", "--output_dir", str(out)], timeout=1500)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-5000:]
    for stage in range(1, 7):
        assert f"[{stage}/6]" in demo.stdout
    summary = json.loads((out / "demo_summary.json").read_text())
    for key in ("zero_shot_top1", "vqa_accuracy", "lora_trainable_fraction", "total_seconds"):
        assert isinstance(summary[key], (int, float)), key
    assert 0 < summary["lora_trainable_fraction"] < 0.05
    assert len(summary["pipelines"]) == 3
    for row in summary["pipelines"]:
        assert row["zero_shot"].startswith("a ") and isinstance(row["caption"], str)
        assert set(row["answers"]) == {"what color is the shape?", "what shape is in the image?", "is there a blue shape?"}
    for folder in ("hub_vqa", "hub_captioning"):
        files = os.listdir(out / folder)
        # The model card comes from the template shipped inside the installed package.
        assert "README.md" in files and "model.safetensors" in files and "modeling_mm.py" in files
        assert not any(name.endswith(".bin") for name in files)
    # Pretraining saves its processor next to the model (and in each checkpoint, through Trainer's processing_class).
    assert (out / "pretrain" / "processor_config.json").is_file()
    assert "Results (quick smoke run)" in demo.stdout and "Outputs:" in demo.stdout
