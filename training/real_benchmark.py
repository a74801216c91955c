"""A benchmark on real images: contrastive (ITC) pretraining of late-fusion models on Fashion-MNIST and OpenClipArt,
then zero-shot classification, image<->text retrieval and a linear probe, for several vision towers.

The recipe, the same for every tower (what `python -m run_scripts.real_benchmark` runs):

- **Text side**: the pretrained MiniLM-L6 text tower is locked (never trained). Its pooled `[CLS]` states of every
  caption and prompt are computed once; the text projection learns on top of them.
- **Vision side**, one of `TOWERS`:
  `effnet_lite0_locked` (pretrained EfficientNet-Lite0, locked: LiT, Zhai et al. 2022; its pooled features are
  computed once per dataset, so only the two projections and the temperature learn),
  `effnet_lite0_scratch` (the same network randomly initialised, trained with the projections),
  `vit_scratch` (the built-in ViT with the pretraining script's default conv stem and size, trained likewise).
- **Objective**: the symmetric InfoNCE loss of `modeling_mm.losses.contrastive_loss`, with group ids so that pairs of
  the same class (Fashion-MNIST) or the same title (OpenClipArt) are positives of each other rather than negatives.
- **BatchNorm**: a tower trained here gets its BatchNorm statistics re-estimated on training images before
  evaluation (`recalibrate_batch_norm`); a locked tower keeps its pretrained ones.
- **Input**: every image resized to `image_size` (28-px Fashion-MNIST upscaled, bicubic) and normalised as the
  default `MMImageProcessor` does; the resized pixels are cached as uint8 once per dataset.

Evaluation works from pooled vision features computed once per trained model:

- **Zero-shot classification**: the class prompt embedding is the renormalised mean over prompt templates (CLIP's
  prompt ensembling, Radford et al. 2021, Sec. 3.1.4); top-1 of image-prompt cosine similarity.
- **Retrieval**: recall@K both ways over the held-out images and their distinct titles, at title level
  (`evaluation.tasks.class_level_recall`): many drawings share a title ("gramastar"), so a hit is any top-K item
  with the query's title.
- **Linear probe**: multinomial logistic regression (L-BFGS, L2) on the tower's standardised pooled features of the
  training images, accuracy on the test split.

`--fusions hybrid,coattention` (and/or `late`) adds rows in a section of their own: one tower (`--fusion_tower`, the
locked EfficientNet-Lite0 by default, the best of the late rows) built with each fusion (`num_fusion_layers` 2) as an
`MMForImageTextRetrieval`, trained by the same `train_itc` loop and budget with ITC + ITM (ALBEF hard negatives, the
head's own `_itm_pairs` / `_itm`, on cached token states of the locked towers), then retrieval recall@1/5/10 both
ways on the held-out split from ITC alone and with each query's ITC top-k re-scored by ITM
(`retrieval_with_itm_rerank`). On Fashion-MNIST the retrieval gallery is every caption (class x template), at class
level.
"""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
import json
import logging
import math
import os
import time

import numpy as np
import torch
from torch import nn

from modeling_mm import MMForImageTextRetrieval, MMModel, MMVisionConfig
from modeling_mm.configuration_mm import CROSS_FUSIONS
from modeling_mm.losses import contrastive_loss_and_logits
from training.defaults import IMAGE_SIZE, MAX_TEXT_LENGTH, PATCH_EMBEDDING_TYPE, PATCH_SIZE


__all__ = [
    "FASHION_MNIST_TARGETS",
    "FUSIONS",
    "FUSION_RESULTS_SECTION_TITLE",
    "OPENCLIPART_TEMPLATES",
    "RESULTS_SECTION_TITLE",
    "TOWERS",
    "RealBenchmarkArguments",
    "build_tower_model",
    "encode_pooled_images",
    "encode_pooled_texts",
    "encode_text_states",
    "fusion_markdown",
    "itm_match_probability",
    "linear_probe_accuracy",
    "pixel_cache",
    "prompt_embeddings",
    "recalibrate_batch_norm",
    "results_markdown",
    "retrieval_with_itm_rerank",
    "run_fashion_mnist",
    "run_fusion_rows",
    "run_openclipart",
    "run_real_benchmark",
    "train_itc",
    "clipped_step",
    "update_results_section",
    "zero_shot_accuracy",
]

logger = logging.getLogger(__name__)

TOWERS = ("effnet_lite0_locked", "effnet_lite0_scratch", "vit_scratch")
TOWER_LABELS = {
    "effnet_lite0_locked": "(a) EfficientNet-Lite0, pretrained, locked (LiT)",
    "effnet_lite0_scratch": "(b) EfficientNet-Lite0, random init, trained",
    "vit_scratch": "(c) built-in ViT (conv stem), from scratch",
}
OPENCLIPART_TEMPLATES = ("a drawing of {}.", "clip art of {}.", "an icon of {}.", "{}")
RESULTS_SECTION_TITLE = "## Real images: Fashion-MNIST and OpenClipArt"
FUSION_RESULTS_SECTION_TITLE = "## Real images: hybrid vs co-attention fusion (ITC + ITM, ITM re-ranking)"
# `--fusions`: "late" is the ITC-only baseline on the same tower and budget; the cross fusions add ITM.
FUSIONS = ("late", "hybrid", "coattention")
FASHION_MNIST_TARGETS = {"heldout_zero_shot": 0.67, "linear_probe": 0.88}
RETRIEVAL_TARGET_RATIO = 3.0

# The built-in ViT as `run_scripts/pretrain.py` builds it by default (conv stem, 16-px patches, 256 wide, 4 layers,
# 4 heads); only the resolution follows `image_size`.
_VIT_DEFAULTS = dict(
    patch_size=PATCH_SIZE, patch_embedding_type=PATCH_EMBEDDING_TYPE, hidden_size=256, num_hidden_layers=4,
    num_attention_heads=4, intermediate_size=1024,
)


