"""Numerics: no NaN or Inf in outputs, losses or gradients for every fusion style, attention kernel and the
pretraining loss, under inputs that stress the arithmetic: a row that is all padding, the ITC temperature pushed to
either extreme, reduced precision (bf16 / fp16 autocast, bf16 weights) and degenerate batches."""

import pytest
import torch
from mm_tester import FUSIONS, MMModelTester

from modeling_mm import (
    FUSION_OBJECTIVES,
    MMForConditionalGeneration,
    MMForPreTraining,
    MMForVisualQuestionAnswering,
    MMModel,
)

tester = MMModelTester(num_layers=1, image_size=8, patch_size=2)
KERNELS = ("eager", "sdpa")
PADDED_ROW = 2  # its attention_mask is all zeros


def _model(cls, fusion: str, attn: str = "sdpa", **kwargs):
    torch.manual_seed(0)
    if cls is MMForPreTraining:
        kwargs.setdefault("objectives", list(FUSION_OBJECTIVES[fusion]))
        kwargs.setdefault("image_mask_ratio", 0.5 if fusion != "early" else 0.0)
    return cls._from_config(tester.get_config(fusion, **kwargs), attn_implementation=attn)


def _padded(inputs: dict) -> dict:
    inputs["attention_mask"][PADDED_ROW] = 0
    if "mlm_labels" in inputs:
        inputs["mlm_labels"][PADDED_ROW] = -100  # the collator never selects padding
    return inputs


def _assert_finite(output, where: str) -> None:
    for key, value in output.items():
        if torch.is_tensor(value) and value.is_floating_point():
            assert torch.isfinite(value).all(), f"{where}: {key} has NaN/Inf"


def _assert_finite_grads(model, where: str) -> None:
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{where}: non-finite gradients in {bad[:5]}"
    assert any(p.grad is not None for p in model.parameters()), f"{where}: no gradient reached the model"


def _train_step(model, inputs: dict, where: str) -> torch.Tensor:
    model.train()
    model.zero_grad()
    output = model(**inputs)
    _assert_finite(output, where)
    output.loss.backward()
    _assert_finite_grads(model, where)
    return output.loss.detach()


