"""`compute_metrics` factories for `transformers.Trainer`, one per task.

Each factory returns a function `compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]` that unpacks what
Trainer gathered (predictions concatenated across eval batches and processes, labels padded with -100) and scores
it with the functions of the evaluate modules in this folder. The functions are called directly rather than
through `evaluate.load(...).compute`, which would round-trip every prediction through an Arrow file on each
evaluation; the numbers are identical because the modules' `_compute` calls the same functions.

Tuple predictions: when a model returns several tensors besides the loss, Trainer hands over a tuple in the
model output's field order; the classification, VQA and captioning factories use its first element (return the
logits / generated ids first, or reduce with `preprocess_logits_for_metrics`). Tuple labels (several
`label_names`) likewise use the first element.
"""

from collections.abc import Callable, Sequence

import numpy as np
from transformers import EvalPrediction, PreTrainedTokenizerBase, ProcessorMixin

from .captioning.captioning import caption_scores
from .classification.classification import classification_scores
from .retrieval_recall.retrieval_recall import retrieval_recall
from .vqa_accuracy.vqa_accuracy import normalize_answer

__all__ = [
    "captioning_compute_metrics",
    "classification_compute_metrics",
    "retrieval_compute_metrics",
    "vqa_compute_metrics",
]

IGNORE_INDEX = -100  # Trainer's padding value for labels and for predictions of unequal length across batches


def _first(x: np.ndarray | tuple | list) -> np.ndarray:
    return np.asarray(x[0] if isinstance(x, (tuple, list)) else x)


