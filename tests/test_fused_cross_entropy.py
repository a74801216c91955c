"""The chunked fused projection + cross-entropy (`losses.fused_linear_cross_entropy`, `config.loss_chunk_size`): loss
and gradients are those of projecting every row and `token_cross_entropy`, for any chunk size, with ignored rows, none
scored, tied / frozen / missing weights, half precision and autocast; the (rows, V) logits are never saved for the
backward; the MLM and LM objectives and the captioning head give the same loss and gradients with the field set."""

import pytest
import torch
from torch import nn

from modeling_mm import MMConfig, MMForConditionalGeneration, MMForPreTraining
from modeling_mm.losses import fused_linear_cross_entropy, token_cross_entropy
from tests.mm_tester import MMModelTester


N, H, V = 37, 16, 101
CHUNKS = (1, 8, 37, 64)  # one row; 8 does not divide 37; exactly N; more than N


def _problem(dtype: torch.dtype, bias: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(V, generator=g, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, V, (N,), generator=g)
    targets[::4] = -100  # ignored rows
    return hidden, weight, b, targets


def _unfused(hidden, weight, bias, targets) -> torch.Tensor:
    """The reference in the inputs' own precision: all (N, V) logits, summed cross-entropy over the scored count."""
    logits = nn.functional.linear(hidden, weight, bias)
    total = nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    return total / (targets != -100).sum().clamp(min=1)


def _loss_and_grads(loss_fn, tensors, *args) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loss = loss_fn(*tensors, *args)
    wrt = [t for t in tensors if t is not None]
    return loss.detach(), list(torch.autograd.grad(2.5 * loss, wrt))  # 2.5: the backward scales by grad_output


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("bias", [True, False])
def test_loss_and_gradients_equal_the_unfused_path(chunk, dtype, atol, bias):
    hidden, weight, b, targets = _problem(dtype, bias)
    got, got_grads = _loss_and_grads(fused_linear_cross_entropy, (hidden, weight, b), targets, chunk)
    want, want_grads = _loss_and_grads(_unfused, (hidden, weight, b), targets)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == dtype and g.shape == w.shape
        torch.testing.assert_close(g, w, atol=atol, rtol=0)
    if dtype == torch.float32:  # the model's own loss function, too
        torch.testing.assert_close(got, token_cross_entropy(nn.functional.linear(hidden, weight, b), targets),
                                   atol=atol, rtol=0)


@pytest.mark.parametrize("rows", [0, 5])
def test_nothing_scored_gives_zero_loss_and_zero_gradients_like_token_cross_entropy(rows):
    hidden, weight, b = torch.randn(rows, H, requires_grad=True), torch.randn(V, H, requires_grad=True), None
    targets = torch.full((rows,), -100)
    loss = fused_linear_cross_entropy(hidden, weight, b, targets, 2)
    want = token_cross_entropy(hidden @ weight.t(), targets)
    assert loss.item() == want.item() == 0.0
    loss.backward()
    assert torch.equal(hidden.grad, torch.zeros_like(hidden)) and torch.equal(weight.grad, torch.zeros_like(weight))


def test_tied_weight_gets_the_gradient_of_both_uses():
    """A projection tied to the word embeddings: the shared parameter sums the embedding's and the loss's gradients."""
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        embeddings = nn.Embedding(V, H).double()
        ids = torch.randint(0, V, (N,))
        hidden = torch.tanh(embeddings(ids))  # (N, H), reads the same weight
        targets = torch.roll(ids, 1)
        if fused:
            loss = fused_linear_cross_entropy(hidden, embeddings.weight, None, targets, 8)
        else:
            loss = _unfused(hidden, embeddings.weight, None, targets)
        loss.backward()
        results.append(embeddings.weight.grad)
    torch.testing.assert_close(results[0], results[1], atol=1e-12, rtol=0)


def test_frozen_hidden_frozen_weight_and_no_grad():
    hidden, weight, b, targets = _problem(torch.float64)
    want, (_, want_w, want_b) = _loss_and_grads(_unfused, (hidden, weight, b), targets)
    # Frozen inputs: only the others get gradients (states of a frozen tower; a frozen or LoRA-adapted projection).
    loss = fused_linear_cross_entropy(hidden.detach(), weight, b, targets, 8)
    torch.testing.assert_close(torch.autograd.grad(2.5 * loss, [weight, b]), (want_w, want_b), atol=1e-12, rtol=0)
    want_h = torch.autograd.grad(2.5 * _unfused(hidden, weight.detach(), None, targets), [hidden])[0]
    loss = fused_linear_cross_entropy(hidden, weight.detach(), None, targets, 8)
    torch.testing.assert_close(torch.autograd.grad(2.5 * loss, [hidden])[0], want_h, atol=1e-12, rtol=0)
    # Evaluation: the loss alone, no graph.
    with torch.no_grad():
        loss = fused_linear_cross_entropy(hidden, weight, b, targets, 8)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, want, atol=1e-12, rtol=0)


