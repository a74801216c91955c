"""Image-text retrieval recall@K in both directions, computed in chunks.

Self-contained `evaluate` module: load it with `evaluate.load("<repo>/metrics/retrieval_recall")`. For large
galleries call `retrieval_recall` directly: the evaluate wrapper round-trips every embedding through Arrow.
"""

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np
import torch

__all__ = ["RetrievalRecall", "retrieval_recall"]


_CITATION = """\
@article{karpathy2015deep,
  title={Deep Visual-Semantic Alignments for Generating Image Descriptions},
  author={Karpathy, Andrej and Fei-Fei, Li},
  journal={CVPR},
  year={2015}
}
@inproceedings{radford2021learning,
  title={Learning Transferable Visual Models From Natural Language Supervision},
  author={Radford, Alec and others},
  booktitle={ICML},
  year={2021}
}
"""

_DESCRIPTION = """\
Recall@K for image-text retrieval (COCO / Flickr30k Karpathy-split protocol), in both directions, with several
captions per image. Similarity is the dot product of the embeddings (cosine similarity when they are
L2-normalised, by the caller or with normalize=True).

- text->image: a text query is a hit at K if its own image ranks within the top K images.
- image->text: an image query is a hit at K if ANY of its captions ranks within the top K texts. Images without
  any caption have no ground truth and are left out of the image->text average (they still act as distractors
  for text->image).

Ties are counted against the model: the rank of the ground truth is the number of *other* gallery items whose
score is >= its score (for image->text, the number of non-ground-truth texts scoring >= the best caption). A
hit at K needs rank < K, i.e. the ground truth is strictly ahead of all but at most K-1 items. The rule is
deterministic and independent of gallery order, and a collapsed model (all embeddings equal) gets recall 0
instead of a score inflated by the data set's order, as a top-k that breaks ties by index would give. Ties are
decided on the computed float scores; the ground-truth score is read from the same score block as its
competitors, so identical embeddings tie exactly.

The similarity matrix is never built whole: queries are processed chunk_size at a time, so peak memory is about
chunk_size x gallery_size x 5 bytes (float32 scores + a boolean mask). The cost is two passes of
num_images x num_texts dot products on the CPU (numpy/BLAS): 20k images x 100k texts (dim 16, 4e9 scores) took
about 30 s on 2 CPU cores, 5k x 25k about 3 s.

All values are fractions in [0, 1]; mean_recall is the mean of all recall@K values of both directions
(with the default ks, the commonly reported "R_mean" = rsum / 6).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): one embedding per text (caption), shape [num_texts, dim].
    references (`list[int]`): for each text, the row of `image_embeds` holding its image.
    image_embeds (`array-like`, required keyword): image gallery embeddings, shape [num_images, dim]; each image
        once, even if it has several captions.
    ks (`Sequence[int]`, default (1, 5, 10)): the K values.
    chunk_size (`int`, default 256): queries per similarity block.
    normalize (`bool`, default False): L2-normalise both embedding sets first.
Returns:
    i2t_recall@K, t2i_recall@K for every K, and mean_recall (floats in [0, 1]).
Examples:
    >>> recall = evaluate.load("metrics/retrieval_recall")
    >>> recall.compute(predictions=[[1.0, 0.0], [0.0, 1.0]], references=[0, 1],
    ...                image_embeds=[[1.0, 0.0], [0.0, 1.0]], ks=[1])
    {'i2t_recall@1': 1.0, 't2i_recall@1': 1.0, 'mean_recall': 1.0}
"""


def _as_float_array(x: torch.Tensor | np.ndarray | Sequence, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        # numpy has no bfloat16; float() also covers float16 (slow in BLAS and lossy for ties).
        x = x.detach().cpu()
        x = (x if x.dtype == torch.float64 else x.float()).numpy()
    x = np.asarray(x)
    if x.dtype != np.float64:
        x = x.astype(np.float32, copy=False)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D [num_items, dim], got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError(f"`{name}` contains NaN or inf; ranks would be undefined.")
    return x


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, np.finfo(x.dtype).tiny)  # zero vectors stay zero instead of NaN


