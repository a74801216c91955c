"""WebDataset shards: patterns, writing, exactly-once streaming over processes and workers, resume through Trainer,
corrupt shards and samples named and counted, one decode per sample."""

import io
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from processing.collators import BadSampleCounter, DataCollatorForMMPretraining
from processing.shards import (
    ShardError,
    ShardStream,
    expand_shard_patterns,
    iter_shard_samples,
    read_shard_sizes,
    split_for_rank,
    write_shards,
)
from processing.sources import MMDataArguments


NUM_IMAGES = 64


@pytest.fixture(scope="module")
def processor():
    from processing.data import build_default_processor

    return build_default_processor(image_size=32, max_length=16)


@pytest.fixture(scope="module")
def easy_rows():
    from processing.data import load_easy_vqa

    return load_easy_vqa("train", view="images").select(range(NUM_IMAGES))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, easy_rows) -> str:
    folder = str(tmp_path_factory.mktemp("shards"))
    write_shards(easy_rows, folder, num_shards=8, resolution=32)
    return folder


def _pattern(folder: str, n: int = 8) -> str:
    return os.path.join(folder, "shard-{00000..%05d}.tar" % (n - 1))


def _as_list(rows: list) -> list:
    return rows


def _keys(rows) -> list[str]:
    return [row["__key__"] for row in rows]


# ---------------------------------------------------------------------------------------------------- patterns


def test_brace_patterns_expand_in_order_and_join_with_double_colon_or_spaces(tmp_path):
    for name in ("a-000.tar", "a-001.tar", "a-002.tar", "b-x.tar", "b-y.tar"):
        (tmp_path / name).write_bytes(b"")
    assert expand_shard_patterns(f"{tmp_path}/a-{{000..002}}.tar") == [f"{tmp_path}/a-00{i}.tar" for i in range(3)]
    joined = expand_shard_patterns(f"{tmp_path}/a-{{000..001}}.tar::{tmp_path}/b-{{x,y}}.tar")
    assert joined == [f"{tmp_path}/a-000.tar", f"{tmp_path}/a-001.tar", f"{tmp_path}/b-x.tar", f"{tmp_path}/b-y.tar"]
    assert expand_shard_patterns(f"{tmp_path}/a-000.tar  {tmp_path}/b-x.tar") == [f"{tmp_path}/a-000.tar", f"{tmp_path}/b-x.tar"]
    with pytest.raises(ValueError, match=r"1 of the 4 shards .* do not exist.*a-003"):
        expand_shard_patterns(f"{tmp_path}/a-{{000..003}}.tar")
    with pytest.raises(ValueError, match="more than once"):
        expand_shard_patterns(f"{tmp_path}/a-000.tar::{tmp_path}/a-000.tar")


# ---------------------------------------------------------------------------------------------------- writing


