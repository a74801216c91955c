"""Tests for `metrics/`: every evaluate module loaded from its folder, checked against hand-worked values or
independent implementations, plus the Trainer `compute_metrics` factories on real `EvalPrediction`s."""

import os

# Before evaluate / huggingface_hub read their configuration: nothing in this file may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"

import evaluate  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import sacrebleu  # noqa: E402
import torch  # noqa: E402
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from rouge_score import rouge_scorer  # noqa: E402
from transformers import EvalPrediction, PreTrainedTokenizerFast  # noqa: E402

from metrics import (  # noqa: E402
    METRICS_DIR,
    captioning_compute_metrics,
    classification_compute_metrics,
    load_metric,
    retrieval_compute_metrics,
    vqa_compute_metrics,
)
from metrics.captioning.captioning import caption_scores, tokenize_caption  # noqa: E402
from metrics.retrieval_recall.retrieval_recall import retrieval_recall  # noqa: E402
from metrics.vqa_accuracy.vqa_accuracy import normalize_answer  # noqa: E402

MODULE_NAMES = ["vqa_accuracy", "retrieval_recall", "captioning", "classification"]


@pytest.fixture(scope="module")
def modules() -> dict[str, evaluate.EvaluationModule]:
    """Each module loaded through `evaluate.load(<folder path>)`, as a user would."""
    return {name: evaluate.load(str(METRICS_DIR / name), keep_in_memory=True) for name in MODULE_NAMES}


# ----------------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_load_metric_is_local_and_never_touches_the_hub(name, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("evaluate tried the Hugging Face Hub")

    monkeypatch.setattr(evaluate.loading, "HubEvaluationModuleFactory", no_hub)
    module = load_metric(name, keep_in_memory=True)
    assert isinstance(module, evaluate.Metric)
    assert module.name == name
    assert module.info.description and module.info.citation and module.info.features


def test_load_metric_rejects_unknown_names():
    with pytest.raises(ValueError, match="available: \\['captioning', 'classification'"):
        load_metric("accuracy")


# ---------------------------------------------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # With m of the 10 answers equal to the prediction, vqaEval.py averages over the 10 leave-one-out subsets
        # of 9: the m subsets that drop a matching answer score min(1, (m-1)/3), the 10-m others min(1, m/3).
        (0, 0.0),  # (0 + 10*0) / 10
        (1, 0.3),  # (1*0 + 9*(1/3)) / 10 = 3/10
        (2, 0.6),  # (2*(1/3) + 8*(2/3)) / 10 = (2/3 + 16/3) / 10 = 6/10
        (3, 0.9),  # (3*(2/3) + 7*1) / 10 = 9/10
        (4, 1.0),  # (4*1 + 6*1) / 10
    ],
)
def test_vqa_accuracy_ten_choose_nine(modules, matches, expected):
    answers = ["2"] * matches + ["3", "4", "5", "6", "7", "8", "9", "10", "11", "12"][: 10 - matches]
    # "Two" normalises to "2"; the distractors are all different from "2" and from each other's majority.
    result = modules["vqa_accuracy"].compute(predictions=["Two"], references=[answers])
    assert result["vqa_accuracy"] == pytest.approx(expected)


def test_vqa_accuracy_dataset_mean_and_exact_match(modules):
    predictions = ["two", "yes", "red car", "dont know"]
    references = [
        ["2", "2", "3", "4", "4", "4", "4", "5", "6", "7"],  # 2 matches -> 0.6; majority "4" -> no exact match
        ["yes"] * 10,  # 1.0, exact
        [
            "a red-car",
            "red car",
            "red",
            "red",
            "red",
            "blue",
            "red car",
            "car",
            "red",
            "red",
        ],  # 3 -> 0.9, majority "red"
        ["don't know"] * 3 + ["no"] * 7,  # "dont" -> "don't": 3 matches -> 0.9, majority "no"
    ]
    result = modules["vqa_accuracy"].compute(predictions=predictions, references=references)
    assert result["vqa_accuracy"] == pytest.approx((0.6 + 1.0 + 0.9 + 0.9) / 4)
    assert result["exact_match"] == pytest.approx(1 / 4)


