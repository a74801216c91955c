"""CLIP / SigLIP checkpoint conversion (`modeling_mm/conversion_clip.py`, `run_scripts/convert_clip.py`): tiny random
dual encoders convert to late-fusion MM models and back with equal L2-normalised embeddings and logits, also through
saved folders, `trust_remote_code` loading in a process without this package, and the CLI; bad input raises a
`ValueError` naming what is wrong.

A module-scoped fixture saves the tiny CLIP (with a tiny CLIP tokenizer and image processor) and SigLIP folders and
runs the CLI once each way; one subprocess loads the converted MM folders with `trust_remote_code=True`.
"""

import json
import os
import subprocess
import sys
import textwrap

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoModel,
    AutoProcessor,
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipConfig,
    SiglipModel,
    SiglipTextConfig,
    SiglipVisionConfig,
)

import modeling_mm  # noqa: F401  (registers the Auto classes)
from mm_tester import MMModelTester
from modeling_mm import (
    MMConfig,
    MMForPreTraining,
    MMModel,
    convert_from_mm,
    convert_to_mm,
    embedding_differences,
    mm_from_clip,
    mm_from_siglip,
    mm_to_clip,
    mm_to_siglip,
)
from run_scripts import convert_clip


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-5
KINDS = ("clip", "siglip")
TEXTS = ["a cat", "a big dog", "the sky"]
# The tiny models' temperatures, exp(4.7) and exp(4.8), are above CLIP's clamp at 100 so that it is seen to carry over.
TEMPERATURE = 100.0


class DualEncoderTester:
    """Tiny CLIP / SigLIP dual encoders (hidden 32, 2 layers, 4 heads, 30 px images, 2 px patches, vocab 99) with
    a temperature above CLIP's clamp and a logit bias, so both are seen to carry over; and matching inputs."""

    batch_size = 3
    seq_length = 7
    image_size = 30
    vocab_size = 99
    # The tiny CLIP tokenizer below: <|startoftext|> = 0, <|endoftext|> = 1 (also its padding).
    bos_token_id, eos_token_id = 0, 1

    def tower(self, **kwargs) -> dict:
        return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, **kwargs)

    def text_tower(self, **kwargs) -> dict:
        return self.tower(
            vocab_size=self.vocab_size, max_position_embeddings=16, bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id, pad_token_id=self.eos_token_id, **kwargs,
        )

    def vision_tower(self, **kwargs) -> dict:
        return self.tower(image_size=self.image_size, patch_size=2, **kwargs)

    def clip(self, seed: int = 0) -> CLIPModel:
        torch.manual_seed(seed)
        config = CLIPConfig(text_config=self.text_tower(), vision_config=self.vision_tower(), projection_dim=16)
        model = CLIPModel(config).eval()
        with torch.no_grad():
            model.logit_scale.fill_(4.7)  # above ln(100) = 4.6052, our default clamp
        return model

    def siglip(self, seed: int = 0, text: dict | None = None, vision: dict | None = None) -> SiglipModel:
        torch.manual_seed(seed)
        config = SiglipConfig(text_config=text or self.text_tower(), vision_config=vision or self.vision_tower())
        model = SiglipModel(config).eval()
        with torch.no_grad():
            model.logit_scale.fill_(4.8)
            model.logit_bias.fill_(-12.5)
        return model

    def model(self, kind: str) -> CLIPModel | SiglipModel:
        return self.clip() if kind == "clip" else self.siglip()

    def inputs(self, kind: str, seed: int = 1) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        b, length = self.batch_size, self.seq_length
        input_ids = torch.randint(2, self.vocab_size, (b, length), generator=generator)
        input_ids[:, 0] = self.bos_token_id
        inputs = {"pixel_values": torch.randn(b, 3, self.image_size, self.image_size, generator=generator)}
        if kind == "clip":
            # Padded as CLIP's tokenizer pads: EOS ends each text, then padding (= EOS) behind a zero mask.
            attention_mask = torch.ones_like(input_ids)
            input_ids[0, 4], input_ids[0, 5:], attention_mask[0, 5:] = self.eos_token_id, self.eos_token_id, 0
            input_ids[1:, -1] = self.eos_token_id
            inputs["attention_mask"] = attention_mask
        else:
            input_ids[:, -1] = self.eos_token_id  # padded to max_length, no mask, as SiglipProcessor gives it
        inputs["input_ids"] = input_ids
        return inputs

    def tokenizer(self) -> CLIPTokenizer:
        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
        for char in "abcdefghijklmnopqrstuvwxyz":
            vocab[char] = len(vocab)
            vocab[char + "</w>"] = len(vocab)
        return CLIPTokenizer(vocab=vocab, merges=[])

    def processor(self) -> CLIPProcessor:
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": self.image_size}, crop_size={"height": self.image_size, "width": self.image_size}
        )
        return CLIPProcessor(image_processor=image_processor, tokenizer=self.tokenizer())

    def images(self) -> list[PIL.Image.Image]:
        return [PIL.Image.new("RGB", (40, 34), color) for color in ("red", "green", "blue")]


