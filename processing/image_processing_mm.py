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
"""Image processor for the multimodal model.

Self-contained on purpose: it imports only numpy, PIL, torch and transformers, so `save_pretrained` can ship it to a
Hub repo next to the model code.

Two parts. The strict decoder (`MMImageDecodingMixin`) turns any input into one RGB array per image and raises
`MMImageError` naming the batch index and the file for anything wrong; it is shared with the video processor.
`MMImageProcessor` is transformers' `PilBackend` with our defaults declared as class attributes: the backend's
`preprocess` validates settings, calls the decoder per image (`process_image`) and then `_preprocess` resizes and
crops each image with PIL and rescales + normalizes images of one shape as one stacked array.
"""

import io
import os
import warnings
from typing import Any, NamedTuple

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack


__all__ = ["MMImageDecodingMixin", "MMImageError", "MMImageProcessor", "MMImageProcessorKwargs"]


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
    """
    Settings of `MMImageProcessor` on top of transformers' `ImagesKwargs`.

    background_color (`tuple[int, int, int]`, *optional*):
        RGB colour that transparent pixels are composited on.
    max_image_pixels (`int`, *optional*):
        Images with more pixels are refused before their pixel data is decoded (decompression-bomb guard).
    """

    background_color: tuple[int, ...] | list[int] | None
    max_image_pixels: int | None


class DecodeSettings(NamedTuple):
    """The decoder's settings for one call (instance settings with per-call overrides applied)."""

    do_convert_rgb: bool
    background_color: tuple[int, int, int]
    max_image_pixels: int


# ---------------------------------------------------------------------------------------------------- strict decoder


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


def _is_encoded(obj: Any) -> bool:
    """`datasets`' undecoded image or video: `{"path": str | None, "bytes": bytes | None}`."""
    return isinstance(obj, dict) and ("path" in obj or "bytes" in obj)


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    # `np.asarray(pil_image)` is read-only and torch warns on sharing it; the copy is cheap next to decoding.
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def check_num_pixels(
    size: tuple[int, int], max_image_pixels: int, where: str, index: int | None, path: str | None
) -> None:
    """Refuses `(width, height)` above `max_image_pixels` (read from a header, before decoding) or with a zero side."""
    width, height = size
    if width * height > max_image_pixels:
        raise MMImageError(
            f"Image of {width}x{height} = {width * height} pixels exceeds max_image_pixels={max_image_pixels} "
            f"({where}); refused before decoding.",
            index,
            path,
        )
    if width == 0 or height == 0:
        raise MMImageError(f"Image has a zero-size dimension {width}x{height} ({where}).", index, path)


def check_file(source: str | bytes, index: int | None, path: str | None, kind: str) -> None:
    """The checks every file gets before it is opened: it exists, is a file, is not empty."""
    where = _where(index, path)
    if isinstance(source, bytes):
        if len(source) == 0:
            raise MMImageError(f"{kind} bytes are empty ({where}).", index, path)
        return
    if not os.path.exists(source):
        raise MMImageError(f"{kind} file not found ({where}).", index, path)
    if os.path.isdir(source):
        raise MMImageError(f"Expected a file but got a directory ({where}).", index, path)
    if os.path.getsize(source) == 0:
        raise MMImageError(f"{kind} file is empty, 0 bytes ({where}).", index, path)


def _open_image_file(
    source: str | bytes, index: int | None, path: str | None, settings: DecodeSettings
) -> PIL.Image.Image:
    """Opens a file or encoded bytes, refusing oversized images before any pixel data is decoded."""
    where = _where(index, path)
    check_file(source, index, path, "Image")
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; make it an error we can name.
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            # `open` is lazy: it parses the header (size, mode) and decodes no pixel data.
            image = PIL.Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as err:
        raise MMImageError(f"Image is too large to decode safely ({where}): {err}", index, path) from err
    except PIL.UnidentifiedImageError as err:
        raise MMImageError(f"Not a recognised image file ({where}).", index, path) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise MMImageError(f"Cannot read image ({where}): {err}", index, path) from err
    try:
        _load_pixels(image, where, index, path, settings)
        # Camera photos store their orientation in EXIF; apply it like `datasets.Image` does.
        if image.getexif().get(PIL.Image.ExifTags.Base.Orientation) is not None:
            image = PIL.ImageOps.exif_transpose(image)
        return image
    except BaseException:
        image.close()
        raise