def test_vqa_single_answer_references(modules):
    result = modules["vqa_accuracy"].compute(predictions=["The Dog.", "3", "no"], references=["dog", "three", "yes"])
    assert result == {"vqa_accuracy": pytest.approx(2 / 3), "exact_match": pytest.approx(2 / 3)}


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two dogs.", "2 dogs"),  # number word, trailing period stripped
        ("A Red-Car", "red car"),  # '-' without adjacent space separates words; article dropped
        ("black / white", "black white"),  # '/' next to a space is deleted
        ("1,000", "1000"),  # digit,digit group: punctuation deleted
        ("3.5", "3.5"),  # a period followed by a digit is kept
        ("isnt", "isn't"),  # contractions map
        ("yes!\n", "yes"),
        ("the  none", "0"),
    ],
)
def test_vqa_official_answer_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


# ---------------------------------------------------------------------------------------------- retrieval

# Hand-built similarity: with identity image embeddings, text_embeds @ image_embeds.T is text_embeds itself, so
# each text row below *is* its similarity to images 0, 1, 2. Images 0 and 2 have two captions each.
HAND_SIMILARITY = np.array(
    [
        [5, 1, 0],  # t0 -> img0: nothing >= 5 elsewhere                      rank 0
        [1, 3, 2],  # t1 -> img0: 3 and 2 are ahead                           rank 2
        [4, 4, 1],  # t2 -> img1: img0 ties at 4, ties count against          rank 1
        [0, 6, 2],  # t3 -> img2: img1 ahead                                  rank 1
        [2, 1, 0],  # t4 -> img2: img0 and img1 ahead                         rank 2
    ],
    dtype=np.float32,
)
HAND_TEXT_TO_IMAGE = np.array([0, 0, 1, 2, 2])
# image -> text, read down the columns; the best own caption counts, ties with other texts count against:
#   img0 [5,1,4,0,2], own t0,t1: best 5, no other text >= 5           rank 0
#   img1 [1,3,4,6,1], own t2:    best 4, t3 (6) ahead                 rank 1
#   img2 [0,2,1,2,0], own t3,t4: best 2, t1 ties at 2                 rank 1
HAND_EXPECTED = {
    "i2t_recall@1": 1 / 3,
    "i2t_recall@2": 1.0,
    "i2t_recall@3": 1.0,
    "t2i_recall@1": 1 / 5,
    "t2i_recall@2": 3 / 5,
    "t2i_recall@3": 1.0,
}
HAND_EXPECTED["mean_recall"] = sum(HAND_EXPECTED.values()) / 6


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 1000])
def test_retrieval_recall_hand_built_matrix(chunk_size):
    result = retrieval_recall(
        np.eye(3, dtype=np.float32), HAND_SIMILARITY, HAND_TEXT_TO_IMAGE, ks=(1, 2, 3), chunk_size=chunk_size
    )
    assert result == pytest.approx(HAND_EXPECTED)
    assert list(result) == list(HAND_EXPECTED)


def test_retrieval_recall_through_evaluate_module(modules):
    result = modules["retrieval_recall"].compute(
        predictions=HAND_SIMILARITY.tolist(),
        references=HAND_TEXT_TO_IMAGE.tolist(),
        image_embeds=np.eye(3),
        ks=[1, 2, 3],
        chunk_size=2,
    )
    assert result == pytest.approx(HAND_EXPECTED)


def test_retrieval_uncaptioned_image_is_a_distractor_only():
    # A 4th image without captions: it leaves the image->text average alone but outranks t1's image (score 3 > 1).
    images = np.eye(4, dtype=np.float32)
    texts = np.concatenate([HAND_SIMILARITY, np.array([[-1], [3], [-1], [-1], [-1]], dtype=np.float32)], axis=1)
    result = retrieval_recall(images, texts, HAND_TEXT_TO_IMAGE, ks=(1, 2, 3))
    assert result["i2t_recall@1"] == pytest.approx(1 / 3)  # still over the 3 captioned images
    assert result["t2i_recall@2"] == pytest.approx(3 / 5)
    assert result["t2i_recall@3"] == pytest.approx(4 / 5)  # t1 now has rank 3


