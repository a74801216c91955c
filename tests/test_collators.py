"""Tests for the data collators: outputs, BERT masking statistics, FLIP patch subsets, labels and bad samples."""

import io
import logging

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import BertTokenizerFast

from processing import MMImageError, MMImageProcessor, MMProcessor, MMVideoProcessor
from processing.collators import (
    BadSampleCounter,
    DataCollatorForCaptioning,
    DataCollatorForImageTextClassification,
    DataCollatorForMMPretraining,
    DataCollatorForRetrieval,
    DataCollatorForVQA,
)
from processing.data import default_tokenizer_path, easy_vqa_answers, load_easy_vqa


@pytest.fixture(scope="module")
def processor():
    tokenizer = BertTokenizerFast.from_pretrained(default_tokenizer_path())
    size = {"height": 8, "width": 8}
    video_processor = MMVideoProcessor(size=size, num_frames=4)
    return MMProcessor(MMImageProcessor(size=size), tokenizer, video_processor=video_processor, max_length=32)


def _image(seed: int = 0, size: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size + 1, 3), dtype=np.uint8)


def _rows(count: int, **columns) -> list[dict]:
    return [
        {"image": _image(i), "image_id": i, **{k: v[i] if isinstance(v, list) else v for k, v in columns.items()}}
        for i in range(count)
    ]


# ---------------------------------------------------------------------------------------------------- pretraining

WORDS = "red green blue black gray teal brown yellow circle rectangle triangle shape image picture small large".split()


def _captions(count: int, seed: int = 0) -> list[str]:
    # Lengths 2..40 words: some rows fill the 32-token budget, others leave padding.
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(2, 41))) for _ in range(count)]


def test_pretraining_outputs(processor):
    collator = DataCollatorForMMPretraining(processor)
    batch = collator(_rows(4, caption=_captions(4)))
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "mlm_input_ids", "mlm_labels", "image_ids"}
    assert batch["pixel_values"].shape == (4, 3, 8, 8)
    assert batch["input_ids"].shape == batch["mlm_input_ids"].shape == batch["mlm_labels"].shape
    assert batch["input_ids"].shape[1] <= 32
    assert batch["image_ids"].tolist() == [0, 1, 2, 3] and batch["image_ids"].dtype == torch.long
    # Clean input_ids are the plain tokenization.
    expected = processor(text=[r["caption"] for r in _rows(4, caption=_captions(4))], max_length=32)["input_ids"]
    assert torch.equal(batch["input_ids"], expected)


def test_mlm_masking_statistics(processor):
    tokenizer = processor.tokenizer
    collator = DataCollatorForMMPretraining(processor, mlm_probability=0.15, max_length=32, seed=0)
    rows = [{"image": np.zeros((2, 3, 3), np.uint8), "caption": text} for text in _captions(512, seed=1)]
    batch = collator(rows)
    input_ids, masked, labels = batch["input_ids"], batch["mlm_input_ids"], batch["mlm_labels"]
    attention_mask = batch["attention_mask"].bool()
    assert input_ids.shape[0] == 512 and input_ids.shape[1] == 32
    assert (~attention_mask).sum() > 1000  # the batch has plenty of padding

    special = torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids)) | ~attention_mask
    selected = labels != -100
    maskable = ~special
    # Special tokens and padding are never selected nor altered.
    assert not (selected & special).any()
    assert torch.equal(masked[special], input_ids[special])
    assert torch.equal(labels[selected], input_ids[selected])

    rate = selected.sum().item() / maskable.sum().item()
    assert abs(rate - 0.15) < 0.02, rate
    num_selected = selected.sum().item()
    to_mask = (masked == tokenizer.mask_token_id) & selected
    unchanged = (masked == input_ids) & selected
    to_random = selected & ~to_mask & ~unchanged
    assert abs(to_mask.sum().item() / num_selected - 0.8) < 0.03
    assert abs(to_random.sum().item() / num_selected - 0.1) < 0.03
    assert abs(unchanged.sum().item() / num_selected - 0.1) < 0.03
    # Random replacements are ordinary tokens, never [CLS]/[SEP]/[PAD]/[MASK].
    assert not torch.isin(masked[to_random], torch.tensor(tokenizer.all_special_ids)).any()
    # Outside the selected positions the masked copy equals the clean ids.
    assert torch.equal(masked[~selected], input_ids[~selected])


