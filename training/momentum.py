"""ALBEF momentum distillation for ITC (Li et al. 2021, "Align before Fuse", sec. 3.3), with MoCo's feature queue.

A teacher (an exponential moving average of the student's towers and ITC projections) embeds every training batch;
its features give soft ITC targets and, through a queue of past batches, extra negatives. Teacher and queue are
training state: they live here, on the Trainer side, are saved into every checkpoint folder (so a resumed run is
exact), and never into the published model, whose forward only receives them as data (`MMITCDistillation`).
"""

import copy
import inspect
import logging
import os

import torch
from torch import nn
from transformers import TrainerCallback

from modeling_mm.losses import distributed_info, gather_features, gather_padded, pad_length
from modeling_mm.modeling_mm_pretraining import MMITCDistillation

from .distributed import unwrap_pretraining_model


__all__ = ["MOMENTUM_STATE_NAME", "MomentumDistillation", "MomentumDistillationCallback"]

logger = logging.getLogger(__name__)

# Written into each checkpoint folder, before Trainer's own files (so the completeness marker covers it).
MOMENTUM_STATE_NAME = "momentum_distillation.safetensors"

# The parts of MMModel the teacher never runs: it only embeds (towers + projections), it never fuses.
_FUSION_PARTS = ("fusion_layers", "fusion_layer_norm", "fusion_image_projection")


_INPUT_BUFFERS = ("queue_input_ids", "queue_attention_mask", "queue_pixel_values")