tester = DualEncoderTester()


def _normalize(features: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(features, dim=-1)


@torch.no_grad()
def _dual_outputs(model: CLIPModel | SiglipModel, inputs: dict) -> dict[str, torch.Tensor]:
    mask = {"attention_mask": inputs["attention_mask"]} if "attention_mask" in inputs else {}
    out = model(**inputs)
    return {
        "image": _normalize(model.get_image_features(inputs["pixel_values"]).pooler_output),
        "text": _normalize(model.get_text_features(inputs["input_ids"], **mask).pooler_output),
        "logits_per_image": out.logits_per_image,
    }


@torch.no_grad()
def _mm_outputs(model: MMModel, inputs: dict) -> dict[str, torch.Tensor]:
    # Our logits carry no bias; SigLIP's bias travels in the config.
    bias = model.config.logit_bias_init_value or 0.0
    return {
        "image": model.get_image_features(inputs["pixel_values"]).pooler_output,
        "text": model.get_text_features(inputs["input_ids"], inputs.get("attention_mask")).pooler_output,
        "logits_per_image": model(**inputs).logits_per_image + bias,
    }


def _max_diffs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: (a[name] - b[name]).abs().max().item() for name in a}


def _assert_diffs_small(diffs: dict[str, float]) -> None:
    """Embeddings within ATOL; logits within ATOL times the temperature (about 110 here), i.e. the cosine
    similarities within ATOL: a float32 rounding of the embeddings is scaled by the temperature in the logits."""
    scaled = {name: diff / TEMPERATURE if name.startswith("logits") else diff for name, diff in diffs.items()}
    assert max(scaled.values()) <= ATOL, diffs


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    _assert_diffs_small(_max_diffs(a, b))


# ----------------------------------------------------------------------------------------------------------------------
# Folders: sources, CLI conversions both ways, one remote-code subprocess
# ----------------------------------------------------------------------------------------------------------------------


