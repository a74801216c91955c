"""ITM hard negatives over the global batch: under torch.distributed each rank mines its negatives among every rank's
texts and images (BLIP's cross-rank ITM), so 2 gloo processes x batch 4 give the ITM loss and gradients of 1 process x
batch 8, even when a rank's texts are padded to a different length than the other's."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_mm import MMForImageTextRetrieval, MMForPreTraining
from modeling_mm.losses import sample_hard_negatives
from tests.mm_tester import MMModelTester

BATCH, WORLD = 8, 2
SHORT = 3  # the second rank's texts end SHORT tokens early (all padding in the one-process batch)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(head: str, fusion: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = MMModelTester(batch_size=BATCH).get_config(fusion, objectives=["itc", "itm"])
    model = (MMForPreTraining if head == "pretraining" else MMForImageTextRetrieval)(config)
    # Eval mode: the hardest negative is taken instead of a sampled one, so one process and two pick the same pairs.
    return model.eval()


def _inputs() -> dict[str, torch.Tensor]:
    inputs = MMModelTester(batch_size=BATCH).get_inputs(seed=3, padded=False)
    length = inputs["input_ids"].shape[1]
    inputs["attention_mask"][BATCH // 2 :, length - SHORT :] = 0
    inputs["input_ids"][BATCH // 2 :, length - SHORT :] = 0
    # Two images appear twice (ids 0 and 5 on both ranks): never each other's negatives.
    inputs["image_ids"] = torch.tensor([0, 1, 2, 5, 4, 5, 6, 0])
    return inputs


def _step(model, inputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = model(**inputs, return_loss=True)
    loss = out.itm_loss if hasattr(out, "itm_loss") else out.loss
    (out.loss if hasattr(out, "itm_loss") else loss).backward()
    return loss.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _worker(rank: int, port: int, head: str, fusion: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    inputs = _inputs()
    per = BATCH // WORLD
    local = {key: value[rank * per : (rank + 1) * per] for key, value in inputs.items()}
    if rank == 1:  # this rank's collator padded to its own longest text
        local["input_ids"] = local["input_ids"][:, :-SHORT]
        local["attention_mask"] = local["attention_mask"][:, :-SHORT]
    loss, grads = _step(_model(head, fusion), local)
    for tensor in (loss, *grads):  # what DDP does: average over ranks
        dist.all_reduce(tensor)
        tensor /= WORLD
    torch.save({"loss": loss, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize(
    "head,fusion", [("pretraining", "hybrid"), ("retrieval", "coattention")]
)
def test_two_processes_mine_itm_negatives_over_the_global_batch(tmp_path, head, fusion):
    model = _model(head, fusion)
    inputs = _inputs()
    with torch.no_grad():
        similarity = model(**inputs, return_loss=True).logits_per_image
    neg_text, neg_image = sample_hard_negatives(similarity, inputs["image_ids"], sample=False)
    rank0 = torch.arange(BATCH) < BATCH // 2
    # The check is only meaningful if some hardest negative lives on the other rank.
    assert ((neg_text >= BATCH // 2) == rank0).any() or ((neg_image >= BATCH // 2) == rank0).any()
    loss, reference = _step(model, inputs)
    mp.spawn(_worker, args=(_free_port(), head, fusion, str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["loss"], loss, atol=1e-5, rtol=1e-5)
        for got, want in zip(result["grads"], reference):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