def _visual(inputs: dict) -> torch.Tensor:
    pixel_values = inputs.get("pixel_values")
    return inputs["pixel_values_videos"] if pixel_values is None else pixel_values


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Gradient-free all-gather along dim 0 (the identity outside torch.distributed)."""
    rank, world_size = distributed_info()
    with torch.no_grad():
        return gather_features(tensor, rank, world_size)


class MomentumDistillation:
    r"""
    The momentum teacher and feature queue of ALBEF's ITC, kept next to (not inside) the student.

    The teacher is a frozen, eval-mode copy of the student's `MMModel` without its fusion layers: towers, ITC
    projections (the temperature is the student's, as ALBEF shares it). After each optimizer step it moves towards
    the student, `teacher = momentum * teacher + (1 - momentum) * student` (floating buffers too). Each training batch
    it embeds the full images (no FLIP mask, no dropout) and texts; those features, gathered from every rank, are then
    pushed into a ring buffer of `queue_size` entries with their `image_ids` (-1 where the batch had none), so every
    rank holds the same queue.

    Build it after any LoRA wrapping and before `MMTrainer` (which moves it to the training device, feeds it, saves it
    in checkpoints and restores it on resume).

    Args:
        model (`MMForPreTraining`): The student (possibly peft-wrapped), with the `itc` objective, InfoNCE and towers.
        momentum (`float`): EMA momentum in [0, 1) (ALBEF: 0.995).
        queue_size (`int`): Entries of the feature queue (ALBEF: 65,536; 4,096 keeps CPU runs cheap).
        alpha (`float`): Weight of the teacher's soft targets once ramped up, in [0, 1] (ALBEF: 0.4).
        warmup_steps (`int`): Optimizer steps over which the weight ramps linearly from 0 to `alpha` (ALBEF: the
            first epoch); 0 uses `alpha` from the start. Counted in steps, so streamed data needs no epoch length.
        queue_itm_negatives (`bool`): Also keep each queue entry's inputs (token ids, attention mask, pixels) so that
            ITM hard negatives are mined over `[global batch ; queue]` (models with the `itm` objective and fusion
            layers); the entries picked are re-encoded by the student's towers. Costs `queue_size` images of memory
            (4,096 images of 3x64x64 in float32: 192 MiB) and up to 2B extra tower rows per step.
    """

    def __init__(
        self,
        model: nn.Module,
        momentum: float = 0.995,
        queue_size: int = 4096,
        alpha: float = 0.4,
        warmup_steps: int = 0,
        queue_itm_negatives: bool = False,
    ):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"--momentum must be in [0, 1), got {momentum}.")
        if queue_size < 1:
            raise ValueError(f"--queue_size must be at least 1, got {queue_size}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"--distillation_alpha must be in [0, 1], got {alpha}.")
        if warmup_steps < 0:
            raise ValueError(f"--distillation_warmup_steps must be >= 0, got {warmup_steps}.")
        head = unwrap_pretraining_model(model)
        if head is None or "itc_distillation" not in inspect.signature(head.forward).parameters:
            raise ValueError(f"--momentum_distillation needs MMForPreTraining, got {type(head or model).__name__}.")
        config = head.config
        if "itc" not in config.objectives or config.fusion == "early":
            raise ValueError(
                "--momentum_distillation distils ITC: it needs the 'itc' objective and a fusion with towers, got "
                f"objectives {list(config.objectives)} and fusion={config.fusion!r}."
            )
        if config.contrastive_loss != "infonce":
            raise ValueError(
                "--momentum_distillation needs --contrastive_loss infonce: it distils a softmax over the batch and "
                f"queue, which the sigmoid loss does not have (got {config.contrastive_loss!r})."
            )
        if queue_itm_negatives and ("itm" not in config.objectives or config.fusion not in ("hybrid", "coattention")):
            raise ValueError(
                "--queue_itm_negatives mines ITM hard negatives from the queue: it needs the 'itm' objective and "
                f"fusion layers (hybrid, coattention), got objectives {list(config.objectives)} and "
                f"fusion={config.fusion!r}."
            )
        self.momentum, self.queue_size, self.alpha, self.warmup_steps = momentum, queue_size, alpha, warmup_steps
        self.queue_itm_negatives = queue_itm_negatives
        self.student = head.mm
        # deepcopy's memo maps the fusion modules to None: they are never copied (the teacher does not fuse).
        memo = {id(getattr(self.student, name)): None for name in _FUSION_PARTS if getattr(self.student, name, None)}
        self.teacher = copy.deepcopy(self.student, memo).eval().requires_grad_(False)
        device, dim = self.student.logit_scale.device, config.projection_dim
        self.queue_image = torch.zeros(queue_size, dim, device=device)  # (Q, D), float32 whatever the model's dtype
        self.queue_text = torch.zeros(queue_size, dim, device=device)
        self.queue_ids = torch.full((queue_size,), -1, dtype=torch.long, device=device)
        # The entries' inputs, with queue_itm_negatives: allocated at the first enqueue (the pixel shape is the
        # data's); the texts are right-padded to the longest text the queue has held, and that length only grows.
        self.queue_input_ids: torch.Tensor | None = None  # (Q, L_q)
        self.queue_attention_mask: torch.Tensor | None = None  # (Q, L_q)
        self.queue_pixel_values: torch.Tensor | None = None  # (Q, C, H, W) or (Q, T, C, H, W)
        self.pointer = 0  # next slot to write
        self.filled = 0  # slots written so far (at most queue_size); the empty ones are never read
        self.step = 0  # optimizer steps done, set by MomentumDistillationCallback from Trainer's state

    # -- schedule ---------------------------------------------------------------------------------------------------

    def alpha_at(self, step: int) -> float:
        """The soft-target weight at optimizer step `step`: `alpha * min(1, step / warmup_steps)`."""
        if self.warmup_steps == 0:
            return self.alpha
        return self.alpha * min(1.0, step / self.warmup_steps)

    # -- per batch --------------------------------------------------------------------------------------------------

    def to(self, device: torch.device | str) -> "MomentumDistillation":
        self.teacher.to(device)
        self.queue_image, self.queue_text = self.queue_image.to(device), self.queue_text.to(device)
        self.queue_ids = self.queue_ids.to(device)
        for name in _INPUT_BUFFERS:
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self

    @torch.no_grad()
    def teacher_features(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's L2-normalised `(B, D)` image and text embeddings of a batch (full images, eval mode)."""
        image = self.teacher.embed_image(_visual(inputs))
        text = self.teacher.embed_text(inputs["input_ids"], inputs.get("attention_mask"), inputs.get("token_type_ids"))
        return image, text

    def itc_distillation(self, inputs: dict) -> MMITCDistillation:
        """What the model's forward needs for this batch: teacher features, the filled queue and the current alpha."""
        image, text = self.teacher_features(inputs)
        return MMITCDistillation(
            momentum_image_embeds=image,
            momentum_text_embeds=text,
            queue_image_embeds=self.queue_image[: self.filled],
            queue_text_embeds=self.queue_text[: self.filled],
            queue_ids=self.queue_ids[: self.filled],
            alpha=self.alpha_at(self.step),
            **{name: None if getattr(self, name) is None else getattr(self, name)[: self.filled]
               for name in _INPUT_BUFFERS},
        )

    @torch.no_grad()
    def enqueue(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        image_ids: torch.Tensor | None = None,
        inputs: dict | None = None,
    ) -> None:
        """Pushes a batch's teacher features `(B, D)`, gathered from every rank, into the ring buffer (oldest out);
        with `queue_itm_negatives`, also the batch's `inputs` (`input_ids`, `attention_mask`, the pixels)."""
        if self.queue_itm_negatives:
            if inputs is None:
                raise ValueError("queue_itm_negatives: enqueue needs the batch's inputs (input_ids, pixels).")
            self._enqueue_inputs(inputs, image_embeds.shape[0])
        if image_ids is None:
            image_ids = torch.full((image_embeds.shape[0],), -1, dtype=torch.long, device=image_embeds.device)
        image, text, ids = (_all_gather(t) for t in (image_embeds.float(), text_embeds.float(), image_ids.long()))
        keep = min(image.shape[0], self.queue_size)  # a batch larger than the queue leaves only its last rows
        slots = (self.pointer + torch.arange(keep, device=self.queue_image.device)) % self.queue_size
        self.queue_image[slots] = image[-keep:].to(self.queue_image.device)
        self.queue_text[slots] = text[-keep:].to(self.queue_text.device)
        self.queue_ids[slots] = ids[-keep:].to(self.queue_ids.device)
        self.pointer = (self.pointer + keep) % self.queue_size
        self.filled = min(self.filled + keep, self.queue_size)

    def _enqueue_inputs(self, inputs: dict, batch: int) -> None:
        """Writes the batch's inputs (every rank's) into the slots `enqueue` is about to fill with its features."""
        rank, world_size = distributed_info()
        input_ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        pixels = _visual(inputs)
        input_ids, mask = gather_padded(input_ids, rank, world_size), gather_padded(mask, rank, world_size)
        pixels = _all_gather(pixels)  # (W*B, ...): every rank's data share one pixel shape
        device = self.queue_ids.device
        if self.queue_pixel_values is None:
            self.queue_pixel_values = torch.zeros((self.queue_size, *pixels.shape[1:]), dtype=pixels.dtype,
                                                  device=device)
            self.queue_input_ids = torch.zeros(self.queue_size, input_ids.shape[1], dtype=torch.long, device=device)
            self.queue_attention_mask = torch.zeros_like(self.queue_input_ids)
        if tuple(pixels.shape[1:]) != tuple(self.queue_pixel_values.shape[1:]):
            raise ValueError(
                f"queue_itm_negatives keeps every entry's pixels in one buffer of {tuple(self.queue_pixel_values.shape[1:])}"
                f"; this batch's are {tuple(pixels.shape[1:])}. Resize the images to one size (the image processor)."
            )
        length = max(self.queue_input_ids.shape[1], input_ids.shape[1])
        self.queue_input_ids = pad_length(self.queue_input_ids, length)
        self.queue_attention_mask = pad_length(self.queue_attention_mask, length)
        keep = min(pixels.shape[0], self.queue_size)
        slots = (self.pointer + torch.arange(keep, device=device)) % self.queue_size
        self.queue_pixel_values[slots] = pixels[-keep:].to(device, self.queue_pixel_values.dtype)
        self.queue_input_ids[slots] = pad_length(input_ids[-keep:], length).to(device, torch.long)
        self.queue_attention_mask[slots] = pad_length(mask[-keep:], length).to(device, torch.long)

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step of the teacher towards the student (ALBEF's `_momentum_update`), after an optimizer step."""
        student = dict(self.student.named_parameters())
        student.update(self.student.named_buffers())
        tensors = list(self.teacher.named_parameters()) + list(self.teacher.named_buffers())
        for name, tensor in tensors:
            source = student[name].detach()
            if tensor.is_floating_point():
                tensor.mul_(self.momentum).add_(source.to(tensor.dtype), alpha=1.0 - self.momentum)
            else:
                tensor.copy_(source)

    @torch.no_grad()
    def reset_from_student(self) -> None:
        """Teacher := student, queue emptied (e.g. resuming from a checkpoint written without distillation)."""
        student = self.student.state_dict()
        for name, tensor in self.teacher.state_dict().items():
            tensor.copy_(student[name])
        self.queue_ids.fill_(-1)
        self.queue_input_ids = self.queue_attention_mask = self.queue_pixel_values = None
        self.pointer = self.filled = 0

    # -- checkpointing ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"teacher.{name}": tensor for name, tensor in self.teacher.state_dict().items()}
        state.update({
            "queue.image": self.queue_image,
            "queue.text": self.queue_text,
            "queue.ids": self.queue_ids,
            "queue.position": torch.tensor([self.pointer, self.filled]),
        })
        state.update({f"queue.{name[len('queue_'):]}": getattr(self, name) for name in _INPUT_BUFFERS
                      if getattr(self, name) is not None})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["queue.image"].shape) != tuple(self.queue_image.shape):
            raise ValueError(
                f"The checkpoint's queue holds {tuple(state['queue.image'].shape)} features; this run's "
                f"--queue_size / projection make {tuple(self.queue_image.shape)}. Resume with the same --queue_size."
            )
        teacher = {name[len("teacher."):]: tensor for name, tensor in state.items() if name.startswith("teacher.")}
        self.teacher.load_state_dict(teacher, strict=True)
        self.queue_image.copy_(state["queue.image"])
        self.queue_text.copy_(state["queue.text"])
        self.queue_ids.copy_(state["queue.ids"])
        self.pointer, self.filled = (int(v) for v in state["queue.position"])
        saved = {name: state.get(f"queue.{name[len('queue_'):]}") for name in _INPUT_BUFFERS}
        if self.queue_itm_negatives and self.filled and any(value is None for value in saved.values()):
            raise ValueError(
                "The checkpoint's queue has no entry inputs (it was written without --queue_itm_negatives): resume "
                "with the same flag, or without it."
            )
        for name, value in saved.items():
            # Sizes come from the data (pixel shape, longest text), so the buffers take the saved tensors' shapes.
            setattr(self, name, None if value is None or not self.queue_itm_negatives
                    else value.to(self.queue_ids.device).clone())

    def save(self, folder: str) -> str:
        """Writes the state to `folder/momentum_distillation.safetensors`; returns the file's path."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, MOMENTUM_STATE_NAME)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, path,
                  metadata={"momentum": str(self.momentum), "queue_size": str(self.queue_size)})
        return path

    def load(self, folder: str) -> bool:
        """Restores the state saved in `folder`; False (teacher reset from the student) when there is none."""
        from safetensors.torch import load_file

        path = os.path.join(folder, MOMENTUM_STATE_NAME)
        if not os.path.isfile(path):
            logger.warning("%s has no %s: the teacher restarts from the resumed student, with an empty queue.",
                           folder, MOMENTUM_STATE_NAME)
            self.reset_from_student()
            return False
        self.load_state_dict(load_file(path, device=str(self.queue_image.device)))
        return True


class MomentumDistillationCallback(TrainerCallback):
    """Drives a `MomentumDistillation` from Trainer's loop: the soft-target weight follows `state.global_step` (read
    at each step's start, so a resumed or streamed run needs no epoch length), and the teacher takes one EMA step
    after every optimizer step."""

    def __init__(self, distillation: MomentumDistillation):
        self.distillation = distillation

    def on_step_begin(self, args, state, control, **kwargs):
        self.distillation.step = state.global_step

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.distillation.update()