def test_masking_rng_seeded_and_global(processor):
    rows = _rows(8, caption=_captions(8))
    seeded = [DataCollatorForMMPretraining(processor, seed=3)(rows)["mlm_input_ids"] for _ in range(2)]
    assert torch.equal(*seeded)
    collator = DataCollatorForMMPretraining(processor)
    torch.manual_seed(0)
    first = collator(rows)["mlm_input_ids"]
    torch.manual_seed(0)
    second = collator(rows)["mlm_input_ids"]
    assert torch.equal(first, second)  # the global RNG drives it, so Trainer's RNG checkpoints make resume exact


def test_short_texts_always_get_a_masked_token(processor):
    collator = DataCollatorForMMPretraining(processor, seed=0)
    for _ in range(20):
        batch = collator([{"image": _image(0), "caption": "red"}])
        assert (batch["mlm_labels"] != -100).sum().item() == 1


def test_flip_image_keep_indices(processor):
    collator = DataCollatorForMMPretraining(processor, image_mask_ratio=0.75, num_patches=16, seed=0)
    keep = collator(_rows(6, caption=_captions(6)))["image_keep_indices"]
    assert keep.shape == (6, 4) and keep.dtype == torch.long
    assert torch.equal(keep, keep.sort(dim=1).values)
    assert all(len(set(row.tolist())) == 4 for row in keep) and keep.min() >= 0 and keep.max() < 16
    assert len({tuple(row.tolist()) for row in keep}) > 1  # drawn per sample
    tiny = DataCollatorForMMPretraining(processor, image_mask_ratio=0.99, num_patches=16)
    assert tiny(_rows(2, caption=_captions(2)))["image_keep_indices"].shape == (2, 1)
    assert "image_keep_indices" not in DataCollatorForMMPretraining(processor)(_rows(2, caption=_captions(2)))
    with pytest.raises(ValueError, match="num_patches"):
        DataCollatorForMMPretraining(processor, image_mask_ratio=0.5)


def test_image_ids_fall_back_to_paths(processor, tmp_path):
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"{i}.png"))
        PIL.Image.fromarray(_image(i)).save(paths[-1])
    rows = [
        {"image": paths[0], "caption": "a"},
        {"image": {"path": paths[1], "bytes": None}, "caption": "b"},
        {"image": paths[0], "caption": "c"},
        {"image": _image(3), "caption": "d"},
    ]
    ids = DataCollatorForRetrieval(processor)(rows)["image_ids"].tolist()
    assert ids[0] == ids[2] != ids[1]  # same file -> same id, so never an ITM negative of itself
    assert ids[3] < 0 and ids[0] >= 0


def test_missing_column_names_row_and_remove_unused_columns(processor):
    rows = _rows(3, caption=_captions(3))
    del rows[2]["caption"]
    with pytest.raises(ValueError, match=r"Row 2 .*'caption'.*remove_unused_columns=False"):
        DataCollatorForMMPretraining(processor)(rows)
    with pytest.raises(ValueError, match=r"Row 0 .*'image'"):
        DataCollatorForRetrieval(processor)([{"caption": "a"}])
    with pytest.raises(ValueError, match=r"Row 1 .*empty"):
        DataCollatorForRetrieval(processor)(_rows(2, caption=["fine", "  "]))


# ---------------------------------------------------------------------------------------------------- bad samples


def _truncated_png(tmp_path) -> str:
    buffer = io.BytesIO()
    PIL.Image.fromarray(_image(0, 32)).save(buffer, format="PNG")
    path = tmp_path / "broken.png"
    path.write_bytes(buffer.getvalue()[:200])
    return str(path)


