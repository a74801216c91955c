"""VQAv2 soft accuracy and exact match, with the official VQA answer normalisation.

Self-contained `evaluate` module: load it with `evaluate.load("<repo>/metrics/vqa_accuracy")`. It imports only
the standard library, `datasets` and `evaluate`, so the file can be copied anywhere (evaluate copies it into its
modules cache when loading).
"""

import re
from collections.abc import Sequence

import datasets
import evaluate

__all__ = ["VqaAccuracy", "normalize_answer", "vqa_soft_accuracy", "vqa_scores"]


_CITATION = """\
@inproceedings{antol2015vqa,
  title={{VQA}: Visual Question Answering},
  author={Antol, Stanislaw and Agrawal, Aishwarya and Lu, Jiasen and Mitchell, Margaret and Batra, Dhruv
          and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={ICCV},
  year={2015}
}
@inproceedings{goyal2017making,
  title={Making the {V} in {VQA} Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author={Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle={CVPR},
  year={2017}
}
"""

_DESCRIPTION = """\
VQA soft accuracy as computed by the official VQAv2 evaluation script (vqaEval.py): for a question with n human
answers, the prediction is scored against each of the n leave-one-out subsets of n-1 answers (the "10 choose 9"
subsets for VQAv2's 10 answers) as min(1, #matching answers in the subset / 3), and the n scores are averaged.
With m of 10 humans agreeing with the prediction this gives 0, 0.3, 0.6, 0.9 and 1.0 for m = 0, 1, 2, 3, >=4.
Answers are normalised with the official processing: punctuation handling, lower-casing, number words to digits
("two" -> "2"), article removal ("a", "an", "the") and the official contractions map ("dont" -> "don't").

exact_match is the fraction of questions whose normalised prediction equals the normalised reference; for list
references it is the majority (most frequent normalised) answer, ties broken by first occurrence. It is the metric
for single-answer data sets (reference is one string).

All values are fractions in [0, 1], not percentages.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): predicted answer per question.
    references (`list[list[str]]` or `list[str]`): the human answers per question (VQAv2: 10 per question), or a
        single answer string per question for single-answer data sets.
Returns:
    vqa_accuracy (`float`): mean official VQA soft accuracy in [0, 1]. A single-answer reference behaves as one
        human answer scored like the official script scores a question with n = 1 answers, which would be 0 for
        every prediction; to stay meaningful a single reference is scored 1.0 on a match instead, so that for
        single-answer data sets vqa_accuracy == exact_match.
    exact_match (`float`): fraction of questions whose normalised prediction equals the normalised (majority)
        reference answer.
Examples:
    >>> vqa = evaluate.load("metrics/vqa_accuracy")
    >>> vqa.compute(predictions=["two"], references=[["2", "2", "3", "4", "4", "4", "4", "5", "6", "7"]])
    {'vqa_accuracy': 0.6, 'exact_match': 0.0}
"""

# The tables below are copied from the official evaluation script
# (github.com/GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py) including its typos
# ("somebody'd" -> "somebodyd", capitalised keys that never match after lower-casing), because results are only
# comparable to published numbers if the normalisation is byte-for-byte the same.
# fmt: off
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
]
# fmt: on
# The official pattern is "(?!<=\d)(\.)(?!\d)": "(?!<=" is a negative *lookahead* for the text "<=", not a
# lookbehind, so in effect it removes every period that is not followed by a digit ("3.5" keeps its period).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The official script calls `periodStrip.sub("", text, re.UNICODE)`, passing the flag as the *count* argument, so
# at most re.UNICODE (= 32) periods are removed; kept for parity.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCTUATION:
        # Punctuation next to a space, or any text with a digit-comma-digit group ("1,000"), is deleted; otherwise
        # it separates words ("black/white" -> "black white").
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, _PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """Normalise an answer string exactly like the official VQA evaluation script.

    Newlines and tabs become spaces, then punctuation handling, lower-casing, number words to digits, article
    removal and the contractions map are applied (`processPunctuation` then `processDigitArticle` in vqaEval.py).

    Args:
        answer: raw answer string.

    Returns:
        The normalised answer, words joined by single spaces.
    """
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(answer))


def vqa_soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against the human answers of one question.

    Averages min(1, #matches among the other n-1 answers / 3) over the n leave-one-out subsets, as vqaEval.py does.
    Unlike vqaEval.py, which normalises only when the human answers disagree, answers are always normalised; the
    official VQAv2 annotations are already normalised, so this only matters for raw (unnormalised) predictions,
    where always normalising avoids scoring "two" against ten "2" as 0.

    Args:
        prediction: predicted answer (raw; normalised here).
        answers: human answers (raw; normalised here). With a single answer the score is 1.0 on a match and 0.0
            otherwise (the leave-one-out rule is undefined for n = 1).

    Returns:
        The accuracy in [0, 1].
    """
    if len(answers) == 0:
        raise ValueError("`answers` must contain at least one human answer.")
    prediction = normalize_answer(prediction)
    matches = sum(normalize_answer(a) == prediction for a in answers)
    n = len(answers)
    if n == 1:
        return float(matches)
    # Leaving out a matching answer leaves matches - 1 in the subset (happens `matches` times); leaving out a
    # non-matching one leaves all of them (happens n - matches times).
    total = matches * min(1.0, (matches - 1) / 3) + (n - matches) * min(1.0, matches / 3)
    return total / n


def _majority_answer(answers: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    # max() returns the first maximal key in insertion order, i.e. ties go to the first-seen answer.
    return max(counts, key=counts.__getitem__)


def vqa_scores(predictions: Sequence[str], references: Sequence[Sequence[str] | str]) -> dict[str, float]:
    """Mean VQA soft accuracy and exact match over a data set.

    Args:
        predictions: predicted answer per question.
        references: list of human answers per question, or one answer string per question.

    Returns:
        `{"vqa_accuracy": float, "exact_match": float}`, fractions in [0, 1].
    """
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
    if len(predictions) == 0:
        raise ValueError("vqa_accuracy needs at least one prediction.")
    soft, exact = 0.0, 0
    for prediction, answers in zip(predictions, references, strict=True):
        if isinstance(answers, str):
            answers = [answers]
        soft += vqa_soft_accuracy(prediction, answers)
        exact += normalize_answer(prediction) == _majority_answer([normalize_answer(a) for a in answers])
    n = len(predictions)
    return {"vqa_accuracy": soft / n, "exact_match": exact / n}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    """VQAv2 soft accuracy (official normalisation and 10-choose-9 averaging) and exact match."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Two input layouts: several human answers per question (VQAv2) or one answer (single-answer sets).
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://visualqa.org/evaluation.html", "https://github.com/GT-Vision-Lab/VQA"],
        )

    def _compute(self, predictions: list[str], references: list[list[str]] | list[str]) -> dict[str, float]:
        return vqa_scores(predictions, references)