def retrieval_recall(
    image_embeds: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    text_embeds: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    text_to_image: torch.Tensor | np.ndarray | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 256,
    normalize: bool = False,
) -> dict[str, float]:
    """Recall@K for image->text and text->image retrieval without materialising the full similarity matrix.

    Computed with numpy on the CPU (torch tensors are moved there): on CPU numpy's comparison and
    `count_nonzero` are an order of magnitude faster than torch's boolean reductions, and Trainer hands
    `compute_metrics` numpy arrays anyway.

    Args:
        image_embeds: [num_images, dim] image gallery, one row per distinct image (torch or numpy).
        text_embeds: [num_texts, dim] caption embeddings (torch or numpy), same dim.
        text_to_image: [num_texts] integer row of `image_embeds` for every caption.
        ks: the K values to report.
        chunk_size: number of queries per similarity block; peak memory is about chunk_size x gallery x 5 bytes.
        normalize: L2-normalise both sets first (cosine similarity); leave False when the model already did.

    Returns:
        `{"i2t_recall@K": ..., "t2i_recall@K": ... for each K, "mean_recall": ...}`, fractions in [0, 1]. Ties
        count against the model (see the module description).
    """
    images = _as_float_array(image_embeds, "image_embeds")
    texts = _as_float_array(text_embeds, "text_embeds")
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"Embedding dims differ: images {images.shape[1]}, texts {texts.shape[1]}.")
    dtype = np.promote_types(images.dtype, texts.dtype)
    images, texts = images.astype(dtype, copy=False), texts.astype(dtype, copy=False)
    if normalize:
        images, texts = _l2_normalize(images), _l2_normalize(texts)
    if isinstance(text_to_image, torch.Tensor):
        text_to_image = text_to_image.detach().cpu().numpy()
    t2i = np.asarray(text_to_image).reshape(-1)
    num_images, num_texts = images.shape[0], texts.shape[0]
    if t2i.size != num_texts:
        raise ValueError(f"`text_to_image` has {t2i.size} entries for {num_texts} texts.")
    if num_texts == 0 or num_images == 0:
        raise ValueError("retrieval_recall needs at least one image and one text.")
    if not np.issubdtype(t2i.dtype, np.integer):
        raise ValueError(f"`text_to_image` must hold integer image rows, got dtype {t2i.dtype}.")
    t2i = t2i.astype(np.int64)
    if t2i.min() < 0 or t2i.max() >= num_images:
        raise ValueError(f"`text_to_image` values must lie in [0, {num_images}).")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"`ks` must be positive integers, got {ks}.")
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}.")

    # Score and mask buffers are reused across chunks: the only large allocations, chunk x gallery each.
    images_t, texts_t = np.ascontiguousarray(images.T), np.ascontiguousarray(texts.T)  # (D, Ni), (D, Nt)
    block = max(min(chunk_size, num_texts) * num_images, min(chunk_size, num_images) * num_texts)
    buffer = np.empty(block, dtype=dtype)
    mask = np.empty(buffer.shape, dtype=bool)

    # text -> image. rank = #other images scoring >= the true image.
    t2i_ranks = np.empty(num_texts, dtype=np.int64)
    for start in range(0, num_texts, chunk_size):
        stop = min(start + chunk_size, num_texts)
        c = stop - start
        scores = np.matmul(texts[start:stop], images_t, out=buffer[: c * num_images].reshape(c, num_images))
        true_score = scores[np.arange(c), t2i[start:stop], None]  # (c, 1)
        ahead = np.greater_equal(scores, true_score, out=mask[: c * num_images].reshape(c, num_images))
        # The true image itself always satisfies >=, hence the -1.
        t2i_ranks[start:stop] = np.count_nonzero(ahead, axis=1) - 1

    # image -> text. Captions grouped by image so a chunk of images finds its captions with one searchsorted.
    order = np.argsort(t2i, kind="stable")
    sorted_images = t2i[order]
    i2t_ranks = np.empty(num_images, dtype=np.int64)
    has_caption = np.zeros(num_images, dtype=bool)
    for start in range(0, num_images, chunk_size):
        stop = min(start + chunk_size, num_images)
        c = stop - start
        scores = np.matmul(images[start:stop], texts_t, out=buffer[: c * num_texts].reshape(c, num_texts))
        lo, hi = np.searchsorted(sorted_images, [start, stop])
        rows, cols = sorted_images[lo:hi] - start, order[lo:hi]  # (p,) one entry per (image, own caption) pair
        # Ground-truth scores are read from the same block as the competitors, so equal scores tie exactly.
        gt_scores = scores[rows, cols]  # (p,)
        best = np.full(c, -np.inf, dtype=dtype)
        np.maximum.at(best, rows, gt_scores)  # (c,) best caption score per image
        # Own captions tied with the best one are not competitors: subtract them from the >= count.
        own_ahead = np.bincount(rows, weights=gt_scores >= best[rows], minlength=c).astype(np.int64)
        ahead = np.greater_equal(scores, best[:, None], out=mask[: c * num_texts].reshape(c, num_texts))
        i2t_ranks[start:stop] = np.count_nonzero(ahead, axis=1) - own_ahead
        has_caption[start:stop] = np.isfinite(best)

    i2t_ranks = i2t_ranks[has_caption]
    results = {}
    for k in ks:
        results[f"i2t_recall@{k}"] = float(np.mean(i2t_ranks < k))
    for k in ks:
        results[f"t2i_recall@{k}"] = float(np.mean(t2i_ranks < k))
    results["mean_recall"] = float(np.mean(list(results.values())))
    return results


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    """Image<->text recall@K; each example is one caption (its embedding) and the gallery row of its image."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Examples are captions: images can have several captions, so the image gallery is a compute() kwarg
            # rather than a per-example feature.
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://cs.stanford.edu/people/karpathy/deepimagesent/"],
        )

    def _compute(
        self,
        predictions: list[list[float]],
        references: list[int],
        image_embeds: torch.Tensor | np.ndarray | Sequence[Sequence[float]] | None = None,
        ks: Sequence[int] = (1, 5, 10),
        chunk_size: int = 256,
        normalize: bool = False,
    ) -> dict[str, float]:
        if image_embeds is None:
            raise ValueError("retrieval_recall needs the image gallery: compute(..., image_embeds=[num_images, dim]).")
        return retrieval_recall(
            image_embeds,
            np.asarray(predictions, dtype=np.float32),
            np.asarray(references, dtype=np.int64),
            ks=ks,
            chunk_size=chunk_size,
            normalize=normalize,
        )