def _load_pixels(
    image: PIL.Image.Image, where: str, index: int | None, path: str | None, settings: DecodeSettings
) -> None:
    check_num_pixels(image.size, settings.max_image_pixels, where, index, path)
    try:
        # Force the decode here so truncated or corrupt data raises now, with the file named, instead of being
        # silently zero-filled. `ImageFile.LOAD_TRUNCATED_IMAGES` is deliberately left alone.
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:
        raise MMImageError(f"Image file is truncated or corrupt ({where}): {err}", index, path) from err


def _pil_to_rgb_array(
    image: PIL.Image.Image, where: str, index: int | None, path: str | None, settings: DecodeSettings
) -> np.ndarray:
    """Any PIL mode -> uint8 HWC RGB array."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if not settings.do_convert_rgb:
        raise MMImageError(f"Image mode {mode} is not RGB and do_convert_rgb=False ({where}).", index, path)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        # Premultiplied "La" only converts via "LA".
        rgba = (image.convert("LA") if mode == "La" else image).convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (*settings.background_color, 255))
        return np.asarray(PIL.Image.alpha_composite(background, rgba).convert("RGB"))
    if mode.startswith("I"):
        # PIL's own I;16 -> RGB clips at 255 instead of scaling; scale the 16-bit range proportionally.
        gray = np.clip(np.rint(np.asarray(image).astype(np.float32) / _UINT16_TO_UINT8), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        # Float images follow PIL's 0..255 convention (e.g. `convert("F")` of an L image).
        values = np.asarray(image)
        if not np.isfinite(values).all():
            raise MMImageError(f"Float image contains NaN or Inf ({where}).", index, path)
        return np.repeat(np.clip(np.rint(values), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    try:
        return np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as err:
        raise MMImageError(f"Cannot convert image mode {mode} to RGB ({where}): {err}", index, path) from err


def _infer_layout(
    shape: tuple[int, ...], input_data_format: Any, where: str, index: int | None, path: str | None
) -> str:
    if input_data_format is not None:
        layout = str(getattr(input_data_format, "value", input_data_format))
        if layout not in (_CHANNELS_FIRST, _CHANNELS_LAST):
            raise ValueError(f"`input_data_format` must be 'channels_first' or 'channels_last', got {layout}.")
        channels = shape[0] if layout == _CHANNELS_FIRST else shape[-1]
        if channels not in (1, 3, 4):
            raise MMImageError(
                f"Shape {shape} has {channels} channels in {layout} layout; expected 1, 3 or 4 ({where}).", index, path
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


def _to_canonical_dtype(tensor: torch.Tensor, where: str, index: int | None, path: str | None) -> torch.Tensor:
    """uint8 stays (0..255 scale); uint16 -> uint8 by /257; floats must be finite and in 0..1."""
    if tensor.dtype == torch.uint8:
        return tensor
    if tensor.dtype == torch.bool:
        return tensor.to(torch.uint8) * 255
    if tensor.dtype.is_complex:
        raise MMImageError(f"Complex image dtype {tensor.dtype} is not supported ({where}).", index, path)
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
    if tensor.dtype == torch.uint16:
        return (tensor.to(torch.int32).float() / _UINT16_TO_UINT8).round().to(torch.uint8)
    # Other integer dtypes (int64 from Python lists, int32, ...) must already hold 0..255 values. uint32/uint64 have no
    # min/max kernels: compare them in float64, exact far beyond 255.
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


def _array_to_chw(
    array: np.ndarray | torch.Tensor,
    index: int | None,
    input_data_format: Any,
    settings: DecodeSettings,
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
            raise MMImageError(
                f"Unsupported image array dtype {array.dtype} ({where}); expected numbers.", index, path
            )
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))  # e.g. big-endian 16-bit from I;16B
        try:
            tensor = _from_numpy(array)
        except TypeError as err:  # e.g. float128
            raise MMImageError(f"Unsupported image array dtype {array.dtype} ({where}): {err}", index, path) from err

    if tensor.ndim == 2:
        tensor, layout = tensor.unsqueeze(0), _CHANNELS_FIRST
    elif tensor.ndim == 3:
        layout = _infer_layout(tuple(tensor.shape), input_data_format, where, index, path)
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

    tensor = _to_canonical_dtype(tensor, where, index, path)
    num_channels = tensor.shape[0]
    if num_channels == 3 or not settings.do_convert_rgb:
        # Without conversion an array keeps its 1, 3 or 4 channels, as in transformers (PIL modes still must be RGB).
        return tensor
    if num_channels == 1:
        return tensor.expand(3, -1, -1)
    # 4 channels: RGBA, composited on the background like PIL images.
    alpha_max = 255.0 if tensor.dtype == torch.uint8 else 1.0
    rgb, alpha = tensor[:3].float(), tensor[3:].float() / alpha_max
    background = torch.tensor(settings.background_color, dtype=torch.float32).view(3, 1, 1) * (alpha_max / 255.0)
    composite = rgb * alpha + background * (1.0 - alpha)
    return composite.round().to(torch.uint8) if tensor.dtype == torch.uint8 else composite


class MMImageDecodingMixin:
    """
    What `MMImageProcessor` and `MMVideoProcessor` share on top of transformers' `PilBackend`: validation of the
    settings, the strict decoder (reads `do_convert_rgb`, `background_color` and `max_image_pixels`) and the
    resize / crop / rescale / normalize pass over decoded images. The defaults both processors share are declared
    here, once (the mixin comes first in both classes' bases, so these override the backends' own).
    """

    resample = PILImageResampling.BICUBIC
    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.5, 0.5, 0.5)
    size = {"height": 224, "width": 224}
    default_to_square = True
    do_resize = True
    do_center_crop = None  # resolved per call from `size`: crop after a `shortest_edge` resize only
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    background_color = (255, 255, 255)
    max_image_pixels = 50_000_000

    def _standardize_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        """transformers' standardisation, then our validation: every invalid value raises naming its field."""
        kwargs = super()._standardize_kwargs(**kwargs)
        size, crop_size = kwargs.get("size"), kwargs.get("crop_size")
        if size is not None and not (
            set(dict(size)) in ({"height", "width"}, {"shortest_edge"})
            and all(isinstance(v, int) and v > 0 for v in dict(size).values())
        ):
            raise ValueError(
                f"`size` must be {{'height': h, 'width': w}} or {{'shortest_edge': n}}, got {dict(size)}."
            )
        if size is not None and size.shortest_edge is not None:
            edge = size.shortest_edge
            crop_size = crop_size or SizeDict(height=edge, width=edge)
            if crop_size.height is None or crop_size.height > edge or crop_size.width > edge:
                # After the resize the short side is exactly `edge`, so a larger crop would need padding.
                raise ValueError(f"`crop_size` must be {{'height', 'width'}} no larger than shortest_edge={edge}.")
            kwargs["crop_size"] = crop_size
        if kwargs.get("resample") is not None:
            try:
                kwargs["resample"] = PILImageResampling(int(kwargs["resample"]))
            except (TypeError, ValueError) as err:
                raise ValueError(f"`resample` must be a PIL resampling filter, got {kwargs['resample']!r}.") from err
        for name in ("image_mean", "image_std"):
            value = kwargs.get(name)
            if isinstance(value, (int, float)):
                kwargs[name] = value = (float(value),) * 3
            if value is not None and len(value) not in (3, 1, 4):
                raise ValueError(f"`{name}` must be a float or one float per channel (3 for RGB), got {value}.")
        if kwargs.get("image_std") is not None and any(s <= 0 for s in kwargs["image_std"]):
            raise ValueError(f"`image_std` must be positive, got {kwargs['image_std']}.")
        color = kwargs.get("background_color")
        if color is not None:
            if len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color):
                raise ValueError(f"`background_color` must be 3 ints in 0..255, got {color}.")
            kwargs["background_color"] = tuple(color)
        if kwargs.get("max_image_pixels") is not None and kwargs["max_image_pixels"] <= 0:
            raise ValueError(f"`max_image_pixels` must be positive, got {kwargs['max_image_pixels']}.")
        return kwargs

    def _decode_settings(self, **overrides: Any) -> DecodeSettings:
        values = {key: getattr(self, key) for key in DecodeSettings._fields}
        values.update({key: value for key, value in overrides.items() if key in values and value is not None})
        return DecodeSettings(
            bool(values["do_convert_rgb"]), tuple(values["background_color"]), values["max_image_pixels"]
        )

    def open_image(
        self, image: ImageLike, index: int | None = None, settings: DecodeSettings | None = None
    ) -> ImageLike:
        """
        Decodes a file path, encoded bytes or `datasets`' `{"path", "bytes"}` dict into a loaded `PIL.Image.Image`
        with every file check (missing, empty, not an image, too large, truncated), raising `MMImageError`. Other
        inputs are returned unchanged.

        Args:
            image (`str`, `os.PathLike`, `dict` or any other image input):
                The image to open.
            index (`int`, *optional*):
                Position in the batch, used in error messages.
            settings (`DecodeSettings`, *optional*):
                Per-call decoder settings; defaults to the processor's.
        """
        settings = settings or self._decode_settings()
        if _is_encoded(image):
            path, data = image.get("path"), image.get("bytes")
            if data is None and path is None:
                raise MMImageError(f"Image dict has neither 'path' nor 'bytes' ({_where(index)}).", index)
            return _open_image_file(data if data is not None else os.fspath(path), index, path, settings)
        if _is_path(image):
            return _open_image_file(os.fspath(image), index, os.fspath(image), settings)
        return image

    def load_image(
        self,
        image: ImageLike,
        index: int | None = None,
        input_data_format: Any = None,
        settings: DecodeSettings | None = None,
        frame: int | None = None,
    ) -> torch.Tensor:
        """
        Decodes and validates one image, returning it as an RGB `(3, H, W)` tensor: uint8 in 0..255, or float32 in
        0..1 for float inputs. Raises `MMImageError` naming `index` (and the file, and `frame` of a video) for anything
        wrong.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str`, `os.PathLike` or `dict`):
                The image; a dict is `datasets`' undecoded form `{"path": str | None, "bytes": bytes | None}`.
            index (`int`, *optional*):
                Position in the batch, used in error messages.
            input_data_format (`str`, *optional*):
                `"channels_first"` or `"channels_last"` for arrays whose layout cannot be inferred.
            settings (`DecodeSettings`, *optional*):
                Per-call decoder settings; defaults to the processor's.
            frame (`int`, *optional*):
                Frame number when the image is a video frame, used in error messages.
        """
        settings = settings or self._decode_settings()
        path = image.get("path") if _is_encoded(image) else (os.fspath(image) if _is_path(image) else None)
        image = self.open_image(image, index, settings)
        path = path or getattr(image, "filename", None) or None  # PIL keeps the file name of opened images
        if isinstance(image, PIL.Image.Image):
            where = _where(index, path, frame)
            _load_pixels(image, where, index, path, settings)  # a lazily opened image still needs decoding
            return _from_numpy(_pil_to_rgb_array(image, where, index, path, settings)).permute(2, 0, 1)
        if isinstance(image, (np.ndarray, torch.Tensor)):
            return _array_to_chw(image, index, input_data_format, settings, frame=frame)
        raise MMImageError(
            f"Unsupported image type {type(image).__name__} ({_where(index, frame=frame)}); expected a PIL image, "
            "numpy array, torch tensor, file path or {'path', 'bytes'} dict.",
            index,
        )

    def resize(self, image: np.ndarray, size: SizeDict, resample: Any = None, **kwargs) -> np.ndarray:
        # PIL resamples 8-bit data; float inputs (0..255 scale here) are rounded onto it, as transformers does.
        if image.dtype != np.uint8:
            image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        return super().resize(image, size, resample=resample, **kwargs)

    def _transform(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | None,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: tuple[float, ...],
        image_std: tuple[float, ...],
        **kwargs,
    ) -> np.ndarray:
        """
        The backend's steps on decoded `(3, H, W)` images: PIL resize and crop per image, then one fused rescale +
        normalize per group of equally shaped images. Returns the float32 `(N, 3, H, W)` batch.
        """
        if do_center_crop is None:  # the class default: crop after a `shortest_edge` resize only
            do_center_crop = size is not None and size.shortest_edge is not None
        resized = []
        for image in images:
            if do_resize:
                image = self.resize(image, size=size, resample=resample)
            if do_center_crop and crop_size is not None:
                image = self.center_crop(image, crop_size)
            resized.append(image)

        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(resized):
            groups.setdefault(image.shape, []).append(i)
        if len(groups) > 1:
            first, other = list(groups)[:2]
            raise MMImageError(
                f"Images have different sizes ({first[1:]} vs {other[1:]} at batch index {groups[other][0]}) and "
                "do_resize=False, so they cannot be stacked.",
                groups[other][0],
            )
        # x * (scale / std) - mean / std: rescale and normalize fused into one pass over each stacked group.
        num_channels = resized[0].shape[0]  # 3, or 1 / 4 for arrays kept as they are with do_convert_rgb=False
        scale = np.float32(rescale_factor if do_rescale else 1.0)
        mean = np.asarray(image_mean if do_normalize else (0.0,), dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(image_std if do_normalize else (1.0,), dtype=np.float32).reshape(1, -1, 1, 1)
        for name, value in (("image_mean", mean), ("image_std", std)):
            if value.shape[1] not in (1, num_channels):
                raise ValueError(f"`{name}` has {value.shape[1]} values but the images have {num_channels} channels.")
        output = np.empty((len(resized), *resized[0].shape), dtype=np.float32)  # (N, C, H, W)
        for indices in groups.values():
            stacked = np.stack([resized[i] for i in indices]).astype(np.float32)  # (G, C, H, W)
            output[indices] = stacked * (scale / std) - mean / std
        return output


def _flatten_images(images: Any) -> list[Any]:
    """One image, a list (nested lists are flattened, as transformers does), a 4D batch or a `datasets` column."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        items = list(images) if images.ndim == 4 else [images]  # a 4D array is a batch, first dim
    elif isinstance(images, (str, bytes, dict, PIL.Image.Image)) or _is_path(images):
        items = [images]
    elif hasattr(images, "__len__") and hasattr(images, "__iter__"):  # list, tuple, `datasets` Column, ...
        items = [
            item
            for image in images
            for item in (_flatten_images(image) if isinstance(image, (list, tuple)) else [image])
        ]
    else:
        items = [images]
    if len(items) == 0:
        raise MMImageError("Got an empty batch of images.")
    return items


class MMImageProcessor(MMImageDecodingMixin, PilBackend):
    r"""
    Constructs an image processor for the multimodal model on transformers' PIL backend: decodes any input strictly
    to RGB, resizes and center-crops with PIL, rescales and normalizes.

    Accepted images: `PIL.Image.Image` in any mode, `np.ndarray` / `torch.Tensor` in HWC, CHW or HW layout (uint8 in
    0..255, uint16 in 0..65535, or float in 0..1), file paths (`str` / `pathlib.Path`) and `datasets`' undecoded
    `{"path": ..., "bytes": ...}` dicts; a single one, a list (nested lists are flattened) or a 4D batch.

    Mode conversion: transparent images (RGBA, LA, PA, La, RGBa, P with transparency) are composited on
    `background_color`; 16-bit images (I;16, I;16B, I, uint16 arrays) are divided by 257 so 65535 -> 255 (32-bit
    "I" values outside 0..65535 are clipped); float "F" images are read on PIL's 0..255 scale (clipped); 1-bit, L,
    P, CMYK, YCbCr, ... go through PIL's RGB conversion. 4-channel arrays are RGBA, 1-channel arrays grayscale. Float
    arrays are read on the 0..1 scale, so every input is rescaled alike.

    Files are opened lazily, so an image above `max_image_pixels` is refused from its header, before any pixel data
    is decoded; PIL's own `Image.MAX_IMAGE_PIXELS` bomb check applies too (its warning is raised as an error).

    Settings (class defaults, overridable at init and per call; see `ImagesKwargs`): `size` `{"height": 224, "width":
    224}` (or `{"shortest_edge": n}`, then center-cropped to `crop_size`, `n x n` by default), `resample` BICUBIC,
    `do_rescale` with `rescale_factor` 1/255, `do_normalize` with `image_mean` = `image_std` = 0.5, `do_convert_rgb`
    (when `False`, a PIL image that is not RGB raises, and arrays keep their 1, 3 or 4 channels, normalized with one
    mean / std per channel), and ours:

    Args:
        background_color (`tuple[int, int, int]`, *optional*, defaults to `(255, 255, 255)`):
            RGB colour that transparent pixels are composited on.
        max_image_pixels (`int`, *optional*, defaults to `50_000_000`):
            Images with more pixels are refused before their pixel data is decoded (decompression-bomb guard).
    """

    valid_kwargs = MMImageProcessorKwargs

    def __init__(self, **kwargs: Unpack[MMImageProcessorKwargs]):
        # Written by `to_dict` so `AutoImageProcessor` can find the class; not a setting.
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)

    def fetch_images(self, image_url_or_urls: Any) -> Any:
        """
        Decodes file paths and `datasets` dicts into PIL images with the strict checks (no URL fetching: paths only),
        naming each one's position in a flat list (a single image is index 0); other inputs pass through.
        `ProcessorMixin` calls this first.
        """
        if isinstance(image_url_or_urls, (list, tuple)):
            return [
                self.fetch_images(x) if isinstance(x, (list, tuple)) else self.open_image(x, index)
                for index, x in enumerate(image_url_or_urls)
            ]
        return self.open_image(image_url_or_urls, 0)

    def _prepare_image_like_inputs(
        self, images: Any, *args, input_data_format: Any = None, expected_ndims: int = 3, **kwargs
    ) -> list[np.ndarray]:
        # Our flattening instead of `make_flat_list_of_images`, so that each image is decoded knowing its batch index.
        settings = self._decode_settings(**kwargs)
        return [
            self.process_image(image, input_data_format=input_data_format, index=index, settings=settings)
            for index, image in enumerate(_flatten_images(images))
        ]

    def process_image(
        self,
        image: ImageLike,
        do_convert_rgb: bool | None = None,
        input_data_format: Any = None,
        index: int | None = None,
        settings: DecodeSettings | None = None,
        **kwargs,
    ) -> np.ndarray:
        """The strict decoder for one image -> RGB `(3, H, W)` array: uint8, or float32 on the same 0..255 scale."""
        settings = settings or self._decode_settings(do_convert_rgb=do_convert_rgb)
        tensor = self.load_image(image, index, input_data_format, settings)
        return tensor.numpy() if tensor.dtype == torch.uint8 else tensor.numpy() * np.float32(255)

    def _preprocess(self, images: list[np.ndarray], return_tensors: str | None = None, **kwargs) -> BatchFeature:
        return BatchFeature(
            data={"pixel_values": self._transform(images, **kwargs)}, tensor_type=return_tensors or "pt"
        )

    def preprocess(self, images: Any = None, *args, videos: Any = None, **kwargs) -> BatchFeature:
        """
        Preprocess one image or a batch into `pixel_values`, a float32 `(B, 3, H, W)` tensor (`return_tensors="pt"`,
        the default) or array (`"np"`). Every setting of the class can be overridden here, `do_convert_rgb`,
        `background_color` and `max_image_pixels` included.

        `videos` is kept for callers of the former combined processor: the clips go through [`MMVideoProcessor`] with
        this processor's settings and come back as `pixel_values` `(B, T, 3, H, W)`. New code uses the video processor.
        """
        if images is None and videos is None:
            raise ValueError("Pass `images` or `videos`.")
        if images is not None and videos is not None:
            raise ValueError("Pass either `images` or `videos`, not both: both would fill `pixel_values`.")
        if videos is not None:
            output = self._video_processor()(videos, **kwargs)
            return BatchFeature(data={"pixel_values": output["pixel_values_videos"]})
        return super().preprocess(images, *args, **kwargs)

    def _video_processor(self) -> Any:
        from .video_processing_mm import MMVideoProcessor  # lazy: the video module imports this one

        return MMVideoProcessor.from_image_processor(self)

    def load_video(
        self, video: Any, index: int | None = None, input_data_format: Any = None, num_frames: int | None = None
    ) -> list[torch.Tensor]:
        """Kept for callers of the former combined processor; see [`MMVideoProcessor.load_video`]."""
        return self._video_processor().load_video(video, index, input_data_format, num_frames)

    def __call__(self, images: Any = None, *args, **kwargs) -> BatchFeature:
        return self.preprocess(images, *args, **kwargs)
