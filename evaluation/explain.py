"""Seeing what an MM model does: grounding heatmaps over image patches, per-token relevance, retrieval galleries.

`mm explain` is the command line. Each method gives a map over the vision tower's patch grid (`METHOD_FUSIONS` lists which fusion styles each method
explains; `METHODS` holds the default per fusion style):

- **gradcam** (hybrid): Grad-CAM on the ITM cross-attention (ALBEF, Li et al. 2021, "Grad-CAM visualization"): the
  cross-attention probabilities of a fusion layer times their gradient of the ITM match logit, clamped at 0 and
  averaged over heads; rows are text tokens, columns image tokens.
- **rollout** (early): attention rollout (Abnar & Zuidema 2020) through the joint layers, read from the text [CLS].
- **similarity** (late; also runs on hybrid): cosine of each patch's projected embedding with the text embedding.
- **itc_gradcam** (late, hybrid): the ITC similarity's gradient-weighted self-attention of the vision tower, propagated
  through its layers (Chefer, Gur & Wolf 2021), read from the image [CLS].
- **occlusion** (late, hybrid): how much the ITC similarity falls when one patch token is dropped (Zeiler & Fergus
  2014; one vision pass per patch).
"""

from dataclasses import dataclass
import logging
import os
from typing import Any

import numpy as np
import torch
from torch import nn

import modeling_mm  # noqa: F401  (registers the Auto classes)
from evaluation.distributed import gather_rows, is_main_process, process_range
from modeling_mm import MMForPreTraining, MMModel, MMPreTrainedModel, MMVisionModel


logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "METHOD_FUSIONS",
    "Relevance",
    "attention_rollout",
    "compute_relevance",
    "load_explainer",
    "normalize_map",
    "relevance_map",
    "retrieval_gallery",
    "retrieval_scores",
    "save_overlay",
    "word_mask",
]

# The default explanation of each fusion style.
METHODS: dict[str, str] = {"hybrid": "gradcam", "coattention": "gradcam", "early": "rollout", "late": "similarity"}
# Which fusion styles each method can explain.
METHOD_FUSIONS: dict[str, tuple[str, ...]] = {
    "gradcam": ("hybrid", "coattention"),
    "rollout": ("early",),
    "similarity": ("late", "hybrid", "coattention"),
    "itc_gradcam": ("late", "hybrid", "coattention"),
    "occlusion": ("late", "hybrid", "coattention"),
}


@dataclass
class Relevance:
    r"""
    Raw relevance of a batch of (text, image) pairs, before any normalisation.

    Args:
        patch_maps (`torch.FloatTensor` of shape `(B, T, H_p, W_p)`): Relevance of each image patch (`T = 1` for
            images, the frames of a clip otherwise). Cosines for similarity, similarity falls for occlusion (negative
            where a patch hurts the match), non-negative otherwise.
        token_scores (`torch.FloatTensor` of shape `(B, L)`): Relevance of each text token; 0 where `word_mask` is off.
        scores (`torch.FloatTensor` of shape `(B,)`): What is explained: ITM match probability (gradcam, rollout) or
            the ITC cosine (similarity, itc_gradcam, occlusion).
    """

    patch_maps: torch.Tensor
    token_scores: torch.Tensor
    scores: torch.Tensor


# ----------------------------------------------------------------------------------------------------------------------
# Relevance over a batch
# ----------------------------------------------------------------------------------------------------------------------


def _base(model: nn.Module) -> MMModel:
    return model if isinstance(model, MMModel) else model.mm


def _visual(inputs: dict) -> torch.Tensor:
    """The processor's visual tensor: `pixel_values_videos` for a clip, `pixel_values` for an image."""
    return inputs["pixel_values_videos"] if "pixel_values_videos" in inputs else inputs["pixel_values"]


def _patch_grid(model: nn.Module, pixel_values: torch.Tensor) -> tuple[int, int, int]:
    """`(frames, H_p, W_p)` of the patch grid the vision side sees for these pixels (a tubelet of frames is one
    token frame)."""
    vision = _base(model).config.vision_config
    patch = vision.patch_size
    frames = pixel_values.shape[1] // getattr(vision, "tubelet_size", 1) if pixel_values.ndim == 5 else 1
    return frames, pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch


def _patch_columns(num_tokens: int, frames: int, grid: int, device: torch.device) -> torch.Tensor:
    """Indices of the patch tokens among `num_tokens` image tokens, in (frame, row, column) order.

    The built-in ViT puts one [CLS] before all frames' patches (`1 + T * grid`); foreign towers encode each frame on
    its own, so every frame brings its own prefix tokens ([CLS], DeiT's distillation token...)."""
    prefix = num_tokens - frames * grid
    if frames == 1 or prefix == 1:
        return torch.arange(prefix, num_tokens, device=device)
    per_frame = num_tokens // frames
    ends = [(f + 1) * per_frame for f in range(frames)]
    return torch.cat([torch.arange(end - grid, end, device=device) for end in ends])


def word_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    """`(B, L)` True at real word tokens: not padding and not a special token ([CLS], [SEP], ...)."""
    special = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    return attention_mask.bool() & ~torch.isin(input_ids, special)


def attention_rollout(attentions: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): per layer the head-averaged attention plus the identity for the
    residual stream, `0.5 * A + 0.5 * I` (rows still sum to 1), multiplied from the first layer up.

    Args:
        attentions: Per layer `(B, heads, S, S)` attention probabilities (rows sum to 1).

    Returns:
        `(B, S, S)` row-stochastic: entry `[i, j]` is how much the last layer's token i draws from input token j.
    """
    rollout = None
    for attention in attentions:
        a = attention.float().mean(1)  # (B, S, S)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


def _gradcam(
    model: MMPreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    words: torch.Tensor,
    layer: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ITM Grad-CAM of one fusion layer's cross-attention (or the mean over all, `layer=None`)."""
    mm = _base(model)
    with torch.no_grad():
        text_hidden = mm.encode_text(input_ids, attention_mask).last_hidden_state  # (B, L, Dt)
        image_hidden = mm.encode_image(pixel_values).last_hidden_state  # (B, 1+N, Dv)
    num_layers = len(mm.fusion_layers)
    layers = list(range(num_layers)) if layer is None else [range(num_layers)[layer]]
    with torch.enable_grad():
        # A leaf that needs grad anchors the graph even when every weight is frozen; the towers are not differentiated.
        image_hidden = image_hidden.detach().requires_grad_(True)
        fusion = mm.fuse(text_hidden, attention_mask, image_hidden, output_attentions=True)
        fused, cross = fusion.last_hidden_state, fusion.cross_attentions
        logits = model.itm_head(fused[:, 0])  # (B, 2)
        # Rows are independent in eval mode, so the gradient of the summed logits is each row's own gradient.
        attentions = [cross[i] for i in layers]  # each (B, heads, L, 1+N)
        grads = torch.autograd.grad(logits[:, 1].sum(), attentions)
    cam = torch.stack([(g * a).clamp(min=0).mean(1) for g, a in zip(grads, attentions)]).mean(0)  # (B, L, 1+N)
    rows = words.clone()
    rows[:, 0] = True  # [CLS]: see compute_relevance
    rows = rows.to(cam.dtype)
    image = (cam * rows[..., None]).sum(1) / rows.sum(1, keepdim=True)  # (B, 1+N)
    return image, cam.sum(-1) * words, logits.softmax(-1)[:, 1]