def _brute_force_recall(images: np.ndarray, texts: np.ndarray, t2i: np.ndarray, ks: tuple[int, ...]) -> dict:
    """Full similarity matrix and per-query Python loops, written from the documented tie rule."""
    sim = texts.astype(np.float64) @ images.astype(np.float64).T  # (Nt, Ni)
    t2i_hits = {k: 0 for k in ks}
    for t, img in enumerate(t2i):
        rank = sum(sim[t, j] >= sim[t, img] for j in range(sim.shape[1]) if j != img)
        for k in ks:
            t2i_hits[k] += rank < k
    i2t_hits, captioned = {k: 0 for k in ks}, 0
    for i in range(sim.shape[1]):
        own = np.flatnonzero(t2i == i)
        if len(own) == 0:
            continue
        captioned += 1
        best = sim[own, i].max()
        rank = sum(sim[t, i] >= best for t in range(sim.shape[0]) if t not in own)
        for k in ks:
            i2t_hits[k] += rank < k
    result = {f"i2t_recall@{k}": i2t_hits[k] / captioned for k in ks}
    result.update({f"t2i_recall@{k}": t2i_hits[k] / len(t2i) for k in ks})
    return result


def test_retrieval_recall_matches_brute_force_and_is_chunk_invariant():
    rng = np.random.default_rng(0)
    num_images, dim = 40, 8
    t2i = np.concatenate([np.arange(num_images), rng.integers(0, num_images, 60)])  # 1 to ~4 captions per image
    # Integer-valued embeddings make every dot product exact in float32/float64, so the brute force (float64)
    # and the chunked float32 computation see the same ties.
    images = rng.integers(-3, 4, (num_images + 5, dim)).astype(np.float32)  # 5 uncaptioned distractors
    texts = (images[t2i] + rng.integers(-3, 4, (len(t2i), dim))).astype(np.float32)
    ks = (1, 5, 10)
    reference = _brute_force_recall(images, texts, t2i, ks)
    by_chunk = {c: retrieval_recall(images, texts, t2i, ks=ks, chunk_size=c) for c in (1, 7, 64, 10_000)}
    for result in by_chunk.values():
        assert result == by_chunk[10_000]  # exactly equal, not approximately
    assert {k: v for k, v in by_chunk[7].items() if k != "mean_recall"} == pytest.approx(reference)
    # Ties exist in this data, so the tie rule is exercised, not just the generic case.
    sim = texts @ images.T
    assert (sim == sim[np.arange(len(t2i)), t2i][:, None]).sum() > len(t2i)


def test_retrieval_recall_never_builds_the_full_matrix(monkeypatch):
    rng = np.random.default_rng(1)
    images = rng.standard_normal((300, 16), dtype=np.float32)
    t2i = np.repeat(np.arange(300), 5)
    texts = images[t2i] + 0.5 * rng.standard_normal((1500, 16), dtype=np.float32)
    shapes = []
    real_matmul = np.matmul

    def recording_matmul(a, b, *args, **kwargs):
        out = real_matmul(a, b, *args, **kwargs)
        shapes.append(out.shape)
        return out

    monkeypatch.setattr(np, "matmul", recording_matmul)
    result = retrieval_recall(images, texts, t2i, chunk_size=7)
    monkeypatch.undo()
    # Every score block has at most chunk_size query rows: 7 x 1500 floats instead of 300 x 1500.
    assert shapes and max(rows for rows, _ in shapes) == 7
    assert {cols for _, cols in shapes} == {300, 1500}
    assert result == retrieval_recall(images, texts, t2i, chunk_size=10_000)


def test_retrieval_recall_larger_gallery_is_exact():
    # 2k images x 10k texts (dim 16): captions are noisy copies of their image, so the ground truth wins clearly.
    rng = np.random.default_rng(2)
    images = rng.standard_normal((2000, 16), dtype=np.float32)
    t2i = np.repeat(np.arange(2000), 5)
    texts = images[t2i] + 0.05 * rng.standard_normal((10_000, 16), dtype=np.float32)
    result = retrieval_recall(images, texts, t2i, chunk_size=512, normalize=True)
    assert result["t2i_recall@1"] == 1.0 and result["i2t_recall@1"] == 1.0
    # Shuffling the gallery order (and remapping the ids) changes nothing: no index-based tie breaking.
    perm = rng.permutation(2000)
    inverse = np.argsort(perm)
    shuffled = retrieval_recall(images[perm], texts, inverse[t2i], chunk_size=333, normalize=True)
    assert shuffled == result


def test_retrieval_recall_collapsed_embeddings_score_zero():
    images = np.ones((20, 4), dtype=np.float32)
    texts = np.ones((40, 4), dtype=np.float32)
    result = retrieval_recall(images, texts, np.arange(40) % 20)
    assert all(value == 0.0 for value in result.values())


