"""LoRA for the MM heads: default target modules per fusion style, per-part freeze modes, and a parameter report.

An MM model has up to four trainable parts besides its task head:

| part | modules | fusion styles |
| --- | --- | --- |
| `vision` | `mm.vision_model` (late, hybrid, coattention); `mm.vision_embeddings` (early: patch projection + positions only) | all |
| `text` | `mm.text_model` (early: the joint encoder over `[text ; image]`) | all |
| `fusion` | `mm.fusion_layers` + `mm.fusion_layer_norm` (hybrid, coattention; coattention adds `mm.fusion_image_projection` when the widths differ); `mm.modality_type_embeddings` (early) | early, hybrid, coattention |
| `decoder` | `text_decoder` (captioning and pretraining heads) | late, hybrid, coattention |

Each part is set to one of three modes: `"lora"` (low-rank adapters on its target modules, base weights frozen),
`"frozen"` (nothing trains) or `"full"` (every weight trains; saved with the adapter through peft's
`modules_to_save`). The task head is always fully trained and saved with the adapter (`default_modules_to_save`).

Typical use::

    model = MMForVisualQuestionAnswering.from_pretrained(checkpoint, num_labels=13)
    model = apply_lora(model, freeze={"vision": "frozen"})
    print(trainable_parameter_report(model))
"""

from collections.abc import Mapping
import os

from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper
from torch import nn

from modeling_mm import MMConfig, MMForConditionalGeneration


__all__ = [
    "FREEZE_MODES",
    "MODEL_PARTS",
    "adapter_head_config",
    "apply_lora",
    "default_lora_target_modules",
    "default_modules_to_save",
    "freeze_parts",
    "model_parts",
    "resolve_freeze",
    "save_head_config",
    "trainable_parameter_report",
]

FREEZE_MODES = ("lora", "frozen", "full")
MODEL_PARTS = ("vision", "text", "fusion", "decoder")

# Leaf names of the attention projections LoRA adapts by default (Hu et al. 2021 adapt W_q and W_v). Our MMLayer
# (towers, fusion, decoder, self- and cross-attention alike) and CLIP/SigLIP towers call them q_proj / v_proj; BERT,
# RoBERTa, ViT and DeiT towers call them query / value.
_QUERY_VALUE_NAMES = ("q_proj", "v_proj", "query", "value")


def _prefix(model: nn.Module) -> str:
    """Name prefix of the `MMModel` inside `model`: `"mm."` for the heads, `""` for a bare `MMModel`."""
    return "mm." if hasattr(model, "mm") else ""


def model_parts(model: nn.Module) -> dict[str, list[str]]:
    """
    Module names (as in `model.named_modules()`) that make up each part of an MM head or `MMModel`; parts the model
    does not have map to an empty list.

    Args:
        model (`nn.Module`): An MM head (`MMFor...`) or `MMModel`, not yet wrapped by peft.
    """
    p = _prefix(model)
    fusion = model.config.fusion
    modules = dict(model.named_modules())
    candidates = {
        "vision": [f"{p}vision_embeddings"] if fusion == "early" else [f"{p}vision_model"],
        "text": [f"{p}text_model"],
        "fusion": [f"{p}modality_type_embeddings"] if fusion == "early" else [
            f"{p}fusion_layers", f"{p}fusion_layer_norm", f"{p}fusion_image_projection"
        ],
        "decoder": ["text_decoder"],
    }
    return {part: [name for name in names if name in modules] for part, names in candidates.items()}


def default_lora_target_modules(model: nn.Module) -> list[str]:
    """
    Leaf names of the linear layers LoRA adapts by default: the query and value projections of every attention,
    which covers, per fusion style,

    - **early**: the joint encoder's self-attention (`mm.text_model.layers.*.self_attn.{q,v}_proj`); the patch
      projection is left alone;
    - **late**: self-attention of both towers (`mm.vision_model...`, `mm.text_model...`);
    - **hybrid**: both towers, and the fusion layers' self-attention *and* cross-attention to the image (the part
      that aligns the modalities);
    - **coattention**: both towers, and both streams' self- and cross-attention in the co-attention layers;
    - **captioning** (late, hybrid, coattention): the vision tower and the decoder's self- and cross-attention (the
      head builds nothing else).

    Our layers name them `q_proj` / `v_proj`; a foreign BERT/ViT tower contributes `query` / `value`. `apply_lora`
    then keeps only the modules that lie in parts set to `"lora"`. Passing this list straight to `peft.LoraConfig`
    adapts every part.

    Args:
        model (`nn.Module`): An MM head or `MMModel`.

    Returns:
        `list[str]`: the leaf names present in the model, e.g. `["q_proj", "v_proj"]` or
        `["q_proj", "query", "v_proj", "value"]` with a BERT text tower.
    """
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    targets = sorted(present & set(_QUERY_VALUE_NAMES))
    if not targets:
        raise ValueError(f"{type(model).__name__} has no linear layer named {list(_QUERY_VALUE_NAMES)} to adapt.")
    return targets


