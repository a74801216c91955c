"""Tests for `MMImageProcessor` (images, bad inputs) and `MMProcessor` (text + images + videos, kwargs, save/load)."""

import json
import io
import struct
import zlib

import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest
import torch
from transformers import BertTokenizerFast

from processing import MMImageError, MMImageProcessor, MMProcessor, MMVideoProcessor
from processing.data import default_tokenizer_path


RAW = {"do_resize": False, "do_rescale": False, "do_normalize": False}  # pixel_values == the RGB values, 0..255


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizerFast.from_pretrained(default_tokenizer_path())


@pytest.fixture
def processor(tokenizer):
    return MMProcessor(MMImageProcessor(size={"height": 16, "width": 16}), tokenizer, max_length=32)


def _rgb_of(image, **kwargs) -> tuple[float, ...]:
    """Processed value of pixel (0, 0) on the 0..255 scale."""
    pixel_values = MMImageProcessor(**kwargs)(image, **RAW)["pixel_values"]
    assert pixel_values.shape[:2] == (1, 3)
    return tuple(pixel_values[0, :, 0, 0].tolist())


def _random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header announces width x height but holds almost no pixel data (cheap decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------------- PIL modes


def _palette_image(transparent: bool) -> PIL.Image.Image:
    image = PIL.Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))  # index 0 black, index 1 red
    if transparent:
        image.info["transparency"] = 0
    return image


def _i16(value: int, mode: str = "I;16") -> PIL.Image.Image:
    array = np.full((4, 4), value, dtype=">u2" if mode == "I;16B" else np.uint16)
    return PIL.Image.frombytes(mode, (4, 4), array.tobytes())


MODE_CASES = [
    ("RGB", lambda: PIL.Image.new("RGB", (4, 4), (10, 20, 30)), (10, 20, 30), {}),
    ("L", lambda: PIL.Image.new("L", (4, 4), 77), (77, 77, 77), {}),
    ("1-bit on", lambda: PIL.Image.new("1", (4, 4), 1), (255, 255, 255), {}),
    ("1-bit off", lambda: PIL.Image.new("1", (4, 4), 0), (0, 0, 0), {}),
    ("LA opaque", lambda: PIL.Image.new("LA", (4, 4), (100, 255)), (100, 100, 100), {}),
    ("LA transparent", lambda: PIL.Image.new("LA", (4, 4), (0, 0)), (255, 255, 255), {}),
    ("LA half", lambda: PIL.Image.new("LA", (4, 4), (0, 128)), (127, 127, 127), {}),
    ("RGBA half red on white", lambda: PIL.Image.new("RGBA", (4, 4), (255, 0, 0, 128)), (255, 127, 127), {}),
    (
        "RGBA half red on black",
        lambda: PIL.Image.new("RGBA", (4, 4), (255, 0, 0, 128)),
        (128, 0, 0),
        {"background_color": (0, 0, 0)},
    ),
    (
        "RGBA transparent on green",
        lambda: PIL.Image.new("RGBA", (4, 4), (255, 0, 0, 0)),
        (0, 255, 0),
        {"background_color": (0, 255, 0)},
    ),
    ("P opaque", lambda: _palette_image(False), (0, 0, 0), {}),
    ("P transparent index", lambda: _palette_image(True), (255, 255, 255), {}),
    ("PA half", lambda: PIL.Image.new("RGBA", (4, 4), (0, 0, 255, 0)).convert("PA"), (255, 255, 255), {}),
    ("CMYK white", lambda: PIL.Image.new("CMYK", (4, 4), (0, 0, 0, 0)), (255, 255, 255), {}),
    ("CMYK red", lambda: PIL.Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0), {}),
    ("CMYK black", lambda: PIL.Image.new("CMYK", (4, 4), (0, 0, 0, 255)), (0, 0, 0), {}),
    ("I;16 max", lambda: _i16(65535), (255, 255, 255), {}),
    ("I;16 mid", lambda: _i16(32896), (128, 128, 128), {}),
    ("I;16 low", lambda: _i16(1000), (4, 4, 4), {}),  # 1000 / 257 = 3.9, not clipped to 255
    ("I;16B max", lambda: _i16(65535, "I;16B"), (255, 255, 255), {}),
    ("I;16B mid", lambda: _i16(32896, "I;16B"), (128, 128, 128), {}),
    ("I 32-bit", lambda: PIL.Image.new("I", (4, 4), 32896), (128, 128, 128), {}),
    ("F", lambda: PIL.Image.new("F", (4, 4), 127.6), (128, 128, 128), {}),
    ("F above range", lambda: PIL.Image.new("F", (4, 4), 400.0), (255, 255, 255), {}),
    ("YCbCr gray", lambda: PIL.Image.new("RGB", (4, 4), (90, 90, 90)).convert("YCbCr"), (90, 90, 90), {}),
]


