"""Image captioning metrics: BLEU-1..4, ROUGE-L and CIDEr-D (COCO caption code) plus sacreBLEU.

Self-contained `evaluate` module: load it with `evaluate.load("<repo>/metrics/captioning")`. Needs no Java:
pycocoevalcap's PTBTokenizer (Stanford CoreNLP) is replaced by the pure-Python `tokenize_caption`.
"""

import string
import unicodedata
from collections.abc import Sequence

import datasets
import evaluate
import sacrebleu
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

__all__ = ["Captioning", "caption_scores", "tokenize_caption"]


_CITATION = """\
@article{chen2015microsoft,
  title={Microsoft {COCO} Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh
          and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  journal={arXiv preprint arXiv:1504.00325},
  year={2015}
}
@inproceedings{vedantam2015cider,
  title={{CIDEr}: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={CVPR},
  year={2015}
}
@inproceedings{post-2018-call,
  title={A Call for Clarity in Reporting {BLEU} Scores},
  author={Post, Matt},
  booktitle={WMT},
  year={2018}
}
"""

_DESCRIPTION = """\
Captioning metrics computed with the COCO caption evaluation scorers (pycocoevalcap): BLEU-1..4 (corpus level,
'closest' reference length), ROUGE-L (LCS F-measure with beta = 1.2, max precision and max recall over the
references, averaged over images) and CIDEr-D. pycocoevalcap's `Cider` class *is* CIDEr-D (the variant used by
the COCO leaderboard, reported there as "CIDEr"): its scorer clips hypothesis n-gram tf-idf weights by the
reference ones, applies the Gaussian length penalty exp(-(len_hyp - len_ref)^2 / (2 * 6^2)), averages n = 1..4
and multiplies by 10. Its idf is computed from the references of the evaluated set itself, so CIDEr depends on
the whole corpus and is 0 for a corpus of a single image (log(1) = 0 makes every weight 0).

Tokenisation: pycocoevalcap's PTBTokenizer needs Java, so captions are tokenised in pure Python by
`tokenize_caption`: lower-case, replace every punctuation character (Unicode category P*, plus ASCII symbols such
as $ + < = > ^ ` | ~) with a space, split on whitespace. It differs from the PTB tokenizer mainly on clitics
("man's" -> "man s", PTB: "man 's") and hyphens ("t-shirt" -> "t shirt", PTB keeps "t-shirt"), so scores are
close to, but not bit-identical with, the official COCO numbers.

sacrebleu is sacreBLEU's corpus BLEU on the raw (untokenised) strings with its default 13a tokeniser and case
kept, i.e. the standardised BLEU of Post (2018); several references per prediction are supported.

All values except cider are fractions in [0, 1] (sacrebleu is divided by 100); cider is on pycocoevalcap's
scale (about 0 to 10, usually reported x100 in papers, e.g. 1.2 -> "120").
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one generated caption per image.
    references (`list[list[str]]` or `list[str]`): the reference captions per image (several allowed), or one
        reference string per image.
Returns:
    bleu_1, bleu_2, bleu_3, bleu_4, rouge_l, cider, sacrebleu (floats; see the description for scales).
Examples:
    >>> captioning = evaluate.load("metrics/captioning")
    >>> captioning.compute(predictions=["a dog runs on grass"], references=[["A dog running on the grass."]])
"""

# ASCII symbols are category S* in Unicode (e.g. "+", "$"), not P*, but string.punctuation lists them.
_EXTRA_PUNCTUATION = frozenset(string.punctuation)


def _is_punctuation(char: str) -> bool:
    return char in _EXTRA_PUNCTUATION or unicodedata.category(char).startswith("P")


def tokenize_caption(text: str) -> str:
    """Tokenise a caption for the COCO scorers, in pure Python.

    Lower-cases, replaces each punctuation character with a space and joins the whitespace-split tokens with
    single spaces (pycocoevalcap's ROUGE splits on " ", so runs of spaces would create empty tokens).

    Args:
        text: raw caption.

    Returns:
        The space-joined tokens, e.g. "A man's T-shirt, red." -> "a man s t shirt red".
    """
    text = "".join(" " if _is_punctuation(c) else c for c in text.lower())
    return " ".join(text.split())


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str] | str]) -> dict[str, float]:
    """Score generated captions against one or more references each.

    Args:
        predictions: one generated caption per image.
        references: reference captions per image (a list, or a single string).

    Returns:
        `{"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider", "sacrebleu"}` as floats; see `_DESCRIPTION`.
    """
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} reference lists.")
    if len(predictions) == 0:
        raise ValueError("captioning needs at least one prediction.")
    references = [[refs] if isinstance(refs, str) else list(refs) for refs in references]
    if any(len(refs) == 0 for refs in references):
        raise ValueError("Every prediction needs at least one reference caption.")

    # pycocoevalcap's input format: {id: [caption]} for predictions and {id: [captions]} for references.
    res = {i: [tokenize_caption(p)] for i, p in enumerate(predictions)}
    gts = {i: [tokenize_caption(r) for r in refs] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge_l, _ = Rouge().compute_score(gts, res)
    if any(r for refs in gts.values() for r in refs):
        cider, _ = Cider().compute_score(gts, res)
    else:
        # CiderScorer asserts on an empty n-gram table (every reference empty after tokenisation).
        cider = 0.0

    # sacreBLEU takes reference *streams* (the j-th reference of every segment); None pads the streams of
    # segments with fewer references, which sacreBLEU documents as the way to pass a variable number.
    num_streams = max(len(refs) for refs in references)
    streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(num_streams)]
    sacre = sacrebleu.corpus_bleu(list(predictions), streams).score / 100.0

    return {
        "bleu_1": float(bleu[0]),
        "bleu_2": float(bleu[1]),
        "bleu_3": float(bleu[2]),
        "bleu_4": float(bleu[3]),
        "rouge_l": float(rouge_l),
        "cider": float(cider),
        "sacrebleu": float(sacre),
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Captioning(evaluate.Metric):
    """BLEU-1..4, ROUGE-L, CIDEr-D (pycocoevalcap scorers, pure-Python tokenisation) and sacreBLEU."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            codebase_urls=["https://github.com/salaniz/pycocoevalcap", "https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://arxiv.org/abs/1504.00325", "https://arxiv.org/abs/1411.5726"],
        )

    def _compute(self, predictions: list[str], references: list[list[str]] | list[str]) -> dict[str, float]:
        return caption_scores(predictions, references)
