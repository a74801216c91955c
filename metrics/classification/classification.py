"""Single-label and multi-label classification metrics: accuracy, macro F1 and micro F1.

Self-contained `evaluate` module: load it with `evaluate.load("<repo>/metrics/classification")` for single-label
data, or with `config_name="multilabel"` for multi-hot data (evaluate's own accuracy/f1 modules use the same
config name). Counts are computed with numpy; scikit-learn is not needed.
"""

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

__all__ = ["Classification", "classification_scores"]


_CITATION = """\
@article{sokolova2009systematic,
  title={A systematic analysis of performance measures for classification tasks},
  author={Sokolova, Marina and Lapalme, Guy},
  journal={Information Processing \\& Management},
  volume={45},
  number={4},
  pages={427--437},
  year={2009}
}
"""

_DESCRIPTION = """\
Classification metrics, single-label (class ids) or multi-label (multi-hot 0/1 vectors).

- accuracy: single-label, fraction of correct predictions; multi-label, example-based exact match (subset
  accuracy: every label of the example must be right).
- micro_f1: F1 of the pooled per-class counts, 2 * sum(TP) / (2 * sum(TP) + sum(FP) + sum(FN)). For single-label
  data it equals accuracy.
- macro_f1: unweighted mean of the per-class F1 = 2TP / (2TP + FP + FN) over the classes that occur in the
  references or the predictions; classes absent from both are skipped (for single-label data this is
  scikit-learn's default; for multi-label data scikit-learn would instead count such classes as F1 = 0).

An F1 whose denominator is 0 (no positives anywhere) is 0.0, as in scikit-learn. All values are fractions in
[0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]` or, with config "multilabel", `list[list[int]]`): predicted class ids, or multi-hot
        predicted label vectors.
    references (`list[int]` or `list[list[int]]`): true class ids, or multi-hot true label vectors.
Returns:
    accuracy, macro_f1, micro_f1 (floats in [0, 1]).
Examples:
    >>> clf = evaluate.load("metrics/classification")
    >>> clf.compute(predictions=[0, 1, 1], references=[0, 1, 2])
    >>> clf = evaluate.load("metrics/classification", config_name="multilabel")
    >>> clf.compute(predictions=[[1, 0, 1], [0, 1, 0]], references=[[1, 0, 0], [0, 1, 0]])
"""


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros(denominator.shape, dtype=np.float64), where=denominator > 0)


def classification_scores(
    predictions: Sequence[int] | Sequence[Sequence[int]] | np.ndarray,
    references: Sequence[int] | Sequence[Sequence[int]] | np.ndarray,
    multi_label: bool = False,
) -> dict[str, float]:
    """Accuracy, macro F1 and micro F1 from class ids or multi-hot vectors.

    Args:
        predictions: [N] predicted class ids, or [N, num_labels] multi-hot predictions when `multi_label`.
        references: [N] true class ids, or [N, num_labels] multi-hot references when `multi_label`.
        multi_label: whether the inputs are multi-hot vectors.

    Returns:
        `{"accuracy": float, "macro_f1": float, "micro_f1": float}`; see the module description.
    """
    preds, refs = np.asarray(predictions), np.asarray(references)
    if preds.shape != refs.shape:
        raise ValueError(f"predictions {preds.shape} and references {refs.shape} must have the same shape.")
    if preds.shape[0] == 0:
        raise ValueError("classification needs at least one example.")

    if multi_label:
        if preds.ndim != 2:
            raise ValueError(f"Multi-label inputs must be [N, num_labels] multi-hot arrays, got shape {preds.shape}.")
        for name, arr in (("predictions", preds), ("references", refs)):
            if not np.isin(arr, (0, 1)).all():
                raise ValueError(f"Multi-label {name} must be multi-hot (0/1) vectors.")
        preds, refs = preds.astype(bool), refs.astype(bool)
        accuracy = (preds == refs).all(axis=1).mean()
        tp = (preds & refs).sum(axis=0)  # (num_labels,)
        fp = (preds & ~refs).sum(axis=0)
        fn = (~preds & refs).sum(axis=0)
        present = (preds | refs).any(axis=0)
    else:
        if preds.ndim != 1:
            raise ValueError(f"Single-label inputs must be [N] class ids, got shape {preds.shape}.")
        preds, refs = preds.astype(np.int64), refs.astype(np.int64)
        accuracy = (preds == refs).mean()
        # Map the occurring class ids to 0..C-1 so large or sparse ids cost nothing, then count with bincount.
        classes, inverse = np.unique(np.concatenate([preds, refs]), return_inverse=True)
        pred_idx, ref_idx = inverse[: len(preds)], inverse[len(preds) :]
        num_classes = len(classes)
        tp = np.bincount(ref_idx[pred_idx == ref_idx], minlength=num_classes)  # (C,)
        fp = np.bincount(pred_idx, minlength=num_classes) - tp
        fn = np.bincount(ref_idx, minlength=num_classes) - tp
        present = np.ones(num_classes, dtype=bool)

    per_class_f1 = _f1(tp, fp, fn)
    macro_f1 = per_class_f1[present].mean() if present.any() else 0.0
    micro_f1 = _f1(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))[0]
    return {"accuracy": float(accuracy), "macro_f1": float(macro_f1), "micro_f1": float(micro_f1)}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    """Accuracy, macro F1 and micro F1; config "multilabel" for multi-hot inputs."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name == "multilabel":
            features = datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int32")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
            )
        else:
            features = datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
            reference_urls=[
                "https://scikit-learn.org/stable/modules/model_evaluation.html#precision-recall-f-measure-metrics"
            ],
        )

    def _compute(
        self, predictions: list[int] | list[list[int]], references: list[int] | list[list[int]]
    ) -> dict[str, float]:
        return classification_scores(predictions, references, multi_label=self.config_name == "multilabel")
