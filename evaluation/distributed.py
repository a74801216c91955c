"""Where evaluation runs: the device (`--device`, default the accelerator when there is one) and, under `torchrun` /
`accelerate launch`, which rows this process evaluates. Each process takes a contiguous block of the rows, in rank
order, and the per-row results are put back together with accelerate's `gather_object`, so every process scores the
same full lists, in the original order, and metrics equal those of one process."""

import math

import torch


__all__ = ["gather_rows", "is_main_process", "process_range", "resolve_device"]


def _state():
    from accelerate import PartialState

    return PartialState()


def resolve_device(device: str | None = None) -> torch.device:
    """`device` as a `torch.device`; `None` picks this process's accelerator (cuda/mps/xpu, `LOCAL_RANK`-th under a
    launcher) when present, else the CPU."""
    if device:
        return torch.device(device)
    from training.distributed import default_device

    return torch.device(default_device())


def process_range(num_rows: int) -> range:
    """The contiguous block of `range(num_rows)` this process evaluates (all of it in a single process); blocks are
    in rank order and the last ones may be shorter or empty."""
    state = _state()
    if state.num_processes == 1:
        return range(num_rows)
    per = math.ceil(num_rows / state.num_processes)
    start = min(state.process_index * per, num_rows)
    return range(start, min(start + per, num_rows))


def gather_rows(rows: list) -> list:
    """Concatenates every process's `rows` in rank order (picklable items: move tensors to the CPU first); the list
    itself in a single process."""
    state = _state()
    if state.num_processes == 1:
        return list(rows)
    from accelerate.utils import gather_object

    return list(gather_object(list(rows)))


def is_main_process() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return _state().is_main_process