def test_retrieval_recall_accepts_torch_and_normalises():
    rng = np.random.default_rng(3)
    images = rng.standard_normal((30, 8)).astype(np.float32)
    texts = images[np.arange(60) % 30] + rng.standard_normal((60, 8)).astype(np.float32)
    t2i = np.arange(60) % 30
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    expected = retrieval_recall(unit(images), unit(texts), t2i)
    from_torch = retrieval_recall(
        torch.from_numpy(images) * 3.0, torch.from_numpy(texts), torch.from_numpy(t2i), normalize=True
    )
    assert from_torch == pytest.approx(expected)
    # Without normalisation, scaling one image's embedding changes the ranking.
    scaled = images.copy()
    scaled[0] *= 100.0
    assert retrieval_recall(scaled, texts, t2i) != retrieval_recall(scaled, texts, t2i, normalize=True)


def test_retrieval_recall_rejects_bad_input():
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_recall(np.eye(3), np.eye(3), [0, 1, 3])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall(np.full((2, 2), np.nan), np.eye(2), [0, 1])


# --------------------------------------------------------------------------------------------- captioning

CAPTION_PREDICTIONS = [
    "A man riding a wave on top of a surfboard.",
    "two dogs playing in the snow",
    "a plate of food with broccoli and rice",
    "A red bus parked on the side of a street!",
]
CAPTION_REFERENCES = [
    ["A surfer rides a large wave.", "a man riding a wave on a surfboard", "Person surfing in the ocean."],
    ["Two dogs play in the snow.", "dogs running through snow"],
    ["A plate with rice, broccoli and chicken.", "food on a white plate", "a meal of rice and vegetables", "dinner"],
    ["a red double-decker bus on a city street"],
]


def test_tokenize_caption():
    assert tokenize_caption("A man's T-shirt, red.") == "a man s t shirt red"
    assert tokenize_caption("  Two   dogs!\n") == "two dogs"
    assert tokenize_caption("«Café» — 3.5") == "café 3 5"