@pytest.mark.parametrize("name, make_image, expected, kwargs", MODE_CASES, ids=[c[0] for c in MODE_CASES])
def test_every_pil_mode_converts_to_correct_rgb(name, make_image, expected, kwargs):
    assert _rgb_of(make_image(), **kwargs) == pytest.approx(expected, abs=1)


def test_16bit_png_file_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "sixteen.png"
    PIL.Image.fromarray(np.array([[0, 65535], [32896, 1000]], dtype=np.uint16)).save(path)
    pixel_values = MMImageProcessor()(str(path), **RAW)["pixel_values"][0, 0]
    assert pixel_values.tolist() == [[0, 255], [128, 4]]


def test_rgba_file_composited_on_background(tmp_path):
    path = tmp_path / "rgba.png"
    PIL.Image.new("RGBA", (3, 3), (0, 0, 255, 0)).save(path)
    assert _rgb_of(path, background_color=(10, 20, 30)) == (10, 20, 30)


def test_do_convert_rgb_false_rejects_non_rgb():
    processor = MMImageProcessor(do_convert_rgb=False)
    with pytest.raises(MMImageError, match="do_convert_rgb=False"):
        processor(PIL.Image.new("L", (4, 4)))
    assert processor(PIL.Image.new("RGB", (4, 4)))["pixel_values"].shape == (1, 3, 224, 224)
    # Arrays keep their channels, as in transformers: 4 channels with one mean / std per channel.
    rgba = np.full((6, 5, 4), 255, dtype=np.uint8)
    out = processor(rgba, size=4, image_mean=[0.0] * 4, image_std=[1.0] * 4)["pixel_values"]
    assert out.shape == (1, 4, 4, 4) and torch.allclose(out, torch.ones_like(out))
    with pytest.raises(ValueError, match="`image_mean` has 3 values but the images have 4 channels"):
        processor(rgba)


# ---------------------------------------------------------------------------------------------------- input types


def test_numpy_torch_pil_paths_and_floats_agree(tmp_path):
    array = _random_rgb(40, 50)
    path = tmp_path / "image.png"
    PIL.Image.fromarray(array).save(path)
    processor = MMImageProcessor(size={"height": 32, "width": 24})
    reference = processor(PIL.Image.fromarray(array))["pixel_values"]
    assert reference.shape == (1, 3, 32, 24)
    variants = {
        "numpy HWC": array,
        "numpy CHW": np.ascontiguousarray(array.transpose(2, 0, 1)),
        "torch CHW": torch.from_numpy(array).permute(2, 0, 1),
        "torch HWC": torch.from_numpy(array),
        "str path": str(path),
        "Path": path,
        "datasets dict (path)": {"path": str(path), "bytes": None},
        "datasets dict (bytes)": {"path": None, "bytes": path.read_bytes()},
        "int64 array": array.astype(np.int64),
        "4D batch": array[None],
    }
    for name, image in variants.items():
        assert torch.equal(processor(image)["pixel_values"], reference), name
    # Floats in 0..1 take the float resize path; equal up to float32 rounding.
    for name, image in {
        "numpy float32": array.astype(np.float32) / 255,
        "numpy float64": array.astype(np.float64) / 255,
        "torch float CHW": torch.from_numpy(array).permute(2, 0, 1).float() / 255,
    }.items():
        unresized = MMImageProcessor(do_resize=False)
        expected = unresized(array)["pixel_values"]
        assert torch.allclose(unresized(image)["pixel_values"], expected, atol=1e-6), name
        # Resized, uint8 inputs take torch's PIL-exact uint8 kernel, which rounds between its two separable passes
        # like PIL; floats keep full precision, so they differ by a couple of levels at most (2 / 255 per level here).
        assert (processor(image)["pixel_values"] - reference).abs().max() <= 3 * 2 / 255, name


