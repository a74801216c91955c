"""The user's own data: data arguments, local datasets and CSV/JSON files, column mapping and its errors, the
tokenise-once / decode-once path, bad samples screened with names and counts, collators on transformed rows."""

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

from processing.collators import (
    BadSampleCounter,
    DataCollatorForCaptioning,
    DataCollatorForMMPretraining,
    DataCollatorForVQA,
)
from processing.sources import MMDataArguments, load_mm_datasets, prepare_dataset
from transformers import HfArgumentParser


@pytest.fixture(scope="module")
def processor():
    from processing.data import build_default_processor

    return build_default_processor(image_size=16, max_length=16)


def _write_images(folder, n: int, bad: tuple[int, ...] = ()) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    names = []
    for i in range(n):
        name = f"img{i}.png"
        if i in bad:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"\x89PNG broken")
        else:
            pixels = np.full((20, 24, 3), i * 10 % 255, dtype=np.uint8)
            PIL.Image.fromarray(pixels).save(os.path.join(folder, name))
        names.append(name)
    return names


def test_data_arguments_parse_and_keep_the_old_flags():
    (args,) = HfArgumentParser(MMDataArguments).parse_args_into_dataclasses(["--text_column", "question"])
    assert args.caption_column == "question" and args.source == "easy_vqa"
    (args,) = HfArgumentParser(MMDataArguments).parse_args_into_dataclasses(["--train_shards", "a-{0..3}.tar"])
    assert args.source == "shards"
    with pytest.raises(ValueError, match="--train_file must be a .csv, .json or .jsonl"):
        MMDataArguments(train_file="rows.parquet")


def test_csv_train_file_and_json_validation_file_with_relative_paths_and_column_flags(tmp_path, processor):
    names = _write_images(tmp_path / "images", 6)
    with open(tmp_path / "train.csv", "w") as f:
        f.write("picture,text\n" + "".join(f"images/{n},caption {i}\n" for i, n in enumerate(names[:4])))
    with open(tmp_path / "val.jsonl", "w") as f:
        for i, n in enumerate(names[4:]):
            f.write(json.dumps({"picture": f"images/{n}", "text": f"val {i}"}) + "\n")
    args = MMDataArguments(
        train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "val.jsonl"),
        image_column="picture", caption_column="text",
    )
    train, evaluation = load_mm_datasets(args)
    assert sorted(train.column_names) == ["caption", "image"] and len(train) == 4 and len(evaluation) == 2
    assert train[0]["image"]["path"] == str(tmp_path / "images" / names[0])
    ready = prepare_dataset(train, processor, max_length=16)
    row = ready[1]
    assert row["pixel_values"].shape == (3, 16, 16) and row["caption"] == "caption 1"
    assert row["input_ids"][0] == processor.tokenizer.cls_token_id

    with pytest.raises(ValueError, match=r"--caption_column 'words' is not a column of .*train.csv \[train\] \(columns: \['text', 'picture'\]\)"):
        load_mm_datasets(MMDataArguments(train_file=str(tmp_path / "train.csv"), image_column="picture", caption_column="words"))
    with open(tmp_path / "missing.csv", "w") as f:
        f.write("image,caption\nimages/nope.png,x\n")
    with pytest.raises(ValueError, match=r"missing.csv, row 1: image file .*nope.png does not exist"):
        load_mm_datasets(MMDataArguments(train_file=str(tmp_path / "missing.csv")))


def test_local_dataset_path_through_load_dataset(tmp_path):
    names = _write_images(tmp_path / "ds", 3)
    with open(tmp_path / "ds" / "metadata.jsonl", "w") as f:
        for i, n in enumerate(names):
            f.write(json.dumps({"file_name": n, "description": f"picture {i}"}) + "\n")
    train, evaluation = load_mm_datasets(MMDataArguments(dataset_name=str(tmp_path / "ds"), caption_column="description"))
    assert sorted(train["caption"]) == ["picture 0", "picture 1", "picture 2"] and evaluation is None
    with pytest.raises(ValueError, match=r"--image_column 'photo' is not a column .*columns: \['image', 'description'\]"):
        load_mm_datasets(MMDataArguments(dataset_name=str(tmp_path / "ds"), image_column="photo", caption_column="description"))