def _rollout(
    model: MMPreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    words: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Early fusion: attention rollout through the joint layers, read from the text [CLS]."""
    length = input_ids.shape[1]
    joint = _base(model).joint_encode(input_ids, pixel_values, attention_mask, output_attentions=True)
    hidden, attentions = joint.last_hidden_state, joint.attentions
    from_cls = attention_rollout(attentions)[:, 0]  # (B, S): what the fused [CLS] draws from each input token
    # The joint sequence is [text ; image-CLS ; patches].
    return from_cls[:, length:], from_cls[:, :length] * words, model.itm_head(hidden[:, 0]).softmax(-1)[:, 1]


def _itc_embeddings(
    mm: MMModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, words: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised ITC text embeddings `(B, P)` and each token's projected state `(B, L, P)` (zero off the words)."""
    text_hidden = mm.encode_text(input_ids, attention_mask).last_hidden_state  # (B, L, Dt)
    token_embeds = nn.functional.normalize(mm.text_projection(text_hidden), dim=-1)  # (B, L, P)
    return token_embeds[:, 0], token_embeds * words[..., None]  # the ITC text embedding is the projected [CLS]


def _similarity(
    model: MMPreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    words: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine of every image token's projected state with the ITC text embedding; tokens likewise with the image."""
    mm = _base(model)
    text_embeds, token_embeds = _itc_embeddings(mm, input_ids, attention_mask, words)
    image_out = mm.encode_image(pixel_values)
    # The built-in ViT's post-LN covers every token, so patches are projected exactly as the pooled [CLS] is.
    image_tokens = nn.functional.normalize(mm.visual_projection(image_out.last_hidden_state), dim=-1)  # (B, 1+N, P)
    image_embeds = nn.functional.normalize(mm.visual_projection(image_out.pooler_output), dim=-1)  # (B, P)
    image = (image_tokens @ text_embeds[..., None]).squeeze(-1)  # (B, 1+N)
    tokens = (token_embeds @ image_embeds[..., None]).squeeze(-1)  # (B, L)
    return image, tokens, (image_embeds * text_embeds).sum(-1)


def _itc_gradcam(
    model: MMPreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    words: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Relevance of the ITC similarity through the vision tower's self-attention (Chefer, Gur & Wolf 2021, "Generic
    attention-model explainability", the rule commonly used to explain CLIP): `R = I`, then per layer
    `R += mean_heads(clamp(grad * A, 0)) @ R`; the map is the image [CLS] row. Tokens score as in `similarity`."""
    mm = _base(model)
    if not isinstance(mm.vision_model, MMVisionModel):
        raise ValueError("method='itc_gradcam' needs the built-in MMVisionModel tower (it reads its attentions).")
    text_embeds, token_embeds = _itc_embeddings(mm, input_ids, attention_mask, words)
    with torch.enable_grad():
        pixel_values = pixel_values.detach().requires_grad_(True)  # anchors the graph even with a frozen tower
        image_out = mm.encode_image(pixel_values, output_attentions=True)
        image_embeds = nn.functional.normalize(mm.visual_projection(image_out.pooler_output), dim=-1)  # (B, P)
        scores = (image_embeds * text_embeds).sum(-1)
        grads = torch.autograd.grad(scores.sum(), image_out.attentions)
    size = image_out.attentions[0].shape[-1]
    relevance = torch.eye(size, device=pixel_values.device).expand(pixel_values.shape[0], size, size)
    for attention, grad in zip(image_out.attentions, grads):
        relevance = relevance + (grad * attention).clamp(min=0).mean(1) @ relevance  # (B, 1+N, 1+N)
    tokens = (token_embeds @ image_embeds.detach()[..., None]).squeeze(-1)
    return relevance[:, 0], tokens, scores.detach()


def _occlusion(
    model: MMPreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    words: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Occlusion (Zeiler & Fergus 2014) the ViT way: drop one patch token at a time through the FLIP keep-index path
    (no grey patch, which the model never saw) and record how much the ITC similarity falls. Negative where removing
    the patch raises the similarity. One vision pass per patch. Tokens score as in `similarity`."""
    mm = _base(model)
    if not isinstance(mm.vision_model, MMVisionModel):
        raise ValueError("method='occlusion' needs the built-in MMVisionModel tower (it drops patch tokens).")
    text_embeds, token_embeds = _itc_embeddings(mm, input_ids, attention_mask, words)
    # The vision passes do not depend on the text: a batch pairing one image with several texts (both objects of a
    # composite, a list of captions) runs them once per distinct image.
    images, pair_to_image = torch.unique(pixel_values.flatten(1), dim=0, return_inverse=True)
    images = images.view(-1, *pixel_values.shape[1:])  # (U, C, H, W) or (U, T, C, H, W)
    image_embeds = mm.embed_image(images)[pair_to_image]  # (B, P)
    scores = (image_embeds * text_embeds).sum(-1)
    frames, grid_h, grid_w = _patch_grid(model, pixel_values)
    num_patches = frames * grid_h * grid_w
    everything = torch.arange(num_patches, device=pixel_values.device)
    falls = torch.zeros(pixel_values.shape[0], 1 + num_patches, device=pixel_values.device)  # column 0: image [CLS]
    for patch in range(num_patches):
        keep = everything[everything != patch].expand(images.shape[0], -1)  # (U, N-1)
        occluded = mm.embed_image(images, image_keep_indices=keep)[pair_to_image]  # (B, P)
        falls[:, 1 + patch] = scores - (occluded * text_embeds).sum(-1)
    tokens = (token_embeds @ image_embeds[..., None]).squeeze(-1)
    return falls, tokens, scores


_METHOD_FUNCTIONS = {
    "rollout": _rollout,
    "similarity": _similarity,
    "itc_gradcam": _itc_gradcam,
    "occlusion": _occlusion,
}


@torch.no_grad()
def compute_relevance(
    model: MMPreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    words: torch.Tensor,
    method: str | None = None,
    layer: int | None = -1,
) -> Relevance:
    r"""
    Relevance of image patches and text tokens for a batch of pairs (row i of the text with image i).

    Args:
        model: An `MMForPreTraining` / `MMForImageTextRetrieval` (gradcam and rollout need its `itm_head`) or, for
            the ITC methods (similarity, itc_gradcam, occlusion), also a bare `MMModel`.
        input_ids, attention_mask (`(B, L)`): Processor output.
        pixel_values (`(B, C, H, W)` or `(B, T, C, H, W)`): Any size that is a multiple of the patch size; position
            embeddings are interpolated for grids other than the training one.
        words (`(B, L)` bool): Real word tokens, see `word_mask`.
        method (`str`): One of `METHOD_FUSIONS`; default `METHODS[fusion]`.
        layer (`int` or `None`): Gradcam: the fusion layer whose cross-attention is explained (negative counts from
            the end); `None` averages the Grad-CAM of every fusion layer.

    The gradcam image map averages the rows of [CLS] and the word tokens ([SEP] and padding left out). [CLS] is kept
    because in the last fusion layer it is the only row with a gradient: the ITM head reads the fused [CLS], and no
    self-attention follows that layer's cross-attention to carry the word rows' outputs to it (ALBEF's image map is
    the [CLS] row for the same reason). Per-word relevance therefore needs an earlier layer, or `layer=None`.
    """
    mm = _base(model)
    fusion = mm.config.fusion
    method = method or METHODS[fusion]
    if method not in METHOD_FUSIONS:
        raise ValueError(f"method must be one of {sorted(METHOD_FUSIONS)}, got {method!r}.")
    if fusion not in METHOD_FUSIONS[method]:
        raise ValueError(f"method={method!r} needs fusion in {METHOD_FUSIONS[method]}; this model has {fusion!r}.")
    if method in ("gradcam", "rollout") and getattr(model, "itm_head", None) is None:
        raise ValueError(
            f"method={method!r} explains the ITM head: pass MMForPreTraining or MMForImageTextRetrieval, not "
            f"{type(model).__name__}."
        )
    was_training = model.training
    model.eval()
    words = words.bool()
    try:
        if method == "gradcam":
            image, tokens, scores = _gradcam(model, input_ids, attention_mask, pixel_values, words, layer)
        else:
            image, tokens, scores = _METHOD_FUNCTIONS[method](model, input_ids, attention_mask, pixel_values, words)
    finally:
        model.train(was_training)
    frames, grid_h, grid_w = _patch_grid(model, pixel_values)
    patch = image[:, _patch_columns(image.shape[-1], frames, grid_h * grid_w, image.device)]  # (B, T*H_p*W_p)
    patch_maps = patch.float().reshape(input_ids.shape[0], frames, grid_h, grid_w)
    return Relevance(patch_maps=patch_maps, token_scores=tokens.float(), scores=scores.float())


def normalize_map(patch_map: torch.Tensor | np.ndarray) -> np.ndarray:
    """Min-max scales a map to [0, 1]; a constant map (nothing stands out) becomes all zeros."""
    patch_map = np.asarray(patch_map.detach().cpu() if torch.is_tensor(patch_map) else patch_map, dtype=np.float32)
    low, high = float(patch_map.min()), float(patch_map.max())
    if high - low <= 1e-12 * max(1.0, abs(high)):
        return np.zeros_like(patch_map)
    return (patch_map - low) / (high - low)


# ----------------------------------------------------------------------------------------------------------------------
# One pair: map, overlay
# ----------------------------------------------------------------------------------------------------------------------


def _is_clip(image: Any) -> bool:
    return isinstance(image, (list, tuple))


def relevance_map(
    model: MMPreTrainedModel,
    processor: Any,
    image: Any,
    text: str,
    method: str | None = None,
    layer: int | None = -1,
    image_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[tuple[str, float]]]:
    r"""
    Where in `image` the model finds `text`, and which words carry the match.

    Args:
        model: See `compute_relevance`.
        processor: The model's `MMProcessor`.
        image: An image (PIL, array, path) or a clip as a list of frames.
        text (`str`): The text to ground.
        method (`str`): `gradcam` (hybrid), `rollout` (early), `similarity`, `itc_gradcam` or `occlusion` (late,
            hybrid); default `METHODS[fusion]`.
        layer (`int` or `None`): Gradcam fusion layer (default the last); `None` averages all fusion layers.
        image_size (`(height, width)`): Process the image at this size instead of the processor's (multiples of the
            patch size; e.g. a wide image at its own size keeps objects at their trained scale).

    Returns:
        `patch_map`: `(H_p, W_p)` numpy in [0, 1] (min-max scaled); for a clip `(T, H_p, W_p)`, one map per frame,
        scaled jointly so frames compare (average over axis 0 for a single map).
        `token_relevance`: `[(token, score)]` for the word tokens ([CLS], [SEP] left out), scores divided by their
        maximum (negative similarities clamped to 0), so the most relevant word scores 1.
    """
    image_kwargs = {"size": {"height": image_size[0], "width": image_size[1]}} if image_size is not None else {}
    if _is_clip(image):
        inputs = processor(videos=[list(image)], text=[text], num_frames=len(image), **image_kwargs)
    else:
        inputs = processor(images=[image], text=[text], **image_kwargs)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    words = word_mask(inputs["input_ids"], inputs["attention_mask"], processor.tokenizer.all_special_ids)
    relevance = compute_relevance(
        model, inputs["input_ids"], inputs["attention_mask"], _visual(inputs), words, method, layer
    )
    patch_map = normalize_map(relevance.patch_maps[0])
    patch_map = patch_map if _is_clip(image) else patch_map[0]
    ids = inputs["input_ids"][0][words[0]].tolist()
    scores = relevance.token_scores[0][words[0]].clamp(min=0)
    scores = scores / scores.max() if scores.numel() and float(scores.max()) > 0 else scores
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    return patch_map, [(token, float(score)) for token, score in zip(tokens, scores)]


def _as_pil(image: Any) -> "PIL.Image.Image":  # noqa: F821
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        return Image.open(image).convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _upsample(patch_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear upsampling of a `(H_p, W_p)` map to the image's pixels."""
    from PIL import Image

    return np.asarray(Image.fromarray(patch_map.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))


def save_overlay(
    image: Any,
    patch_map: np.ndarray,
    path: str,
    token_relevance: list[tuple[str, float]] | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    dpi: int = 80,
) -> str:
    r"""
    Writes a PNG: the image, the heatmap upsampled over it (jet colormap, `alpha` opacity) and, when given, the token
    relevance as a bar strip underneath. Returns `path`.

    Args:
        image: The image the map explains (PIL, array or path); the map is stretched over all of it.
        patch_map (`(H_p, W_p)` or `(T, H_p, W_p)`): Values in [0, 1]; a clip's frames are averaged.
        path (`str`): Output PNG.
        token_relevance: `[(token, score)]` from `relevance_map`.
        title (`str`): Caption above the image, e.g. the text.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = _as_pil(image)
    patch_map = np.asarray(patch_map, dtype=np.float32)
    if patch_map.ndim == 3:
        patch_map = patch_map.mean(0)
    heat = _upsample(patch_map, *image.size)
    # Top row: the image and the overlay side by side; bottom row (optional): one bar per word.
    rows = 2 if token_relevance else 1
    fig = plt.figure(figsize=(4.0, 2.9 if rows == 2 else 2.2))
    grid = fig.add_gridspec(rows, 2, height_ratios=[3, 1][:rows])
    plain, overlay = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    plain.imshow(image)
    overlay.imshow(image)
    overlay.imshow(heat, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
    for ax in (plain, overlay):
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    if token_relevance:
        bar = fig.add_subplot(grid[1, :])
        tokens = [t for t, _ in token_relevance]
        values = [s for _, s in token_relevance]
        bar.bar(range(len(tokens)), values, color=plt.cm.jet(np.asarray(values)))
        bar.set_xticks(range(len(tokens)), tokens, fontsize=8)
        bar.set_ylim(0, 1.05)
        bar.set_yticks([])
        for side in ("top", "right", "left"):
            bar.spines[side].set_visible(False)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Retrieval gallery
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def retrieval_scores(
    model: MMPreTrainedModel, processor: Any, query: Any, candidates: list, batch_size: int = 128
) -> torch.Tensor:
    r"""
    Scores every candidate against the query, `(N,)`.

    A text query ranks candidate images; an image query ranks candidate texts (strings) or images. Late and hybrid
    models score with the ITC cosine of the projected embeddings; early-fusion models, which have no unimodal
    embeddings, with the ITM match probability of each (text, image) pair.
    """
    mm = _base(model)
    device = next(model.parameters()).device
    text_query = isinstance(query, str)
    text_candidates = bool(candidates) and isinstance(candidates[0], str)
    if text_query and text_candidates:
        raise ValueError("A text query ranks images: pass candidate images, not texts.")
    if mm.config.fusion == "early" and (getattr(model, "itm_head", None) is None or not (text_query or text_candidates)):
        raise ValueError("Early fusion scores (text, image) pairs with the ITM head (MMForPreTraining).")
    # Under a launcher each process scores its block of the candidates; the blocks are gathered in order.
    rows = process_range(len(candidates))
    own = candidates[rows.start : rows.stop]
    was_training = model.training
    model.eval()
    try:
        if mm.config.fusion == "early":
            scores = []
            for start in range(0, len(own), batch_size):
                chunk = own[start : start + batch_size]
                texts = [query] * len(chunk) if text_query else chunk
                images = chunk if text_query else [query] * len(chunk)
                inputs = processor(images=images, text=texts).to(device)
                hidden = mm.joint_encode(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"]).last_hidden_state
                scores.append(model.itm_head(hidden[:, 0]).softmax(-1)[:, 1])
            return _gathered_scores(scores)

        def embed(items: list) -> torch.Tensor:
            out = []
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                if isinstance(chunk[0], str):
                    inputs = processor(text=chunk).to(device)
                    out.append(mm.embed_text(inputs["input_ids"], inputs["attention_mask"]))
                else:
                    out.append(mm.embed_image(processor(images=chunk)["pixel_values"].to(device)))
            return torch.cat(out)

        query_embeds = embed([query])[0]
        return _gathered_scores([embed(own) @ query_embeds] if own else [])
    finally:
        model.train(was_training)


def _gathered_scores(scores: list[torch.Tensor]) -> torch.Tensor:
    """This process's score chunks, then every process's in rank order, as one `(N,)` CPU tensor."""
    own = torch.cat(scores).cpu().tolist() if scores else []
    return torch.tensor(gather_rows(own), dtype=torch.float32)


def retrieval_gallery(
    model: MMPreTrainedModel,
    processor: Any,
    query: Any,
    candidates: list,
    k: int = 5,
    path: str = "gallery.png",
    batch_size: int = 128,
    dpi: int = 80,
) -> list[tuple[int, float]]:
    r"""
    Writes a PNG with the query and its top-`k` candidates with their scores; returns `[(candidate index, score)]`
    best first.

    Args:
        query: A text (ranks candidate images) or an image (ranks candidate texts or images).
        candidates: Images (PIL, arrays, paths) or texts.
        k (`int`): How many to show.
        path (`str`): Output PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = retrieval_scores(model, processor, query, candidates, batch_size)
    top = scores.topk(min(k, len(candidates)))
    ranked = [(int(i), float(s)) for s, i in zip(top.values, top.indices)]
    kind = "ITM p(match)" if _base(model).config.fusion == "early" else "cosine"
    fig, axes = plt.subplots(1, 1 + len(ranked), figsize=(1.6 * (1 + len(ranked)), 2.0), squeeze=False)

    def show(ax, item: Any, caption: str) -> None:
        if isinstance(item, str):
            ax.text(0.5, 0.5, item, ha="center", va="center", wrap=True, fontsize=9)
        else:
            ax.imshow(_as_pil(item), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(caption, fontsize=8)

    show(axes[0, 0], query, "query")
    for spine in axes[0, 0].spines.values():
        spine.set_color("tab:red")
        spine.set_linewidth(2)
    for rank, (index, score) in enumerate(ranked, start=1):
        show(axes[0, rank], candidates[index], f"#{rank}  {score:.3f}")
    fig.suptitle(f"top-{len(ranked)} of {len(candidates)} by {kind}", fontsize=8)
    fig.tight_layout()
    if is_main_process():  # every process holds the same ranking; one writes it
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return ranked


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------


def load_explainer(path: str, **kwargs) -> tuple[MMPreTrainedModel, Any]:
    """Loads `MMForPreTraining` (which carries the ITM head the gradcam and rollout maps explain) and the processor."""
    from processing import MMProcessor

    model, info = MMForPreTraining.from_pretrained(path, output_loading_info=True, **kwargs)
    if any(key.startswith("itm_head") for key in info["missing_keys"]):
        logger.warning(
            "%s has no trained itm_head: gradcam/rollout maps would explain a random head; use --method similarity.",
            path,
        )
    return model.eval(), MMProcessor.from_pretrained(path, **kwargs)