@dataclass
class RealBenchmarkArguments:
    output_dir: str = field(default="outputs/real_benchmark", metadata={"help": "Where results.json goes."})
    results_file: str | None = field(
        default="RESULTS.md", metadata={"help": "Markdown file whose real-image section is (re)written; '' for none."}
    )
    towers: str = field(default=",".join(TOWERS), metadata={"help": f"Comma-separated subset of {','.join(TOWERS)}."})
    datasets: str = field(default="fashion_mnist,openclipart", metadata={"help": "fashion_mnist, openclipart or both."})
    fashion_mnist_dir: str | None = field(default=None, metadata={"help": "idx folder (default: the Debian one)."})
    openclipart_png_dir: str | None = field(default=None, metadata={"help": "PNG tree (default: the Debian one)."})
    openclipart_svg_dir: str | None = field(default=None, metadata={"help": "SVG tree (default: the Debian one)."})
    install_missing: bool = field(
        default=False, metadata={"help": "apt-get install a missing dataset package (root with apt-get only)."}
    )
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Text tower folder (with its tokenizer). Default: the MiniLM-L6 one."}
    )
    effnet_dir: str = field(
        default="outputs/effnet_lite0",
        metadata={"help": "Converted EfficientNet-Lite0 folder; made with run_scripts.convert_efficientnet_lite if absent."},
    )
    image_size: int = field(default=IMAGE_SIZE, metadata={"help": "Input resolution of every tower (square)."})
    max_steps: int = field(default=60, metadata={"help": "ITC training steps per tower and dataset."})
    batch_size: int = field(default=32, metadata={"help": "Image-text pairs per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate (cosine, warmup)."})
    warmup_steps: int = field(default=10, metadata={"help": "Linear warmup steps."})
    weight_decay: float = field(default=0.02, metadata={"help": "AdamW weight decay."})
    projection_dim: int = field(default=256, metadata={"help": "ITC embedding width."})
    fashion_train_samples: int | None = field(
        default=2500, metadata={"help": "Fashion-MNIST training images used (seeded subset of 60,000; all if unset)."}
    )
    fashion_test_samples: int | None = field(
        default=2500, metadata={"help": "Fashion-MNIST test images (seeded subset of 10,000; all if unset)."}
    )
    fashion_heldout_classes: str = field(
        default="0,6,9", metadata={"help": "Class ids never seen in pretraining (zero-shot transfer)."}
    )
    openclipart_test_size: int = field(default=1000, metadata={"help": "OpenClipArt held-out images."})
    openclipart_max_samples: int | None = field(
        default=4000, metadata={"help": "Drawings used (seeded subset of the ~6,700 usable; all if unset)."}
    )
    fusions: str = field(
        default="",
        metadata={"help": f"Comma-separated subset of {','.join(FUSIONS)}: also train `fusion_tower` with each fusion "
                          "(hybrid, coattention: ITC + ITM, `num_fusion_layers` layers; late: ITC only) on the same "
                          "budget and report retrieval from ITC and with ITM re-ranking, in their own section. "
                          "Empty: none."},
    )
    fusion_tower: str = field(default="effnet_lite0_locked", metadata={"help": "Vision tower of the --fusions rows."})
    num_fusion_layers: int = field(default=2, metadata={"help": "Fusion layers of the --fusions models."})
    rerank_top_k: int = field(default=16, metadata={"help": "ITC top-k re-scored by ITM, per query (--fusions)."})
    max_length: int = field(default=MAX_TEXT_LENGTH, metadata={"help": "Maximum text length in tokens."})
    eval_batch_size: int = field(default=128, metadata={"help": "Batch size of feature extraction."})
    num_threads: int = field(default=2, metadata={"help": "torch CPU threads."})
    seed: int = field(default=0, metadata={"help": "Seed of data subsets, splits, initialisation and batches."})
    quick: bool = field(default=False, metadata={"help": "Tiny smoke run (few images and steps; numbers meaningless)."})
    render_only: bool = field(
        default=False,
        metadata={"help": "Rewrite the Markdown section from <output_dir>/results.json without running anything."},
    )

    def apply_quick(self) -> None:
        """`--quick`: 4 steps on a few hundred images, at 32 px."""
        if not self.quick:
            return
        self.max_steps = min(self.max_steps, 4)
        self.batch_size = min(self.batch_size, 16)
        self.warmup_steps = min(self.warmup_steps, 1)
        self.image_size = min(self.image_size, 32)
        self.fashion_train_samples = min(self.fashion_train_samples or 300, 300)
        self.fashion_test_samples = min(self.fashion_test_samples or 200, 200)
        self.openclipart_test_size = min(self.openclipart_test_size, 40)
        self.openclipart_max_samples = min(self.openclipart_max_samples or 160, 160)
        self.eval_batch_size = min(self.eval_batch_size, 64)


# ---------------------------------------------------------------------------------------------------- towers


def _ensure_effnet_dir(effnet_dir: str) -> str:
    """The converted EfficientNet-Lite0 folder, converting the pretrained weights there first if needed."""
    if os.path.isfile(os.path.join(effnet_dir, "config.json")):
        return effnet_dir
    from run_scripts.convert_efficientnet_lite import main as convert

    logger.info("Converting EfficientNet-Lite0 into %s", effnet_dir)
    convert(["--output_dir", effnet_dir])
    return effnet_dir


def build_tower_model(
    tower: str,
    text_path: str,
    image_size: int,
    projection_dim: int,
    effnet_dir: str | None = None,
    model_class: type[MMModel] | type[MMForImageTextRetrieval] = MMModel,
    **config_kwargs,
) -> MMModel | MMForImageTextRetrieval:
    """
    A model of `model_class` (a late-fusion ITC `MMModel` by default) with the given vision tower and the pretrained
    text tower.

    Args:
        tower (`str`): One of `TOWERS`.
        text_path (`str`): Text tower folder (MiniLM-L6 by default).
        image_size (`int`): Input resolution (sets the built-in ViT's position grid; CNNs take any size).
        projection_dim (`int`): ITC embedding width.
        effnet_dir (`str`, *optional*): Converted EfficientNet-Lite0 folder (needed for the `effnet_*` towers).
        model_class (`type`, *optional*, defaults to `MMModel`): `MMModel` or `MMForImageTextRetrieval` (a cross
            fusion with its ITM head).
        config_kwargs: `MMConfig` fields; default `fusion="late", objectives=["itc"]`.
    """
    if tower not in TOWERS:
        raise ValueError(f"tower must be one of {TOWERS}, got {tower!r}.")
    kwargs = {"fusion": "late", "objectives": ["itc"], **config_kwargs, "projection_dim": projection_dim}
    if tower == "vit_scratch":
        vision_config = MMVisionConfig(image_size=image_size, **_VIT_DEFAULTS)
        return model_class.from_vision_text_pretrained(None, text_path, vision_config=vision_config, **kwargs)
    effnet_dir = _ensure_effnet_dir(effnet_dir)
    if tower == "effnet_lite0_locked":
        return model_class.from_vision_text_pretrained(effnet_dir, text_path, **kwargs)
    from transformers import AutoConfig

    import modeling_mm  # noqa: F401  (registers the tower's config with AutoConfig)

    vision_config = AutoConfig.from_pretrained(effnet_dir)
    return model_class.from_vision_text_pretrained(None, text_path, vision_config=vision_config, **kwargs)


def _fusion_model_kwargs(fusion: str, args: "RealBenchmarkArguments") -> dict:
    """`build_tower_model` arguments of a `--fusions` row: the late ITC model, or a retrieval head trained with ITC +
    ITM (ALBEF hard negatives) whose ITM head re-ranks."""
    if fusion == "late":
        return {}
    return {
        "model_class": MMForImageTextRetrieval,
        "fusion": fusion,
        "objectives": ["itc", "itm"],
        "num_fusion_layers": args.num_fusion_layers,
    }


def _seeded_tower_model(
    tower: str, text_path: str, args: "RealBenchmarkArguments", dataset: str, rows: dict, key: str | None = None,
    **build_kwargs,
) -> MMModel | MMForImageTextRetrieval | None:
    """The tower's model, seeded, with its text tower locked; `None` (recorded as blocked in `rows[key or tower]`)
    when the tower cannot be built here, e.g. no converted EfficientNet-Lite folder."""
    try:
        torch.manual_seed(args.seed)
        model = build_tower_model(
            tower, text_path, args.image_size, args.projection_dim, args.effnet_dir, **build_kwargs
        )
    except (ImportError, OSError, ValueError, KeyError) as err:
        logger.warning("%s, %s: blocked (%s: %s)", dataset, key or tower, type(err).__name__, err)
        rows[key or tower] = {"blocked": f"{type(err).__name__}: {err}"}
        return None
    _lock(model.base_model.text_model)
    return model


def _lock(module: nn.Module) -> None:
    module.requires_grad_(False)
    module.eval()


# ---------------------------------------------------------------------------------------------------- features


def pixel_cache(images: Sequence, image_size: int, batch_size: int = 512) -> torch.Tensor:
    """
    Decodes and resizes images once into a uint8 tensor `(N, 3, S, S)`, with the default `MMImageProcessor`
    (RGB conversion, transparent images composited on white, bicubic resize) but without rescaling/normalising.

    Args:
        images (`Sequence`): PIL images (or anything `MMImageProcessor` takes), e.g. a dataset's image column.
        image_size (`int`): Output side `S`.
        batch_size (`int`, *optional*, defaults to 512): Images decoded at a time.
    """
    from processing import MMImageProcessor

    processor = MMImageProcessor(size={"height": image_size, "width": image_size}, do_rescale=False, do_normalize=False)
    out = torch.empty((len(images), 3, image_size, image_size), dtype=torch.uint8)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pixels = processor(images=list(chunk), return_tensors="pt")["pixel_values"]  # (b, 3, S, S) float 0..255
        out[start : start + len(pixels)] = pixels.round().clamp(0, 255).to(torch.uint8)
    return out


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    # The default MMImageProcessor's rescale (1/255) and normalisation (mean = std = 0.5): values in [-1, 1].
    return pixels.float().div_(255.0).sub_(0.5).div_(0.5)


