# Copyright 2025 The mm-pretrain authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Image (and video) processor for the multimodal model.

Self-contained on purpose: it imports only numpy, PIL, torch and transformers (PyAV lazily, for video files), so
`save_pretrained` can ship it to a Hub repo next to the model code.

Every input is first turned into one RGB tensor per image (`load_image`), with every failure raised as
`MMImageError` naming the batch index and the file; the batch is then resized and normalized with a few stacked
torch ops (`_preprocess`), which is the normal call path.
"""

import io
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ImagesKwargs


__all__ = ["MMImageError", "MMImageProcessor", "MMImageProcessorKwargs"]


Resampling = PIL.Image.Resampling

# PIL filter -> `F.interpolate` mode. PIL's NEAREST picks the pixel whose centre is nearest, which is torch's
# "nearest-exact" (plain "nearest" is off by half a pixel).
_INTERPOLATION_MODES = {
    Resampling.NEAREST: "nearest-exact",
    Resampling.BILINEAR: "bilinear",
    Resampling.BICUBIC: "bicubic",
}

# 16-bit -> 8-bit: 65535 / 257 == 255 exactly, so the full 16-bit range maps proportionally onto 0..255.
_UINT16_TO_UINT8 = 257.0

_CHANNELS_FIRST = "channels_first"
_CHANNELS_LAST = "channels_last"

ImageLike = Any  # PIL.Image.Image | np.ndarray | torch.Tensor | str | os.PathLike | dict (datasets' undecoded image)


class MMImageError(ValueError):
    """
    Raised for any image or video that cannot be turned into a correct tensor.

    The message names the batch index and, when there is one, the file. `index` and `path` hold the same
    information for code that wants to re-raise with more context (e.g. the dataset row).
    """

    def __init__(self, message: str, index: int | None = None, path: str | None = None):
        super().__init__(message)
        self.index = index
        self.path = path

    def __reduce__(self) -> tuple[type, tuple]:
        # Keep the extra attributes when the error crosses a DataLoader worker boundary.
        return (type(self), (self.args[0], self.index, self.path))


class MMImageProcessorKwargs(ImagesKwargs, total=False):
    """Settings of `MMImageProcessor` on top of transformers' `ImagesKwargs` (used by `from_pretrained` overrides)."""

    background_color: tuple[int, int, int] | list[int] | None
    max_image_pixels: int | None
    num_frames: int | None


def _where(index: int | None, path: str | None = None, frame: int | None = None) -> str:
    parts = []
    if index is not None:
        parts.append(f"batch index {index}")
    if frame is not None:
        parts.append(f"frame {frame}")
    if path is not None:
        parts.append(f"file '{path}'")
    return ", ".join(parts) if parts else "input"


def _is_path(obj: Any) -> bool:
    return isinstance(obj, (str, os.PathLike))


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    # `np.asarray(pil_image)` is read-only and torch warns on sharing it; the copy is cheap next to decoding.
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _sample_frame_indices(num_available: int, num_frames: int) -> list[int]:
    """Uniformly spaced frame indices; short clips are padded by repeating their last frame."""
    if num_available >= num_frames:
        return np.linspace(0, num_available - 1, num_frames).round().astype(int).tolist()
    return list(range(num_available)) + [num_available - 1] * (num_frames - num_available)


def _is_sequence_of_items(value: Any) -> bool:
    """A batch container other than list/tuple (e.g. a `datasets` Column): sized and iterable, but not an image,
    array, path, bytes or mapping."""
    if isinstance(value, (str, bytes, dict, np.ndarray, torch.Tensor, PIL.Image.Image)) or _is_path(value):
        return False
    return hasattr(value, "__len__") and hasattr(value, "__iter__")


