"""Security: weights are written as safetensors only, pickles are never unpickled unsafely, our code never calls
`torch.load` without `weights_only=True`, and a saved folder runs none of its code without `trust_remote_code`.

Every promise here is listed in SECURITY.md with the test that proves it.
"""

import ast
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from mm_tester import FUSIONS, MMModelTester
from pretrain_tester import REPO, save_tiny_text_tower, tiny_pretrain_args

from modeling_mm import (
    MMForConditionalGeneration,
    MMForImageTextClassification,
    MMForImageTextRetrieval,
    MMForPreTraining,
    MMForVisualQuestionAnswering,
    MMModel,
    MMTextModel,
    MMVisionModel,
)

tester = MMModelTester(num_layers=1)

# Files Trainer itself pickles into every checkpoint and reads back only with `torch.load(..., weights_only=True)`
# (transformers 5.24: `Trainer._load_optimizer_and_scheduler`, `Trainer._load_rng_state`).
TRAINER_STATE_PICKLES = {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
# Our source trees that `test_no_unsafe_deserialisation_in_our_code` scans (those present in the checkout).
OUR_CODE = ("modeling_mm", "processing", "run_scripts", "metrics", "benchmarks", "publishing", "training", "evaluation")


def _is_pickle(path: pathlib.Path) -> bool:
    """True for a raw pickle (protocol >= 2 starts with 0x80) or a `torch.save` zip archive (holds `data.pkl`)."""
    with open(path, "rb") as f:
        head = f.read(2)
    if len(head) == 2 and head[0] == 0x80 and head[1] <= 5:
        return True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    return False


def _pickles_under(folder: pathlib.Path, recursive: bool = True) -> set[str]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return {str(p.relative_to(folder)) for p in files if p.is_file() and _is_pickle(p)}


def _weight_files(folder: pathlib.Path) -> set[str]:
    suffixes = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack")
    return {p.name for p in folder.iterdir() if p.name.endswith(suffixes)}


# ----------------------------------------------------------------------------------------------------------------------
# Only safetensors are written
# ----------------------------------------------------------------------------------------------------------------------

HEADS = [MMModel, MMForPreTraining, MMForVisualQuestionAnswering, MMForImageTextClassification, MMForImageTextRetrieval,
         MMForConditionalGeneration]


# Every head with every fusion it supports (captioning needs a vision tower: late or hybrid).
HEAD_FUSIONS = [
    (head, fusion) for head in HEADS for fusion in FUSIONS if not (head is MMForConditionalGeneration and fusion == "early")
]


@pytest.mark.parametrize(("head", "fusion"), HEAD_FUSIONS, ids=lambda v: getattr(v, "__name__", v))
def test_save_pretrained_writes_safetensors_only(head, fusion, tmp_path):
    kwargs = {"num_labels": 3} if head in (MMForVisualQuestionAnswering, MMForImageTextClassification) else {}
    head(tester.get_config(fusion, **kwargs)).save_pretrained(tmp_path)
    assert _weight_files(tmp_path) == {"model.safetensors"}
    assert _pickles_under(tmp_path) == set()


def test_towers_processor_and_adapters_write_no_pickles(tmp_path):
    config = tester.get_config("hybrid")
    MMVisionModel(config.vision_config).save_pretrained(tmp_path / "vision")
    MMTextModel(config.text_config).save_pretrained(tmp_path / "text")
    from processing.data import build_default_processor

    build_default_processor(image_size=16).save_pretrained(tmp_path / "processor")
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(MMModel(config), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    assert _weight_files(tmp_path / "vision") == _weight_files(tmp_path / "text") == {"model.safetensors"}
    assert _weight_files(tmp_path / "adapter") == {"adapter_model.safetensors"}
    assert _pickles_under(tmp_path) == set()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> pathlib.Path:
    """A 4-step tiny pretraining run that checkpoints at step 4: `<run>/checkpoint-4` and the final `<run>` folder."""
    from run_scripts import pretrain

    root = tmp_path_factory.mktemp("security_run")
    tower = save_tiny_text_tower(str(root / "tower"))
    pretrain.main(tiny_pretrain_args(tower, str(root / "run"), max_steps=4, save_steps=4))
    return root / "run"


def test_trainer_checkpoint_pickles_only_its_own_state(trained_run):
    """Trainer pickles its optimizer, scheduler and RNG state (read back with weights_only=True, see below); the
    model weights are safetensors. `training_args.bin` (a full pickle of TrainingArguments that Trainer never reads
    back, and that needs weights_only=False to open) must not be written."""
    checkpoint = trained_run / "checkpoint-4"
    assert "model.safetensors" in _weight_files(checkpoint)
    assert _pickles_under(checkpoint) == TRAINER_STATE_PICKLES


def test_final_output_folder_has_no_pickles(trained_run):
    """The run's output folder (what `from_pretrained(output_dir)` and `publish.py` read, and what a user may upload
    as it is, minus its `checkpoint-*` subfolders): weights, config, processor and code, and no pickle at all."""
    assert _weight_files(trained_run) == {"model.safetensors"}
    assert _pickles_under(trained_run, recursive=False) == set()


# ----------------------------------------------------------------------------------------------------------------------
# Pickles are never unpickled unsafely
# ----------------------------------------------------------------------------------------------------------------------


class Canary:
    """Unpickling this object creates a file: the proof that a pickle's code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _plant_canary(path: pathlib.Path, canary_file: pathlib.Path, payload_key: str = "weight") -> None:
    torch.save({payload_key: Canary(str(canary_file))}, path)


def test_canary_is_live(tmp_path):
    """Positive control: an unsafe load of the planted pickle does run its code."""
    _plant_canary(tmp_path / "evil.bin", tmp_path / "ran")
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize("use_safetensors", [None, False], ids=["default", "use_safetensors=False"])
def test_pickle_checkpoint_is_refused_and_canary_never_runs(use_safetensors, tmp_path):
    folder = tmp_path / "evil_model"
    MMModel(tester.get_config("late")).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    _plant_canary(folder / "pytorch_model.bin", tmp_path / "ran")
    kwargs = {} if use_safetensors is None else {"use_safetensors": use_safetensors}
    with pytest.raises(Exception, match=r"(?i)weights.only|unpickl|unsupported global"):
        MMModel.from_pretrained(folder, **kwargs)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("name", sorted(TRAINER_STATE_PICKLES))
def test_trainer_state_pickles_are_loaded_weights_only(name, trained_run, tmp_path):
    """Resuming from a checkpoint whose optimizer/scheduler/RNG file was replaced by a planted pickle fails at that
    file, and the planted code never runs: Trainer reads them with `torch.load(..., weights_only=True)`."""
    from run_scripts import pretrain

    checkpoint = tmp_path / "run" / "checkpoint-4"
    shutil.copytree(trained_run / "checkpoint-4", checkpoint)
    _plant_canary(checkpoint / name, tmp_path / "ran", payload_key="state")
    tower = str(trained_run.parent / "tower")
    args = tiny_pretrain_args(tower, str(tmp_path / "run"), max_steps=8, resume_from_checkpoint=str(checkpoint))
    with pytest.raises(Exception, match=r"(?i)weights.only|unpickl|unsupported global"):
        pretrain.main(args)
    assert not (tmp_path / "ran").exists()


def _call_name(node: ast.Call) -> str:
    func = node.func
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str):
    for keyword in node.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_true(value) -> bool:
    return isinstance(value, ast.Constant) and value.value is True


def _our_python_files() -> list[pathlib.Path]:
    files = []
    for folder in OUR_CODE:
        path = pathlib.Path(REPO) / folder
        if path.is_dir():
            files += sorted(path.rglob("*.py"))
    return files


# The one file allowed to pass `trust_remote_code=True` itself: the Gradio app `mm publish --space_dir` writes is the
# published repo's own front end, which loads that repo (its code ships with it) at the revision written into it.
TRUSTS_ITS_OWN_REPO = {"publishing/space_app.py"}


def test_no_unsafe_deserialisation_in_our_code():
    """Every `torch.load(` in our code passes `weights_only=True`; no pickle/dill/joblib loads, no
    `np.load(allow_pickle=True)`, no hard-coded `trust_remote_code=True` (it must come from the user; the Space app,
    `TRUSTS_ITS_OWN_REPO`, is the one exception)."""
    files = _our_python_files()
    assert any(f.parent.name == "modeling_mm" for f in files) and any(f.parent.name == "run_scripts" for f in files)
    problems = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        where = path.relative_to(REPO)
        tree = ast.parse(source, filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
                problems.append(f"{where}:{node.lineno}: `from torch import load` hides torch.load from this check")
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            if name in ("torch.load", "torch.serialization.load") and not _is_true(_keyword(node, "weights_only")):
                problems.append(f"{where}:{node.lineno}: {name}( without weights_only=True")
            if name.split(".")[-1] in ("load", "loads", "Unpickler") and name.split(".")[0] in (
                "pickle", "cPickle", "dill", "joblib", "cloudpickle", "_pickle"
            ):
                problems.append(f"{where}:{node.lineno}: {name}( unpickles arbitrary code")
            if name in ("np.load", "numpy.load") and _is_true(_keyword(node, "allow_pickle")):
                problems.append(f"{where}:{node.lineno}: {name}(allow_pickle=True)")
            if _is_true(_keyword(node, "trust_remote_code")) and str(where) not in TRUSTS_ITS_OWN_REPO:
                problems.append(f"{where}:{node.lineno}: hard-coded trust_remote_code=True")
        # Text fallback for the same call written in a way the AST check would not see (e.g. via getattr).
        for number, line in enumerate(source.splitlines(), start=1):
            if "torch.load(" in line and "weights_only=True" not in line and not line.lstrip().startswith("#"):
                call = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.lineno == number]
                if not any(_is_true(_keyword(n, "weights_only")) for n in call):
                    problems.append(f"{where}:{number}: torch.load( without weights_only=True")
    assert not problems, "\n".join(sorted(set(problems)))


# ----------------------------------------------------------------------------------------------------------------------
# No code runs without trust_remote_code
# ----------------------------------------------------------------------------------------------------------------------


def test_saved_folder_runs_no_code_without_trust_remote_code(tmp_path):
    """In a process that cannot import this package, every Auto class refuses the saved folder unless
    `trust_remote_code=True`, and not one of its modules is imported (or even copied to the modules cache)."""
    from processing.data import build_default_processor

    folder = tmp_path / "saved"
    MMForPreTraining(tester.get_config("hybrid")).save_pretrained(folder)
    build_default_processor(image_size=16).save_pretrained(folder)
    assert (folder / "modeling_mm.py").exists() and (folder / "processing_mm.py").exists()
    modules_cache = tmp_path / "hf_modules"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path = [p for p in sys.path if p not in ("", {REPO!r})]
        # An editable install (`pip install -e .`) maps the package through a meta-path finder: drop it too.
        sys.meta_path = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]
        for name in ("modeling_mm", "processing"):
            try:
                __import__(name)
                raise SystemExit(name + " must not be importable here")
            except ImportError:
                pass
        from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForPreTraining,
                                  AutoProcessor)
        refused = []
        for auto in (AutoConfig, AutoModel, AutoModelForPreTraining, AutoProcessor, AutoImageProcessor):
            for kwargs in ({{}}, {{"trust_remote_code": False}}):
                try:
                    auto.from_pretrained({str(folder)!r}, **kwargs)
                except ValueError as err:
                    assert "trust_remote_code" in str(err), (auto.__name__, str(err))
                    refused.append(auto.__name__)
                else:
                    raise SystemExit(f"{{auto.__name__}}.from_pretrained({{kwargs}}) loaded the folder")
        ours = sorted(m for m in sys.modules if m.startswith("transformers_modules") or m.split(".")[0] in
                      ("modeling_mm", "processing", "configuration_mm", "modeling_mm_heads",
                       "modeling_mm_pretraining", "losses",
                       "processing_mm", "image_processing_mm"))
        assert not ours, ours
        print("REFUSED", len(refused))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(modules_cache), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "REFUSED 10" in result.stdout
    copied = [p.name for p in modules_cache.rglob("*.py") if p.name != "__init__.py"] if modules_cache.exists() else []
    assert copied == [], copied