REMOTE_SCRIPT = r"""
import json, sys
sys.path = [p for p in sys.path if p not in ("", REPO_ROOT)]
sys.meta_path = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]
report = {"importable": {}}
for name in ("modeling_mm", "run_scripts"):
    try:
        __import__(name)
        report["importable"][name] = True
    except ImportError:
        report["importable"][name] = False

import PIL.Image, torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoProcessor

features = {}
for kind, folder in FOLDERS.items():
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    report[kind] = {"class": type(model).__name__, "module": type(model).__module__}
    inputs = load_file(INPUTS[kind])
    with torch.no_grad():
        features[f"{kind}/image"] = model.get_image_features(inputs["pixel_values"]).pooler_output
        features[f"{kind}/text"] = model.get_text_features(inputs["input_ids"], inputs.get("attention_mask")).pooler_output
        features[f"{kind}/logits_per_image"] = model(**inputs).logits_per_image.contiguous()
    if kind == "clip":
        # The copied CLIP processor works with the converted model as it is.
        processor = AutoProcessor.from_pretrained(folder)
        report["processor"] = type(processor).__name__
        images = [PIL.Image.new("RGB", (40, 34), color) for color in ("red", "green", "blue")]
        batch = processor(text=TEXTS, images=images, padding=True, return_tensors="pt")
        with torch.no_grad():
            features["processor/logits_per_image"] = model(**batch).logits_per_image.contiguous()
save_file(features, f"{OUT}/features.safetensors")
with open(f"{OUT}/report.json", "w") as f:
    json.dump(report, f)
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("conversion")
    paths = {}
    for kind in KINDS:
        source = root / kind
        tester.model(kind).save_pretrained(source)
        if kind == "clip":
            tester.processor().save_pretrained(source)
        paths[kind] = source
        paths[f"{kind}_mm"] = root / f"{kind}_mm"
        paths[f"{kind}_back"] = root / f"{kind}_back"
        to_mm = ["--input", str(source), "--output_dir", str(paths[f"{kind}_mm"]), "--direction", "to_mm"]
        if kind == "clip":
            # Once as users run it: a module of the repository, no sys.path set up by the test.
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
            result = subprocess.run(
                [sys.executable, "-m", "run_scripts.convert_clip", *to_mm], cwd=REPO_ROOT, env=env,
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
            )
            assert result.returncode == 0, result.stderr[-4000:]
            paths["clip_to_mm_stdout"] = result.stdout
        else:
            paths[f"{kind}_to_mm_result"] = convert_clip.main(to_mm)
        paths[f"{kind}_from_mm_result"] = convert_clip.main(
            ["--input", str(paths[f"{kind}_mm"]), "--output_dir", str(paths[f"{kind}_back"]), "--direction", "from_mm"]
        )
    return paths


@pytest.fixture(scope="module")
def remote(folders):
    out = folders["clip"].parent / "remote"
    out.mkdir()
    inputs = {}
    for kind in KINDS:
        inputs[kind] = str(out / f"inputs_{kind}.safetensors")
        save_file(tester.inputs(kind), inputs[kind])
    constants = {
        "REPO_ROOT": REPO_ROOT, "OUT": str(out), "TEXTS": TEXTS, "INPUTS": inputs,
        "FOLDERS": {kind: str(folders[f"{kind}_mm"]) for kind in KINDS},
    }
    header = "".join(f"{name} = {value!r}\n" for name, value in constants.items())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(out / "modules"), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [sys.executable, "-c", header + textwrap.dedent(REMOTE_SCRIPT)], cwd=str(out), env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    with open(out / "report.json") as f:
        report = json.load(f)
    report["features"] = load_file(str(out / "features.safetensors"))
    return report


# ----------------------------------------------------------------------------------------------------------------------
# In memory, both ways
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_to_mm_keeps_embeddings_and_logits(kind):
    source = tester.model(kind)
    model = convert_to_mm(source).eval()
    assert model.config.fusion == "late" and model.config.objectives == ["itc"]
    assert type(model.vision_model) is type(source.vision_model) and type(model.text_model) is type(source.text_model)
    inputs = tester.inputs(kind)
    _assert_close(_dual_outputs(source, inputs), _mm_outputs(model, inputs))
    # The clamp was raised to the source's temperature, so ours is the source's.
    assert model.clamped_logit_scale().item() == pytest.approx(source.logit_scale.exp().item(), rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_restores_every_weight(kind):
    source = tester.model(kind)
    back = convert_from_mm(convert_to_mm(source))
    assert type(back) is type(source)
    expected, got = source.state_dict(), back.state_dict()
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    inputs = tester.inputs(kind)
    _assert_close(_dual_outputs(source, inputs), _dual_outputs(back.eval(), inputs))


def test_siglip_projections_are_identity_and_bias_rides_in_config():
    model = mm_from_siglip(tester.siglip())
    assert model.config.projection_dim == 32
    for projection in (model.visual_projection, model.text_projection):
        assert torch.equal(projection.weight, torch.eye(32))
    assert model.config.logit_bias_init_value == -12.5
    assert mm_to_siglip(model).logit_bias.item() == -12.5


def test_mm_model_with_clip_towers_exports_to_clip():
    # Starting from our side: a freshly initialised late MM model with CLIP towers and its own projections.
    torch.manual_seed(0)
    config = MMConfig(
        fusion="late", vision_config=CLIPVisionConfig(**tester.vision_tower()),
        text_config=CLIPTextConfig(**tester.text_tower()), projection_dim=24,
    )
    model = MMModel(config).eval()
    clip = mm_to_clip(model).eval()
    inputs = tester.inputs("clip")
    _assert_close(_mm_outputs(model, inputs), _dual_outputs(clip, inputs))
    _assert_diffs_small(embedding_differences(model, clip))


def test_siglip_export_without_carried_bias_uses_siglips_initial_bias():
    model = mm_from_siglip(tester.siglip())
    model.config.logit_bias_init_value = None
    assert mm_to_siglip(model).logit_bias.item() == -10.0


def test_export_writes_our_clamped_temperature():
    model = mm_from_clip(tester.clip())
    model.config.logit_scale_max = 4.0
    clip = mm_to_clip(model)
    assert clip.logit_scale.item() == pytest.approx(4.0)
    _assert_close(_mm_outputs(model.eval(), tester.inputs("clip")), _dual_outputs(clip.eval(), tester.inputs("clip")))


def test_bert_text_tower_still_pools_cls():
    # Only towers that make their own pooler_output use it; a BERT tower (built without its pooler) keeps [CLS].
    mm_tester = MMModelTester()
    bert = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    model = _late_mm(mm_tester.get_config("late").vision_config, bert, projection_dim=16).eval()
    assert isinstance(model.text_model, BertModel) and model.text_model.pooler is None
    inputs = mm_tester.get_inputs()
    with torch.no_grad():
        out = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])


def test_hybrid_fusion_runs_on_clip_towers():
    config = MMConfig(
        fusion="hybrid", vision_config=CLIPVisionConfig(**tester.vision_tower()),
        text_config=CLIPTextConfig(**tester.text_tower()), projection_dim=16, num_fusion_layers=1,
    )
    model = MMModel(config).eval()
    inputs = tester.inputs("clip")
    with torch.no_grad():
        out = model(**inputs, return_loss=True)
    assert out.last_hidden_state.shape == (3, tester.seq_length, 32) and torch.isfinite(out.loss)


# ----------------------------------------------------------------------------------------------------------------------
# Folders: save/load, CLI, remote code
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_converted_mm_folder_loads_with_auto_model(folders, kind):
    model = AutoModel.from_pretrained(folders[f"{kind}_mm"]).eval()
    assert isinstance(model, MMModel)
    inputs = tester.inputs(kind)
    _assert_close(_dual_outputs(tester.model(kind), inputs), _mm_outputs(model, inputs))
    saved = json.loads((folders[f"{kind}_mm"] / "config.json").read_text())
    assert saved["auto_map"]["AutoModel"] == "modeling_mm.MMModel"
    assert saved["vision_config"]["model_type"] == f"{kind}_vision_model"


@pytest.mark.parametrize("kind", KINDS)
def test_cli_converts_back_to_the_source(folders, kind):
    result = folders[f"{kind}_from_mm_result"]
    assert result["architecture"] == ("CLIPModel" if kind == "clip" else "SiglipModel")
    _assert_diffs_small(result["differences"])
    if kind == "clip":
        assert "Wrote MMModel to" in folders["clip_to_mm_stdout"]
    else:
        _assert_diffs_small(folders["siglip_to_mm_result"]["differences"])
    back = AutoModel.from_pretrained(folders[f"{kind}_back"]).eval()
    source = tester.model(kind)
    assert type(back) is type(source)
    for name, tensor in source.state_dict().items():
        assert torch.equal(tensor, back.state_dict()[name]), name
    assert not any(name.endswith(".py") for name in os.listdir(folders[f"{kind}_back"]))


def test_cli_copies_the_clip_processor(folders):
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(
        folders["clip_from_mm_result"]["processor_files"]
    )
    assert "processor files: processor_config.json" in folders["clip_to_mm_stdout"]
    for folder in ("clip_mm", "clip_back"):
        processor = AutoProcessor.from_pretrained(folders[folder])
        assert isinstance(processor, CLIPProcessor)
    # The converted model takes the processor's output as it is, and scores as the source does.
    processor = AutoProcessor.from_pretrained(folders["clip_mm"])
    batch = processor(text=TEXTS, images=tester.images(), padding=True, return_tensors="pt")
    model = AutoModel.from_pretrained(folders["clip_mm"]).eval()
    with torch.no_grad():
        ours = model(**batch).logits_per_image
        theirs = tester.clip()(**batch).logits_per_image
    assert (ours - theirs).abs().max().item() <= ATOL * TEMPERATURE


def test_cli_refuses_a_non_empty_output_dir(folders):
    with pytest.raises(SystemExit, match="not empty"):
        convert_clip.main(["--input", str(folders["clip"]), "--output_dir", str(folders["clip_mm"])])


def test_trust_remote_code_loads_converted_folders(remote):
    assert remote["importable"] == {"modeling_mm": False, "run_scripts": False}
    assert remote["processor"] == "CLIPProcessor"
    for kind in KINDS:
        assert remote[kind]["class"] == "MMModel" and remote[kind]["module"].startswith("transformers_modules")
        source = tester.model(kind)
        inputs = tester.inputs(kind)
        expected = _dual_outputs(source, inputs)
        expected["logits_per_image"] -= source.logit_bias.item() if kind == "siglip" else 0.0
        got = {name: remote["features"][f"{kind}/{name}"] for name in expected}
        _assert_close(expected, got)
    batch = tester.processor()(text=TEXTS, images=tester.images(), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = tester.clip()(**batch).logits_per_image
    assert (remote["features"]["processor/logits_per_image"] - expected).abs().max().item() <= ATOL * TEMPERATURE


# ----------------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------------


def _late_mm(vision_config, text_config, **kwargs) -> MMModel:
    return MMModel(MMConfig(fusion="late", vision_config=vision_config, text_config=text_config, **kwargs))


def test_folder_that_is_not_clip_or_siglip(tmp_path, folders):
    BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=37)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"holds a 'bert' checkpoint \(BertConfig\); only CLIP"):
        convert_to_mm(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"holds a 'mm' checkpoint"):
        convert_to_mm(folders["clip_mm"])
    with pytest.raises(ValueError, match=r"holds a 'clip' checkpoint .*not a SigLIP checkpoint"):
        mm_from_siglip(folders["clip"])
    with pytest.raises(ValueError, match="Expected a CLIPModel or a folder holding one, got a SiglipModel"):
        mm_from_clip(tester.siglip())
    CLIPVisionModel(CLIPVisionConfig(**tester.vision_tower())).save_pretrained(tmp_path / "tower")
    with pytest.raises(ValueError, match="single tower; conversion needs the dual encoder"):
        mm_from_clip(tmp_path / "tower")
    # The CLI says so too, and from_mm wants an MM folder.
    with pytest.raises(ValueError, match="only CLIP"):
        convert_clip.main(["--input", str(tmp_path / "bert"), "--output_dir", str(tmp_path / "out1")])
    assert not (tmp_path / "out1").exists()
    with pytest.raises(ValueError, match=r"holds a 'clip' checkpoint \(CLIPConfig\), not an MM checkpoint"):
        convert_clip.main(["--input", str(folders["clip"]), "--output_dir", str(tmp_path / "out2"),
                           "--direction", "from_mm"])
    with pytest.raises(ValueError, match="has no config.json"):
        convert_clip.main(["--input", str(tmp_path), "--output_dir", str(tmp_path / "out3")])


def test_mm_model_that_is_not_late_fusion():
    config = MMConfig(
        fusion="hybrid", vision_config=CLIPVisionConfig(**tester.vision_tower()),
        text_config=CLIPTextConfig(**tester.text_tower()), projection_dim=16, num_fusion_layers=1,
    )
    with pytest.raises(ValueError, match="Only late-fusion MM models convert to CLIP; this one has fusion='hybrid'"):
        mm_to_clip(MMModel(config))


def test_mm_model_whose_towers_are_not_clip_or_siglip():
    builtin = MMModel(MMModelTester().get_config("late"))
    with pytest.raises(ValueError, match="with CLIP or SigLIP towers .* MMVisionConfig and text_config MMTextConfig"):
        convert_from_mm(builtin)
    with pytest.raises(ValueError, match="needs CLIPVisionConfig and CLIPTextConfig towers; .* MMVisionConfig"):
        mm_to_clip(builtin)
    mixed = _late_mm(SiglipVisionConfig(**tester.vision_tower()), CLIPTextConfig(**tester.text_tower()),
                     projection_dim=32)
    with pytest.raises(ValueError, match="needs SiglipVisionConfig and SiglipTextConfig towers; .* CLIPTextConfig"):
        convert_from_mm(mixed)
    with pytest.raises(ValueError, match="Expected an MM model"):
        mm_to_clip(tester.clip())


def test_mismatched_widths():
    wide_text = tester.text_tower()
    wide_text["hidden_size"] = 48
    with pytest.raises(ValueError, match=r"needs equal widths .*'text_config.hidden_size': 48"):
        mm_from_siglip(tester.siglip(text=wide_text))
    with pytest.raises(ValueError, match="vision_use_head is False"):
        mm_from_siglip(tester.siglip(vision=tester.vision_tower(vision_use_head=False)))
    siglip_towers = (SiglipVisionConfig(**tester.vision_tower()), SiglipTextConfig(**tester.text_tower()))
    with pytest.raises(ValueError, match="projection_dim is 16 but SigLIP's features are 32 wide"):
        mm_to_siglip(_late_mm(*siglip_towers, projection_dim=16))
    with pytest.raises(ValueError, match=r"visual_projection is not the identity \(max deviation"):
        mm_to_siglip(_late_mm(*siglip_towers, projection_dim=32))


def test_late_head_with_clip_towers_converts_through_its_base_model():
    model = mm_from_clip(tester.clip())
    head = MMForPreTraining(model.config)
    head.mm.load_state_dict(model.state_dict())
    clip = mm_to_clip(head).eval()
    inputs = tester.inputs("clip")
    _assert_close(_dual_outputs(tester.clip(), inputs), _dual_outputs(clip, inputs))