def test_bad_sample_raises_by_default_and_is_skipped_and_counted(processor, tmp_path, caplog):
    broken = _truncated_png(tmp_path)
    rows = _rows(4, caption=_captions(4))
    rows[2]["image"] = broken
    with pytest.raises(MMImageError, match=r"row 2 of the batch, file '.*broken\.png'.*skip_bad_samples=True"):
        DataCollatorForMMPretraining(processor)(rows)

    counter = BadSampleCounter()
    collator = DataCollatorForMMPretraining(processor, skip_bad_samples=True, bad_samples=counter)
    with caplog.at_level(logging.WARNING):
        batch = collator(rows)
    assert batch["pixel_values"].shape[0] == 3 and batch["image_ids"].tolist() == [0, 1, 3]
    assert counter.count == 1 and "broken.png" in counter.report() and "skipped 1" in counter.report()
    assert any("broken.png" in record.getMessage() for record in caplog.records)
    collator(rows)
    assert counter.count == 2
    with pytest.raises(MMImageError, match="All 1 samples"):
        collator([rows[2]])
    assert BadSampleCounter().report().endswith("none skipped.")


def test_other_collators_skip_bad_samples(processor, tmp_path):
    broken = _truncated_png(tmp_path)
    rows = _rows(3, caption=_captions(3), question="what shape is it?", answer="circle", text="hi", label=1)
    rows[0]["image"] = broken
    label2id = {a: i for i, a in enumerate(easy_vqa_answers())}
    counter = BadSampleCounter()
    for collator in [
        DataCollatorForVQA(processor, label2id, skip_bad_samples=True, bad_samples=counter),
        DataCollatorForCaptioning(processor, skip_bad_samples=True, bad_samples=counter),
        DataCollatorForImageTextClassification(processor, skip_bad_samples=True, bad_samples=counter),
        DataCollatorForRetrieval(processor, skip_bad_samples=True, bad_samples=counter),
    ]:
        batch = collator(rows)
        assert batch["pixel_values"].shape[0] == 2 and batch["input_ids"].shape[0] == 2
        assert all(value.shape[0] == 2 for value in batch.values())
    assert counter.count == 4


# ---------------------------------------------------------------------------------------------------- task collators


def test_vqa_hard_labels(processor):
    answers = easy_vqa_answers()
    label2id = {a: i for i, a in enumerate(answers)}
    rows = _rows(
        3, question=["what color is it?", "is there a circle?", "what shape?"], answer=["red", "no", "triangle"]
    )
    batch = DataCollatorForVQA(processor, label2id)(rows)
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "labels"}
    assert batch["labels"].tolist() == [answers.index("red"), answers.index("no"), answers.index("triangle")]
    assert batch["labels"].dtype == torch.long
    rows[1]["answer"] = "purple"
    with pytest.raises(ValueError, match=r"Row 1 .*'purple'.*not in label2id"):
        DataCollatorForVQA(processor, label2id)(rows)


def test_vqa_soft_scores(processor):
    label2id = {"yes": 0, "no": 1, "2": 2, "red": 3}
    rows = _rows(
        2,
        question=["is it red?", "how many?"],
        answers=[["yes"] * 8 + ["no"] * 2, ["2"] * 3 + ["red"]],
    )
    batch = DataCollatorForVQA(processor, label2id, soft_scores=True)(rows)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (2, 4)
    assert torch.allclose(batch["labels"], torch.tensor([[1.0, 2 / 3, 0.0, 0.0], [0.0, 0.0, 1.0, 1 / 3]]))
    rows[0]["answers"] = ["yes", "maybe"]
    with pytest.raises(ValueError, match=r"Row 0 .*'maybe'"):
        DataCollatorForVQA(processor, label2id, soft_scores=True)(rows)
    del rows[1]["answers"]
    with pytest.raises(ValueError, match="'answers'"):
        DataCollatorForVQA(processor, label2id, soft_scores=True)(rows[1:])