def default_modules_to_save(model: nn.Module) -> list[str]:
    """
    The head modules trained in full and saved with the adapter, per head class:

    - `MMForVisualQuestionAnswering`, `MMForImageTextClassification`: `classifier` (new, randomly initialised);
    - `MMForImageTextRetrieval` (and `MMForPreTraining`): `itm_head` (early, hybrid) and the ITC projections
      `mm.visual_projection` / `mm.text_projection` (late, hybrid): small, and they define the embedding space;
    - `MMForConditionalGeneration`: nothing. Its `text_decoder.lm_head` is tied to the decoder's word embeddings
      (vocab x hidden, most of the decoder's weights), so saving it would defeat the adapter; the decoder is adapted
      through LoRA instead, or set `freeze={"decoder": "full"}` when it was never pretrained.

    Args:
        model (`nn.Module`): An MM head or `MMModel`.
    """
    modules = dict(model.named_modules())
    if "classifier" in modules:
        return ["classifier"]
    if isinstance(model, MMForConditionalGeneration):
        return []  # see above
    p = _prefix(model)
    return [name for name in ("itm_head", f"{p}visual_projection", f"{p}text_projection") if name in modules]


def resolve_freeze(freeze: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    Fills in the default mode (`"lora"`) for every part and validates the given ones.

    Args:
        freeze (`Mapping[str, str]`, *optional*): Part name (`vision`, `text`, `fusion`, `decoder`) to mode
            (`lora`, `frozen`, `full`).
    """
    freeze = dict(freeze or {})
    for part, mode in freeze.items():
        if part not in MODEL_PARTS:
            raise ValueError(f"freeze: unknown part {part!r}; the parts are {list(MODEL_PARTS)}.")
        if mode not in FREEZE_MODES:
            raise ValueError(f"freeze[{part!r}] must be one of {list(FREEZE_MODES)}, got {mode!r}.")
    return {part: freeze.get(part, "lora") for part in MODEL_PARTS}


def _full_training_units(model: nn.Module, root: str) -> list[str]:
    """Modules to hand to `modules_to_save` so that all of `root` trains.

    A tower is not wrapped as a whole: `MMModel.encode_image` checks the tower's class, which peft's wrapper would
    hide. Its children are wrapped instead (ModuleList members one by one, since a wrapped ModuleList cannot be
    iterated). Modules holding parameters of their own (e.g. the patch embeddings with the [CLS] token) and the
    decoder (its LM head is tied to its word embeddings, which must stay one module) are wrapped whole."""
    module = dict(model.named_modules())[root]
    if root == "text_decoder" or any(True for _ in module.parameters(recurse=False)):
        return [root]
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return [f"{root}.{name}" for name, _ in module.named_children()]
    units = []
    for name, child in module.named_children():
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            units += [f"{root}.{name}.{sub}" for sub, _ in child.named_children()]
        elif any(True for _ in child.parameters()):
            units.append(f"{root}.{name}")
    return units


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: list[str] | None = None,
    freeze: Mapping[str, str] | None = None,
    modules_to_save: list[str] | None = None,
) -> PeftModel:
    """
    Wraps an MM head in a peft `PeftModel` with LoRA adapters.

    Args:
        model (`nn.Module`): An MM head or `MMModel`.
        r (`int`): LoRA rank.
        alpha (`int`): LoRA scaling numerator (the update is scaled by `alpha / r`).
        dropout (`float`): Dropout on the LoRA branch input.
        target_modules (`list[str]`, *optional*): Leaf names (or full names) of the modules to adapt;
            `default_lora_target_modules(model)` when not given. Only matches inside parts in `"lora"` mode (and
            outside every part, e.g. a projection named explicitly) are adapted.
        freeze (`Mapping[str, str]`, *optional*): Mode per part, e.g. `{"vision": "frozen", "text": "lora"}`; parts
            not named are `"lora"`. See the module docstring.
        modules_to_save (`list[str]`, *optional*): Modules trained in full and saved with the adapter;
            `default_modules_to_save(model)` when not given. Parts in `"full"` mode are added to them.

    Returns:
        `PeftModel`: the wrapped model; only the adapters, the head and the `"full"` parts require gradients.
    """
    if isinstance(model, PeftModel):
        raise ValueError("apply_lora: the model is already a PeftModel.")
    if r < 1:
        raise ValueError(f"apply_lora: r must be >= 1, got {r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"apply_lora: dropout must be in [0, 1), got {dropout}.")
    modes = resolve_freeze(freeze)
    parts = model_parts(model)
    for part, mode in modes.items():
        if freeze and part in freeze and mode != "lora" and not parts[part]:
            raise ValueError(
                f"apply_lora: freeze[{part!r}]={mode!r}, but this {type(model).__name__} (fusion="
                f"{model.config.fusion!r}) has no {part} part."
            )
    leaf_names = list(target_modules) if target_modules is not None else default_lora_target_modules(model)
    save = list(modules_to_save) if modules_to_save is not None else default_modules_to_save(model)
    for part, mode in modes.items():
        if mode == "full":
            save += [unit for root in parts[part] for unit in _full_training_units(model, root)]

    # Every matching module outside the parts that are not in "lora" mode, by full name, so that adapter_config.json
    # states exactly what was adapted.
    excluded = tuple(root for part, mode in modes.items() if mode != "lora" for root in parts[part])
    in_saved = tuple(save)
    targets = sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d))
        and (name in leaf_names or name.rsplit(".", 1)[-1] in leaf_names)
        and not _under(name, excluded)
        and not _under(name, in_saved)
    )
    if not targets:
        raise ValueError(
            f"apply_lora: no module named {leaf_names} lies in a part set to 'lora' (modes: {modes}); nothing to "
            "adapt. Set a part to 'lora', or fine-tune without LoRA."
        )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=save or None,
        bias="none",
    )
    return get_peft_model(model, config)


def freeze_parts(model: nn.Module, freeze: Mapping[str, str]) -> None:
    """
    Without LoRA: sets `requires_grad` per part, `"frozen"` (False) or `"full"` (True); parts not named and the head
    are left as they are (trainable after loading).

    Args:
        model (`nn.Module`): An MM head or `MMModel` (not peft-wrapped).
        freeze (`Mapping[str, str]`): Part name to `"frozen"` or `"full"`.
    """
    parts = model_parts(model)
    modules = dict(model.named_modules())
    for part, mode in freeze.items():
        if part not in MODEL_PARTS:
            raise ValueError(f"freeze: unknown part {part!r}; the parts are {list(MODEL_PARTS)}.")
        if mode not in ("frozen", "full"):
            raise ValueError(f"freeze[{part!r}]={mode!r}: without LoRA a part is 'frozen' or 'full'.")
        if mode == "frozen" and not parts[part]:
            raise ValueError(f"freeze[{part!r}]='frozen', but this {type(model).__name__} has no {part} part.")
        for root in parts[part]:
            for param in modules[root].parameters():
                param.requires_grad_(mode == "full")


def _under(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def trainable_parameter_report(model: nn.Module) -> dict[str, int | float]:
    """
    Counts trainable and total parameters, each shared (tied) parameter once. For a peft model, `total` is the size
    of the model that runs: base weights plus adapters, without the frozen original copies that `modules_to_save`
    keeps next to the trained ones.

    Args:
        model (`nn.Module`): Any model, peft-wrapped or not.

    Returns:
        `dict`: `trainable` (int), `total` (int) and `fraction` (`trainable / total`, float).
    """
    originals = {
        id(p)
        for module in model.modules()
        if isinstance(module, ModulesToSaveWrapper)
        for p in module.original_module.parameters()
    }
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen or id(param) in originals:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return {"trainable": trainable, "total": total, "fraction": trainable / total if total else 0.0}


def save_head_config(model: PeftModel, directory: str) -> None:
    """
    Writes the adapted head's config (`config.json`) next to its adapter. The adapter's base is the checkpoint training
    started from, which may lack this head's settings (a VQA answer vocabulary, classification labels);
    `adapter_head_config` reads them back to rebuild the base head before the adapter is loaded.

    Args:
        model (`PeftModel`): The trained model, as `apply_lora` returned it.
        directory (`str`): The adapter folder.
    """
    head = model.get_base_model()
    head.config.architectures = [type(head).__name__]
    head.config.save_pretrained(directory)


def adapter_head_config(adapter_path: str) -> MMConfig | None:
    """The head config `save_head_config` kept next to the adapter at `adapter_path`, or `None` when there is none
    (the adapter's base checkpoint then has the head's settings)."""
    if not os.path.isfile(os.path.join(adapter_path, "config.json")):
        return None
    return MMConfig.from_pretrained(adapter_path)
