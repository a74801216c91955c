"""Tests for `MMVideoProcessor`: frame sampling (count and fps), arrays, files through PyAV, bad inputs, save/load."""

import json

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