def test_grayscale_and_rgba_arrays():
    gray = np.full((5, 6), 40, dtype=np.uint8)
    assert _rgb_of(gray) == (40, 40, 40)
    assert _rgb_of(gray[..., None]) == (40, 40, 40)
    rgba = np.zeros((5, 6, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    assert _rgb_of(rgba) == (255, 127, 127)
    assert _rgb_of(np.full((5, 6), 65535, dtype=np.uint16)) == (255, 255, 255)
    assert _rgb_of(np.full((5, 6, 3), 32896, dtype=np.uint16)) == (128, 128, 128)


def test_batch_of_different_sizes_is_resized_and_stacked():
    images = [_random_rgb(20, 30, 1), PIL.Image.fromarray(_random_rgb(64, 48, 2)), _random_rgb(8, 8, 3)]
    pixel_values = MMImageProcessor(size=16)(images)["pixel_values"]
    assert pixel_values.shape == (3, 3, 16, 16)
    # Each row equals processing that image alone: grouping by shape must not reorder the batch.
    for i, image in enumerate(images):
        assert torch.equal(pixel_values[i], MMImageProcessor(size=16)(image)["pixel_values"][0])


def test_resize_matches_pil_bicubic():
    array = _random_rgb(96, 80)
    ours = MMImageProcessor(size={"height": 48, "width": 40})(array, do_normalize=False)["pixel_values"][0]
    pil = np.asarray(PIL.Image.fromarray(array).resize((40, 48), PIL.Image.Resampling.BICUBIC), dtype=np.float32)
    assert (ours.permute(1, 2, 0).numpy() * 255 - pil).__abs__().max() <= 2.0  # within 2 levels of 255


def test_normalization_values():
    processor = MMImageProcessor(do_resize=False, image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.25, 0.125])
    pixel_values = processor(np.full((2, 2, 3), 255, dtype=np.uint8))["pixel_values"]
    assert pixel_values[0, :, 0, 0].tolist() == pytest.approx([(1 - 0.1) / 0.5, (1 - 0.2) / 0.25, (1 - 0.3) / 0.125])
    assert pixel_values.dtype == torch.float32


def test_shortest_edge_resize_then_center_crop():
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, 10:70] = 255  # white band around the middle: the centre crop must land inside it
    processor = MMImageProcessor(size={"shortest_edge": 20})
    assert processor.crop_size == {"height": 20, "width": 20}
    pixel_values = processor(array, do_normalize=False)["pixel_values"]
    assert pixel_values.shape == (1, 3, 20, 20)
    assert torch.allclose(pixel_values, torch.ones_like(pixel_values))  # the crop lies inside the band
    tall = MMImageProcessor(size={"shortest_edge": 10}, crop_size={"height": 8, "width": 6})(
        np.zeros((50, 20, 3), np.uint8)
    )
    assert tall["pixel_values"].shape == (1, 3, 8, 6)
    # A per-call `shortest_edge` crops too, unless the call says otherwise.
    square = MMImageProcessor(size=16)(np.zeros((40, 80, 3), np.uint8), size={"shortest_edge": 10})["pixel_values"]
    assert square.shape == (1, 3, 10, 10)
    wide = MMImageProcessor(size={"shortest_edge": 10})(np.zeros((40, 80, 3), np.uint8), do_center_crop=False)
    assert wide["pixel_values"].shape == (1, 3, 10, 20)


def test_return_tensors_np():
    out = MMImageProcessor(size=8)(_random_rgb(10, 10), return_tensors="np")["pixel_values"]
    assert isinstance(out, np.ndarray) and out.shape == (1, 3, 8, 8)


# ---------------------------------------------------------------------------------------------------- bad inputs