def vqa_compute_metrics(id2label: dict[int, str] | None = None) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for VQA as classification over an answer vocabulary.

    Predictions are logits [N, num_answers] (argmax = predicted answer). Labels are either
    - soft scores [N, num_answers]: vqa_accuracy is the mean target score of the argmax answer. With targets built
      by the official rule (0, 0.3, 0.6, 0.9, 1.0 for 0, 1, 2, 3, >=4 agreeing humans, as in ViLT/BLIP
      preprocessing) this is exactly the official VQA accuracy of the question; an all-zero row (no answer in the
      vocabulary) scores 0. exact_match: the argmax answer has the row's maximal (non-zero) score.
    - class ids [N]: single-answer data; both metrics are the fraction of argmax == label. Labels equal to -100
      are dropped (Trainer's ignore convention), so questions whose answer is outside the vocabulary should be
      given soft labels (all zero) if they must count as wrong.

    Args:
        id2label: answer string per class id (e.g. `model.config.id2label`). When given, classes whose answers
            are equal after the official VQA normalisation ("Two" and "2") count as the same answer; without it
            every class is distinct.

    Returns:
        A function mapping `EvalPrediction` to `{"vqa_accuracy": float, "exact_match": float}`.
    """
    # Groups of class ids that normalise to the same answer string; only groups of size > 1 matter.
    duplicate_groups: list[np.ndarray] = []
    canonical: dict[int, int] = {}
    if id2label is not None:
        by_answer: dict[str, list[int]] = {}
        for class_id, answer in sorted((int(k), v) for k, v in id2label.items()):
            by_answer.setdefault(normalize_answer(answer), []).append(class_id)
        duplicate_groups = [np.array(ids) for ids in by_answer.values() if len(ids) > 1]
        canonical = {i: int(ids[0]) for ids in duplicate_groups for i in ids}

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        logits = _first(eval_pred.predictions)
        labels = _first(eval_pred.label_ids)
        if logits.ndim != 2:
            raise ValueError(f"VQA predictions must be logits [N, num_answers], got shape {logits.shape}.")
        preds = logits.argmax(-1)  # (N,)

        if labels.ndim == 1:
            keep = labels != IGNORE_INDEX
            preds, labels = preds[keep], labels[keep].astype(np.int64)
            if canonical:
                preds = np.array([canonical.get(int(p), int(p)) for p in preds], dtype=np.int64)
                labels = np.array([canonical.get(int(t), int(t)) for t in labels], dtype=np.int64)
            accuracy = float((preds == labels).mean()) if len(labels) else 0.0
            return {"vqa_accuracy": accuracy, "exact_match": accuracy}

        if labels.shape != logits.shape:
            raise ValueError(f"Soft VQA labels {labels.shape} must match the logits {logits.shape}.")
        keep = ~(labels == IGNORE_INDEX).all(axis=1)  # rows that are pure padding
        preds, targets = preds[keep], labels[keep].astype(np.float64)
        if duplicate_groups:
            targets = targets.copy()
            for ids in duplicate_groups:
                # An answer's credit is the best score among the classes that spell it.
                targets[:, ids] = targets[:, ids].max(axis=1, keepdims=True)
        if len(targets) == 0:
            return {"vqa_accuracy": 0.0, "exact_match": 0.0}
        score = targets[np.arange(len(preds)), preds]  # (N,) soft score of the predicted answer
        best = targets.max(axis=1)
        return {
            "vqa_accuracy": float(score.mean()),
            "exact_match": float(((score >= best) & (best > 0)).mean()),
        }

    return compute_metrics


def retrieval_compute_metrics(
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 256,
    embeds_indices: tuple[int, int] = (0, 1),
) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for image-text retrieval on an eval set of (image, caption) pairs.

    Predictions must be a tuple holding image embeddings [N, dim] and text embeddings [N, dim], one row per eval
    example; return them from `preprocess_logits_for_metrics` (e.g. `lambda out, labels: (out[i], out[j])`)
    rather than letting Trainer gather per-batch [B, B] logits, which it would pad and concatenate into garbage.
    Labels are the image ids [N] (`TrainingArguments(label_names=["image_ids"])`). An image with several
    captions appears in several examples: the gallery keeps the first embedding of each image id and the text
    -> image mapping is derived from the ids. Examples whose image id is -100 are dropped. Embeddings are
    L2-normalised here (harmless if the model already did), so the score is cosine similarity.

    Args:
        ks: the K values of recall@K.
        chunk_size: queries per similarity block (peak memory about chunk_size x gallery x 5 bytes).
        embeds_indices: positions of (image_embeds, text_embeds) in the predictions tuple.

    Returns:
        A function mapping `EvalPrediction` to `retrieval_recall`'s dict (`i2t_recall@K`, `t2i_recall@K`,
        `mean_recall`).
    """

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        predictions = eval_pred.predictions
        if not isinstance(predictions, (tuple, list)) or len(predictions) <= max(embeds_indices):
            raise ValueError(
                "Retrieval predictions must be a tuple containing (image_embeds, text_embeds) at positions "
                f"{embeds_indices}; return them from `preprocess_logits_for_metrics`."
            )
        image_embeds = np.asarray(predictions[embeds_indices[0]])  # (N, D)
        text_embeds = np.asarray(predictions[embeds_indices[1]])  # (N, D)
        image_ids = _first(eval_pred.label_ids).reshape(-1)  # (N,)
        if not len(image_ids) == len(image_embeds) == len(text_embeds):
            raise ValueError(
                f"Got {len(image_embeds)} image embeddings, {len(text_embeds)} text embeddings and "
                f"{len(image_ids)} image ids; they must be one per eval example."
            )
        keep = image_ids != IGNORE_INDEX
        image_embeds, text_embeds, image_ids = image_embeds[keep], text_embeds[keep], image_ids[keep]
        # first_index: first example of each distinct image; text_to_image: gallery row of every example's image.
        _, first_index, text_to_image = np.unique(image_ids, return_index=True, return_inverse=True)
        return retrieval_recall(
            image_embeds[first_index],
            text_embeds,
            text_to_image.reshape(-1),
            ks=ks,
            chunk_size=chunk_size,
            normalize=True,
        )

    return compute_metrics


def captioning_compute_metrics(
    tokenizer: PreTrainedTokenizerBase | ProcessorMixin,
    references: Sequence[Sequence[str]] | None = None,
) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for captioning from generated token ids.

    Predictions are generated token ids [N, L] (e.g. `Seq2SeqTrainer` with `predict_with_generate=True`), padded
    with -100 where Trainer joined batches of different lengths, or with the pad id; labels are token ids [N, L']
    with -100 on ignored positions. Both are decoded with `skip_special_tokens=True`. Teacher-forced logits
    [N, L, vocab] are rejected: their argmax is not a generated caption.

    Args:
        tokenizer: the tokenizer that produced the ids, or a processor holding it as `.tokenizer`.
        references: optional reference captions per eval example, in eval-set order (e.g. all five COCO captions
            of each image). When given they replace the decoded labels, which carry one caption per example;
            CIDEr in particular is only meaningful with several references.

    Returns:
        A function mapping `EvalPrediction` to the captioning module's dict (`bleu_1`..`bleu_4`, `rouge_l`,
        `cider`, `sacrebleu`).
    """
    # A processor (image processor + tokenizer) decodes through its tokenizer.
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("The tokenizer needs a pad or eos token to replace -100 padding before decoding.")

    def decode(ids: np.ndarray) -> list[str]:
        ids = np.where(ids < 0, pad_id, ids).astype(np.int64)  # -100 is not a valid token id
        return [text.strip() for text in tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)]

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        generated = _first(eval_pred.predictions)
        if generated.ndim != 2 or not np.issubdtype(generated.dtype, np.integer):
            raise ValueError(
                f"Captioning predictions must be generated token ids [N, L], got {generated.dtype} array of shape "
                f"{generated.shape}; use predict_with_generate (or generate in prediction_step)."
            )
        predictions = decode(generated)
        if references is not None:
            if len(references) != len(predictions):
                raise ValueError(f"Got {len(references)} reference lists for {len(predictions)} predictions.")
            refs = [list(r) for r in references]
        else:
            refs = [[caption] for caption in decode(_first(eval_pred.label_ids))]
        return caption_scores(predictions, refs)

    return compute_metrics


def classification_compute_metrics(
    multi_label: bool = False,
    threshold: float = 0.5,
) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for single-label or multi-label classification.

    Single-label: predictions are logits [N, num_labels] (or class ids [N] if `preprocess_logits_for_metrics`
    already took the argmax); labels are class ids [N], and -100 entries are dropped. Multi-label: predictions
    are logits [N, num_labels], a label is predicted when sigmoid(logit) >= threshold; labels are multi-hot
    [N, num_labels] (floats allowed, >= 0.5 counts as positive), rows that are entirely -100 are dropped.

    Args:
        multi_label: multi-hot targets (sigmoid/BCE heads) instead of one class per example.
        threshold: probability threshold for a positive label in multi-label mode, in (0, 1).

    Returns:
        A function mapping `EvalPrediction` to `{"accuracy", "macro_f1", "micro_f1"}` (accuracy is exact match in
        multi-label mode).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"`threshold` must lie in (0, 1), got {threshold}.")
    # sigmoid(x) >= t  <=>  x >= log(t / (1 - t)); comparing logits avoids overflow in exp for large |x|.
    logit_threshold = float(np.log(threshold / (1.0 - threshold)))

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        logits = _first(eval_pred.predictions)
        labels = _first(eval_pred.label_ids)
        if multi_label:
            if logits.ndim != 2 or labels.shape != logits.shape:
                raise ValueError(f"Multi-label logits {logits.shape} and labels {labels.shape} must both be [N, C].")
            padding = labels == IGNORE_INDEX
            keep = ~padding.all(axis=1)
            if padding[keep].any():
                raise ValueError("Multi-label rows may be entirely -100 (padding) but not partly.")
            preds = (logits[keep] >= logit_threshold).astype(np.int64)
            targets = (labels[keep] >= 0.5).astype(np.int64)
            return classification_scores(preds, targets, multi_label=True)
        preds = logits.argmax(-1) if logits.ndim == 2 else logits
        labels = labels.reshape(-1)
        if preds.shape != labels.shape:
            raise ValueError(f"Got {preds.shape} predictions for labels of shape {labels.shape}.")
        keep = labels != IGNORE_INDEX
        return classification_scores(preds[keep], labels[keep], multi_label=False)

    return compute_metrics
