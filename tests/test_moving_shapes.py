"""Tests for the moving-shapes video data: determinism, answers that the decoded frames determine only in time, the
manifest through the package's loaders and collators, and corrupt files."""

import json
import re

import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast

from processing import MMImageError, MMImageProcessor, MMProcessor, MMVideoProcessor
from processing.collators import DataCollatorForVQA
from processing.data import _EASY_VQA_PALETTE, EASY_VQA_COLORS, default_tokenizer_path
from processing.moving_shapes import (
    ANSWERS,
    QUESTION_TYPES,
    TEMPORAL_QUESTION_TYPES,
    generate_moving_shapes,
    load_moving_shapes,
    render_clip,
    sample_clip,
    write_mp4,
)
from processing.sources import prepare_dataset
from test_real_datasets import _tiny_effnet_dir


av = pytest.importorskip("av", reason="moving-shapes clips are MP4 files written and read with PyAV")

RAW = {"do_resize": False, "do_rescale": False, "do_normalize": False}  # pixel values == decoded RGB, 0..255
NUM_FRAMES, SIZE, SAMPLED = 16, 64, 8
PALETTE = np.array([_EASY_VQA_PALETTE[c] for c in EASY_VQA_COLORS], dtype=np.float32)  # (8, 3)
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("moving_shapes")
    generate_moving_shapes(str(path), num_train=24, num_test=12, num_frames=NUM_FRAMES, size=SIZE, seed=3)
    return path


@pytest.fixture(scope="module")
def rows(data_dir) -> list[dict]:
    return [json.loads(line) for split in ("train", "test") for line in (data_dir / f"{split}.jsonl").open()]


def _decode(path, **kwargs) -> tuple[np.ndarray, list[int]]:
    """The clip through the package's video processor: `SAMPLED` frames by count as (T, H, W, 3) floats."""
    out = MMVideoProcessor(num_frames=SAMPLED)(str(path), return_metadata=True, **RAW, **kwargs)
    return out["pixel_values_videos"][0].permute(0, 2, 3, 1).numpy(), out["video_metadata"][0].frames_indices


# ---------------------------------------------------------------------------------------------------- a pixel oracle
# Answers read off decoded pixels alone: colour masks by nearest palette colour, shapes by how much of their
# bounding box they fill (rectangle ~1, circle ~pi/4, triangle ~1/2).