def test_ambiguous_layout_raises_with_index_and_hint():
    processor = MMImageProcessor(do_resize=False)
    ambiguous = np.arange(45, dtype=np.uint8).reshape(3, 5, 3)
    with pytest.raises(MMImageError, match=r"batch index 1.*input_data_format") as info:
        processor([_random_rgb(5, 5), ambiguous])
    assert info.value.index == 1
    first = processor(ambiguous, input_data_format="channels_first")["pixel_values"]
    last = processor(ambiguous, input_data_format="channels_last")["pixel_values"]
    assert first.shape == (1, 3, 5, 3) and last.shape == (1, 3, 3, 5)
    assert torch.equal(
        first[0],
        processor(np.ascontiguousarray(ambiguous.transpose(1, 2, 0)), input_data_format="channels_last")[
            "pixel_values"
        ][0],
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_raise(bad):
    array = np.random.default_rng(0).random((8, 9, 3), dtype=np.float32)
    array[3, 4, 1] = bad
    with pytest.raises(MMImageError, match=r"NaN or Inf.*batch index 2"):
        MMImageProcessor()([np.zeros_like(array), np.zeros_like(array), array])
    with pytest.raises(MMImageError, match="NaN or Inf"):
        MMImageProcessor()(torch.from_numpy(array))


@pytest.mark.parametrize(
    "images, match",
    [
        ([], "empty batch"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), "empty batch"),
        (np.zeros((8,), dtype=np.uint8), "2 \\(HW\\) or 3"),
        ([np.zeros((1, 2, 8, 8, 3), dtype=np.uint8)], "batch index 0"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "zero-size"),
        (np.zeros((5, 0, 3), dtype=np.uint8), "zero-size"),
        (np.zeros((5, 6, 7), dtype=np.uint8), "Cannot find the channel dim"),
        (np.full((5, 6, 3), 2.0, dtype=np.float32), r"\[0, 1\]"),
        (np.full((5, 6, 3), 300, dtype=np.int64), "outside 0..255"),
        (["a", 3], "batch index"),
        ([{"path": None, "bytes": None}], "neither"),
        ([_random_rgb(5, 6), object()], "Unsupported image type object.*batch index 1"),
    ],
)
def test_bad_arrays_and_structures_raise(images, match):
    with pytest.raises(MMImageError, match=match):
        MMImageProcessor()(images)