def test_captioning_bleu_cider_match_pycocoevalcap(modules):
    result = modules["captioning"].compute(predictions=CAPTION_PREDICTIONS, references=CAPTION_REFERENCES)
    res = {i: [tokenize_caption(p)] for i, p in enumerate(CAPTION_PREDICTIONS)}
    gts = {i: [tokenize_caption(r) for r in refs] for i, refs in enumerate(CAPTION_REFERENCES)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    for n in range(4):
        assert result[f"bleu_{n + 1}"] == pytest.approx(bleu[n], abs=1e-12)
    assert result["cider"] == pytest.approx(cider, abs=1e-12)
    assert 0.0 < result["bleu_4"] < result["bleu_1"] < 1.0
    assert result["cider"] > 0.0


def test_captioning_rouge_l_matches_rouge_score(modules):
    # pycocoevalcap's ROUGE-L: per image, max LCS precision and max LCS recall over the references, combined
    # with beta = 1.2; rouge-score provides the LCS precision/recall independently.
    result = modules["captioning"].compute(predictions=CAPTION_PREDICTIONS, references=CAPTION_REFERENCES)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    beta2 = 1.2**2
    per_image = []
    for prediction, refs in zip(CAPTION_PREDICTIONS, CAPTION_REFERENCES, strict=True):
        scores = [scorer.score(tokenize_caption(r), tokenize_caption(prediction))["rougeL"] for r in refs]
        p, r = max(s.precision for s in scores), max(s.recall for s in scores)
        per_image.append((1 + beta2) * p * r / (r + beta2 * p) if p and r else 0.0)
    assert result["rouge_l"] == pytest.approx(np.mean(per_image), abs=1e-12)


def test_captioning_hand_worked_bleu_and_cider_d():
    # Equal lengths (brevity penalty 1); unigrams a, cat match, sits does not: BLEU-1 = 2/3.
    assert caption_scores(["A cat, sits."], [["a cat sat"]])["bleu_1"] == pytest.approx(2 / 3, abs=1e-6)
    # CIDEr-D of perfect captions: two images with disjoint words, so every n-gram has df = 1, idf = log(2) > 0,
    # the clipped cosine is 1 for n = 1..4, the length penalty exp(0) = 1, mean over n = 1, times 10 = 10.
    perfect = caption_scores(
        ["a dog runs on grass", "two cats sleep inside today"],
        [["a dog runs on grass"], ["two cats sleep inside today"]],
    )
    assert perfect["cider"] == pytest.approx(10.0)
    assert perfect["bleu_4"] == pytest.approx(1.0) and perfect["rouge_l"] == pytest.approx(1.0)
    # With one image the corpus idf is log(1) - log(1) = 0 for every n-gram: CIDEr is 0 even for a perfect caption.
    assert caption_scores(["a dog runs on grass"], [["a dog runs on grass"]])["cider"] == 0.0


def test_captioning_sacrebleu_with_variable_reference_counts(modules):
    result = modules["captioning"].compute(predictions=CAPTION_PREDICTIONS, references=CAPTION_REFERENCES)
    # sacreBLEU's reference streams, padded with None where an image has fewer references.
    streams = [[refs[j] if j < len(refs) else None for refs in CAPTION_REFERENCES] for j in range(4)]
    assert result["sacrebleu"] == pytest.approx(sacrebleu.corpus_bleu(CAPTION_PREDICTIONS, streams).score / 100)
    # Dropping a reference stream changes the score, so all references were used.
    assert result["sacrebleu"] != pytest.approx(sacrebleu.corpus_bleu(CAPTION_PREDICTIONS, streams[:1]).score / 100)


def test_captioning_single_string_references(modules):
    as_strings = modules["captioning"].compute(
        predictions=CAPTION_PREDICTIONS, references=[r[0] for r in CAPTION_REFERENCES]
    )
    assert as_strings == caption_scores(CAPTION_PREDICTIONS, [[r[0]] for r in CAPTION_REFERENCES])


# ----------------------------------------------------------------------------------------- classification


def test_classification_single_label_hand_worked(modules):
    # Confusion (rows = truth, cols = prediction) for classes 0, 1, 2 plus a never-true predicted class 7:
    #   truth 0: [2, 1, 0, 0]      class 0: TP 2 FP 0 FN 1 -> F1 = 4/5
    #   truth 1: [0, 1, 1, 0]      class 1: TP 1 FP 1 FN 1 -> F1 = 2/4
    #   truth 2: [0, 0, 1, 1]      class 2: TP 1 FP 1 FN 1 -> F1 = 2/4
    #                              class 7: TP 0 FP 1 FN 0 -> F1 = 0
    references = [0, 0, 0, 1, 1, 2, 2]
    predictions = [0, 0, 1, 1, 2, 2, 7]
    result = modules["classification"].compute(predictions=predictions, references=references)
    assert result["accuracy"] == pytest.approx(4 / 7)
    assert result["micro_f1"] == pytest.approx(4 / 7)  # single-label: micro F1 == accuracy
    assert result["macro_f1"] == pytest.approx((4 / 5 + 1 / 2 + 1 / 2 + 0) / 4)


def test_classification_multi_label_hand_worked():
    clf = load_metric("classification", config_name="multilabel", keep_in_memory=True)
    references = [[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0]]
    predictions = [[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0]]
    # Exact match: only row 1 -> 1/3. Per label: 0: TP 2 -> F1 1; 1: TP 2 -> 1; 2: TP 0 FP 1 FN 1 -> 0;
    # label 3 never occurs -> skipped. Micro: TP 4, FP 1, FN 1 -> 8/10.
    result = clf.compute(predictions=predictions, references=references)
    assert result == {
        "accuracy": pytest.approx(1 / 3),
        "macro_f1": pytest.approx(2 / 3),
        "micro_f1": pytest.approx(0.8),
    }


def test_classification_matches_sklearn():
    metrics_sk = pytest.importorskip("sklearn.metrics")
    from metrics.classification.classification import classification_scores

    rng = np.random.default_rng(4)
    refs, preds = rng.integers(0, 6, 200), rng.integers(0, 7, 200)
    result = classification_scores(preds, refs)
    assert result["accuracy"] == pytest.approx(metrics_sk.accuracy_score(refs, preds))
    assert result["macro_f1"] == pytest.approx(metrics_sk.f1_score(refs, preds, average="macro"))
    assert result["micro_f1"] == pytest.approx(metrics_sk.f1_score(refs, preds, average="micro"))

    refs, preds = rng.integers(0, 2, (100, 5)), rng.integers(0, 2, (100, 5))
    refs[:, 4] = preds[:, 4] = 0  # a label that never occurs: skipped here, F1 = 0 for sklearn unless excluded
    result = classification_scores(preds, refs, multi_label=True)
    assert result["accuracy"] == pytest.approx(metrics_sk.accuracy_score(refs, preds))
    assert result["macro_f1"] == pytest.approx(metrics_sk.f1_score(refs, preds, average="macro", labels=[0, 1, 2, 3]))
    assert result["micro_f1"] == pytest.approx(metrics_sk.f1_score(refs, preds, average="micro"))


# --------------------------------------------------------------------------------- Trainer compute_metrics


def test_vqa_compute_metrics_soft_labels_tuple_predictions_and_id2label():
    id2label = {0: "2", 1: "two", 2: "yes", 3: "no"}
    logits = np.array(
        [
            [0.1, 3.0, 0.0, 0.0],  # argmax "two": target on "2" (0.6) counts via normalisation
            [0.0, 0.0, 2.0, 1.0],  # "yes": 1.0
            [0.0, 0.0, 2.0, 1.0],  # "yes" but target "no": 0
            [5.0, 0.0, 0.0, 0.0],  # "2": 0.3 while "yes" has 0.9 -> not an exact match
        ]
    )
    labels = np.array(
        [[0.6, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.9], [0.3, 0.0, 0.9, 0.0], [-100.0] * 4]
    )
    logits = np.concatenate([logits, np.zeros((1, 4))])  # the -100 row is padding and must be dropped
    eval_pred = EvalPrediction(predictions=(logits, np.zeros((5, 7))), label_ids=labels)
    result = vqa_compute_metrics(id2label)(eval_pred)
    assert result["vqa_accuracy"] == pytest.approx((0.6 + 1.0 + 0.0 + 0.3) / 4)
    assert result["exact_match"] == pytest.approx(2 / 4)
    # Without id2label, "two" and "2" are different classes and example 0 scores 0.
    assert vqa_compute_metrics()(eval_pred)["vqa_accuracy"] == pytest.approx((1.0 + 0.3) / 4)


def test_vqa_compute_metrics_class_id_labels():
    logits = np.eye(4)[[0, 1, 2, 3, 3]]  # argmax 0, 1, 2, 3, 3
    labels = np.array([0, 1, 3, -100, 3])
    result = vqa_compute_metrics()(EvalPrediction(predictions=logits, label_ids=labels))
    assert result == {"vqa_accuracy": pytest.approx(3 / 4), "exact_match": pytest.approx(3 / 4)}


def test_retrieval_compute_metrics_dedupes_images_by_id():
    # Eval examples are (image, caption) pairs in Trainer order: images 10 and 30 have two captions each.
    image_ids = np.array([10, 20, 10, 30, 30, -100])
    image_vectors = {10: [1.0, 0.0, 0.0], 20: [0.0, 1.0, 0.0], 30: [0.0, 0.0, 1.0], -100: [0.0, 0.0, 0.0]}
    image_embeds = np.array([image_vectors[i] for i in image_ids], dtype=np.float32) * 2.0  # unnormalised
    text_embeds = np.array(
        [[0.9, 0.1, 0.0], [0.1, 0.2, 0.9], [0.0, 0.9, 0.1], [0.0, 0.1, 0.9], [0.2, 0.0, 0.1], [1.0, 1.0, 1.0]],
        dtype=np.float32,
    )
    eval_pred = EvalPrediction(predictions=(image_embeds, text_embeds), label_ids=image_ids)
    result = retrieval_compute_metrics(ks=(1, 2))(eval_pred)
    # Gallery = the 3 distinct images (sorted ids 10, 20, 30); the -100 example is dropped.
    expected = retrieval_recall(np.eye(3), text_embeds[:5], [0, 1, 0, 2, 2], ks=(1, 2), normalize=True)
    assert result == pytest.approx(expected)
    # By hand. text->image, per row: t0 own 0.9 top (rank 0); t1 own 0.2 < 0.9 (1); t2 own 0.0 < 0.9, 0.1 (2);
    # t3 own 0.9 top (0); t4 own 0.1 < 0.2 (1). image->text on the L2-normalised texts (rows / their norms):
    # img10 best own t0 0.994, t4 0.894 behind (rank 0); img20 own t1 0.216 < t2 0.994 (1);
    # img30 best own t3 0.994 > t1 0.971 (0).
    assert result["t2i_recall@1"] == pytest.approx(2 / 5) and result["t2i_recall@2"] == pytest.approx(4 / 5)
    assert result["i2t_recall@1"] == pytest.approx(2 / 3) and result["i2t_recall@2"] == 1.0

    with pytest.raises(ValueError, match="preprocess_logits_for_metrics"):
        retrieval_compute_metrics()(EvalPrediction(predictions=image_embeds, label_ids=image_ids))


@pytest.fixture(scope="module")
def word_tokenizer() -> PreTrainedTokenizerFast:
    """Offline word-level tokenizer built in memory (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = "[PAD] [UNK] [BOS] [EOS] a dog runs on grass two cats sleep inside cat sits the mat".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )


def test_captioning_compute_metrics_decodes_padded_ids(word_tokenizer):
    def ids(text: str) -> list[int]:
        return word_tokenizer.convert_tokens_to_ids(text.split())

    bos, eos, pad = word_tokenizer.bos_token_id, word_tokenizer.eos_token_id, word_tokenizer.pad_token_id
    # Generated ids: batch 1 padded with the pad id, batch 2 shorter and padded with -100 by Trainer's concat.
    generated = np.array(
        [
            [bos, *ids("a dog runs on grass"), eos, pad],
            [bos, *ids("two cats sleep"), eos, -100, -100, -100],
            [bos, *ids("a cat sits on the mat"), eos][:8],
        ]
    )
    labels = np.array(
        [
            [*ids("a dog runs on grass"), eos, -100],
            [*ids("two cats sleep inside"), eos, -100, -100],
            [*ids("the cat sits on a mat"), eos],
        ]
    )
    eval_pred = EvalPrediction(predictions=(generated, np.zeros((3, 2))), label_ids=labels)
    result = captioning_compute_metrics(word_tokenizer)(eval_pred)
    expected = caption_scores(
        ["a dog runs on grass", "two cats sleep", "a cat sits on the mat"],
        [["a dog runs on grass"], ["two cats sleep inside"], ["the cat sits on a mat"]],
    )
    assert result == pytest.approx(expected)

    # Several references per example replace the single decoded label.
    references = [["a dog runs on grass"], ["two cats sleep inside", "two cats sleep"], ["a cat sits on the mat"]]
    multi = captioning_compute_metrics(word_tokenizer, references=references)(eval_pred)
    assert multi == pytest.approx(
        caption_scores(["a dog runs on grass", "two cats sleep", "a cat sits on the mat"], references)
    )
    assert multi["bleu_4"] > result["bleu_4"]

    with pytest.raises(ValueError, match="generated token ids"):
        captioning_compute_metrics(word_tokenizer)(EvalPrediction(predictions=np.zeros((3, 5, 16)), label_ids=labels))


def test_classification_compute_metrics_single_and_multi_label():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = np.array([0, 1, 1, -100, 1])  # argmax 0, 1, 2, (0 dropped), 1
    result = classification_compute_metrics()(EvalPrediction(predictions=(logits, logits), label_ids=labels))
    # Kept: preds [0, 1, 2, 1] vs [0, 1, 1, 1]: class 0 F1 1, class 1 TP 2 FN 1 -> 4/5, class 2 FP 1 -> 0.
    assert result == {
        "accuracy": pytest.approx(3 / 4),
        "macro_f1": pytest.approx((1 + 0.8 + 0) / 3),
        "micro_f1": pytest.approx(3 / 4),
    }

    # Multi-label with threshold 0.7: sigmoid(x) >= 0.7 <=> x >= log(0.7 / 0.3) = 0.847.
    logits = np.array([[0.9, 0.8, -50.0], [2.0, -1.0, 60.0], [0.0, 0.0, 0.0]])
    labels = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [-100.0, -100.0, -100.0]])
    compute = classification_compute_metrics(multi_label=True, threshold=0.7)
    result = compute(EvalPrediction(predictions=logits, label_ids=labels))
    assert result == {"accuracy": 1.0, "macro_f1": 1.0, "micro_f1": 1.0}
    # At the default 0.5 threshold logit 0.8 becomes a false positive on label 1 of row 0.
    result = classification_compute_metrics(multi_label=True)(EvalPrediction(predictions=logits, label_ids=labels))
    assert result["accuracy"] == pytest.approx(1 / 2)
    assert result["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))
    assert result["macro_f1"] == pytest.approx((1 + 0 + 1) / 3)