def test_half_precision_inputs_and_autocast_compute_in_float32():
    hidden, weight, b, targets = _problem(torch.float32)
    want, want_grads = _loss_and_grads(_unfused, (hidden, weight, b), targets)
    # bf16 parameters and states: float32 loss, gradients back in bf16.
    half = [t.detach().bfloat16().requires_grad_() for t in (hidden, weight, b)]
    loss, grads = _loss_and_grads(fused_linear_cross_entropy, half, targets, 8)
    exact = _unfused(*[t.detach().float() for t in half], targets)
    assert loss.dtype == torch.float32 and all(g.dtype == torch.bfloat16 for g in grads)
    torch.testing.assert_close(loss, exact, atol=1e-5, rtol=0)  # the rounding of the inputs only
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g.float(), w, atol=0.05, rtol=0.05)
    # Autocast does not push the matmuls to bf16: float32 inputs give the float32 result.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = _loss_and_grads(fused_linear_cross_entropy, (hidden, weight, b), targets, 8)
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=0)
    for g, w in zip(grads, want_grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_no_tensor_of_rows_times_vocab_is_saved_for_backward():
    """What the backward keeps is the memory a training step holds until it runs: the unfused path keeps (N, V)
    log-probabilities, the fused one only the (N, H), (V, H) and (V,) gradients."""
    rows, vocab, width = 96, 3000, 8

    def saved_sizes(loss_fn) -> list[int]:
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(rows, width, generator=g, requires_grad=True)
        weight = torch.randn(vocab, width, generator=g, requires_grad=True)
        bias = torch.zeros(vocab, requires_grad=True)
        targets = torch.randint(0, vocab, (rows,), generator=g)
        sizes = []

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            sizes.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = loss_fn(hidden, weight, bias, targets)
        loss.backward()
        return sizes

    fused = saved_sizes(lambda *args: fused_linear_cross_entropy(*args, 16))
    unfused = saved_sizes(_unfused)
    assert max(unfused) >= rows * vocab
    assert fused and max(fused) <= vocab * width < rows * vocab
    assert sum(fused) < sum(unfused)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_chunk_rows_are_refused(bad):
    hidden, weight, b, targets = _problem(torch.float32)
    with pytest.raises(ValueError, match="chunk_rows must be a positive integer"):
        fused_linear_cross_entropy(hidden, weight, b, targets, bad)


# ----------------------------------------------------------------------------------------------------------------------
# The model: `config.loss_chunk_size`
# ----------------------------------------------------------------------------------------------------------------------

tester = MMModelTester()


def _run(model: nn.Module, inputs: dict, chunk: int | None) -> tuple[object, dict[str, torch.Tensor]]:
    model.config.loss_chunk_size = chunk
    out = model(**inputs)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out, grads


def _assert_same(got: tuple, want: tuple, keys: tuple[str, ...]) -> None:
    """Float64 models; the unfused token losses round through float32 (`token_cross_entropy`), hence 1e-6."""
    (out, grads), (ref, ref_grads) = got, want
    for key in keys:
        torch.testing.assert_close(out[key].double(), ref[key].double(), atol=1e-6, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("fusion, objectives", [("hybrid", ["itc", "mlm", "lm"]), ("early", ["mlm"])])
def test_pretraining_mlm_and_lm_losses_and_gradients_match_with_loss_chunk_size(fusion, objectives):
    torch.manual_seed(0)
    model = MMForPreTraining(tester.get_config(fusion, objectives=objectives)).double()
    inputs = tester.get_pretraining_inputs()
    inputs["pixel_values"] = inputs["pixel_values"].double()
    want = _run(model, inputs, None)
    keys = ("loss", *[f"{obj}_loss" for obj in objectives])
    for chunk in (2, 5, 1000):
        got = _run(model, inputs, chunk)
        _assert_same(got, want, keys)
        assert got[0].mlm_logits is None and got[0].lm_logits is None
    assert "mm.text_model.embeddings.word_embeddings.weight" in want[1]  # the tied MLM decoder trains
    assert want[0].mlm_logits is not None


def test_a_wrapped_projection_is_called_whole():
    """A vocabulary projection that is not a plain `nn.Linear` (as peft wraps one) is more than its weight: the loss
    is not fused, and the logits are returned as usual."""

    class Wrapped(nn.Module):
        def __init__(self, linear: nn.Linear):
            super().__init__()
            self.linear = linear

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return self.linear(hidden) + 1.0

    torch.manual_seed(0)
    model = MMForPreTraining(tester.get_config("early", objectives=["mlm"], loss_chunk_size=2))
    model.mlm_head.decoder = Wrapped(model.mlm_head.decoder)
    inputs = tester.get_pretraining_inputs()
    out = model(**inputs)
    assert out.mlm_logits is not None
    labels = inputs["mlm_labels"]
    torch.testing.assert_close(out.mlm_loss, token_cross_entropy(out.mlm_logits, labels[labels != -100]))


@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_captioning_loss_and_gradients_match_with_loss_chunk_size(fusion):
    torch.manual_seed(0)
    model = MMForConditionalGeneration(tester.get_config(fusion)).double()
    inputs = tester.get_inputs()
    inputs["pixel_values"] = inputs["pixel_values"].double()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    shifted = nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    for targets in ({"labels": labels}, {"shift_labels": shifted}):
        want = _run(model, {**inputs, **targets}, None)
        got = _run(model, {**inputs, **targets}, 4)
        _assert_same(got, want, ("loss",))
        assert got[0].logits is None and want[0].logits is not None
    # Without labels (generation) the logits are computed as ever.
    model.config.loss_chunk_size = 4
    with torch.no_grad():
        assert model(**inputs).logits.shape == (*inputs["input_ids"].shape, tester.vocab_size)


def test_config_field_saves_loads_and_is_validated(tmp_path):
    config = tester.get_config("hybrid", loss_chunk_size=512)
    config.save_pretrained(tmp_path)
    assert MMConfig.from_pretrained(tmp_path).loss_chunk_size == 512
    assert tester.get_config("hybrid").loss_chunk_size is None
    for bad in (0, -1, 2.5, True, "64"):
        with pytest.raises(ValueError, match="MMConfig.loss_chunk_size must be a positive integer or None"):
            tester.get_config("hybrid", loss_chunk_size=bad)


def test_pretrain_script_takes_the_chunk_size_and_trains_alike(tmp_path):
    """`mm pretrain --loss_chunk_size 4` (hybrid ITC + ITM + MLM): the saved config keeps it, and the logged losses
    are those of the unfused run (same seed and data; float32 rounding apart)."""
    from tests.pretrain_tester import save_tiny_text_tower, step_losses, tiny_pretrain_args

    from modeling_mm import MMConfig
    from run_scripts import pretrain

    tower = save_tiny_text_tower(str(tmp_path / "tower"))
    common = dict(max_steps=3, save_steps=3, lr_scheduler_type="constant")
    pretrain.main(tiny_pretrain_args(tower, str(tmp_path / "plain"), **common))
    pretrain.main(tiny_pretrain_args(tower, str(tmp_path / "fused"), loss_chunk_size=4, **common))
    assert MMConfig.from_pretrained(str(tmp_path / "fused")).loss_chunk_size == 4
    plain = step_losses(str(tmp_path / "plain" / "trainer_state.json"))
    fused = step_losses(str(tmp_path / "fused" / "trainer_state.json"))
    assert sorted(fused) == [1, 2, 3]
    assert fused == pytest.approx(plain, rel=1e-4)