def _write_bad_files(tmp_path) -> dict[str, str]:
    array = _random_rgb(64, 64)  # random pixels do not compress, so truncation cuts real image data
    png, jpeg = io.BytesIO(), io.BytesIO()
    PIL.Image.fromarray(array).save(png, format="PNG")
    PIL.Image.fromarray(array).save(jpeg, format="JPEG", quality=95)
    files = {
        "truncated.png": png.getvalue()[: len(png.getvalue()) // 2],
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "empty.png": b"",
        "notes.png": b"this is a text file, not an image\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {
        "truncated.png": "truncated or corrupt",
        "truncated.jpg": "truncated or corrupt",
        "empty.png": "empty, 0 bytes",
        "notes.png": "Not a recognised image file",
        "missing.png": "not found",
    }


def test_bad_files_raise_naming_file_and_index(tmp_path):
    expected_messages = _write_bad_files(tmp_path)
    good = tmp_path / "good.png"
    PIL.Image.fromarray(_random_rgb(8, 8)).save(good)
    processor = MMImageProcessor()
    for name, message in expected_messages.items():
        path = str(tmp_path / name)
        with pytest.raises(MMImageError, match=message) as info:
            processor([str(good), path])
        assert path in str(info.value) and "batch index 1" in str(info.value), name
        assert info.value.index == 1 and info.value.path == path
        # Through datasets' undecoded dict too.
        with pytest.raises(MMImageError, match=message):
            processor({"path": path, "bytes": None})
    with pytest.raises(MMImageError, match="directory"):
        processor(str(tmp_path))


def test_truncated_bytes_in_datasets_dict_raise(tmp_path):
    _write_bad_files(tmp_path)
    data = (tmp_path / "truncated.jpg").read_bytes()
    with pytest.raises(MMImageError, match=r"truncated or corrupt.*ds/a\.jpg"):
        MMImageProcessor()({"path": "ds/a.jpg", "bytes": data})


def test_oversized_image_refused_before_decode(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    _png_header_only(path, 8000, 8000)  # 64M pixels announced in a ~100-byte file
    assert path.stat().st_size < 200

    def no_decode(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(MMImageError, match=r"8000x8000.*max_image_pixels=50000000.*refused before decoding") as info:
        MMImageProcessor()(str(path))
    assert str(path) in str(info.value)
    monkeypatch.undo()

    # The same file under a higher limit is decoded, and turns out truncated: proof the limit is what stopped it.
    with pytest.raises(MMImageError, match="truncated or corrupt"):
        MMImageProcessor(max_image_pixels=70_000_000)(str(path))


def test_pil_decompression_bomb_is_named(tmp_path):
    path = tmp_path / "huge.png"
    side = int((2 * PIL.Image.MAX_IMAGE_PIXELS) ** 0.5) + 10  # past PIL's own hard limit
    _png_header_only(path, side, side)
    with pytest.raises(MMImageError, match=r"too large to decode safely.*huge\.png"):
        MMImageProcessor(max_image_pixels=10 * side * side)(str(path))


def test_max_image_pixels_applies_to_small_limits_and_pil_objects(tmp_path):
    path = tmp_path / "ok.png"
    PIL.Image.new("RGB", (100, 60)).save(path)
    processor = MMImageProcessor(max_image_pixels=5000)
    with pytest.raises(MMImageError, match="100x60"):
        processor(str(path))
    with pytest.raises(MMImageError, match="100x60"):
        processor(PIL.Image.new("RGB", (100, 60)))
    assert MMImageProcessor(max_image_pixels=6000)(str(path))["pixel_values"].shape == (1, 3, 224, 224)


def test_settings_validation():
    with pytest.raises(ValueError, match="size"):
        MMImageProcessor(size={"height": 10})
    # PIL resizes, so every PIL filter works (the former batched torch path refused LANCZOS); a non-filter raises.
    lanczos = MMImageProcessor(resample=PIL.Image.Resampling.LANCZOS, size=8)
    assert lanczos(_random_rgb(9, 9))["pixel_values"].shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="resample"):
        MMImageProcessor(resample=42)
    with pytest.raises(ValueError, match="image_std"):
        MMImageProcessor(image_std=[0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="max_image_pixels"):
        MMImageProcessor(max_image_pixels=0)
    with pytest.raises(ValueError, match="background_color"):
        MMImageProcessor(background_color=(0, 0))
    with pytest.raises(ValueError, match="crop_size"):
        MMImageProcessor(size={"shortest_edge": 10}, crop_size=12)
    with pytest.raises(ValueError, match="images` or `videos"):
        MMImageProcessor()()


# ---------------------------------------------------------------------------------------------------- video


def _frames(count: int, size: tuple[int, int] = (12, 16)) -> list[np.ndarray]:
    # Frame t is filled with the value 10 * t, so sampled indices can be read back from the pixels.
    return [np.full((*size, 3), 10 * t, dtype=np.uint8) for t in range(count)]


def _frame_values(pixel_values: torch.Tensor) -> list[int]:
    return [round(v) for v in pixel_values[:, 0, 0, 0].tolist()]


def test_image_processor_videos_argument_kept_for_former_callers():
    # The strict video decoder moved to `MMVideoProcessor`; the image processor delegates with its own settings.
    processor = MMImageProcessor(size=8, do_normalize=False)
    video = np.stack(_frames(10))
    expected = MMVideoProcessor(size=8, do_normalize=False)(video)["pixel_values_videos"]
    assert torch.equal(processor(videos=video)["pixel_values"], expected)
    assert len(processor.load_video(video, num_frames=3)) == 3
    with pytest.raises(ValueError, match="not both"):
        processor(images=_random_rgb(4, 4), videos=_frames(2))


# ---------------------------------------------------------------------------------------------------- save / load


def test_image_processor_save_and_load(tmp_path):
    processor = MMImageProcessor(
        size={"shortest_edge": 20},
        crop_size={"height": 18, "width": 16},
        resample=PIL.Image.Resampling.BILINEAR,
        image_mean=[0.1, 0.2, 0.3],
        background_color=(1, 2, 3),
        max_image_pixels=1234567,
    )
    files = processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file() and len(files) == 1
    config = (tmp_path / "preprocessor_config.json").read_text()
    assert '"image_processor_type": "MMImageProcessor"' in config
    reloaded = MMImageProcessor.from_pretrained(tmp_path)
    # `auto_map` is written at save time (for trust_remote_code loading); every setting must round-trip.
    assert _without_auto_map(json.loads(reloaded.to_json_string())) == _without_auto_map(
        json.loads(processor.to_json_string())
    )
    assert reloaded.resample == PIL.Image.Resampling.BILINEAR and reloaded.background_color == (1, 2, 3)
    image = _random_rgb(30, 44)
    assert torch.equal(reloaded(image)["pixel_values"], processor(image)["pixel_values"])
    assert MMImageProcessor.from_pretrained(tmp_path, max_image_pixels=99).max_image_pixels == 99


# ---------------------------------------------------------------------------------------------------- MMProcessor


def test_processor_returns_exactly_model_inputs(processor):
    images = [_random_rgb(20, 20, i) for i in range(3)]
    out = processor(images=images, text=["a red circle", "what color is the shape?", "a blue rectangle"])
    assert set(out) == {"input_ids", "attention_mask", "pixel_values"}
    assert out["pixel_values"].shape == (3, 3, 16, 16)
    assert out["input_ids"].shape == out["attention_mask"].shape and out["input_ids"].dtype == torch.long
    assert out["input_ids"][:, 0].tolist() == [processor.tokenizer.cls_token_id] * 3
    assert processor.model_input_names == ["pixel_values", "input_ids", "attention_mask", "pixel_values_videos"]
    assert set(processor(text="hello")) == {"input_ids", "attention_mask"}
    assert set(processor(images=images[0])) == {"pixel_values"}
    clip = processor(videos=_frames(3), text="a clip")
    assert set(clip) == {"input_ids", "attention_mask", "pixel_values_videos"}
    assert clip["pixel_values_videos"].shape == (1, 8, 3, 16, 16)


def test_processor_takes_images_and_videos_in_one_call(processor):
    out = processor(images=[_random_rgb(20, 20), _random_rgb(9, 7)], videos=[_frames(3), _frames(5)], text=["a", "b"])
    assert set(out) == {"input_ids", "attention_mask", "pixel_values", "pixel_values_videos"}
    assert out["pixel_values"].shape == (2, 3, 16, 16) and out["pixel_values_videos"].shape == (2, 8, 3, 16, 16)
    # Each part equals its sub-processor's own output.
    images = processor.image_processor([_random_rgb(20, 20), _random_rgb(9, 7)])["pixel_values"]
    assert torch.equal(out["pixel_values"], images)
    videos = processor.video_processor([_frames(3), _frames(5)])["pixel_values_videos"]
    assert torch.equal(out["pixel_values_videos"], videos)


def test_processor_routes_kwargs_per_modality(processor):
    image, video = _random_rgb(20, 20), _frames(6)
    # Flat kwargs reach every sub-processor that takes them; `images_kwargs` / `videos_kwargs` only theirs.
    flat = processor(images=image, videos=video, size={"height": 8, "width": 8}, num_frames=2)
    assert flat["pixel_values"].shape == (1, 3, 8, 8) and flat["pixel_values_videos"].shape == (1, 2, 3, 8, 8)
    routed = processor(
        images=image, videos=video, images_kwargs={"size": {"height": 8, "width": 8}}, videos_kwargs={"num_frames": 3}
    )
    assert routed["pixel_values"].shape == (1, 3, 8, 8) and routed["pixel_values_videos"].shape == (1, 3, 3, 16, 16)
    text = processor(text=["a red circle"], text_kwargs={"padding": "max_length", "max_length": 12})
    assert text["input_ids"].shape == (1, 12)
    assert processor(text="a", common_kwargs={"return_tensors": "np"})["input_ids"].__class__ is np.ndarray
    # Image settings never reach the tokenizer, text settings never reach the image processor.
    assert processor(images=image, text="a", padding="max_length", do_normalize=False)["input_ids"].shape == (1, 32)


def test_image_processor_accepts_nested_lists_and_own_settings_per_call():
    processor = MMImageProcessor(size=8)
    nested = processor([[_random_rgb(9, 9, 1)], [_random_rgb(5, 7, 2)]])["pixel_values"]  # flattened, as transformers
    assert torch.equal(nested, processor([_random_rgb(9, 9, 1), _random_rgb(5, 7, 2)])["pixel_values"])
    gray = PIL.Image.new("L", (4, 4), 9)
    with pytest.raises(MMImageError, match="do_convert_rgb=False"):
        processor.preprocess(gray, do_convert_rgb=False)
    rgba = PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    raw = processor.preprocess(rgba, background_color=(0, 10, 20), **RAW)
    assert raw["pixel_values"][0, :, 0, 0].tolist() == [0, 10, 20]
    with pytest.raises(MMImageError, match="max_image_pixels=10"):
        processor.preprocess(gray, max_image_pixels=10)


def test_processor_padding_and_truncation(processor, tokenizer):
    long_text = " ".join(["shape"] * 100)
    out = processor(text=[long_text, "a red circle"])
    assert out["input_ids"].shape == (2, 32)  # truncated to the processor's max_length
    assert out["input_ids"][0, -1].item() == tokenizer.sep_token_id
    assert out["attention_mask"][1].sum().item() == 5  # [CLS] a red circle [SEP], rest padding
    assert processor(text=[long_text], max_length=10)["input_ids"].shape == (1, 10)
    assert processor(text=["a red circle"], padding="max_length")["input_ids"].shape == (1, 32)
    assert processor(text=[long_text], truncation=False)["input_ids"].shape == (1, 102)
    assert processor(text=["a red circle"], return_tensors=None)["input_ids"] == [[101, 1037, 2417, 4418, 102]]


def test_processor_batch_size_mismatch_raises_before_decoding(processor, tmp_path):
    missing = str(tmp_path / "does_not_exist.png")
    with pytest.raises(ValueError, match="Got 2 images and 3 texts.*one to one"):
        processor(images=[missing, missing], text=["a", "b", "c"])
    with pytest.raises(ValueError, match="Got 1 videos and 2 texts"):
        processor(videos=_frames(3), text=["a", "b"])


@pytest.mark.parametrize("text, index", [("", 0), (["a cat", "   "], 1), (["ok", "fine", "\n\t"], 2)])
def test_processor_rejects_empty_text(processor, text, index):
    with pytest.raises(ValueError, match=f"batch index {index} is empty or whitespace-only"):
        processor(text=text)
    with pytest.raises(ValueError, match="string"):
        processor(text=["fine", 3])


def test_processor_decode_and_generation_post_processing(processor):
    ids = processor(text=["a blue rectangle", "a red circle"])["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["a blue rectangle", "a red circle"]
    assert processor.decode(ids[0], skip_special_tokens=True) == "a blue rectangle"
    assert processor.post_process_image_text_to_text(ids) == ["a blue rectangle", "a red circle"]
    assert processor.post_process_image_text_to_text(ids[1]) == ["a red circle"]
    assert processor.post_process_image_text_to_text(ids, skip_special_tokens=False)[0].startswith("[CLS]")


def _without_auto_map(value):
    if isinstance(value, dict):
        return {k: _without_auto_map(v) for k, v in value.items() if k != "auto_map"}
    return value


def test_processor_save_load_gives_identical_outputs(processor, tmp_path):
    processor.image_processor.background_color = [0, 0, 0]
    processor.save_pretrained(tmp_path)
    reloaded = MMProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded.image_processor, MMImageProcessor)
    assert reloaded.max_length == processor.max_length
    # `auto_map` is written at save time (for trust_remote_code loading); every setting must round-trip.
    assert _without_auto_map(json.loads(reloaded.to_json_string())) == _without_auto_map(
        json.loads(processor.to_json_string())
    )
    rgba = np.zeros((20, 24, 4), dtype=np.uint8)
    rgba[..., 3] = 100
    images = [_random_rgb(20, 24), rgba]
    texts = ["a gray triangle " * 20, "what is the color of the shape?"]
    before, after = processor(images=images, text=texts), reloaded(images=images, text=texts)
    assert set(before) == set(after)
    for key in before:
        assert before[key].dtype == after[key].dtype
        assert before[key].numpy().tobytes() == after[key].numpy().tobytes(), key
