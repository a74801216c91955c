"""Does the heatmap point at the thing the text names? A grounding check on two-object easy-VQA composites.

Each composite puts two easy-VQA test images side by side, chosen to differ in colour AND shape, at random left/right
placement. Both images are the model's square training size, so the composite is `S x 2S` and is fed unresized: the
objects keep their trained scale and the patch grid just gets twice as wide (the ViT interpolates its position
embeddings). Each composite is queried twice, once with each object's caption ("a red circle"); a query is a hit
when the heatmap falls on the named object's half:

- `peak`: the map's maximum lies in that half (a map that is all zeros is a miss);
- `mass`: that half holds more of the min-max scaled map than the other.

Chance is 50% for both. Every method the model supports is scored (`explain.METHOD_FUSIONS`); for gradcam also
each fusion layer and their mean. As a reference, `half_recognition` is how often the model itself prefers the named
object's half when shown each half alone (ITC). The result is written as JSON; the last line printed is a one-line
summary (`mm grounding-eval` is the command line).
"""

import logging
import random
from typing import TYPE_CHECKING, Any


import torch

from evaluation.distributed import gather_rows, process_range
from evaluation.explain import METHOD_FUSIONS, compute_relevance, word_mask
from modeling_mm import MMPreTrainedModel, MMVisionModel


if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

__all__ = ["evaluate_grounding", "half_hits", "make_composites"]


def make_composites(images: "Dataset", num_composites: int, seed: int, size: int) -> list[dict]:
    r"""
    Pairs of easy-VQA images that differ in colour and shape, pasted side by side.

    Args:
        images: easy-VQA `view="images"` split (columns `image`, `color`, `shape`).
        num_composites (`int`): How many pairs.
        seed (`int`): Seeds the pair choice and the left/right placement.
        size (`int`): Side each image is resized to (the model's square training size).

    Returns:
        `[{"image": PIL (size x 2 size), "captions": (left, right), "ids": (left index, right index)}]`.
    """
    from PIL import Image

    rng = random.Random(seed)
    colors, shapes = images["color"], images["shape"]
    composites, seen = [], set()
    while len(composites) < num_composites:
        i, j = rng.sample(range(len(images)), 2)
        if colors[i] == colors[j] or shapes[i] == shapes[j] or (min(i, j), max(i, j)) in seen:
            continue
        seen.add((min(i, j), max(i, j)))
        left, right = (i, j) if rng.random() < 0.5 else (j, i)
        canvas = Image.new("RGB", (2 * size, size))
        for slot, index in enumerate((left, right)):
            canvas.paste(images[index]["image"].convert("RGB").resize((size, size), Image.BICUBIC), (slot * size, 0))
        composites.append(
            {
                "image": canvas,
                "captions": tuple(f"a {colors[k]} {shapes[k]}" for k in (left, right)),
                "ids": (left, right),
            }
        )
    return composites


def half_hits(patch_maps: torch.Tensor, target_left: torch.Tensor) -> dict[str, torch.Tensor]:
    """`peak` and `mass` hits `(Q,)` of maps `(Q, T, H_p, W_p)` whose target is the left (True) or right half."""
    maps = patch_maps.float().mean(1)  # (Q, H_p, W_p); frames averaged (images have one)
    flat = maps.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    scaled = (maps - low[:, None, None]) / (high - low).clamp(min=1e-12)[:, None, None]
    half = maps.shape[-1] // 2
    left_mass, right_mass = scaled[..., :half].sum((1, 2)), scaled[..., half:].sum((1, 2))
    informative = high > low  # a constant (e.g. all-zero) map points nowhere
    peak_left = flat.argmax(1) % maps.shape[-1] < half
    return {
        "peak": informative & (peak_left == target_left),
        "mass": informative & ((left_mass > right_mass) == target_left),
    }