class MMImageProcessor(BaseImageProcessor):
    r"""
    Constructs an image processor for the multimodal model: converts any input to RGB, resizes, rescales and
    normalizes a batch with stacked torch ops, and samples video clips to a fixed number of frames.

    Accepted images: `PIL.Image.Image` in any mode, `np.ndarray` / `torch.Tensor` in HWC, CHW or HW layout (uint8 in
    0..255, uint16 in 0..65535, or float in 0..1), file paths (`str` / `pathlib.Path`) and `datasets`' undecoded
    `{"path": ..., "bytes": ...}` dicts; a single one or a list (batch), or a 4D array/tensor (batch first).

    Mode conversion: transparent images (RGBA, LA, PA, La, RGBa, P with transparency) are composited on
    `background_color`; 16-bit images (I;16, I;16B, I, uint16 arrays) are divided by 257 so 65535 -> 255 (32-bit
    "I" values outside 0..65535 are clipped); float "F" images are read on PIL's 0..255 scale (clipped); 1-bit, L,
    P, CMYK, YCbCr, ... go through PIL's RGB conversion. 4-channel arrays are RGBA, 1-channel arrays grayscale.

    Files are opened lazily, so an image above `max_image_pixels` is refused from its header, before any pixel data
    is decoded; PIL's own `Image.MAX_IMAGE_PIXELS` bomb check applies too (its warning is raised as an error).

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize images to `size`.
        size (`dict[str, int]` or `int`, *optional*, defaults to `{"height": 224, "width": 224}`):
            Either `{"height": h, "width": w}` (resize straight to that size) or `{"shortest_edge": n}` (resize the
            shortest edge to `n` keeping the aspect ratio, then center crop to `crop_size`). An int means a square.
        crop_size (`dict[str, int]`, *optional*):
            Center crop applied after a `shortest_edge` resize; defaults to `n x n`. Unused with `height`/`width`.
        resample (`PIL.Image.Resampling` or `int`, *optional*, defaults to `Resampling.BICUBIC`):
            Filter used to resize: NEAREST, BILINEAR or BICUBIC (antialiased when downscaling, like PIL).
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply integer-valued inputs (uint8 arrays, PIL images, files) by `rescale_factor`. Float
            inputs are already in 0..1 and are never rescaled.
        rescale_factor (`float`, *optional*, defaults to `1 / 255`):
            Scale applied by `do_rescale`.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalize with `image_mean` and `image_std`.
        image_mean (`float` or `list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
            Per-channel mean.
        image_std (`float` or `list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
            Per-channel standard deviation.
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Whether to convert other modes to RGB. When `False`, anything that is not already 3-channel RGB raises.
        background_color (`tuple[int, int, int]`, *optional*, defaults to `(255, 255, 255)`):
            RGB colour that transparent pixels are composited on.
        max_image_pixels (`int`, *optional*, defaults to `50_000_000`):
            Images with more pixels are refused before their pixel data is decoded (decompression-bomb guard).
        num_frames (`int`, *optional*, defaults to 8):
            Frames sampled uniformly from each video.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = MMImageProcessorKwargs

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | int | None = None,
        crop_size: dict[str, int] | int | None = None,
        resample: Resampling | int = Resampling.BICUBIC,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_rgb: bool = True,
        background_color: Sequence[int] = (255, 255, 255),
        max_image_pixels: int = 50_000_000,
        num_frames: int = 8,
        **kwargs,
    ):
        # Written by `to_dict` so `AutoImageProcessor` can find the class; not a setting.
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        self.do_resize = do_resize
        self.size = self._check_size(size if size is not None else {"height": 224, "width": 224})
        self.crop_size = self._check_crop_size(crop_size, self.size)
        self.resample = self._check_resample(resample)
        self.do_rescale = do_rescale
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = do_normalize
        self.image_mean = self._check_channel_stats(image_mean if image_mean is not None else 0.5, "image_mean")
        self.image_std = self._check_channel_stats(image_std if image_std is not None else 0.5, "image_std")
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"`image_std` must be positive, got {self.image_std}.")
        self.do_convert_rgb = do_convert_rgb
        self.background_color = self._check_background_color(background_color)
        if int(max_image_pixels) <= 0:
            raise ValueError(f"`max_image_pixels` must be positive, got {max_image_pixels}.")
        self.max_image_pixels = int(max_image_pixels)
        if int(num_frames) <= 0:
            raise ValueError(f"`num_frames` must be positive, got {num_frames}.")
        self.num_frames = int(num_frames)

    # ------------------------------------------------------------------ settings validation

    @staticmethod
    def _check_size(size: dict[str, int] | int) -> dict[str, int]:
        if isinstance(size, int):
            size = {"height": size, "width": size}
        size = dict(size)
        if set(size) == {"height", "width"} or set(size) == {"shortest_edge"}:
            if all(isinstance(v, int) and v > 0 for v in size.values()):
                return size
        raise ValueError(
            f"`size` must be {{'height': h, 'width': w}} or {{'shortest_edge': n}} with positive ints, got {size}."
        )

    @staticmethod
    def _check_crop_size(crop_size: dict[str, int] | int | None, size: dict[str, int]) -> dict[str, int] | None:
        if "shortest_edge" not in size:
            return None if crop_size is None else MMImageProcessor._check_size(crop_size)
        edge = size["shortest_edge"]
        crop_size = MMImageProcessor._check_size(crop_size if crop_size is not None else edge)
        if "height" not in crop_size or crop_size["height"] > edge or crop_size["width"] > edge:
            # After the resize the short side is exactly `edge`, so a larger crop would need padding.
            raise ValueError(f"`crop_size` must be {{'height', 'width'}} no larger than shortest_edge={edge}.")
        return crop_size

    @staticmethod
    def _check_resample(resample: Resampling | int) -> Resampling:
        resample = Resampling(int(resample))
        if resample not in _INTERPOLATION_MODES:
            raise ValueError(
                f"`resample={resample.name}` is not supported by the batched torch path; use NEAREST, BILINEAR or "
                "BICUBIC."
            )
        return resample

    @staticmethod
    def _check_channel_stats(value: float | Sequence[float], name: str) -> list[float]:
        values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(values) != 3:
            raise ValueError(f"`{name}` must be a float or 3 floats (RGB), got {value}.")
        return values

    @staticmethod
    def _check_background_color(color: Sequence[int]) -> list[int]:
        color = [int(c) for c in color]
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise ValueError(f"`background_color` must be 3 ints in 0..255, got {color}.")
        return color

    # ------------------------------------------------------------------ decoding and mode conversion

    def _open_image_file(
        self, source: str | os.PathLike | bytes, index: int | None, path: str | None
    ) -> PIL.Image.Image:
        """Opens a file or encoded bytes, refusing oversized images before any pixel data is decoded."""
        where = _where(index, path)
        if path is not None and not isinstance(source, bytes):
            if not os.path.exists(path):
                raise MMImageError(f"Image file not found ({where}).", index, path)
            if os.path.isdir(path):
                raise MMImageError(f"Expected an image file but got a directory ({where}).", index, path)
            if os.path.getsize(path) == 0:
                raise MMImageError(f"Image file is empty, 0 bytes ({where}).", index, path)
        elif isinstance(source, bytes) and len(source) == 0:
            raise MMImageError(f"Image bytes are empty ({where}).", index, path)

        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        try:
            with warnings.catch_warnings():
                # PIL only warns between MAX_IMAGE_PIXELS and twice that; make it an error we can name.
                warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
                # `open` is lazy: it parses the header (size, mode) and decodes no pixel data.
                image = PIL.Image.open(fp)
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as err:
            raise MMImageError(f"Image is too large to decode safely ({where}): {err}", index, path) from err
        except PIL.UnidentifiedImageError as err:
            raise MMImageError(f"Not a recognised image file ({where}).", index, path) from err
        except (OSError, SyntaxError, ValueError) as err:
            raise MMImageError(f"Cannot read image ({where}): {err}", index, path) from err

        try:
            self._check_num_pixels(image.size, where, index, path)
            try:
                # Force the decode here so truncated or corrupt data raises now, with the file named, instead of
                # being silently zero-filled. `ImageFile.LOAD_TRUNCATED_IMAGES` is deliberately left alone.
                image.load()
            except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:
                raise MMImageError(f"Image file is truncated or corrupt ({where}): {err}", index, path) from err
            # Camera photos store their orientation in EXIF; apply it like `datasets.Image` does.
            if image.getexif().get(PIL.Image.ExifTags.Base.Orientation) is not None:
                image = PIL.ImageOps.exif_transpose(image)
            return image
        except BaseException:
            image.close()
            raise

    def _check_num_pixels(self, size: tuple[int, int], where: str, index: int | None, path: str | None) -> None:
        width, height = size
        if width * height > self.max_image_pixels:
            raise MMImageError(
                f"Image of {width}x{height} = {width * height} pixels exceeds max_image_pixels="
                f"{self.max_image_pixels} ({where}); refused before decoding.",
                index,
                path,
            )
        if width == 0 or height == 0:
            raise MMImageError(f"Image has a zero-size dimension {width}x{height} ({where}).", index, path)

    def _pil_to_rgb_array(self, image: PIL.Image.Image, where: str, index: int | None, path: str | None) -> np.ndarray:
        """Any PIL mode -> uint8 HWC RGB array."""
        mode = image.mode
        if mode == "RGB":
            return np.asarray(image)
        if not self.do_convert_rgb:
            raise MMImageError(f"Image mode {mode} is not RGB and do_convert_rgb=False ({where}).", index, path)

        has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
        if has_alpha:
            # Premultiplied "La" only converts via "LA".
            rgba = (image.convert("LA") if mode == "La" else image).convert("RGBA")
            background = PIL.Image.new("RGBA", rgba.size, (*self.background_color, 255))
            return np.asarray(PIL.Image.alpha_composite(background, rgba).convert("RGB"))
        if mode.startswith("I"):
            # PIL's own I;16 -> RGB clips at 255 instead of scaling; scale the 16-bit range proportionally.
            values = np.asarray(image).astype(np.float32)
            gray = np.clip(np.rint(values / _UINT16_TO_UINT8), 0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=-1)
        if mode == "F":
            # Float images follow PIL's 0..255 convention (e.g. `convert("F")` of an L image).
            values = np.asarray(image)
            if not np.isfinite(values).all():
                raise MMImageError(f"Float image contains NaN or Inf ({where}).", index, path)
            gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=-1)
        try:
            return np.asarray(image.convert("RGB"))
        except (ValueError, OSError) as err:
            raise MMImageError(f"Cannot convert image mode {mode} to RGB ({where}): {err}", index, path) from err

    # ------------------------------------------------------------------ arrays and tensors

    def _array_to_chw_tensor(
        self,
        array: np.ndarray | torch.Tensor,
        index: int | None,
        input_data_format: str | None,
        path: str | None = None,
        frame: int | None = None,
    ) -> torch.Tensor:
        """Array/tensor in HW, HWC or CHW -> RGB CHW tensor (uint8 in 0..255 or float32 in 0..1)."""
        where = _where(index, path, frame)
        if isinstance(array, torch.Tensor):
            tensor = array.detach().cpu()
        else:
            array = np.asarray(array)
            if array.dtype.kind not in "biufc":
                raise MMImageError(f"Unsupported image array dtype {array.dtype} ({where}); expected numbers.", index, path)
            if not array.dtype.isnative:
                array = array.astype(array.dtype.newbyteorder("="))  # e.g. big-endian 16-bit from I;16B
            try:
                tensor = _from_numpy(array)
            except TypeError as err:  # e.g. float128
                raise MMImageError(f"Unsupported image array dtype {array.dtype} ({where}): {err}", index, path) from err

        if tensor.ndim == 2:
            tensor = tensor.unsqueeze(0)
            layout = _CHANNELS_FIRST
        elif tensor.ndim == 3:
            layout = self._infer_layout(tuple(tensor.shape), input_data_format, where, index, path)
        else:
            raise MMImageError(
                f"Expected an image with 2 (HW) or 3 (HWC/CHW) dims but got shape {tuple(tensor.shape)} ({where}).",
                index,
                path,
            )
        if layout == _CHANNELS_LAST:
            tensor = tensor.permute(2, 0, 1)  # (H, W, C) -> (C, H, W), a view
        if 0 in tensor.shape:
            raise MMImageError(f"Image has a zero-size dimension, shape {tuple(tensor.shape)} ({where}).", index, path)

        tensor = self._to_canonical_dtype(tensor, where, index, path)
        num_channels = tensor.shape[0]
        if num_channels == 3:
            return tensor
        if not self.do_convert_rgb:
            raise MMImageError(f"Image has {num_channels} channels and do_convert_rgb=False ({where}).", index, path)
        if num_channels == 1:
            return tensor.expand(3, -1, -1)
        # 4 channels: RGBA, composited on the background like PIL images.
        alpha_max = 255.0 if tensor.dtype == torch.uint8 else 1.0
        rgb, alpha = tensor[:3].float(), tensor[3:].float() / alpha_max
        background = torch.tensor(self.background_color, dtype=torch.float32).view(3, 1, 1) * (alpha_max / 255.0)
        composite = rgb * alpha + background * (1.0 - alpha)
        return composite.round().to(torch.uint8) if tensor.dtype == torch.uint8 else composite

    @staticmethod
    def _infer_layout(
        shape: tuple[int, ...], input_data_format: str | None, where: str, index: int | None, path: str | None
    ) -> str:
        if input_data_format is not None:
            layout = str(getattr(input_data_format, "value", input_data_format))
            if layout not in (_CHANNELS_FIRST, _CHANNELS_LAST):
                raise ValueError(f"`input_data_format` must be 'channels_first' or 'channels_last', got {layout}.")
            channels = shape[0] if layout == _CHANNELS_FIRST else shape[-1]
            if channels not in (1, 3, 4):
                raise MMImageError(
                    f"Shape {shape} has {channels} channels in {layout} layout; expected 1, 3 or 4 ({where}).",
                    index,
                    path,
                )
            return layout
        first, last = shape[0] in (1, 3, 4), shape[-1] in (1, 3, 4)
        if first and last:
            raise MMImageError(
                f"Ambiguous channel layout for shape {shape} ({where}): both the first and the last dim could be "
                "channels. Pass input_data_format='channels_first' or 'channels_last'.",
                index,
                path,
            )
        if not (first or last):
            raise MMImageError(
                f"Cannot find the channel dim of shape {shape} ({where}): expected 1, 3 or 4 channels first or last.",
                index,
                path,
            )
        return _CHANNELS_FIRST if first else _CHANNELS_LAST

    @staticmethod
    def _to_canonical_dtype(tensor: torch.Tensor, where: str, index: int | None, path: str | None) -> torch.Tensor:
        """uint8 stays (0..255 scale); uint16 -> uint8 by /257; floats must be finite and in 0..1."""
        if tensor.dtype == torch.uint8:
            return tensor
        if tensor.dtype == torch.bool:
            return tensor.to(torch.uint8) * 255
        if tensor.dtype.is_floating_point:
            tensor = tensor.float()
            if not torch.isfinite(tensor).all():
                raise MMImageError(f"Float image contains NaN or Inf ({where}).", index, path)
            low, high = tensor.min().item(), tensor.max().item()
            if low < -1e-6 or high > 1 + 1e-6:
                raise MMImageError(
                    f"Float images must lie in [0, 1] but values span [{low:.4g}, {high:.4g}] ({where}). Pass uint8 "
                    "for 0..255 data.",
                    index,
                    path,
                )
            return tensor.clamp(0.0, 1.0)
        if tensor.dtype.is_complex:
            raise MMImageError(f"Complex image dtype {tensor.dtype} is not supported ({where}).", index, path)
        if tensor.dtype == torch.uint16:
            return (tensor.to(torch.int32).float() / _UINT16_TO_UINT8).round().to(torch.uint8)
        # Other integer dtypes (int64 from Python lists, int32, ...) must already hold 0..255 values. uint32/uint64 have
        # no min/max kernels: compare them in float64, exact far beyond 255.
        wide = tensor.double() if tensor.dtype in (torch.uint32, torch.uint64) else tensor
        low, high = wide.min().item(), wide.max().item()
        if low < 0 or high > 255:
            raise MMImageError(
                f"Integer image of dtype {tensor.dtype} has values in [{low}, {high}], outside 0..255 ({where}). "
                "Pass uint8 for 8-bit data or uint16 for 16-bit data.",
                index,
                path,
            )
        return wide.to(torch.uint8)

    # ------------------------------------------------------------------ single-item entry points

    def open_image(self, image: ImageLike, index: int | None = None) -> ImageLike:
        """
        Decodes a file path, encoded bytes or `datasets`' `{"path", "bytes"}` dict into a loaded `PIL.Image.Image`
        with every file check (missing, empty, not an image, too large, truncated), raising `MMImageError`. Other
        inputs are returned unchanged.

        Args:
            image (`str`, `os.PathLike`, `dict` or any other image input):
                The image to open.
            index (`int`, *optional*):
                Position in the batch, used in error messages.
        """
        if isinstance(image, dict) and ("path" in image or "bytes" in image):
            path, data = image.get("path"), image.get("bytes")
            if data is None and path is None:
                raise MMImageError(f"Image dict has neither 'path' nor 'bytes' ({_where(index)}).", index)
            return self._open_image_file(data if data is not None else path, index, path)
        if _is_path(image):
            path = os.fspath(image)
            return self._open_image_file(path, index, path)
        return image

    def load_image(
        self, image: ImageLike, index: int | None = None, input_data_format: str | None = None
    ) -> torch.Tensor:
        """
        Decodes and validates one image, returning it as an RGB `(3, H, W)` tensor: uint8 in 0..255, or float32 in
        0..1 for float inputs. Raises `MMImageError` naming `index` (and the file) for anything wrong.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str`, `os.PathLike` or `dict`):
                The image; a dict is `datasets`' undecoded form `{"path": str | None, "bytes": bytes | None}`.
            index (`int`, *optional*):
                Position in the batch, used in error messages.
            input_data_format (`str`, *optional*):
                `"channels_first"` or `"channels_last"` for arrays whose layout cannot be inferred.
        """
        path = image.get("path") if isinstance(image, dict) else (os.fspath(image) if _is_path(image) else None)
        image = self.open_image(image, index)
        path = path or getattr(image, "filename", None) or None  # PIL keeps the file name of opened images

        if isinstance(image, PIL.Image.Image):
            where = _where(index, path)
            self._check_num_pixels(image.size, where, index, path)
            try:
                # A lazily opened image passed in by the caller still needs its pixel data decoded.
                image.load()
            except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:
                raise MMImageError(f"Image file is truncated or corrupt ({where}): {err}", index, path) from err
            array = self._pil_to_rgb_array(image, where, index, path)
            return _from_numpy(array).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        if isinstance(image, (np.ndarray, torch.Tensor)):
            return self._array_to_chw_tensor(image, index, input_data_format)
        raise MMImageError(
            f"Unsupported image type {type(image).__name__} ({_where(index)}); expected a PIL image, numpy array, "
            "torch tensor, file path or {'path', 'bytes'} dict.",
            index,
        )

    def load_video(
        self,
        video: ImageLike | Sequence[ImageLike],
        index: int | None = None,
        input_data_format: str | None = None,
        num_frames: int | None = None,
    ) -> list[torch.Tensor]:
        """
        Decodes one video and samples `num_frames` frames uniformly (padding short clips with their last frame).

        Args:
            video (`str`, `os.PathLike`, `list` of frames, `np.ndarray` or `torch.Tensor`):
                A video file (decoded with PyAV), a list of frames (PIL images or arrays), or a `(T, H, W, C)` /
                `(T, C, H, W)` array.
            index (`int`, *optional*):
                Position in the batch, used in error messages.
            input_data_format (`str`, *optional*):
                Channel layout of array frames when it cannot be inferred.
            num_frames (`int`, *optional*):
                Overrides `self.num_frames`.

        Returns:
            `list[torch.Tensor]`: `num_frames` RGB `(3, H, W)` tensors.
        """
        num_frames = num_frames or self.num_frames
        if isinstance(video, dict) and ("path" in video or "bytes" in video):
            # `datasets`' undecoded video: encoded bytes, or a file path.
            if video.get("bytes") is None and video.get("path") is None:
                raise MMImageError(f"Video dict has neither 'path' nor 'bytes' ({_where(index)}).", index)
            source = video["bytes"] if video.get("bytes") is not None else os.fspath(video["path"])
            frames = self._decode_video_file(source, index, num_frames, path=video.get("path"))
            return [_from_numpy(f).permute(2, 0, 1) for f in frames]
        if _is_path(video):
            frames = self._decode_video_file(os.fspath(video), index, num_frames)
            return [_from_numpy(f).permute(2, 0, 1) for f in frames]
        if isinstance(video, (np.ndarray, torch.Tensor)):
            if video.ndim != 4:
                raise MMImageError(
                    f"Expected a video array with 4 dims (T, H, W, C) or (T, C, H, W), got shape {tuple(video.shape)} "
                    f"({_where(index)}).",
                    index,
                )
        elif not isinstance(video, (list, tuple)):
            raise MMImageError(
                f"Unsupported video type {type(video).__name__} ({_where(index)}); expected a file path, a list of "
                "frames or a 4D array.",
                index,
            )
        if len(video) == 0:
            raise MMImageError(f"Video has no frames ({_where(index)}).", index)
        frames = []
        for t in _sample_frame_indices(len(video), num_frames):
            frame = video[t]
            if isinstance(frame, (np.ndarray, torch.Tensor)):
                frames.append(self._array_to_chw_tensor(frame, index, input_data_format, frame=t))
            else:
                try:
                    frames.append(self.load_image(frame, index, input_data_format))
                except MMImageError as err:
                    raise MMImageError(f"{err} (video frame {t})", index, err.path) from err
        return frames

    def _decode_video_file(
        self, source: str | bytes, index: int | None, num_frames: int, path: str | None = None
    ) -> list[np.ndarray]:
        """Decodes `num_frames` uniformly sampled frames of a video file (or its encoded bytes) with PyAV."""
        import av  # lazy: only video files need PyAV

        path = source if isinstance(source, str) else path
        where = _where(index, path)
        if isinstance(source, bytes):
            if len(source) == 0:
                raise MMImageError(f"Video bytes are empty ({where}).", index, path)
        elif not os.path.exists(source):
            raise MMImageError(f"Video file not found ({where}).", index, path)
        elif os.path.getsize(source) == 0:
            raise MMImageError(f"Video file is empty, 0 bytes ({where}).", index, path)

        def decode(wanted: set[int] | None) -> tuple[dict[int, np.ndarray], int]:
            """One decoding pass: the frame count, and the frames in `wanted` as (H, W, 3) uint8 RGB."""
            decoded, count = {}, 0
            with av.open(io.BytesIO(source) if isinstance(source, bytes) else source) as container:
                if not container.streams.video:
                    raise MMImageError(f"File has no video stream ({where}).", index, path)
                stream = container.streams.video[0]
                self._check_num_pixels((stream.codec_context.width, stream.codec_context.height), where, index, path)
                if wanted is None:
                    # The header's frame count (0 when the container does not store it) picks the frames to keep.
                    wanted = set(_sample_frame_indices(stream.frames, num_frames)) if stream.frames > 0 else set()
                for count, frame in enumerate(container.decode(stream), start=1):
                    if count - 1 in wanted:
                        decoded[count - 1] = frame.to_ndarray(format="rgb24")
            return decoded, count

        try:
            # Only sampled frames are converted to RGB, so long videos never sit in memory whole.
            decoded, count = decode(None)
            indices = _sample_frame_indices(count, num_frames) if count else []
            if not set(indices) <= decoded.keys():
                # The header had no (or a wrong) frame count: sample from the real count in a second pass.
                decoded, _ = decode(set(indices))
        except MMImageError:
            raise
        except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as err:
            raise MMImageError(f"Cannot decode video ({where}): {err}", index, path) from err
        if count == 0:
            raise MMImageError(f"Video has no decodable frames ({where}).", index, path)
        return [decoded[i] for i in indices]

    # ------------------------------------------------------------------ batch structure

    @staticmethod
    def _flatten_images(images: Any) -> list[Any]:
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            items = list(images)  # a batch, first dim
        elif isinstance(images, (list, tuple)):
            items = list(images)
        elif _is_sequence_of_items(images):
            items = list(images)  # e.g. a `datasets` column of images
        else:
            items = [images]
        if len(items) == 0:
            raise MMImageError("Got an empty batch of images.")
        return items

    @staticmethod
    def _flatten_videos(videos: Any) -> list[Any]:
        if _is_path(videos) or isinstance(videos, dict):
            return [videos]
        if isinstance(videos, (np.ndarray, torch.Tensor)):
            if videos.ndim == 5:
                items = list(videos)
            elif videos.ndim == 4:
                items = [videos]
            else:
                raise MMImageError(
                    f"Expected a (T, H, W, C) video or a (B, T, H, W, C) batch, got shape {tuple(videos.shape)}."
                )
        elif isinstance(videos, (list, tuple)):
            if len(videos) == 0:
                raise MMImageError("Got an empty batch of videos.")
            first = videos[0]
            is_batch = isinstance(first, (list, tuple, dict)) or _is_path(first)
            is_batch = is_batch or (isinstance(first, (np.ndarray, torch.Tensor)) and first.ndim == 4)
            # A list of frames (PIL images / 2D-3D arrays) is one video; a list of videos (frame lists, 4D arrays,
            # paths, `datasets` {"path", "bytes"} dicts) is a batch.
            items = list(videos) if is_batch else [videos]
        else:
            raise MMImageError(f"Unsupported videos type {type(videos).__name__}.")
        if len(items) == 0:
            raise MMImageError("Got an empty batch of videos.")
        return items

    @staticmethod
    def num_items(images: Any = None, videos: Any = None) -> int:
        """Batch size implied by `images` or `videos` without decoding anything (used for pairing with text)."""
        if videos is not None:
            return len(MMImageProcessor._flatten_videos(videos))
        return len(MMImageProcessor._flatten_images(images))

    # ------------------------------------------------------------------ main entry points

    def __call__(self, images: Any = None, videos: Any = None, **kwargs) -> BatchFeature:
        """Preprocess an image, a batch of images, a video or a batch of videos. See `preprocess`."""
        return self.preprocess(images, videos=videos, **kwargs)

    def preprocess(
        self,
        images: Any = None,
        videos: Any = None,
        *,
        do_resize: bool | None = None,
        size: dict[str, int] | int | None = None,
        crop_size: dict[str, int] | int | None = None,
        resample: Resampling | int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        num_frames: int | None = None,
        input_data_format: str | None = None,
        return_tensors: str | None = None,
    ) -> BatchFeature:
        """
        Preprocess images or videos into `pixel_values`.

        Args:
            images (*optional*):
                One image or a batch (list, or a 4D array/tensor with the batch first). See the class docstring.
            videos (*optional*):
                One video (file path, list of frames, 4D array) or a batch of them (list of videos, 5D array).
            do_resize, size, crop_size, resample, do_rescale, rescale_factor, do_normalize, image_mean, image_std:
                Per-call overrides of the settings of the same names.
            num_frames (`int`, *optional*):
                Per-call override of `self.num_frames`.
            input_data_format (`str`, *optional*):
                `"channels_first"` or `"channels_last"` for array inputs whose layout is ambiguous.
            return_tensors (`str`, *optional*):
                `"pt"` (also the default) or `"np"`.

        Returns:
            [`BatchFeature`]: `pixel_values` as a float32 `(B, 3, H, W)` tensor, or `(B, T, 3, H, W)` for videos.
        """
        if images is None and videos is None:
            raise ValueError("Pass `images` or `videos`.")
        if images is not None and videos is not None:
            raise ValueError("Pass either `images` or `videos`, not both: both would fill `pixel_values`.")

        if size is None and crop_size is None:
            size, crop_size = self.size, self.crop_size
        else:
            size = self._check_size(size) if size is not None else self.size
            crop_size = self._check_crop_size(crop_size, size)
        settings = {
            "do_resize": self.do_resize if do_resize is None else do_resize,
            "size": size,
            "crop_size": crop_size,
            "resample": self.resample if resample is None else self._check_resample(resample),
            "do_rescale": self.do_rescale if do_rescale is None else do_rescale,
            "rescale_factor": self.rescale_factor if rescale_factor is None else rescale_factor,
            "do_normalize": self.do_normalize if do_normalize is None else do_normalize,
            "image_mean": self.image_mean
            if image_mean is None
            else self._check_channel_stats(image_mean, "image_mean"),
            "image_std": self.image_std if image_std is None else self._check_channel_stats(image_std, "image_std"),
        }

        if videos is not None:
            clips = [
                self.load_video(video, i, input_data_format, num_frames)
                for i, video in enumerate(self._flatten_videos(videos))
            ]
            frames = [frame for clip in clips for frame in clip]
            pixel_values = self._preprocess(frames, **settings)
            pixel_values = pixel_values.view(len(clips), len(clips[0]), *pixel_values.shape[1:])  # (B, T, 3, H, W)
        else:
            tensors = [
                self.load_image(image, i, input_data_format) for i, image in enumerate(self._flatten_images(images))
            ]
            pixel_values = self._preprocess(tensors, **settings)
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors or "pt")

    def _preprocess(
        self,
        images: list[torch.Tensor],
        do_resize: bool,
        size: dict[str, int],
        crop_size: dict[str, int] | None,
        resample: Resampling,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: list[float],
        image_std: list[float],
    ) -> torch.Tensor:
        """Batched resize + crop + fused rescale/normalize of `load_image` outputs; returns `(B, 3, H, W)` float32."""
        # Stack images that share a shape and value scale, so each group is a handful of tensor ops.
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault((tuple(image.shape), image.dtype), []).append(i)

        output: torch.Tensor | None = None
        scales = torch.ones(len(images), dtype=torch.float32)
        for (shape, dtype), indices in groups.items():
            is_integer = dtype == torch.uint8
            if do_rescale and is_integer:
                scales[indices] = rescale_factor  # floats are already in 0..1
            # Chunks of ~16 MB keep the intermediates small enough to be recycled by the allocator.
            chunk = max(1, (1 << 24) // math.prod(shape))
            for start in range(0, len(indices), chunk):
                part = indices[start : start + chunk]
                batch = torch.stack([images[i].contiguous() for i in part])  # (G, 3, h, w)
                if do_resize:
                    batch = self._resize(batch, size, crop_size, resample)
                if output is None:
                    output = torch.empty((len(images), *batch.shape[1:]), dtype=torch.float32)
                elif output.shape[1:] != batch.shape[1:]:
                    raise MMImageError(
                        f"Images have different sizes ({tuple(output.shape[2:])} vs {tuple(batch.shape[2:])} at batch "
                        f"index {part[0]}) and do_resize=False, so they cannot be stacked.",
                        part[0],
                    )
                if part[-1] - part[0] == len(part) - 1:
                    output[part[0] : part[-1] + 1].copy_(batch)  # uint8 -> float32 in the same pass
                else:
                    output.index_copy_(0, torch.tensor(part), batch.to(torch.float32))

        # Fused rescale + normalize in one in-place pass: x * (scale / std) - mean / std.
        mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1)
        if len(groups) == 1 or bool((scales == scales[0]).all()):
            scales = scales[:1]
        scales = scales.view(-1, 1, 1, 1)
        if do_normalize:
            torch.addcmul(-mean / std, output, scales / std, out=output)
        elif bool((scales != 1).any()):
            output.mul_(scales)
        return output

    @staticmethod
    def _resize(
        batch: torch.Tensor, size: dict[str, int], crop_size: dict[str, int] | None, resample: Resampling
    ) -> torch.Tensor:
        height, width = batch.shape[-2:]
        if "shortest_edge" in size:
            # Same rounding as transformers' `get_resize_output_image_size(default_to_square=False)`.
            edge = size["shortest_edge"]
            short, long = (height, width) if height <= width else (width, height)
            new_short, new_long = edge, int(edge * long / short)
            target = (new_short, new_long) if height <= width else (new_long, new_short)
        else:
            target = (size["height"], size["width"])

        if target != (height, width):
            mode = _INTERPOLATION_MODES[resample]
            if mode == "nearest-exact":
                batch = F.interpolate(batch, size=target, mode=mode)
            else:
                # antialias=True is torch's port of PIL's resampling (a=-0.5 cubic, widened kernel when shrinking):
                # on uint8 it matches PIL within 1-2 levels both ways and has a fast AVX2 path; it also rounds and
                # clamps like PIL. Floats keep full precision and are clamped against cubic overshoot.
                batch = F.interpolate(batch, size=target, mode=mode, antialias=True)
                if batch.is_floating_point():
                    batch = batch.clamp_(0.0, 1.0)

        if crop_size is not None and "shortest_edge" in size:
            crop_h, crop_w = crop_size["height"], crop_size["width"]
            top = int(round((batch.shape[-2] - crop_h) / 2.0))
            left = int(round((batch.shape[-1] - crop_w) / 2.0))
            batch = batch[..., top : top + crop_h, left : left + crop_w]
        return batch

    # ------------------------------------------------------------------ transformers hooks

    def fetch_images(self, image_url_or_urls: Any) -> Any:
        """
        Decodes file paths into PIL images with this processor's checks (no URL fetching: paths only), leaving other
        inputs untouched. `ProcessorMixin` calls this before processing.
        """
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(x) for x in image_url_or_urls]
        return self.open_image(image_url_or_urls)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["resample"] = int(self.resample)
        return output