def test_make_shards_writes_equal_shards_sizes_json_and_readable_samples(shard_dir, easy_rows):
    with open(os.path.join(shard_dir, "sizes.json")) as f:
        sizes = json.load(f)
    assert sizes == {f"shard-{i:05d}.tar": NUM_IMAGES // 8 for i in range(8)}
    samples = list(iter_shard_samples(os.path.join(shard_dir, "shard-00000.tar")))
    assert len(samples) == 8
    first = samples[0]
    assert first["__key__"] == "000000000" and first["txt"] == easy_rows[0]["caption"]
    assert first["json"]["image_id"] == easy_rows[0]["image_id"]
    import PIL.Image

    assert PIL.Image.open(io.BytesIO(first["jpg"])).size == (32, 32)
    # Counting from the tar headers agrees with sizes.json.
    os.rename(os.path.join(shard_dir, "sizes.json"), os.path.join(shard_dir, "sizes.bak"))
    try:
        assert read_shard_sizes(expand_shard_patterns(_pattern(shard_dir))) == [8] * 8
    finally:
        os.rename(os.path.join(shard_dir, "sizes.bak"), os.path.join(shard_dir, "sizes.json"))


def test_make_shards_cli(tmp_path):
    from run_scripts.make_shards import main

    sizes = main(["--output_dir", str(tmp_path), "--num_shards", "2", "--max_train_samples", "10", "--resolution", "16"])
    assert sizes == {"shard-00000.tar": 5, "shard-00001.tar": 5}
    assert (tmp_path / "sizes.json").is_file()


# ---------------------------------------------------------------------------------------------------- streaming


def test_every_sample_once_per_epoch_over_ranks_and_workers_and_shard_order_changes(shard_dir, processor):
    from torch.utils.data import DataLoader

    stream = ShardStream(_pattern(shard_dir), world_size=2, num_workers=2, seed=3, num_epochs=2)
    dataset = stream.to_iterable_dataset()
    seen = {0: [], 1: []}
    for rank in range(2):
        loader = DataLoader(split_for_rank(dataset, rank, 2), batch_size=4, num_workers=2, collate_fn=_as_list)
        for batch in loader:
            for row in batch:
                seen[row["epoch"]].append((rank, row["__key__"]))
    all_keys = sorted(f"{i:09d}" for i in range(NUM_IMAGES))
    for epoch in (0, 1):
        assert sorted(k for _, k in seen[epoch]) == all_keys, f"epoch {epoch}: not every sample exactly once"
    # Each rank read whole shards: its keys fall in 4 of the 8 shards, and the split changes with the epoch.
    shards_of = lambda epoch, rank: {int(k) // 8 for r, k in seen[epoch] if r == rank}  # noqa: E731
    assert len(shards_of(0, 0)) == 4 and shards_of(0, 0).isdisjoint(shards_of(0, 1))
    assert shards_of(0, 0) != shards_of(1, 0) or [k for _, k in seen[0]] != [k for _, k in seen[1]]


def test_unfair_shard_counts_raise_naming_the_counts(shard_dir):
    with pytest.raises(ValueError, match=r"8 shards cannot be divided fairly among 3 process\(es\) x 1 DataLoader"):
        ShardStream(_pattern(shard_dir), world_size=3)
    with pytest.raises(ValueError, match=r"among 2 process\(es\) x 8 DataLoader worker\(s\) = 16 streams"):
        ShardStream(_pattern(shard_dir), world_size=2, num_workers=8)


def test_uneven_shards_are_evened_out_and_reported(tmp_path, easy_rows, caplog):
    write_shards(easy_rows.select(range(30)), str(tmp_path), samples_per_shard=8, resolution=16)  # 8, 8, 8, 6
    stream = ShardStream(str(tmp_path / "shard-{00000..00003}.tar"), world_size=2, num_epochs=1)
    assert stream.sizes == [8, 8, 8, 6] and stream.samples_per_stream == 14
    assert stream.dropped_per_epoch == 2 and "2 sample(s) per epoch" in stream.drop_report()
    rows = [list(split_for_rank(stream.to_iterable_dataset(), rank, 2)) for rank in range(2)]
    assert [len(r) for r in rows] == [14, 14]
    keys = _keys(rows[0] + rows[1])
    assert len(set(keys)) == 28


def test_column_flags_pick_shard_keys_and_json_fields(shard_dir):
    args = MMDataArguments(caption_column="image_id")  # a json field of each sample
    rows = list(ShardStream(_pattern(shard_dir), args, num_epochs=1, shuffle=False).to_iterable_dataset())
    assert rows[0]["caption"] == rows[0]["image_id"]
    args = MMDataArguments(caption_column="missing_field")
    stream = ShardStream(_pattern(shard_dir), args, num_epochs=1, shuffle=False)
    with pytest.raises(ValueError, match=r"has no \['caption'\].*--caption_column 'missing_field'.*keys are \['jpg', 'json', 'txt'\]"):
        list(stream.to_iterable_dataset())


def test_streamed_rows_are_decoded_once_and_collate_by_stacking(shard_dir, processor, monkeypatch):
    calls = []
    import processing.image_processing_mm as image_processing

    original = image_processing._open_image_file  # the decoder: every file / bytes decode goes through it

    def counting(source, index, path, settings):
        calls.append(path)
        return original(source, index, path, settings)

    monkeypatch.setattr(image_processing, "_open_image_file", counting)
    stream = ShardStream(_pattern(shard_dir), num_epochs=1)
    rows = list(stream.to_iterable_dataset(processor, max_length=16))
    assert len(rows) == NUM_IMAGES and len(calls) == NUM_IMAGES and len(set(calls)) == NUM_IMAGES
    collator = DataCollatorForMMPretraining(processor, max_length=16, seed=0)
    batch = collator(rows[:8])
    assert len(calls) == NUM_IMAGES, "the collator decoded again"
    assert batch["pixel_values"].shape == (8, 3, 32, 32)
    assert batch["input_ids"].shape == batch["mlm_input_ids"].shape == batch["attention_mask"].shape
    assert len(set(batch["image_ids"].tolist())) == 8


def _truncate(path: str, keep: float = 0.5) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def _corrupt_sample(path: str) -> str:
    """Replace the image of the shard's first sample by garbage bytes; returns its key."""
    import tarfile

    with tarfile.open(path) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    first_key = members[0][0].name.split(".")[0]
    with tarfile.open(path, "w") as archive:
        for member, data in members:
            if member.name == f"{first_key}.jpg":
                data = b"not an image at all"
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return first_key


def test_corrupt_shard_and_sample_are_named_raised_or_skipped_and_counted(tmp_path, easy_rows, processor):
    write_shards(easy_rows.select(range(32)), str(tmp_path), num_shards=4, resolution=16)
    _truncate(str(tmp_path / "shard-00001.tar"))
    bad_key = _corrupt_sample(str(tmp_path / "shard-00002.tar"))
    pattern = str(tmp_path / "shard-{00000..00003}.tar")

    with pytest.raises(ShardError, match=r"shard-00001.tar is corrupt or truncated.*--skip_bad_samples"):
        list(ShardStream(pattern, num_epochs=1, shuffle=False).to_iterable_dataset(processor))
    with pytest.raises(ValueError, match=rf"shard-00002.tar, sample '{bad_key}'.*Not a recognised image"):
        list(ShardStream(pattern.replace("{00000..00003}", "{00000,00002}"), num_epochs=1).to_iterable_dataset(processor))

    counter = BadSampleCounter()
    args = MMDataArguments(skip_bad_samples=True)
    stream = ShardStream(pattern, args, num_epochs=1, shuffle=False)
    rows = list(stream.to_iterable_dataset(processor))
    collator = DataCollatorForMMPretraining(processor, max_length=16, bad_samples=counter)
    for start in range(0, len(rows), 4):
        collator(rows[start : start + 4])
    assert counter.count == 2, counter.report()
    report = counter.report()
    assert "shard-00001.tar (corrupt after" in report and f"shard-00002.tar, sample '{bad_key}'" in report
    assert len(rows) == 32 - 1 - (8 - len([r for r in rows if "shard-00001" in r["__url__"]]))


# ---------------------------------------------------------------------------------------------------- 2 processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, pattern: str, out_dir: str) -> None:
    import torch.distributed as dist
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    keys = {}
    stream = ShardStream(pattern, world_size=world, num_workers=2, seed=1, num_epochs=1)
    # What Trainer does: accelerate prepares the full stream and splits it by data sources (dispatch_batches=False).
    # `fork`: a process started by mp.spawn would otherwise spawn its workers too, re-importing everything (minutes).
    loader = DataLoader(stream.to_iterable_dataset(), batch_size=4, num_workers=2, collate_fn=_as_list,
                        multiprocessing_context="fork")
    loader = prepare_data_loader(loader, num_processes=world, process_index=rank, dispatch_batches=False,
                                 put_on_device=False)
    keys["trainer"] = [row["__key__"] for batch in loader for row in batch]
    # Without Trainer: split_dataset_by_node.
    loader = DataLoader(split_for_rank(stream.to_iterable_dataset(), rank, world), batch_size=4, num_workers=2,
                        collate_fn=_as_list, multiprocessing_context="fork")
    keys["split"] = [row["__key__"] for batch in loader for row in batch]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(keys, f)
    dist.destroy_process_group()


def test_two_gloo_processes_see_every_sample_exactly_once(shard_dir, tmp_path):
    mp.spawn(_rank_worker, args=(2, _free_port(), _pattern(shard_dir), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    expected = sorted(f"{i:09d}" for i in range(NUM_IMAGES))
    for how in ("trainer", "split"):
        a, b = ranks[0][how], ranks[1][how]
        assert len(a) == len(b) == NUM_IMAGES // 2, how
        assert sorted(a + b) == expected, f"{how}: lost or repeated samples"


# ---------------------------------------------------------------------------------------------------- Trainer resume


def _tiny_model(text_tower: str):
    from modeling_mm import MMForPreTraining, MMVisionConfig

    torch.manual_seed(0)
    vision = MMVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=64)
    return MMForPreTraining.from_vision_text_pretrained(
        None, text_tower, vision_config=vision, objectives=["itc", "itm", "mlm"], num_fusion_layers=1,
        num_decoder_layers=1, projection_dim=16,
    )


def _train_recording_ids(text_tower, shard_dir, processor, output_dir, max_steps, resume=None) -> dict[int, list]:
    """Trains on the shard stream with MMTrainer (2 DataLoader workers); returns {step: image ids trained on}."""
    from transformers import TrainingArguments

    from training import MMTrainer

    trained: dict[int, list] = {}

    class RecordingTrainer(MMTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            trained[self.state.global_step + 1] = inputs["image_ids"].tolist()
            return super().training_step(model, inputs, num_items_in_batch)

    stream = ShardStream(_pattern(shard_dir), seed=0, num_workers=2, args=MMDataArguments(shuffle_buffer_size=16))
    args = TrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=8, save_steps=5, logging_steps=1,
        learning_rate=1e-3, lr_scheduler_type="constant", dataloader_num_workers=2, report_to="none", use_cpu=True,
        disable_tqdm=True, remove_unused_columns=False, seed=0, save_only_model=False,
    )
    trainer = RecordingTrainer(
        model=_tiny_model(text_tower), args=args, train_dataset=stream.to_iterable_dataset(processor, max_length=16),
        data_collator=DataCollatorForMMPretraining(processor, max_length=16, seed=0),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trained


def test_streaming_resume_through_trainer_loses_and_repeats_nothing(shard_dir, processor, tmp_path):
    from pretrain_tester import save_tiny_text_tower

    tower = save_tiny_text_tower(str(tmp_path / "tower"))
    full = _train_recording_ids(tower, shard_dir, processor, str(tmp_path / "full"), max_steps=12)
    assert sorted(full) == list(range(1, 13))
    first_epoch = [i for step in range(1, 9) for i in full[step]]  # 64 samples / 8 per step
    assert len(set(first_epoch)) == len(first_epoch) == NUM_IMAGES, "an epoch is not every sample exactly once"
    # Killed after checkpoint 5 (mid-epoch) or 10 (inside the second epoch), then resumed: the resumed run trains on
    # exactly the samples the uninterrupted run trained on after that step, in the same order.
    for checkpoint in (5, 10):
        resumed = _train_recording_ids(
            tower, shard_dir, processor, str(tmp_path / f"resumed{checkpoint}"), max_steps=12,
            resume=str(tmp_path / "full" / f"checkpoint-{checkpoint}"),
        )
        assert sorted(resumed) == list(range(checkpoint + 1, 13))
        expected = [i for step in range(checkpoint + 1, 13) for i in full[step]]
        got = [i for step in range(checkpoint + 1, 13) for i in resumed[step]]
        lost, repeated = len(set(expected) - set(got)), len(got) - len(set(got) & set(expected))
        assert got == expected, f"resume at {checkpoint}: {lost} lost, {repeated} repeated"


# ---------------------------------------------------------------------------------------------------- pretrain.py


def test_pretrain_script_streams_shards_and_reports_skipped_samples(shard_dir, tmp_path, easy_rows):
    from pretrain_tester import save_tiny_text_tower, tiny_pretrain_args

    from run_scripts import pretrain

    write_shards(easy_rows.select(range(32)), str(tmp_path / "bad"), num_shards=4, resolution=32)
    bad_key = _corrupt_sample(str(tmp_path / "bad" / "shard-00003.tar"))
    tower = save_tiny_text_tower(str(tmp_path / "tower"))
    args = tiny_pretrain_args(
        tower, str(tmp_path / "out"), max_train_samples=None, max_steps=2, save_steps=10, per_device_train_batch_size=31,
        train_shards=str(tmp_path / "bad" / "shard-{00000..00003}.tar"), skip_bad_samples="true",
    )
    summary = pretrain.main(args)
    # 2 steps x 31 = the 31 good samples twice: two epochs, each skipping (and counting) the bad one; the count also
    # covers the batch the DataLoader reads ahead (accelerate looks one batch ahead), which starts a third epoch.
    assert summary["skipped_bad_samples"] in (2, 3), summary
    assert summary["train_stream"]["shards"] == 4 and summary["train_stream"]["dropped_per_epoch"] == 0
    log = (tmp_path / "out" / "pretrain_summary.json").read_text()
    assert f'"skipped_bad_samples": {summary["skipped_bad_samples"]}' in log
