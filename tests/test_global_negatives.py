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
from modeling_mm.modeling_mm_pretraining import MMITCDistillation
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


def _distillation(model, inputs: dict, rows: slice) -> MMITCDistillation:
    """A momentum queue of 4 other pairs with their inputs; entry j's text feature is the image embedding of batch
    row 2j, so those images' hardest negatives are queue entries (which the model must encode and fuse)."""
    queue = MMModelTester(batch_size=4).get_inputs(seed=4)
    with torch.no_grad():
        image = model.mm.embed_image(inputs["pixel_values"])
        text = model.mm.embed_text(inputs["input_ids"], inputs["attention_mask"])
    return MMITCDistillation(
        momentum_image_embeds=image[rows], momentum_text_embeds=text[rows], queue_image_embeds=text[1::2],
        queue_text_embeds=image[::2], alpha=0.4, queue_ids=torch.full((4,), -1), queue_input_ids=queue["input_ids"],
        queue_attention_mask=queue["attention_mask"], queue_pixel_values=queue["pixel_values"],
    )


def _step(model, inputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = model(**inputs, return_loss=True)
    loss = out.itm_loss if hasattr(out, "itm_loss") else out.loss
    (out.loss if hasattr(out, "itm_loss") else loss).backward()
    return loss.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _worker(rank: int, port: int, head: str, fusion: str, out_dir: str, queue: bool = False) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    inputs = _inputs()
    per = BATCH // WORLD
    local = {key: value[rank * per : (rank + 1) * per] for key, value in inputs.items()}
    if rank == 1:  # this rank's collator padded to its own longest text
        local["input_ids"] = local["input_ids"][:, :-SHORT]
        local["attention_mask"] = local["attention_mask"][:, :-SHORT]
    model = _model(head, fusion)
    if queue:
        local["itc_distillation"] = _distillation(model, inputs, slice(rank * per, (rank + 1) * per))
    loss, grads = _step(model, local)
    for tensor in (loss, *grads):  # what DDP does: average over ranks
        dist.all_reduce(tensor)
        tensor /= WORLD
    torch.save({"loss": loss, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize(
    "head,fusion,queue", [("pretraining", "hybrid", False), ("retrieval", "coattention", False),
                          ("pretraining", "hybrid", True)], ids=["pretraining", "retrieval", "pretraining-queue"],
)
def test_two_processes_mine_itm_negatives_over_the_global_batch(tmp_path, monkeypatch, head, fusion, queue):
    """With `queue`, the candidates are [global batch ; momentum queue]: each rank encodes the queue entries it
    picked, and 2 x 4 still equal 1 x 8."""
    model = _model(head, fusion)
    inputs = _inputs()
    with torch.no_grad():
        similarity = model(**inputs, return_loss=True).logits_per_image
    neg_text, neg_image = sample_hard_negatives(similarity, inputs["image_ids"], sample=False)
    rank0 = torch.arange(BATCH) < BATCH // 2
    # The check is only meaningful if some hardest negative lives on the other rank.
    assert ((neg_text >= BATCH // 2) == rank0).any() or ((neg_image >= BATCH // 2) == rank0).any()
    picked = []
    if queue:
        import modeling_mm.modeling_mm_pretraining as pretraining

        remap = pretraining._remap_picks
        monkeypatch.setattr(pretraining, "_remap_picks", lambda *a: picked.append(remap(*a)[0]) or remap(*a))
        inputs["itc_distillation"] = _distillation(model, inputs, slice(None))
    loss, reference = _step(model, inputs)
    if queue:  # images 0, 2, 4, 6 took queue entries 0-3 as their negative texts
        assert picked[0].tolist() == [0, 1, 2, 3]
    mp.spawn(_worker, args=(_free_port(), head, fusion, str(tmp_path), queue), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["loss"], loss, atol=1e-5, rtol=1e-5)
        for got, want in zip(result["grads"], reference):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