def evaluate_grounding(
    model: MMPreTrainedModel, processor: Any, composites: list[dict], batch_size: int = 50
) -> dict:
    """Hit rates of every method (and every gradcam layer) on the composites; see the module docstring."""
    fusion = model.config.fusion
    queries = [(c["image"], caption, side == 0) for c in composites for side, caption in enumerate(c["captions"])]
    variants: list[tuple[str, str, int | None]] = []
    for method, fusions in METHOD_FUSIONS.items():
        if fusion not in fusions:
            continue
        if method == "gradcam":
            layers = len(model.mm.fusion_layers)
            variants += [(f"gradcam_layer{i}", method, i) for i in range(layers)]
            variants.append(("gradcam_mean_layers", method, None))
        else:
            variants.append((method, method, -1))
    device = next(model.parameters()).device
    totals = {name: {"peak": 0, "mass": 0} for name, _, _ in variants}
    match = {name: 0.0 for name, _, _ in variants}
    rows = process_range(len(queries))  # under a launcher, this process's block of the queries
    for start in range(rows.start, rows.stop, batch_size):
        chunk = queries[start : min(start + batch_size, rows.stop)]
        # No resize: the composite is fed at its own (S x 2S) size, objects at their trained scale.
        inputs = processor(images=[q[0] for q in chunk], text=[q[1] for q in chunk], do_resize=False).to(device)
        words = word_mask(inputs["input_ids"], inputs["attention_mask"], processor.tokenizer.all_special_ids)
        target_left = torch.tensor([q[2] for q in chunk], device=device)
        for name, method, layer in variants:
            relevance = compute_relevance(
                model, inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], words, method, layer
            )
            for kind, hit in half_hits(relevance.patch_maps, target_left).items():
                totals[name][kind] += int(hit.sum())
            match[name] += float(relevance.scores.sum())
    # Hit counts and score sums add up over the processes' blocks.
    parts = gather_rows([(totals, match)])
    totals = {name: {kind: sum(t[name][kind] for t, _ in parts) for kind in ("peak", "mass")} for name in totals}
    match = {name: sum(m[name] for _, m in parts) for name in match}
    n = len(queries)
    reference = _half_recognition(model, processor, queries, batch_size) if fusion != "early" else None
    results = {
        name: {
            "peak_hit_rate": totals[name]["peak"] / n,
            "mass_hit_rate": totals[name]["mass"] / n,
            "mean_score": match[name] / n,
        }
        for name in totals
    }
    return {
        "num_composites": len(composites),
        "num_queries": n,
        "chance_hit_rate": 0.5,
        "half_recognition": reference,
        "methods": results,
    }


@torch.no_grad()
def _half_recognition(model: MMPreTrainedModel, processor: Any, queries: list[tuple], batch_size: int) -> float | None:
    """Reference, not an explanation: how often the ITC similarity of the named object's half (the other half's patch
    tokens dropped) beats the other half's. Near 100% means the model tells the objects apart, so a map that misses
    is the explanation's fault, not the model's."""
    mm = model.mm
    if not isinstance(mm.vision_model, MMVisionModel):
        return None
    device = next(model.parameters()).device
    hits = 0
    rows = process_range(len(queries))  # under a launcher, this process's block; the hit counts add up
    for start in range(rows.start, rows.stop, batch_size):
        chunk = queries[start : min(start + batch_size, rows.stop)]
        inputs = processor(images=[q[0] for q in chunk], text=[q[1] for q in chunk], do_resize=False).to(device)
        text_embeds = mm.embed_text(inputs["input_ids"], inputs["attention_mask"])
        patch = model.config.vision_config.patch_size
        grid_h, grid_w = (side // patch for side in inputs["pixel_values"].shape[-2:])
        columns = torch.arange(grid_h * grid_w, device=device) % grid_w
        similarity = []
        for half in (columns < grid_w // 2, columns >= grid_w // 2):
            keep = half.nonzero().squeeze(1).expand(len(chunk), -1)  # (B, N/2) patch tokens of one half
            image_embeds = mm.embed_image(inputs["pixel_values"], image_keep_indices=keep)
            similarity.append((image_embeds * text_embeds).sum(-1))
        target_left = torch.tensor([q[2] for q in chunk], device=device)
        hits += int(((similarity[0] > similarity[1]) == target_left).sum())
    return sum(gather_rows([hits])) / len(queries)