def _color_masks(frame: np.ndarray) -> dict[str, np.ndarray]:
    """Colour -> the pixels of the one shape drawn in it. 4:2:0 chroma blends the pixels along edges (a red shape on
    white gets a brown rim), so a colour counts only where its mask, eroded by one pixel, keeps a blob (rims are thin,
    shapes are not); the shape is the connected part of the mask around that blob."""
    distance = np.linalg.norm(frame[:, :, None, :] - PALETTE, axis=-1)  # (H, W, 8)
    nearest, close = distance.argmin(-1), distance.min(-1) < 40
    masks = {}
    for i, color in enumerate(EASY_VQA_COLORS):
        mask = (nearest == i) & close
        core = _blobs(_erode(mask))
        if core and len(core[0]) >= 16:
            masks[color] = _blob_mask(mask, core[0][0])
    return masks


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.all([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)


def _blobs(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected components of `mask` as pixel lists, largest first (a flood fill; masks are 64 x 64)."""
    seen, blobs = np.zeros_like(mask), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], stack, blob = True, [start], []
        while stack:
            y, x = stack.pop()
            blob.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        blobs.append(blob)
    return sorted(blobs, key=len, reverse=True)


def _blob_mask(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The connected component of `mask` that contains `seed`."""
    blob = next(b for b in _blobs(mask) if seed in set(b))
    out = np.zeros_like(mask)
    out[tuple(np.array(blob).T)] = True
    return out


def _shape_of(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return "rectangle" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _oracle(frames: np.ndarray, question: str) -> str:
    """The answer that `frames` (in the order given) imply for `question`."""
    masks = [_color_masks(frame) for frame in frames]
    if question.startswith("which way"):
        color = re.search(r"the (\w+) \w+ move", question).group(1)
        path = np.stack([_centroid(m[color]) for m in masks])  # (T, 2): x, y
        dx, dy = path[-1] - path[0]
        axis = 0 if abs(dx) > abs(dy) else 1
        steps = np.diff(path[:, axis])
        assert (steps > 0).all() or (steps < 0).all(), f"motion along the axis is not monotone: {path[:, axis]}"
        return ("right" if dx > 0 else "left") if axis == 0 else ("down" if dy > 0 else "up")
    if question == "which shape appears first?":
        first_seen = {}
        for t, frame_masks in enumerate(masks):
            for color, mask in frame_masks.items():
                first_seen.setdefault(color, (t, _shape_of(mask)))
        assert len(first_seen) == 2 and len({t for t, _ in first_seen.values()}) == 2, first_seen
        return min(first_seen.values())[1]
    if question.startswith("what color does"):
        (before,), (after,) = masks[0], masks[-1]
        assert before != after
        return after
    if question == "what shape is in the video?":
        (mask,) = masks[0].values()
        return _shape_of(mask)
    shape = re.fullmatch(r"what color is the (\w+)\?", question).group(1)
    colors = {color for frame_masks in masks for color, mask in frame_masks.items() if _shape_of(mask) == shape}
    assert len(colors) == 1, colors
    return colors.pop()


# ---------------------------------------------------------------------------------------------------- the tests


def test_same_seed_same_files_other_seed_other_clips(tmp_path):
    a, b, c = (tmp_path / name for name in "abc")
    for path, seed in ((a, 0), (b, 0), (c, 1)):
        summary = generate_moving_shapes(str(path), num_train=6, num_test=3, seed=seed)
    assert summary["rows"] == {"train": 12, "test": 6} and summary["clips"] == {"train": 6, "test": 3}
    for name in ("train.jsonl", "test.jsonl", "videos/train/000004.mp4", "videos/test/000002.mp4"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "train.jsonl").read_text() != (c / "train.jsonl").read_text()
    # A clip depends on (seed, split, index) only, not on how many clips are written.
    generate_moving_shapes(str(tmp_path / "d"), num_train=2, num_test=0, seed=0)
    assert (tmp_path / "d/videos/train/000001.mp4").read_bytes() == (a / "videos/train/000001.mp4").read_bytes()
    first = sample_clip(np.random.default_rng([0, 0, 4]), "direction")
    assert first == sample_clip(np.random.default_rng([0, 0, 4]), "direction")


def test_manifest_rows_and_answer_sets(data_dir, rows):
    assert json.loads((data_dir / "question_types.json").read_text()) == {t: list(ANSWERS[t]) for t in QUESTION_TYPES}
    assert len(rows) == 2 * (24 + 12)
    for row in rows:
        assert set(row) == {"video", "caption", "question", "answer", "question_type", "split", "clip_id"}
        assert row["answer"] in ANSWERS[row["question_type"]], row
        assert (data_dir / row["video"]).is_file() and row["video"].startswith(f"videos/{row['split']}/")
    # Clip kinds are cycled, so every temporal type is equally common and each clip has one static control.
    types = [row["question_type"] for row in rows]
    assert {t: types.count(t) for t in QUESTION_TYPES} == {"direction": 12, "order": 12, "change": 12, "static": 36}


def test_sampling_by_count_keeps_temporal_order_and_colours_survive_encoding(data_dir):
    frames, indices = _decode(data_dir / "videos/train/000000.mp4")  # a direction clip: every frame differs
    assert frames.shape == (SAMPLED, SIZE, SIZE, 3)
    assert indices == [0, 2, 4, 6, 9, 11, 13, 15]  # linspace(0, 15, 8), ascending
    clip = sample_clip(np.random.default_rng([3, 0, 0]), "direction", NUM_FRAMES, SIZE)
    rendered = render_clip(clip, NUM_FRAMES, SIZE).astype(np.float32)
    # Each sampled frame is the rendered frame of that index (and no other), within H.264 noise.
    errors = np.abs(frames[:, None] - rendered[None]).mean(axis=(2, 3, 4))  # (decoded, rendered)
    assert errors.argmin(1).tolist() == indices and errors.min(1).max() < 3
    # Shape interiors keep the easy-VQA RGB values within a few levels (only edges blend), before and after a change.
    frames, indices = _decode(data_dir / "videos/train/000002.mp4")
    (track,) = sample_clip(np.random.default_rng([3, 0, 2]), "change", NUM_FRAMES, SIZE).tracks
    x, y = (round(v) for v in track.start)
    for t, index in enumerate(indices):
        expected = np.array(_EASY_VQA_PALETTE[track.color_at(index)])
        assert np.abs(frames[t, y - 1 : y + 2, x - 1 : x + 2] - expected).max() <= 12, (t, track.color_at(index))
    assert track.color_at(indices[0]) != track.color_at(indices[-1])


def test_every_answer_is_determined_by_the_frames_in_time(data_dir, rows):
    for row in rows:
        frames, _ = _decode(data_dir / row["video"])
        assert _oracle(frames, row["question"]) == row["answer"], row
        reversed_answer = _oracle(frames[::-1], row["question"])
        if row["question_type"] == "static":
            assert reversed_answer == row["answer"], row  # any frame answers it, in any order
        else:
            # The same frames backwards give another answer: the label needs the order of the frames.
            assert reversed_answer != row["answer"], row
            if row["question_type"] == "direction":
                assert reversed_answer == OPPOSITE[row["answer"]]


def test_temporal_answers_are_balanced_between_the_two_candidates(tmp_path):
    # Over many clips, the "first" shape is not predictable from a shape prior, nor the direction from an axis prior.
    clips = [sample_clip(np.random.default_rng([0, 0, i]), kind) for i in range(300) for kind in TEMPORAL_QUESTION_TYPES]
    for kind in TEMPORAL_QUESTION_TYPES:
        answers = [clip.questions[0][1] for clip in clips if clip.kind == kind]
        counts = {a: answers.count(a) for a in ANSWERS[kind]}
        assert min(counts.values()) > 0.5 * len(answers) / len(ANSWERS[kind]), (kind, counts)


def test_manifest_loads_through_load_mm_datasets_into_pixel_values_videos(data_dir):
    train, test = load_moving_shapes(str(data_dir))
    assert len(train) == 48 and len(test) == 24
    assert {"video", "caption", "question", "answer", "question_type"} <= set(train.column_names)
    assert set(test["split"]) == {"test"} and all(p.startswith(str(data_dir)) for p in test["video"])
    tokenizer = BertTokenizerFast.from_pretrained(default_tokenizer_path())
    size = {"height": 32, "width": 32}
    processor = MMProcessor(
        MMImageProcessor(size=size), tokenizer, video_processor=MMVideoProcessor(size=size, num_frames=SAMPLED)
    )
    label2id = {a: i for i, a in enumerate(dict.fromkeys(a for t in QUESTION_TYPES for a in ANSWERS[t]))}
    batch = DataCollatorForVQA(processor, label2id)(list(train.select(range(6))))
    assert batch["pixel_values_videos"].shape == (6, SAMPLED, 3, 32, 32)
    assert batch["labels"].tolist() == [label2id[a] for a in train["answer"][:6]]
    # The run_clip path: tokenise in `map`, decode on access; rows carry one (T, 3, H, W) clip each.
    prepared = prepare_dataset(test.select(range(2)), processor, text_column="question")
    assert prepared[0]["pixel_values"].shape == (SAMPLED, 3, 32, 32)
    clips = processor.video_processor(test["video"][:2])["pixel_values_videos"]
    assert torch.equal(torch.stack([row["pixel_values"] for row in prepared]), clips)


def test_prepare_dataset_uses_the_video_processor_settings(data_dir):
    _, test = load_moving_shapes(str(data_dir), max_eval_samples=1)
    tokenizer = BertTokenizerFast.from_pretrained(default_tokenizer_path())
    processor = MMProcessor(
        MMImageProcessor(size=16), tokenizer, video_processor=MMVideoProcessor(size=24, num_frames=4)
    )
    prepared = prepare_dataset(test, processor, text_column="question")
    assert prepared[0]["pixel_values"].shape == (4, 3, 24, 24)


def test_corrupt_or_truncated_mp4_names_the_file(tmp_path):
    frames = render_clip(sample_clip(np.random.default_rng(0), "direction"))
    good = tmp_path / "good.mp4"
    write_mp4(frames, str(good))
    data = good.read_bytes()
    # With the index first ("faststart"), a cut file still announces all its frames; its frame data ends early.
    faststart = tmp_path / "faststart.mp4"
    with av.open(str(faststart), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 64
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    indexed = faststart.read_bytes()
    assert indexed.find(b"moov") < indexed.find(b"mdat")
    processor = MMVideoProcessor(num_frames=4)
    for name, content in [
        ("truncated.mp4", data[: len(data) // 2]),  # the index (moov, written last) is cut off
        ("garbage.mp4", b"\x00" * 64 + data[64:]),
        ("cut_frames.mp4", indexed[: int(len(indexed) * 0.8)]),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(MMImageError) as info:
            processor([str(good), str(path)])
        assert str(path) in str(info.value) and info.value.index == 1
    with pytest.raises(ValueError, match="even frame sizes"):
        write_mp4(frames[:, :63], str(tmp_path / "odd.mp4"))


def test_cli_writes_the_data(tmp_path, capsys):
    from run_scripts.make_moving_shapes import main

    summary = main(["--output_dir", str(tmp_path), "--num_train", "3", "--num_test", "3", "--num_frames", "8"])
    assert summary["rows"] == {"train": 6, "test": 6}
    assert "--train_file" in capsys.readouterr().out
    frames, indices = _decode(tmp_path / "videos/test/000000.mp4")
    assert indices == list(range(8)) and frames.shape[0] == 8


def test_pretraining_on_clip_caption_pairs_with_divided_attention(data_dir, tmp_path):
    """`mm pretrain` on the clips' captions (video files in a JSON-lines manifest): a built-in ViT over 4-frame clips
    with divided space-time attention trains, and the saved model and processor keep the video settings."""
    from modeling_mm import MMForPreTraining
    from run_scripts import pretrain
    from tests.pretrain_tester import save_tiny_text_tower, step_losses, tiny_pretrain_args

    tower = save_tiny_text_tower(str(tmp_path / "tower"))
    out = tmp_path / "run"
    args = tiny_pretrain_args(
        tower, str(out), train_file=str(data_dir / "train.jsonl"), num_frames=4, video_attention="divided",
        objectives=["itc", "itm"], group_column="clip_id", max_steps=3, save_steps=3, max_train_samples=None,
    )
    pretrain.main(args)
    losses = step_losses(str(out / "trainer_state.json"))
    assert sorted(losses) == [1, 2, 3] and all(np.isfinite(list(losses.values())))
    model = MMForPreTraining.from_pretrained(str(out))
    assert (model.config.vision_config.num_frames, model.config.vision_config.video_attention) == (4, "divided")
    assert MMProcessor.from_pretrained(str(out)).video_processor.num_frames == 4
    with pytest.raises(ValueError, match="--num_frames"):
        pretrain.main(tiny_pretrain_args(tower, str(tmp_path / "bad"), num_frames=4, vision_model_name_or_path=tower))
    with pytest.raises(ValueError, match="--tubelet_size"):
        pretrain.main(tiny_pretrain_args(tower, str(tmp_path / "bad"), tubelet_size=2, vision_model_name_or_path=tower))


def test_caption_level_recall_counts_any_item_with_the_querys_caption():
    from benchmarks.video_text import caption_recall

    captions = torch.tensor([0, 1, 1, 2])  # clips 1 and 2 share a caption
    similarity = torch.tensor([[0.1, 0.9, 0.2, 0.3],   # clip 0 ranks text 1 first: a miss at 1, a hit at 4
                               [0.2, 0.1, 0.8, 0.3],   # clip 1 ranks text 2 first: the same caption, a hit
                               [0.3, 0.2, 0.7, 0.1],
                               [0.0, 0.1, 0.2, 0.6]])
    scores = caption_recall(similarity, captions, ks=(1, 4))
    assert scores["video-to-text R@1"] == pytest.approx(0.75) and scores["video-to-text R@4"] == 1.0
    # Text 0 ranks clip 2 first and text 1 clip 0 (misses); texts 2 and 3 rank clips 1 and 3 first (hits).
    assert scores["text-to-video R@1"] == pytest.approx(0.5)


def test_video_text_benchmark_runs_and_reports_both_tasks(data_dir, tmp_path):
    from benchmarks.video_text import main

    table = main(["--data_dir", str(data_dir), "--epochs", "1", "--batch", "8", "--hidden", "32", "--layers", "1",
                  "--num_frames", "4", "--out", str(tmp_path / "report.md")])
    assert "### retrieval" in table and "### captioning" in table
    for row in ("(a) model", "(b) model, frames shuffled", "(c) frame average"):
        assert table.count(f"| {row} |") == 2
    assert "video-to-text R@5" in table and "EM direction" in table
    assert (tmp_path / "report.md").read_text().startswith("# Video-text retrieval and video captioning")


def test_temporal_benchmark_with_a_frozen_cnn_tower_trains_only_what_sits_on_it(data_dir, tmp_path, monkeypatch):
    """`video_temporal.py --vision_checkpoint DIR --freeze_vision_tower`: the tower keeps its saved weights, the
    temporal layer over its per-frame states trains, and the report names the tower."""
    from safetensors.torch import load_file

    import benchmarks.video_temporal as bench

    tower = _tiny_effnet_dir(str(tmp_path / "cnn"))
    argv = ["--data_dir", str(data_dir), "--vision_checkpoint", tower, "--freeze_vision_tower", "--epochs", "2",
            "--batch", "8", "--hidden", "32", "--layers", "1", "--num_frames", "4", "--question_types", "order,static"]
    models, real_train = [], bench.train

    def train_and_keep(*args, **kwargs):
        models.append(real_train(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(bench, "train", train_and_keep)
    table = bench.main(argv)
    assert "`mm_efficientnet_lite` tower from" in table and "1 temporal layer(s) over pooled frame states), frozen" in table
    assert "| test accuracy | order | static |" in table and table.count("| (a) model |") == 1
    saved = load_file(f"{tower}/model.safetensors")
    video_model = models[0]
    for name, value in video_model.mm.vision_model.state_dict().items():
        torch.testing.assert_close(value, saved[name], msg=f"frozen tower changed: {name}")
    encoder = video_model.mm.temporal_encoder
    assert encoder is not None and encoder.frame_embedding.abs().sum() > 0  # zero-initialised, so it trained
    with pytest.raises(SystemExit):
        bench.main(["--data_dir", str(data_dir), "--freeze_vision_tower"])  # nothing to freeze
    with pytest.raises(SystemExit):
        bench.main(["--data_dir", str(data_dir), "--vision_checkpoint", tower, "--tubelet_size", "2"])
    with pytest.raises(SystemExit):  # the built-in ViT has no per-frame tokens for temporal layers to read
        bench.main(["--data_dir", str(data_dir), "--video_temporal_tokens", "4"])
    with pytest.raises(SystemExit):
        bench.main(["--data_dir", str(data_dir), "--video_temporal_hidden_size", "16"])
    with pytest.raises(SystemExit):
        bench.main(["--data_dir", str(data_dir), "--video_motion_embedding"])


def test_memoised_frozen_tower_returns_the_towers_outputs_and_runs_each_frame_once(tmp_path):
    """`memoise_frozen_tower`: the frozen tower's outputs come back unchanged, in the caller's order (shuffled or
    repeated frames included), while each distinct frame goes through the tower only once; a tower put back in
    training mode is refused rather than answered from a cache its batch-norm statistics no longer match."""
    from benchmarks.video_temporal import memoise_frozen_tower
    from modeling_mm import MMEfficientNetLiteModel

    tower = MMEfficientNetLiteModel.from_pretrained(_tiny_effnet_dir(str(tmp_path / "cnn"))).eval().requires_grad_(False)
    frames = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = tower(pixel_values=frames)
    seen = []
    real_forward = tower.forward
    tower.forward = lambda pixel_values, **kwargs: seen.append(len(pixel_values)) or real_forward(pixel_values, **kwargs)
    cache = memoise_frozen_tower(tower)
    first = tower(pixel_values=frames[:4])
    order = torch.tensor([5, 0, 0, 3, 4, 1, 2])
    again = tower(pixel_values=frames[order])
    assert seen == [4, 2] and len(cache) == 6  # frames 4 and 5 were new; 0, 1, 2 and 3 came from the cache
    torch.testing.assert_close(first.last_hidden_state, expected.last_hidden_state[:4])
    torch.testing.assert_close(again.last_hidden_state, expected.last_hidden_state[order])
    torch.testing.assert_close(again.pooler_output, expected.pooler_output[order])
    tower.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        tower(pixel_values=frames)


def test_video_text_benchmark_takes_a_pretrained_frame_by_frame_tower(data_dir, tmp_path):
    from benchmarks.video_text import main

    tower = _tiny_effnet_dir(str(tmp_path / "cnn"))
    table = main(["--data_dir", str(data_dir), "--vision_checkpoint", tower, "--freeze_vision_tower", "--epochs", "1",
                  "--batch", "8", "--hidden", "32", "--layers", "1", "--num_frames", "4",
                  "--video_temporal_tokens", "16",  # the tiny tower's 4x4 map of a 32-px frame
                  "--video_temporal_hidden_size", "16", "--video_motion_embedding"])
    assert "`mm_efficientnet_lite` tower from" in table and "### retrieval" in table and "### captioning" in table
    assert ("1 temporal layer(s) at width 16 over all 16 tokens of each frame, with the motion embedding of pixel "
            "differences)") in table
    with pytest.raises(SystemExit):
        main(["--data_dir", str(data_dir), "--vision_checkpoint", tower, "--video_attention", "divided"])


def test_tower_probe_reports_every_probe_on_the_direction_clips(data_dir, tmp_path):
    """`video_tower_probe.py`: linear probes on a frozen tower's first/last-frame features of the direction clips."""
    from benchmarks.video_tower_probe import PROBES, main, tower_tokens

    tower = _tiny_effnet_dir(str(tmp_path / "cnn"))
    out = tmp_path / "probe.md"
    table = main(["--data_dir", str(data_dir), "--vision_checkpoint", tower, "--image_size", "32", "--num_frames", "4",
                  "--steps", "20", "--out", str(out)])
    rows = [line for line in table.splitlines() if line.startswith("| ") and "%" in line]
    assert [r.split(" | ")[0][2:] for r in rows[:-1]] == list(PROBES)
    # The probe itself: features that hold the label linearly are read perfectly, label-free noise at chance.
    from benchmarks.video_tower_probe import linear_probe

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    signal = torch.nn.functional.one_hot(labels, 4).float() + 0.1 * torch.randn(400, 4, generator=generator)
    assert linear_probe(signal[:300], labels[:300], signal[300:], labels[300:], 1000, 0)[1] == 1.0
    noise = torch.randn(400, 4, generator=generator)
    assert linear_probe(noise[:300], labels[:300], noise[300:], labels[300:], 1000, 0)[1] < 0.45
    assert "16 tokens of width 32 per frame" in table and out.read_text().startswith("# Direction of motion")
    from transformers import AutoModel

    from processing.moving_shapes import load_moving_shapes

    _, test_rows = load_moving_shapes(str(data_dir))
    tokens, labels = tower_tokens(test_rows, AutoModel.from_pretrained(tower).eval(),
                                  MMVideoProcessor(size={"height": 32, "width": 32}, num_frames=4), batch=2)
    assert tokens.shape[:3] == (len(labels), 4, 16) and len(labels) == sum(
        1 for kind in test_rows["question_type"] if kind == "direction")
    with pytest.raises(ValueError, match="no `direction` questions"):
        tower_tokens(test_rows.filter(lambda row: row["question_type"] != "direction"), None, None, 2)


def test_temporal_cost_benchmark_times_the_tower_and_each_temporal_width(tmp_path):
    from benchmarks.video_temporal_cost import main

    tower = _tiny_effnet_dir(str(tmp_path / "cnn"))
    out = tmp_path / "cost.md"
    table = main(["--vision_checkpoint", tower, "--image_size", "32", "--num_frames", "2", "--batch", "2",
                  "--widths", "0", "8", "--repeats", "1", "--out", str(out)])
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and " M | " in line]
    assert [row[0] for row in rows] == ["| frozen tower, forward", "| temporal layers, forward and backward",
                                        "| temporal layers, forward and backward"]
    assert [row[1] for row in rows[1:]] == ["32", "8"]  # the tiny tower's width, then the bottleneck's
    assert float(rows[1][2].split()[0]) > float(rows[2][2].split()[0])  # the bottleneck has fewer parameters
    assert "16 tokens of width 32 per frame" in table and out.read_text().startswith("# The cost of temporal")