@torch.no_grad()
def encode_pooled_images(model: MMModel, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Pooled vision-tower features `(N, D_vision)` of uint8 images `(N, 3, S, S)`, in eval mode.

    Args:
        model (`MMModel`): A late or hybrid model.
        pixels (`torch.Tensor`): From `pixel_cache`.
        batch_size (`int`, *optional*, defaults to 256): Images per forward pass.
    """
    return _encode_images(model, pixels, batch_size, pooled_only=True)[0]


@torch.no_grad()
def _encode_images(
    model: MMModel, pixels: torch.Tensor, batch_size: int, pooled_only: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pooled features `(N, Dv)` and (unless `pooled_only`) token states `(N, K, Dv)` of uint8 images, in eval mode."""
    was_training = model.vision_model.training
    model.vision_model.eval()
    pooled, tokens = [], []
    for i in range(0, len(pixels), batch_size):
        out = model.encode_image(_normalise(pixels[i : i + batch_size]), pooled_only=pooled_only)
        pooled.append(out.pooler_output.float())
        if not pooled_only:
            tokens.append(out.last_hidden_state.float())
    model.vision_model.train(was_training)
    return torch.cat(pooled), (None if pooled_only else torch.cat(tokens))


@torch.no_grad()
def encode_pooled_texts(model: MMModel, tokenizer, texts: Sequence[str], max_length: int = 32, batch_size: int = 256) -> torch.Tensor:
    """Pooled text-tower features `(N, D_text)` (the `[CLS]` state), in eval mode.

    Args:
        model (`MMModel`): A late or hybrid model.
        tokenizer: The text tower's tokenizer.
        texts (`Sequence[str]`): Texts to encode.
        max_length (`int`, *optional*, defaults to 32): Truncation length.
        batch_size (`int`, *optional*, defaults to 256): Texts per forward pass.
    """
    was_training = model.text_model.training
    model.text_model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out.append(model.encode_text(enc["input_ids"], enc["attention_mask"], pooled_only=True).pooler_output.float())
    model.text_model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def encode_text_states(
    model: MMModel, tokenizer, texts: Sequence[str], max_length: int = 32, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The locked text tower's pooled features `(N, Dt)`, token states `(N, L, Dt)` and attention mask `(N, L)`, in
    eval mode; every text is padded to the longest one (`L`), so rows of the cache can be stacked into any batch of
    fusion inputs.

    Args:
        model (`MMModel`): A hybrid or co-attention model (any with a text tower).
        tokenizer: The text tower's tokenizer.
        texts (`Sequence[str]`): Texts to encode.
        max_length (`int`, *optional*, defaults to 32): Truncation length.
        batch_size (`int`, *optional*, defaults to 256): Texts per forward pass.
    """
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    was_training = model.text_model.training
    model.text_model.eval()
    pooled, hidden = [], []
    for i in range(0, len(texts), batch_size):
        out = model.encode_text(enc["input_ids"][i : i + batch_size], enc["attention_mask"][i : i + batch_size])
        pooled.append(out.pooler_output.float())
        hidden.append(out.last_hidden_state.float())
    model.text_model.train(was_training)
    return torch.cat(pooled), torch.cat(hidden), enc["attention_mask"]


@torch.no_grad()
def recalibrate_batch_norm(model: MMModel, pixels: torch.Tensor, batch_size: int = 64, num_batches: int = 20) -> int:
    """
    Re-estimates the vision tower's BatchNorm statistics on training images ("precise BN", Wu & Johnson 2021,
    "Rethinking 'Batch' in BatchNorm", Sec. 3): running statistics are reset and recomputed as the plain average over
    `num_batches` forward passes in train mode. A tower trained from scratch for a few hundred steps needs this:
    EfficientNet's BatchNorm momentum (0.01, TensorFlow's 0.99 decay) leaves the running statistics near their
    initial values, and eval-mode features would then be meaningless. Returns the number of BatchNorm layers.

    Args:
        model (`MMModel`): A late or hybrid model.
        pixels (`torch.Tensor`): `(N, 3, S, S)` uint8 training images (`pixel_cache`).
        batch_size (`int`, *optional*, defaults to 64): Images per pass.
        num_batches (`int`, *optional*, defaults to 20): Passes (the first `batch_size * num_batches` images).
    """
    norms = [m for m in model.vision_model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the mean over all passes
    was_training = model.vision_model.training
    model.vision_model.train()
    for i in range(0, min(len(pixels), batch_size * num_batches), batch_size):
        model.encode_image(_normalise(pixels[i : i + batch_size]), pooled_only=True)
    model.vision_model.train(was_training)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return len(norms)


def _project(projection: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(projection(pooled), dim=-1)


@torch.no_grad()
def prompt_embeddings(model: MMModel, text_pooled: torch.Tensor) -> torch.Tensor:
    """Class embeddings `(C, P)` from pooled text features `(C, T, D_text)` of C classes x T templates: each prompt
    projected and normalised, averaged over the templates, renormalised (CLIP prompt ensembling)."""
    embeds = _project(model.text_projection, text_pooled)  # (C, T, P)
    return nn.functional.normalize(embeds.mean(1), dim=-1)


def zero_shot_accuracy(
    image_embeds: torch.Tensor, class_embeds: torch.Tensor, labels: torch.Tensor, classes: Sequence[int] | None = None
) -> float:
    """
    Top-1 accuracy of nearest-prompt classification.

    Args:
        image_embeds (`torch.Tensor`): `(N, P)` normalised image embeddings.
        class_embeds (`torch.Tensor`): `(C, P)` normalised class embeddings.
        labels (`torch.Tensor`): `(N,)` class ids in `0..C-1`.
        classes (`Sequence[int]`, *optional*): Restrict both the images and the candidate prompts to these classes
            (e.g. the held-out ones: a 3-way task). All classes when `None`.
    """
    if classes is None:
        classes = list(range(class_embeds.shape[0]))
    classes_t = torch.tensor(list(classes), dtype=torch.long)
    keep = torch.isin(labels, classes_t)
    if not keep.any():
        raise ValueError(f"No image has a label in {list(classes)}.")
    predicted = classes_t[(image_embeds[keep] @ class_embeds[classes_t].t()).argmax(1)]  # (N_keep,)
    return float((predicted == labels[keep]).float().mean())


def linear_probe_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    l2: float = 1e-4, max_iter: int = 100,
) -> float:
    """
    Multinomial logistic regression on locked features: standardised with the training mean/std, fitted full-batch
    with L-BFGS on cross-entropy + `l2 * ||W||^2`; returns test accuracy.

    Args:
        train_x, test_x (`torch.Tensor`): `(N, D)` features.
        train_y, test_y (`torch.Tensor`): `(N,)` integer labels.
        l2 (`float`, *optional*, defaults to 1e-4): Weight penalty.
        max_iter (`int`, *optional*, defaults to 100): L-BFGS iterations.
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    x = (train_x - mean) / std
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    linear = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(
        linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(linear(x), train_y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        predicted = linear((test_x - mean) / std).argmax(1)
    return float((predicted == test_y).float().mean())


@torch.no_grad()
def itm_match_probability(
    model: MMForImageTextRetrieval,
    text_hidden: torch.Tensor,
    text_mask: torch.Tensor,
    image_tokens: torch.Tensor,
    text_rows: torch.Tensor,
    image_rows: torch.Tensor,
    batch_size: int = 1024,
) -> torch.Tensor:
    """
    ITM match probability `(P,)` of the pairs (text `text_rows[p]`, image `image_rows[p]`) from cached tower states:
    the fused `[CLS]` through the ITM head, as `MMForImageTextRetrieval.itm_scores` computes it from raw inputs.

    Args:
        model (`MMForImageTextRetrieval`): A hybrid or co-attention retrieval head.
        text_hidden, text_mask (`torch.Tensor`): `(T, L, Dt)` token states and `(T, L)` mask (`encode_text_states`).
        image_tokens (`torch.Tensor`): `(N, K, Dv)` vision token states.
        text_rows, image_rows (`torch.Tensor`): `(P,)` long rows of the pairs.
        batch_size (`int`, *optional*, defaults to 1024): Pairs per fusion pass.
    """
    mm = model.base_model
    out = []
    for i in range(0, len(text_rows), batch_size):
        rows, images = text_rows[i : i + batch_size], image_rows[i : i + batch_size]
        unique, index = images.unique(return_inverse=True)  # each image's tokens (co-attention: projected) once
        fused = mm.fuse(
            text_hidden[rows], text_mask[rows], image_tokens[unique], image_index=index,
            output_positions=rows.new_zeros(len(rows), 1),
        ).last_hidden_state  # (p, 1, Dt)
        out.append(model.itm_head(fused[:, 0]).softmax(-1)[:, 1])
    return torch.cat(out) if out else text_hidden.new_zeros(0)


@torch.no_grad()
def retrieval_with_itm_rerank(
    similarity: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
    match_probability: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    top_k: int = 16,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """
    Class-level recall@K both ways from ITC similarity, and with each query's ITC top-k re-scored by ITM (ALBEF's
    retrieval inference, Li et al. 2021, Sec. 4): a re-scored candidate gets `1 + p(match)`, so the top-k keep their
    places above the rest and are reordered among themselves by ITM alone, as in `MMForImageTextRetrieval.rank_texts`.
    Image->text re-ranks each image's top-k texts, text->image each text's top-k images.

    Args:
        similarity (`torch.Tensor`): `(N_image, N_text)` ITC scores.
        image_labels, text_labels (`torch.Tensor`): Class (title) of each image `(N_image,)` and text `(N_text,)`.
        match_probability (`Callable`, *optional*): `(text_rows, image_rows) -> (P,)` ITM probabilities (e.g.
            `itm_match_probability`); without it (late fusion) only the ITC recall is returned.
        top_k (`int`, *optional*, defaults to 16): Candidates re-scored per query.
        ks (`tuple`, *optional*): Recall cut-offs.

    Returns:
        `{"itc": {...}}`, plus `"itm_reranked": {...}` and `"itm_rerank_top1_changed": {"i2t": f, "t2i": f}` (the
        fraction of queries whose first result ITM changed) with `match_probability`.
    """
    from evaluation.tasks import class_level_recall

    out = {"itc": class_level_recall(similarity, image_labels, text_labels, ks=ks)}
    if match_probability is None:
        return out
    num_images, num_texts = similarity.shape
    # Image->text: rows are images, the top-k columns of each are re-scored.
    k = min(top_k, num_texts)
    top = similarity.topk(k, dim=1).indices  # (N_image, k) text ids
    probability = match_probability(top.reshape(-1), torch.arange(num_images).repeat_interleave(k))
    i2t = similarity.scatter(1, top, 1.0 + probability.view(num_images, k))
    # Text->image: the same on the transposed scores.
    k = min(top_k, num_images)
    top_t = similarity.t().topk(k, dim=1).indices  # (N_text, k) image ids
    probability = match_probability(torch.arange(num_texts).repeat_interleave(k), top_t.reshape(-1))
    t2i = similarity.t().scatter(1, top_t, 1.0 + probability.view(num_texts, k)).t()  # (N_image, N_text)
    i2t_recall = class_level_recall(i2t, image_labels, text_labels, ks=ks)
    t2i_recall = class_level_recall(t2i, image_labels, text_labels, ks=ks)
    out["itm_reranked"] = {
        **{key: v for key, v in t2i_recall.items() if key.startswith("t2i")},
        **{key: v for key, v in i2t_recall.items() if key.startswith("i2t")},
    }
    out["itm_rerank_top1_changed"] = {
        "i2t": float((i2t.argmax(1) != similarity.argmax(1)).float().mean()),
        "t2i": float((t2i.argmax(0) != similarity.argmax(0)).float().mean()),
    }
    return out


# ---------------------------------------------------------------------------------------------------- training


def train_itc(
    model: MMModel | MMForImageTextRetrieval,
    sample_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    text_pooled: torch.Tensor,
    max_steps: int,
    learning_rate: float,
    warmup_steps: int,
    weight_decay: float,
    seed: int,
    image_pixels: torch.Tensor | None = None,
    image_pooled: torch.Tensor | None = None,
    log_every: int = 50,
    text_states: tuple[torch.Tensor, torch.Tensor] | None = None,
    image_tokens: torch.Tensor | None = None,
) -> dict[str, float]:
    """
    ITC training of a model whose text tower is locked (its pooled features `text_pooled` given): a late-fusion
    `MMModel`, or an `MMForImageTextRetrieval` of a cross fusion (hybrid, coattention), which also trains ITM on
    ALBEF hard negatives drawn from the batch's ITC similarity, through the head's own `_itm_pairs` / `_itm`.

    With `image_pooled` (a locked vision tower's cached features) only the projections, the temperature and (ITM)
    the fusion layers and the ITM head learn; with `image_pixels` the vision tower learns too. AdamW with linear
    warmup then cosine decay to 0.

    Args:
        model (`MMModel` or `MMForImageTextRetrieval`): Late fusion, or a cross fusion with its ITM head.
        sample_batch (`Callable`): `generator -> (image_rows, text_rows, group_ids)`, three `(B,)` long tensors:
            rows of the image cache, rows of `text_pooled`, and ids whose equal values are positives of each other.
        text_pooled (`torch.Tensor`): `(T, D_text)` locked text features.
        max_steps, learning_rate, warmup_steps, weight_decay: The schedule.
        seed (`int`): Seed of the batch sampler.
        image_pixels (`torch.Tensor`, *optional*): `(N, 3, S, S)` uint8 cache, when the vision tower trains.
        image_pooled (`torch.Tensor`, *optional*): `(N, D_vision)` cached features, when it is locked.
        log_every (`int`, *optional*, defaults to 50): Log the mean loss every this many steps.
        text_states (`tuple`, *optional*): ITM only: the locked text tower's token states `(T, L, D_text)` and
            attention mask `(T, L)`, rows as in `text_pooled` (`encode_text_states`).
        image_tokens (`torch.Tensor`, *optional*): ITM with a locked vision tower: its cached token states
            `(N, K, D_vision)`.

    Returns:
        `{"final_loss", "train_seconds", "trainable_parameters"}`, plus `"final_itc_loss"` and `"final_itm_loss"`
        with ITM.
    """
    if (image_pixels is None) == (image_pooled is None):
        raise ValueError("Pass exactly one of image_pixels (tower trains) and image_pooled (tower locked).")
    mm = model.base_model
    with_itm = hasattr(model, "itm_head") and "itm" in model.config.objectives
    if with_itm and (text_states is None or (image_pooled is not None and image_tokens is None)):
        raise ValueError("ITM training needs text_states and, with a locked vision tower, image_tokens.")
    # Train mode for what learns (fusion dropout; ITM samples its hard negatives only in training), eval for the
    # locked towers.
    model.train()
    _lock(mm.text_model)
    if image_pooled is not None:
        _lock(mm.vision_model)
    params = [p for p in model.parameters() if p.requires_grad]
    # No weight decay on the temperature (CLIP), norms and biases.
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=learning_rate
    )

    def lr_lambda(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    running, losses, parts = 0.0, [], {"itc": [], "itm": []}
    for step in range(max_steps):
        image_rows, text_rows, ids = sample_batch(generator)
        tokens = None
        if image_pooled is not None:
            pooled = image_pooled[image_rows]
            tokens = image_tokens[image_rows] if with_itm else None
        else:
            out = mm.encode_image(_normalise(image_pixels[image_rows]), pooled_only=not with_itm)
            pooled, tokens = out.pooler_output, out.last_hidden_state  # (B, Dv), (B, K, Dv) or None
        image_embeds = _project(mm.visual_projection, pooled)  # (B, P)
        text_embeds = _project(mm.text_projection, text_pooled[text_rows])  # (B, P)
        loss, similarity = contrastive_loss_and_logits(image_embeds, text_embeds, mm.clamped_logit_scale(), ids=ids)
        if with_itm:
            # As `MMForImageTextRetrieval._retrieval_loss`, from the cached text states: B positives, then one hard
            # negative text per image and one hard negative image per text, never within a group (`ids`).
            text_idx, image_idx, labels = model._itm_pairs(similarity, ids, len(ids), ids.device)
            hidden, mask = text_states
            rows = text_rows[text_idx]
            fused = mm.fuse(
                hidden[rows], mask[rows], tokens, image_index=image_idx,
                output_positions=text_idx.new_zeros(len(text_idx), 1),
            ).last_hidden_state  # (P, 1, Dt): the [CLS] state only
            itm = model._itm(fused[:, 0], labels)[0]
            parts["itc"].append(float(loss.detach()))
            parts["itm"].append(float(itm.detach()))
            loss = model.config.itc_weight * loss + model.config.itm_weight * itm
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        running += losses[-1]
        if (step + 1) % log_every == 0 or step + 1 == max_steps:
            logger.info("step %d/%d: loss %.4f (%.1fs)", step + 1, max_steps, running / ((step % log_every) + 1),
                        time.time() - start)
            running = 0.0
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"Training loss is {losses[-1]} at step {step + 1}.")
    model.eval()

    def tail(values: list[float]) -> float:
        return round(float(np.mean(values[-min(20, len(values)) :])), 4)

    log = {
        "final_loss": tail(losses),
        "train_seconds": round(time.time() - start, 1),
        "trainable_parameters": sum(p.numel() for p in params),
    }
    if with_itm:
        log.update(final_itc_loss=tail(parts["itc"]), final_itm_loss=tail(parts["itm"]))
    return log


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _epoch_sampler(pool: torch.Tensor, batch_size: int) -> Callable[[torch.Generator], torch.Tensor]:
    """Batches of rows from `pool`, each epoch a fresh permutation (no row twice in a batch)."""
    state = {"order": torch.empty(0, dtype=torch.long), "pos": 0}
    batch_size = min(batch_size, len(pool))

    def next_rows(generator: torch.Generator) -> torch.Tensor:
        if state["pos"] + batch_size > len(state["order"]):
            state["order"], state["pos"] = pool[torch.randperm(len(pool), generator=generator)], 0
        rows = state["order"][state["pos"] : state["pos"] + batch_size]
        state["pos"] += batch_size
        return rows

    return next_rows


# ---------------------------------------------------------------------------------------------------- datasets


def _trainable_and_total(model: MMModel, locked_vision: bool) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trained = sum(
        p.numel() for n, p in model.named_parameters()
        if not n.startswith("text_model") and not (locked_vision and n.startswith("vision_model"))
    )
    return trained, total


def run_fashion_mnist(
    args: RealBenchmarkArguments, towers: Sequence[str], text_path: str, fusions: Sequence[str] = ()
) -> dict:
    """
    Fashion-MNIST: ITC pretraining on the captions of the 7 seen classes, then zero-shot top-1 on the held-out
    classes (3-way) and on all 10, and a linear probe (train subset -> full test split), per tower.

    Args:
        args (`RealBenchmarkArguments`): Settings.
        towers (`Sequence[str]`): Towers to run (subset of `TOWERS`).
        text_path (`str`): Text tower folder.
        fusions (`Sequence[str]`, *optional*): `--fusions` rows to add (`run_fusion_rows`), under `"fusions"`.

    Returns:
        `{"setup": {...}, "towers": {tower: {...} | {"blocked": reason}}}`, plus `"fusions"` with `fusions`.
    """
    from processing.data import build_default_processor
    from processing.real_datasets import (
        FASHION_MNIST_CLASSES,
        FASHION_MNIST_DIR,
        FASHION_MNIST_TEMPLATES,
        fashion_mnist_caption,
        load_fashion_mnist,
    )

    directory = args.fashion_mnist_dir or FASHION_MNIST_DIR
    heldout = sorted({int(c) for c in args.fashion_heldout_classes.split(",") if c.strip()})
    seen = [c for c in range(len(FASHION_MNIST_CLASSES)) if c not in heldout]
    start = time.time()
    train = load_fashion_mnist(directory, "train", args.fashion_train_samples, args.seed, args.install_missing)
    test = load_fashion_mnist(directory, "test", args.fashion_test_samples, args.seed, args.install_missing)
    train_pixels = pixel_cache(train["image"], args.image_size)
    test_pixels = pixel_cache(test["image"], args.image_size)
    train_labels = torch.tensor(train["label"], dtype=torch.long)
    test_labels = torch.tensor(test["label"], dtype=torch.long)
    logger.info("Fashion-MNIST: %d train / %d test images at %d px (%.1fs)", len(train), len(test), args.image_size,
                time.time() - start)
    tokenizer = build_default_processor(max_length=args.max_length, tokenizer_path=text_path).tokenizer
    num_templates = len(FASHION_MNIST_TEMPLATES)
    prompts = [fashion_mnist_caption(c, t) for c in range(len(FASHION_MNIST_CLASSES)) for t in range(num_templates)]
    seen_rows = torch.nonzero(torch.isin(train_labels, torch.tensor(seen))).squeeze(1)
    next_rows = _epoch_sampler(seen_rows, args.batch_size)

    def sample_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = next_rows(generator)
        labels = train_labels[rows]
        # A fresh caption template per pair and step; pairs of one class are positives of each other.
        templates = torch.randint(num_templates, (len(rows),), generator=generator)
        return rows, labels * num_templates + templates, labels

    setup = {
        "train_images": len(train),
        "pretraining_pairs_pool": int(len(seen_rows)),
        "test_images": len(test),
        "seen_classes": [FASHION_MNIST_CLASSES[c] for c in seen],
        "heldout_classes": [FASHION_MNIST_CLASSES[c] for c in heldout],
        "templates": list(FASHION_MNIST_TEMPLATES),
    }
    results: dict = {"setup": setup, "towers": {}}
    for tower in towers:
        tower_start = time.time()
        model = _seeded_tower_model(tower, text_path, args, "Fashion-MNIST", results["towers"])
        if model is None:
            continue
        locked = tower == "effnet_lite0_locked"
        text_pooled = encode_pooled_texts(model, tokenizer, prompts, args.max_length)  # (10 * T, D_text)
        if locked:
            _lock(model.vision_model)
            train_pooled = encode_pooled_images(model, train_pixels, args.eval_batch_size)
            test_pooled = encode_pooled_images(model, test_pixels, args.eval_batch_size)
            log = train_itc(model, sample_batch, text_pooled, args.max_steps, args.learning_rate, args.warmup_steps,
                            args.weight_decay, args.seed, image_pooled=train_pooled)
        else:
            log = train_itc(model, sample_batch, text_pooled, args.max_steps, args.learning_rate, args.warmup_steps,
                            args.weight_decay, args.seed, image_pixels=train_pixels)
            recalibrate_batch_norm(model, train_pixels[torch.randperm(len(train_pixels), generator=_seeded(args.seed))])
            train_pooled = encode_pooled_images(model, train_pixels, args.eval_batch_size)
            test_pooled = encode_pooled_images(model, test_pixels, args.eval_batch_size)
        with torch.no_grad():
            class_embeds = prompt_embeddings(model, text_pooled.view(len(FASHION_MNIST_CLASSES), num_templates, -1))
            test_embeds = _project(model.visual_projection, test_pooled)
        trained, total = _trainable_and_total(model, locked)
        results["towers"][tower] = {
            "zero_shot_heldout_top1": zero_shot_accuracy(test_embeds, class_embeds, test_labels, heldout),
            "zero_shot_all10_top1": zero_shot_accuracy(test_embeds, class_embeds, test_labels),
            "zero_shot_seen_top1": zero_shot_accuracy(test_embeds, class_embeds, test_labels, seen),
            "linear_probe_top1": linear_probe_accuracy(train_pooled, train_labels, test_pooled, test_labels),
            "parameters": total,
            "trained_parameters": trained,
            **log,
            "seconds": round(time.time() - tower_start, 1),
        }
        logger.info("Fashion-MNIST, %s: %s", tower, results["towers"][tower])
    if fusions:
        # Retrieval gallery: every caption (10 classes x templates), a hit being any caption of the image's class.
        results["fusions"] = run_fusion_rows(
            args, fusions, text_path, tokenizer, prompts, sample_batch, train_pixels, test_pixels, test_labels,
            torch.arange(len(prompts)), torch.arange(len(prompts)) // num_templates, "Fashion-MNIST",
        )
        setup["retrieval_gallery"] = (
            f"{len(prompts)} captions ({len(FASHION_MNIST_CLASSES)} classes x {num_templates} templates)"
        )
    return results


def run_openclipart(
    args: RealBenchmarkArguments, towers: Sequence[str], text_path: str, fusions: Sequence[str] = ()
) -> dict:
    """
    OpenClipArt: ITC pretraining on the training drawings and their titles, then title-level retrieval recall@1/5/10
    both ways on the held-out split and zero-shot classification into the top-level categories, per tower.

    Args:
        args (`RealBenchmarkArguments`): Settings.
        towers (`Sequence[str]`): Towers to run (subset of `TOWERS`).
        text_path (`str`): Text tower folder.
        fusions (`Sequence[str]`, *optional*): `--fusions` rows to add (`run_fusion_rows`), under `"fusions"`.

    Returns:
        `{"setup": {...}, "towers": {tower: {...} | {"blocked": reason}}}`, plus `"fusions"` with `fusions`.
    """
    from processing.collators import BadSampleCounter
    from processing.data import build_default_processor
    from processing.real_datasets import OPENCLIPART_PNG_DIR, OPENCLIPART_SVG_DIR, load_openclipart
    from evaluation.tasks import class_level_recall

    start = time.time()
    bad = BadSampleCounter("OpenClipArt unusable files", max_listed=1000)
    data = load_openclipart(
        args.openclipart_png_dir or OPENCLIPART_PNG_DIR,
        args.openclipart_svg_dir or OPENCLIPART_SVG_DIR,
        test_size=args.openclipart_test_size,
        seed=args.seed,
        bad_samples=bad,
        max_samples=args.openclipart_max_samples,
        install_missing=args.install_missing,
    )
    train, test = data["train"], data["test"]
    train_pixels = pixel_cache(train["image"], args.image_size, batch_size=64)
    test_pixels = pixel_cache(test["image"], args.image_size, batch_size=64)
    logger.info("OpenClipArt: %d train / %d test drawings at %d px (%.1fs)", len(train), len(test), args.image_size,
                time.time() - start)
    categories = train.features["category"].names
    category_prompts = [t.format(c.replace("_", " ")) for c in categories for t in OPENCLIPART_TEMPLATES]
    # Titles: one text per distinct title; train and test titles in one table.
    titles = sorted(set(train["caption"]) | set(test["caption"]))
    title_id = {t: i for i, t in enumerate(titles)}
    train_title_ids = torch.tensor([title_id[t] for t in train["caption"]], dtype=torch.long)
    test_titles = sorted(set(test["caption"]))
    test_title_rows = torch.tensor([title_id[t] for t in test_titles], dtype=torch.long)
    test_image_title = torch.tensor([test_titles.index(t) for t in test["caption"]], dtype=torch.long)
    test_categories = torch.tensor(test["category"], dtype=torch.long)
    tokenizer = build_default_processor(max_length=args.max_length, tokenizer_path=text_path).tokenizer
    next_rows = _epoch_sampler(torch.arange(len(train)), args.batch_size)

    def sample_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = next_rows(generator)
        ids = train_title_ids[rows]  # drawings sharing a title are positives of each other
        return rows, ids, ids

    setup = {
        "train_images": len(train),
        "test_images": len(test),
        "distinct_test_titles": len(test_titles),
        "categories": categories,
        "category_level": "top-level folder under png/ ('unsorted' dropped)",
        "unusable_files": bad.count,
        "unusable_examples": bad.samples,
    }
    results: dict = {"setup": setup, "towers": {}}
    for tower in towers:
        tower_start = time.time()
        model = _seeded_tower_model(tower, text_path, args, "OpenClipArt", results["towers"])
        if model is None:
            continue
        locked = tower == "effnet_lite0_locked"
        title_pooled = encode_pooled_texts(model, tokenizer, titles, args.max_length)
        category_pooled = encode_pooled_texts(model, tokenizer, category_prompts, args.max_length)
        if locked:
            _lock(model.vision_model)
            train_pooled = encode_pooled_images(model, train_pixels, args.eval_batch_size)
            log = train_itc(model, sample_batch, title_pooled, args.max_steps, args.learning_rate, args.warmup_steps,
                            args.weight_decay, args.seed, image_pooled=train_pooled)
        else:
            log = train_itc(model, sample_batch, title_pooled, args.max_steps, args.learning_rate, args.warmup_steps,
                            args.weight_decay, args.seed, image_pixels=train_pixels)
            recalibrate_batch_norm(model, train_pixels[torch.randperm(len(train_pixels), generator=_seeded(args.seed))])
        test_pooled = encode_pooled_images(model, test_pixels, args.eval_batch_size)
        with torch.no_grad():
            image_embeds = _project(model.visual_projection, test_pooled)  # (N_test, P)
            text_embeds = _project(model.text_projection, title_pooled[test_title_rows])  # (T_test, P)
            category_embeds = prompt_embeddings(
                model, category_pooled.view(len(categories), len(OPENCLIPART_TEMPLATES), -1)
            )
        recall = class_level_recall(
            image_embeds @ text_embeds.t(), test_image_title, torch.arange(len(test_titles)), ks=(1, 5, 10)
        )
        trained, total = _trainable_and_total(model, locked)
        results["towers"][tower] = {
            **recall,
            "zero_shot_category_top1": zero_shot_accuracy(image_embeds, category_embeds, test_categories),
            "parameters": total,
            "trained_parameters": trained,
            **log,
            "seconds": round(time.time() - tower_start, 1),
        }
        logger.info("OpenClipArt, %s: %s", tower, results["towers"][tower])
    if fusions:
        results["fusions"] = run_fusion_rows(
            args, fusions, text_path, tokenizer, titles, sample_batch, train_pixels, test_pixels, test_image_title,
            test_title_rows, torch.arange(len(test_titles)), "OpenClipArt",
        )
    return results


def run_fusion_rows(
    args: RealBenchmarkArguments,
    fusions: Sequence[str],
    text_path: str,
    tokenizer,
    texts: Sequence[str],
    sample_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    train_pixels: torch.Tensor,
    test_pixels: torch.Tensor,
    test_image_labels: torch.Tensor,
    test_text_rows: torch.Tensor,
    test_text_labels: torch.Tensor,
    dataset: str,
) -> dict:
    """
    The `--fusions` rows of one dataset: `args.fusion_tower` built with each fusion, trained by `train_itc` on the
    dataset's batches and budget (ITC; ITC + ITM for the cross fusions), then class-level retrieval on the held-out
    images against the gallery texts, from ITC and with ITM re-ranking of the ITC top-`args.rerank_top_k`
    (`retrieval_with_itm_rerank`).

    Args:
        args (`RealBenchmarkArguments`): Settings.
        fusions (`Sequence[str]`): Subset of `FUSIONS`.
        text_path (`str`): Text tower folder.
        tokenizer: Its tokenizer.
        texts (`Sequence[str]`): Every caption the batches and the gallery index (`sample_batch`'s text rows).
        sample_batch (`Callable`): As in `train_itc`.
        train_pixels, test_pixels (`torch.Tensor`): uint8 image caches (`pixel_cache`).
        test_image_labels (`torch.Tensor`): `(N_test,)` class (title) of each held-out image.
        test_text_rows, test_text_labels (`torch.Tensor`): Rows of `texts` in the retrieval gallery, and their class.
        dataset (`str`): Name for the log.

    Returns:
        `{"tower": ..., "rows": {fusion: {...} | {"blocked": reason}}}`.
    """
    tower = args.fusion_tower
    locked = tower == "effnet_lite0_locked"
    rows: dict = {}
    for fusion in fusions:
        row_start = time.time()
        model = _seeded_tower_model(tower, text_path, args, dataset, rows, key=fusion,
                                    **_fusion_model_kwargs(fusion, args))
        if model is None:
            continue
        mm, cross = model.base_model, fusion in CROSS_FUSIONS
        text_hidden = text_mask = None
        if cross:
            text_pooled, text_hidden, text_mask = encode_text_states(mm, tokenizer, texts, args.max_length)
        else:
            text_pooled = encode_pooled_texts(mm, tokenizer, texts, args.max_length)
        text_states = (text_hidden, text_mask) if cross else None
        common = (sample_batch, text_pooled, args.max_steps, args.learning_rate, args.warmup_steps,
                  args.weight_decay, args.seed)
        if locked:
            _lock(mm.vision_model)
            train_pooled, train_tokens = _encode_images(mm, train_pixels, args.eval_batch_size, pooled_only=not cross)
            log = train_itc(model, *common, image_pooled=train_pooled, text_states=text_states,
                            image_tokens=train_tokens)
        else:
            log = train_itc(model, *common, image_pixels=train_pixels, text_states=text_states)
            recalibrate_batch_norm(mm, train_pixels[torch.randperm(len(train_pixels), generator=_seeded(args.seed))])
        eval_start = time.time()
        test_pooled, test_tokens = _encode_images(mm, test_pixels, args.eval_batch_size, pooled_only=not cross)
        with torch.no_grad():
            image_embeds = _project(mm.visual_projection, test_pooled)  # (N_test, P)
            text_embeds = _project(mm.text_projection, text_pooled[test_text_rows])  # (T_test, P)
        match = None
        if cross:  # (text_rows, image_rows) of the gallery -> p(match)
            match = partial(
                itm_match_probability, model, text_hidden[test_text_rows], text_mask[test_text_rows], test_tokens
            )
        recall = retrieval_with_itm_rerank(
            image_embeds @ text_embeds.t(), test_image_labels, test_text_labels, match, args.rerank_top_k
        )
        rows[fusion] = {
            **recall,
            "parameters": sum(p.numel() for p in model.parameters()),
            **log,
            "eval_seconds": round(time.time() - eval_start, 1),
            "seconds": round(time.time() - row_start, 1),
        }
        logger.info("%s, %s fusion on %s: %s", dataset, fusion, tower, rows[fusion])
    return {"tower": tower, "rows": rows}


# ---------------------------------------------------------------------------------------------------- report


def _targets(results: dict) -> list[tuple[str, str, str]]:
    """(target, value, verdict) rows; a target whose inputs are missing is reported as not measured."""
    rows = []
    fashion = results.get("fashion_mnist", {}).get("towers", {})
    clipart = results.get("openclipart", {}).get("towers", {})
    locked, vit = clipart.get("effnet_lite0_locked", {}), clipart.get("vit_scratch", {})
    if "t2i_recall@10" in locked and "t2i_recall@10" in vit:
        ratio = locked["t2i_recall@10"] / max(vit["t2i_recall@10"], 1e-9)
        value = f"{100 * locked['t2i_recall@10']:.1f}% vs {100 * vit['t2i_recall@10']:.1f}% ({ratio:.2f}x)"
        rows.append(("OpenClipArt text->image R@10: (a) >= 3x (c)", value, "met" if ratio >= RETRIEVAL_TARGET_RATIO else "missed"))
    else:
        rows.append(("OpenClipArt text->image R@10: (a) >= 3x (c)", "-", "not measured"))
    for key, name, metric in (
        ("heldout_zero_shot", "Fashion-MNIST held-out 3-way zero-shot >= 67%", "zero_shot_heldout_top1"),
        ("linear_probe", "Fashion-MNIST linear probe >= 88%", "linear_probe_top1"),
    ):
        measured = {t: r[metric] for t, r in fashion.items() if metric in r}
        if not measured:
            rows.append((name, "-", "not measured"))
            continue
        best = max(measured, key=measured.get)
        value = ", ".join(f"{TOWER_LABELS[t][:3]} {100 * v:.1f}%" for t, v in measured.items())
        verdict = f"met by {TOWER_LABELS[best][:3]}" if measured[best] >= FASHION_MNIST_TARGETS[key] else "missed"
        rows.append((name, value, verdict))
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def results_markdown(results: dict, command: str) -> str:
    """The RESULTS.md section (title, setup, tables, targets, command) for `run_real_benchmark`'s results."""
    args = results["arguments"]
    lines = [
        RESULTS_SECTION_TITLE,
        "",
        f"Late fusion, ITC only, {args['max_steps']} steps of {args['batch_size']} pairs per tower and dataset, every "
        f"tower at {args['image_size']}x{args['image_size']} px (Fashion-MNIST's 28 px upscaled, bicubic). The MiniLM-L6 "
        "text tower is locked in every row (its features computed once; the text projection learns). (a) trains only "
        "the two projections and the temperature on cached features of the locked tower; (b) and (c) train the vision "
        "tower as well. Wall time of the whole run: "
        f"{results['wall_time_s'] / 60:.1f} min on {args['num_threads']} CPU thread(s).",
        "",
    ]
    if results.get("note"):
        lines += [results["note"], ""]
    if "fashion_mnist" in results:
        fm = results["fashion_mnist"]
        setup = fm["setup"]
        lines += [
            f"**Fashion-MNIST** ({setup['train_images']:,} training and {setup['test_images']:,} test images, seeded "
            "subsets of the official 60,000 / 10,000 splits). Pretraining captions come from the 7 seen classes only; "
            f"held out: {', '.join(setup['heldout_classes'])}. Zero-shot prompts average {len(setup['templates'])} "
            "templates (\"a photo of a {}.\", ...). The linear probe is logistic regression on the vision tower's "
            "pooled features of the training images.",
            "",
            "| vision tower | zero-shot, 3 held-out classes | zero-shot, all 10 | zero-shot, 7 seen | linear probe | trained / total params | time |",
            "|---|---|---|---|---|---|---|",
        ]
        for tower, r in fm["towers"].items():
            if "blocked" in r:
                lines.append(f"| {TOWER_LABELS[tower]} | not measured: {r['blocked'][:120]} | | | | | |")
                continue
            lines.append(
                f"| {TOWER_LABELS[tower]} | {_pct(r['zero_shot_heldout_top1'])} | {_pct(r['zero_shot_all10_top1'])} | "
                f"{_pct(r['zero_shot_seen_top1'])} | {_pct(r['linear_probe_top1'])} | "
                f"{r['trained_parameters'] / 1e6:.2f}M / {r['parameters'] / 1e6:.1f}M | {r['seconds'] / 60:.1f} min |"
            )
        lines.append("")
    if "openclipart" in results:
        oc = results["openclipart"]
        setup = oc["setup"]
        lines += [
            f"**OpenClipArt** ({setup['train_images']:,} training / {setup['test_images']:,} held-out drawings of a "
            f"seeded subset of the usable ones, seeded split; {setup['unusable_files']} unusable files, named in the "
            "log and the JSON). Retrieval is over the "
            f"held-out drawings and their {setup['distinct_test_titles']} distinct titles, at title level. Zero-shot "
            f"classification into the {len(setup['categories'])} top-level categories ('unsorted' dropped), prompts "
            "averaged over 4 templates (\"a drawing of {}.\", ...).",
            "",
            "| vision tower | text->image R@1 / R@5 / R@10 | image->text R@1 / R@5 / R@10 | zero-shot category | time |",
            "|---|---|---|---|---|",
        ]
        for tower, r in oc["towers"].items():
            if "blocked" in r:
                lines.append(f"| {TOWER_LABELS[tower]} | not measured: {r['blocked'][:120]} | | | |")
                continue
            t2i = " / ".join(_pct(r[f"t2i_recall@{k}"]) for k in (1, 5, 10))
            i2t = " / ".join(_pct(r[f"i2t_recall@{k}"]) for k in (1, 5, 10))
            lines.append(
                f"| {TOWER_LABELS[tower]} | {t2i} | {i2t} | {_pct(r['zero_shot_category_top1'])} | {r['seconds'] / 60:.1f} min |"
            )
        lines.append("")
    lines += ["| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {verdict} |" for name, value, verdict in _targets(results)]
    lines += ["", f"Command: `{command}` (results also in `{os.path.join(args['output_dir'], 'results.json')}`).", ""]
    return "\n".join(lines)


def _recall_cell(recall: dict, direction: str) -> str:
    return " / ".join(_pct(recall[f"{direction}_recall@{k}"]) for k in (1, 5, 10))


def fusion_markdown(results: dict, command: str) -> str:
    """The `--fusions` section of RESULTS.md (title, setup, one table per dataset, command)."""
    args = results["arguments"]
    first = next(results[d]["fusions"] for d in ("fashion_mnist", "openclipart") if "fusions" in results.get(d, {}))
    tower = first["tower"]
    lines = [
        FUSION_RESULTS_SECTION_TITLE,
        "",
        f"Vision tower {TOWER_LABELS[tower]} with the locked MiniLM-L6 text tower, built once per fusion: "
        f"hybrid (text cross-attends to the image tokens) and coattention (LXMERT-style two-stream), each with "
        f"{args['num_fusion_layers']} fusion layers, trained with ITC + ITM (ALBEF hard negatives from the batch's "
        f"ITC similarity, equal weights); late is the ITC-only baseline on the same tower. Same budget as the late "
        f"rows of the section above: {args['max_steps']} steps of {args['batch_size']} pairs, AdamW at "
        f"{args['learning_rate']:g} (warmup {args['warmup_steps']}, cosine), {args['image_size']} px, seed "
        f"{args['seed']}. Retrieval over the held-out images at class (Fashion-MNIST) or title (OpenClipArt) level, "
        f"from ITC alone and with each query's ITC top-{args['rerank_top_k']} re-scored by ITM (ALBEF's inference). "
        f"Whole run: {results['wall_time_s'] / 60:.1f} min on {args['num_threads']} CPU thread(s).",
        "",
    ]
    if results.get("fusion_note"):
        lines += [results["fusion_note"], ""]
    for key, name in (("fashion_mnist", "Fashion-MNIST"), ("openclipart", "OpenClipArt")):
        if "fusions" not in results.get(key, {}):
            continue
        setup = results[key]["setup"]
        gallery = setup.get("retrieval_gallery") or f"{setup.get('distinct_test_titles', '?')} distinct titles"
        lines += [
            f"**{name}** ({setup['train_images']:,} training / {setup['test_images']:,} held-out images; gallery: "
            f"{gallery}).",
            "",
            "| fusion | text->image R@1 / R@5 / R@10, ITC | ITM re-ranked | image->text R@1 / R@5 / R@10, ITC | "
            "ITM re-ranked | final ITC / ITM loss | train time | parameters (trained) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for fusion, r in results[key]["fusions"]["rows"].items():
            if "blocked" in r:
                lines.append(f"| {fusion} | not measured: {r['blocked'][:120]} | | | | | | |")
                continue
            reranked = r.get("itm_reranked")
            if reranked:
                loss = f"{r['final_itc_loss']:.3f} / {r['final_itm_loss']:.3f}"
                t2i_itm, i2t_itm = _recall_cell(reranked, "t2i"), _recall_cell(reranked, "i2t")
            else:
                loss, t2i_itm, i2t_itm = f"{r['final_loss']:.3f} / -", "-", "-"
            lines.append(
                f"| {fusion} | {_recall_cell(r['itc'], 't2i')} | {t2i_itm} | {_recall_cell(r['itc'], 'i2t')} | "
                f"{i2t_itm} | {loss} | {r['train_seconds'] / 60:.1f} min | {r['parameters'] / 1e6:.1f}M "
                f"({r['trainable_parameters'] / 1e6:.2f}M) |"
            )
        lines.append("")
    lines += [f"Command: `{command}` (results also in `{os.path.join(args['output_dir'], 'results.json')}`).", ""]
    return "\n".join(lines)


def _has_tower_rows(results: dict) -> bool:
    return any(results.get(d, {}).get("towers") for d in ("fashion_mnist", "openclipart"))


def _has_fusion_rows(results: dict) -> bool:
    return any("fusions" in results.get(d, {}) for d in ("fashion_mnist", "openclipart"))


def _write_markdown(results: dict, command: str, results_file: str | None) -> str:
    """The Markdown of the sections the results have (late towers, `--fusions`), each written into its own section
    of `results_file` (when set); the other sections of the file are kept."""
    sections = []
    if _has_tower_rows(results):
        sections.append((RESULTS_SECTION_TITLE, results_markdown(results, command)))
    if _has_fusion_rows(results):
        sections.append((FUSION_RESULTS_SECTION_TITLE, fusion_markdown(results, command)))
    if results_file:
        for title, section in sections:
            update_results_section(results_file, section, title)
    return "\n".join(section for _, section in sections)


def clipped_step(
    model: nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer, schedule, max_norm: float = 1.0
) -> None:
    """One optimizer step of the benchmarks' plain training loops: backward, gradient norm clipped to `max_norm`,
    step, learning-rate schedule step, gradients dropped."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)


def update_results_section(path: str, section: str, title: str = RESULTS_SECTION_TITLE) -> None:
    """
    Writes `section` into the Markdown file `path`: replaces the part from the line `title` up to the next `## `
    heading (or the end), or appends it; the rest of the file is kept.

    Args:
        path (`str`): The Markdown file (created if missing).
        section (`str`): New section text, starting with `title`.
        title (`str`, *optional*): Heading line that marks the section.
    """
    text = open(path, encoding="utf-8").read() if os.path.isfile(path) else ""
    lines = text.splitlines()
    if title in lines:
        begin = lines.index(title)
        end = next((i for i in range(begin + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[begin:end] = section.rstrip("\n").splitlines() + ([""] if end < len(lines) else [])
        text = "\n".join(lines) + "\n"
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section.rstrip("\n") + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def run_real_benchmark(args: RealBenchmarkArguments, command: str = "python -m run_scripts.real_benchmark") -> dict:
    """
    Runs the benchmark, writes `<output_dir>/results.json` and (unless `results_file` is empty) the sections of
    `results_file` that the run measured: the late towers' (when `towers` is not empty) and the `--fusions` one;
    returns the results.

    Args:
        args (`RealBenchmarkArguments`): Settings (`--quick` applied here).
        command (`str`, *optional*): Command line quoted in the Markdown section.
    """
    from training.trainer import default_text_tower_path

    if args.render_only:
        with open(os.path.join(args.output_dir, "results.json"), encoding="utf-8") as f:
            results = json.load(f)
        command = results.get("command", "python -m run_scripts.real_benchmark")
        results["markdown"] = _write_markdown(results, command, args.results_file)
        return results
    args.apply_quick()
    torch.set_num_threads(args.num_threads)
    towers = [t.strip() for t in args.towers.split(",") if t.strip()]
    unknown = [t for t in towers if t not in TOWERS]
    if unknown:
        raise ValueError(f"--towers: unknown {unknown}; choose from {TOWERS}.")
    fusions = [f.strip() for f in args.fusions.split(",") if f.strip()]
    if set(fusions) - set(FUSIONS):
        raise ValueError(f"--fusions: unknown {sorted(set(fusions) - set(FUSIONS))}; choose from {FUSIONS}.")
    if fusions and args.fusion_tower not in TOWERS:
        raise ValueError(f"--fusion_tower: choose from {TOWERS}; got {args.fusion_tower!r}.")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if set(datasets) - {"fashion_mnist", "openclipart"}:
        raise ValueError(f"--datasets: choose from fashion_mnist, openclipart; got {datasets}.")
    start = time.time()
    text_path = args.text_model_name_or_path or default_text_tower_path()
    results: dict = {"arguments": asdict(args), "command": command}
    if "fashion_mnist" in datasets:
        results["fashion_mnist"] = run_fashion_mnist(args, towers, text_path, fusions)
    if "openclipart" in datasets:
        results["openclipart"] = run_openclipart(args, towers, text_path, fusions)
    results["wall_time_s"] = round(time.time() - start, 1)
    results["targets"] = [{"target": n, "measured": v, "verdict": s} for n, v, s in _targets(results)]
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    results["markdown"] = _write_markdown(results, command, args.results_file)
    return results