# ----------------------------------------------------------------------------------------------------------------------
# A row that is all padding
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", KERNELS)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_all_padding_row_stays_finite(fusion, attn):
    model = _model(MMModel, fusion, attn).eval()
    inputs = _padded(tester.get_inputs())
    with torch.no_grad():
        output = model(**inputs, return_loss=fusion != "early")
    _assert_finite(output, f"MMModel {fusion}/{attn}")
    # The other rows do not notice the padded one.
    keep = [i for i in range(tester.batch_size) if i != PADDED_ROW]
    with torch.no_grad():
        alone = model(**{k: v[keep] for k, v in inputs.items()})
    key = "last_hidden_state" if fusion != "late" else "text_embeds"
    torch.testing.assert_close(output[key][keep], alone[key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", KERNELS)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_pretraining_loss_with_all_padding_row(fusion, attn):
    model = _model(MMForPreTraining, fusion, attn)
    loss = _train_step(model, _padded(tester.get_pretraining_inputs()), f"pretraining {fusion}/{attn}")
    assert loss > 0


# ----------------------------------------------------------------------------------------------------------------------
# Extreme ITC temperature
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_scale", [100.0, -100.0])
@pytest.mark.parametrize("fusion", ["late", "hybrid"])
def test_extreme_logit_scale(fusion, log_scale):
    """`logit_scale` is a log temperature: +100 (exp = 2.7e43, clamped to ln 100) and -100 (exp = 3.7e-44, a float32
    denormal) must both give finite logits, losses and gradients."""
    model = _model(MMForPreTraining, fusion)
    with torch.no_grad():
        model.mm.logit_scale.fill_(log_scale)
    inputs = _padded(tester.get_pretraining_inputs())
    _train_step(model, inputs, f"pretraining {fusion}, logit_scale={log_scale}")
    model.eval()
    with torch.no_grad():
        output = model.mm(**{k: inputs[k] for k in ("input_ids", "pixel_values", "attention_mask")}, return_loss=True)
    _assert_finite(output, f"MMModel {fusion}, logit_scale={log_scale}")
    bound = torch.tensor(model.config.logit_scale_max).exp() + 1e-3
    assert output.logits_per_image.abs().max() <= bound  # the clamp holds: |cos| <= 1 times at most 100


# ----------------------------------------------------------------------------------------------------------------------
# Reduced precision
# ----------------------------------------------------------------------------------------------------------------------


def _cpu_autocast_supported(dtype: torch.dtype) -> str | None:
    """None when CPU autocast to `dtype` runs a linear layer in `dtype`; else the reason it does not."""
    try:
        with torch.autocast("cpu", dtype=dtype):
            out = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    except (RuntimeError, NotImplementedError) as err:
        return f"CPU autocast to {dtype} is not supported by torch {torch.__version__}: {err}"
    if out.dtype != dtype:
        return f"CPU autocast to {dtype} is a no-op in torch {torch.__version__} (linear returned {out.dtype})"
    return None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_autocast_pretraining_is_finite(fusion, dtype):
    reason = _cpu_autocast_supported(dtype)
    if reason:
        pytest.skip(reason)
    model = _model(MMForPreTraining, fusion)
    inputs = _padded(tester.get_pretraining_inputs())
    with torch.autocast("cpu", dtype=dtype):
        model.train()
        output = model(**inputs)
    _assert_finite(output, f"{fusion} autocast {dtype}")
    assert output.loss.dtype == torch.float32  # every loss is computed in float32
    output.loss.backward()
    _assert_finite_grads(model, f"{fusion} autocast {dtype}")
    # Reduced precision changes the loss only a little.
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)  # the same ITM negatives in both passes
        with torch.autocast("cpu", dtype=dtype):
            low = model(**inputs).loss
        torch.manual_seed(0)
        full = model(**inputs).loss
    assert abs(float(low) - float(full)) < 0.05 * float(full)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_bf16_weights_forward_is_finite(fusion):
    model = _model(MMModel, fusion).to(torch.bfloat16).eval()
    inputs = _padded(tester.get_inputs())
    with torch.no_grad():
        output = model(**inputs, return_loss=fusion != "early")
    _assert_finite(output, f"{fusion} bf16 weights")
    assert output.pooler_output is None or output.pooler_output.dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------------------------
# Degenerate batches
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", FUSIONS)
def test_degenerate_pretraining_batches(fusion):
    model = _model(MMForPreTraining, fusion)
    # One pair: ITC has no negatives, ITM none either.
    single = {k: v[:1] for k, v in tester.get_pretraining_inputs().items()}
    _train_step(model, single, f"{fusion} batch of one")
    # Every row from the same image: ITC's targets spread over all of them, ITM has no valid negative.
    same = tester.get_pretraining_inputs()
    same["image_ids"] = torch.zeros_like(same["image_ids"])
    _train_step(model, same, f"{fusion} one image id")
    # No token selected for MLM (possible for very short texts): its loss is zero, not NaN.
    nothing_masked = tester.get_pretraining_inputs()
    nothing_masked["mlm_labels"] = torch.full_like(nothing_masked["mlm_labels"], -100)
    nothing_masked["mlm_input_ids"] = nothing_masked["input_ids"].clone()
    output_loss = _train_step(model, nothing_masked, f"{fusion} nothing masked")
    assert torch.isfinite(output_loss)


def test_heads_with_degenerate_labels():
    captioner = _model(MMForConditionalGeneration, "hybrid")
    inputs = tester.get_inputs()
    output = captioner(**inputs, labels=torch.full_like(inputs["input_ids"], -100))  # nothing to predict
    assert torch.isfinite(output.loss) and float(output.loss) == 0.0
    vqa = _model(MMForVisualQuestionAnswering, "late", num_labels=4)
    for labels in (torch.zeros(3, 4), torch.ones(3, 4)):  # soft scores at both ends
        _train_step(vqa, dict(inputs, labels=labels), "VQA soft scores")


def test_causal_lm_loss_is_the_mean_over_shifted_real_targets():
    from modeling_mm.losses import causal_lm_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[1, 3:] = -100
    labels[2, 1] = -100
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(causal_lm_loss(logits, labels), expected)
    assert float(causal_lm_loss(logits, torch.full_like(labels, -100))) == 0.0