def test_easy_vqa_stays_the_default_source():
    train, evaluation = load_mm_datasets(MMDataArguments(max_train_samples=5))
    assert len(train) == 5 and len(evaluation) == 1000 and {"image", "caption", "image_id"} <= set(train.column_names)


def test_map_style_images_decode_once_per_epoch_and_texts_tokenise_once(tmp_path, processor, monkeypatch):
    names = _write_images(tmp_path / "images", 8)
    with open(tmp_path / "train.csv", "w") as f:
        f.write("image,caption\n" + "".join(f"images/{n},a shape {i}\n" for i, n in enumerate(names)))
    train, _ = load_mm_datasets(MMDataArguments(train_file=str(tmp_path / "train.csv")))
    ready = prepare_dataset(train, processor, max_length=16)
    assert "input_ids" in ready.column_names  # tokenised in the cached map, not per batch

    import processing.image_processing_mm as image_processing

    decodes = []
    original = image_processing._open_image_file  # the decoder: every file / bytes decode goes through it

    def counting(source, index, path, settings):
        decodes.append(path)
        return original(source, index, path, settings)

    monkeypatch.setattr(image_processing, "_open_image_file", counting)
    collator = DataCollatorForMMPretraining(processor, max_length=16, seed=0)
    loader = torch.utils.data.DataLoader(ready, batch_size=4, shuffle=True, collate_fn=collator)
    for _ in range(2):
        before = len(decodes)
        batches = list(loader)
        epoch = decodes[before:]
        assert len(epoch) == 8 and len(set(epoch)) == 8, "each image decoded exactly once per epoch"
    assert batches[0]["pixel_values"].shape == (4, 3, 16, 16)
    assert batches[0]["mlm_labels"].shape == batches[0]["input_ids"].shape


def test_skip_bad_samples_screens_with_filter_names_and_counts_each(tmp_path, processor):
    names = _write_images(tmp_path / "images", 6, bad=(1, 4))
    with open(tmp_path / "train.csv", "w") as f:
        f.write("image,caption\n" + "".join(f"images/{n},a shape {i}\n" for i, n in enumerate(names)))
    args = MMDataArguments(train_file=str(tmp_path / "train.csv"), skip_bad_samples=True, preprocessing_num_workers=2)
    train, _ = load_mm_datasets(args)
    counter = BadSampleCounter()
    ready = prepare_dataset(train, processor, skip_bad_samples=True, bad_samples=counter, num_proc=2)
    assert len(ready) == 4 and counter.count == 2
    report = counter.report()
    assert "row 1, file" in report and "img1.png" in report and "img4.png" in report
    # Without the flag the first bad image raises naming its row and file.
    strict = prepare_dataset(train, processor)
    with pytest.raises(ValueError, match=r"Bad sample \(file '.*img1.png'\).*--skip_bad_samples"):
        strict[1]


def test_collators_accept_transformed_rows(processor):
    g = torch.Generator().manual_seed(0)
    rows = [
        {"pixel_values": torch.randn(3, 16, 16, generator=g), "input_ids": [101, 1037 + i, 102][: 2 + i % 2] + [102],
         "caption": f"c{i}", "question": f"q{i}", "answer": "yes" if i % 2 else "no", "image_id": i}
        for i in range(3)
    ]
    batch = DataCollatorForMMPretraining(processor, max_length=16, seed=0)(rows)
    assert batch["pixel_values"].shape == (3, 3, 16, 16)
    torch.testing.assert_close(batch["pixel_values"][1], rows[1]["pixel_values"])
    assert batch["attention_mask"].sum(1).tolist() == [len(r["input_ids"]) for r in rows]
    assert batch["image_ids"].tolist() == [0, 1, 2]
    vqa = DataCollatorForVQA(processor, label2id={"no": 0, "yes": 1})(rows)
    assert vqa["labels"].tolist() == [0, 1, 0] and vqa["pixel_values"].shape == (3, 3, 16, 16)
    captioning = DataCollatorForCaptioning(processor)(rows)
    assert (captioning["labels"] == -100).sum() == (captioning["attention_mask"] == 0).sum()
    # Skipped samples reported by the stream reach the collator's counter.
    counter = BadSampleCounter()
    rows[0]["skipped_bad_samples"] = ["shard a.tar, sample '7': Not a recognised image file."]
    DataCollatorForMMPretraining(processor, max_length=16, bad_samples=counter)(rows)
    assert counter.count == 1 and "shard a.tar, sample '7'" in counter.report()