def test_captioning_labels(processor):
    tokenizer = processor.tokenizer
    batch = DataCollatorForCaptioning(processor)(_rows(2, caption=["a blue circle", "a teal circle on white"]))
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "labels"}
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids[:, 0].tolist() == [tokenizer.cls_token_id] * 2
    assert ids[0, 4].item() == tokenizer.sep_token_id and ids[0, 5:].eq(tokenizer.pad_token_id).all()
    assert labels[0, 5:].eq(-100).all() and torch.equal(labels[0, :5], ids[0, :5])
    assert torch.equal(labels[1], ids[1])  # the longest row has no padding


def test_image_text_classification_labels(processor):
    rows = _rows(3, text=["a", "b", "c"], label=[2, 0, 1])
    batch = DataCollatorForImageTextClassification(processor)(rows)
    assert batch["labels"].tolist() == [2, 0, 1] and batch["labels"].dtype == torch.long

    label2id = {"cat": 0, "dog": 1, "bird": 2}
    rows = _rows(3, text=["a", "b", "c"], label=["dog", "bird", "cat"])
    assert DataCollatorForImageTextClassification(processor, label2id)(rows)["labels"].tolist() == [1, 2, 0]
    rows[1]["label"] = "fish"
    with pytest.raises(ValueError, match=r"Row 1 .*'fish'"):
        DataCollatorForImageTextClassification(processor, label2id)(rows)

    rows = _rows(2, text=["a", "b"], tags=[["cat", "bird"], []])
    batch = DataCollatorForImageTextClassification(processor, label2id, multi_label=True, label_column="tags")(rows)
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="multi_label"):
        DataCollatorForImageTextClassification(processor, multi_label=True)
    with pytest.raises(ValueError, match="outside"):
        DataCollatorForImageTextClassification(processor, label2id)(_rows(1, text=["a"], label=[7]))


def test_retrieval_outputs(processor):
    rows = _rows(3, caption=["a", "b", "c"])
    rows[2]["image_id"] = 0
    batch = DataCollatorForRetrieval(processor)(rows)
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "image_ids"}
    assert batch["image_ids"].tolist() == [0, 1, 0]


def test_video_rows_give_pixel_values_videos(processor, tmp_path):
    frames = [np.full((6, 7, 3), 20 * t, dtype=np.uint8) for t in range(6)]
    rows = [
        {"video": frames, "caption": "a moving square", "image_id": 0},
        {"video": np.stack(frames[:2]), "caption": "a short clip", "image_id": 1},
    ]
    batch = DataCollatorForMMPretraining(processor)(rows)
    assert "pixel_values" not in batch and batch["pixel_values_videos"].shape == (2, 4, 3, 8, 8)
    assert DataCollatorForCaptioning(processor)(rows)["pixel_values_videos"].shape == (2, 4, 3, 8, 8)
    # Rows transformed upstream (`RowTransform`) carry one (T, 3, H, W) clip each: stacked under the same name.
    clips = processor.video_processor([frames, frames[:2]])["pixel_values_videos"]
    transformed = [{"pixel_values": clip, "caption": "a clip", "image_id": i} for i, clip in enumerate(clips)]
    stacked = DataCollatorForRetrieval(processor)(transformed)
    assert torch.equal(stacked["pixel_values_videos"], batch["pixel_values_videos"])
    with pytest.raises(ValueError, match="mixes"):
        DataCollatorForRetrieval(processor)([rows[0], {"image": _image(0), "caption": "x"}])


def test_collators_on_easy_vqa_rows(processor):
    questions = load_easy_vqa(split="test").select(range(16))
    label2id = {a: i for i, a in enumerate(easy_vqa_answers())}
    batch = DataCollatorForVQA(processor, label2id)(list(questions))
    assert batch["pixel_values"].shape == (16, 3, 8, 8)
    assert batch["labels"].tolist() == [label2id[a] for a in questions["answer"]]
    images = load_easy_vqa(split="test", view="images").select(range(8))
    batch = DataCollatorForMMPretraining(processor)(list(images))
    assert batch["image_ids"].tolist() == images["image_id"]
