"""`MMTesterMixin`: the checks every MM model class must pass, run for every (class, fusion) pair that exists.

transformers' own common tests (tests/transformers_common/) check the API conventions; these check what our models
promise on top: outputs survive save/load, eager and sdpa attention agree, gradient checkpointing changes nothing,
a padded row gives the same result alone as in its batch, evaluation is deterministic, a `Trainer` step trains, a
LoRA wrap trains only its adapters, and `return_dict` / `output_*` (argument or config) behave as in transformers.
"""

import pytest
import torch
from torch import nn

from modeling_mm import (
    MMForConditionalGeneration,
    MMForImageTextClassification,
    MMForImageTextRetrieval,
    MMForPreTraining,
    MMForVisualQuestionAnswering,
    MMModel,
)
from mm_tester import FUSIONS, MMModelTester


NUM_LABELS = 5
CLASSES = (
    MMModel,
    MMForPreTraining,
    MMForVisualQuestionAnswering,
    MMForImageTextClassification,
    MMForImageTextRetrieval,
    MMForConditionalGeneration,
)
# Every pair that exists: captioning needs a vision tower to cross-attend to, which early fusion does not have.
ALL_FUSIONS = (*FUSIONS, "coattention")
PAIRS = [(cls, fusion) for cls in CLASSES for fusion in ALL_FUSIONS
         if not (cls is MMForConditionalGeneration and fusion == "early")]

# 16px images in 4px patches: the same code paths as larger inputs, fast on a shared CPU.
tester = MMModelTester(image_size=16, patch_size=4)


def _tensors(output) -> dict[str, torch.Tensor]:
    """Every tensor of an output, nested tower outputs and tuples of per-layer states included, by dotted name."""
    found = {}

    def visit(name: str, value) -> None:
        if torch.is_tensor(value):
            found[name] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(f"{name}.{key}" if name else key, item)
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                visit(f"{name}.{i}", item)

    visit("", output)
    return found


class MMTesterMixin:
    """Shared checks; a test class sets `model_class` and `fusion` (see `tests/test_mm_common.py`)."""

    model_class: type
    fusion: str

    # -- building -----------------------------------------------------------------------------------------------

    def get_config(self, **kwargs):
        return tester.get_config(self.fusion, num_labels=NUM_LABELS, **kwargs)

    def make_model(self, seed: int = 0, **config_kwargs) -> nn.Module:
        torch.manual_seed(seed)
        return self.model_class(self.get_config(**config_kwargs))

    def inputs(self, training: bool = False) -> dict[str, torch.Tensor]:
        """A fixed batch of 3 pairs (row 1 padded) with what the class trains on."""
        cls = self.model_class
        if cls is MMForPreTraining:
            return tester.get_pretraining_inputs()
        inputs = tester.get_inputs()
        if cls in (MMForVisualQuestionAnswering, MMForImageTextClassification):
            inputs["labels"] = torch.tensor([0, 3, 4])
        elif cls is MMForConditionalGeneration:
            inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        elif cls is MMForImageTextRetrieval:
            inputs["image_ids"] = torch.arange(tester.batch_size)
            inputs["return_loss"] = True
        elif cls is MMModel and self.fusion != "early":
            inputs["return_loss"] = True
        return inputs

    def has_loss(self) -> bool:
        return not (self.model_class is MMModel and self.fusion == "early")

    def loss_of(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        out = model(**inputs)
        if out.get("loss") is not None:
            return out.loss
        return out.last_hidden_state.pow(2).mean()  # early MMModel: no objective of its own; any scalar of the output

    def row_outputs(self, output, length: int) -> dict[str, torch.Tensor]:
        """The outputs that belong to one row, cut to the row's `length` real tokens where they are per token."""
        cls = self.model_class
        if cls is MMForPreTraining:
            return {"hidden_states[-1]": output.hidden_states[-1][:, :length]}
        if cls is MMForConditionalGeneration:
            return {"logits": output.logits[:, :length]}
        if cls in (MMForVisualQuestionAnswering, MMForImageTextClassification):
            return {"logits": output.logits}
        keys = ("text_embeds", "image_embeds", "pooler_output", "itm_logits")
        rows = {key: output[key] for key in keys if output.get(key) is not None}
        if cls is MMModel and output.get("last_hidden_state") is not None:
            rows["last_hidden_state"] = output.last_hidden_state[:, :length]
        return rows

    # -- the checks ------------------------------------------------------------------------------------------------

    def test_save_load_round_trip(self, tmp_path):
        model = self.make_model().eval()
        inputs = self.inputs()
        model.save_pretrained(tmp_path)
        reloaded = self.model_class.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            a, b = _tensors(model(**inputs)), _tensors(reloaded(**inputs))
        assert a.keys() == b.keys() and a
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)

    def test_eager_matches_sdpa(self):
        torch.manual_seed(0)
        eager = self.model_class._from_config(self.get_config(), attn_implementation="eager").eval()
        sdpa = self.model_class._from_config(self.get_config(), attn_implementation="sdpa").eval()
        sdpa.load_state_dict(eager.state_dict())
        assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
        inputs = self.inputs()
        with torch.no_grad():
            a = _tensors(eager(**inputs, output_hidden_states=True))
            b = _tensors(sdpa(**inputs, output_hidden_states=True))
        assert a.keys() == b.keys() and any("hidden_states" in key for key in a)
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)

    def test_gradient_checkpointing_equivalence(self):
        reference = self.make_model().train()
        checkpointed = self.make_model().train()
        checkpointed.load_state_dict(reference.state_dict())
        checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        assert checkpointed.is_activation_checkpointing
        inputs = self.inputs()
        results = []
        for model in (reference, checkpointed):
            torch.manual_seed(1)  # the same ITM negatives in both runs
            loss = self.loss_of(model, inputs)
            loss.backward()
            results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
        torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=0)
        assert results[0][1].keys() == results[1][1].keys() and len(results[0][1]) > 5
        for name, grad in results[0][1].items():
            torch.testing.assert_close(grad, results[1][1][name], atol=1e-5, rtol=1e-4, msg=name)

    def test_batching_equivalence(self):
        """Row 1 (padded) alone, trimmed to its real length, gives what it gives inside the batch."""
        model = self.make_model().eval()
        inputs = self.inputs()
        length = int(inputs["attention_mask"][1].sum())
        alone = {}
        for key, value in inputs.items():
            if not torch.is_tensor(value):
                continue
            value = value[1:2]
            per_token = key in ("input_ids", "attention_mask", "labels", "mlm_input_ids", "mlm_labels")
            alone[key] = value[:, :length] if per_token and value.ndim == 2 else value
        kwargs = {"output_hidden_states": True}
        with torch.no_grad():
            batched = self.row_outputs(model(**inputs, **kwargs), length)
            single = self.row_outputs(model(**alone, **kwargs), length)
        assert batched and batched.keys() == single.keys()
        for key in batched:
            torch.testing.assert_close(single[key][0], batched[key][1], atol=1e-4, rtol=1e-4, msg=key)

    def test_every_parameter_trains(self):
        """A head builds only what its loss uses: after one backward every parameter has a gradient (so DDP needs no
        `find_unused_parameters`, and no memory holds weights nothing trains)."""
        if self.model_class is MMModel:
            pytest.skip("The bare MMModel's own loss is ITC; its fusion layers are there for the heads that train them.")
        model = self.make_model(initializer_range=0.2).train()
        self.loss_of(model, self.inputs()).backward()
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, unused

    def test_determinism_in_eval_mode(self):
        model = self.make_model().eval()
        inputs = self.inputs()
        with torch.no_grad():
            torch.manual_seed(0)
            a = _tensors(model(**inputs))
            torch.manual_seed(123)  # a different global RNG state must not matter in eval mode
            b = _tensors(model(**inputs))
        assert a.keys() == b.keys() and a
        for key in a:
            assert torch.equal(a[key], b[key]), key

    def test_return_dict_false_and_config_output_flags(self):
        model = self.make_model().eval()
        inputs = self.inputs()
        with torch.no_grad():
            as_dict = model(**inputs)
            as_tuple = model(**inputs, return_dict=False)
        assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict)
        config = self.get_config(output_hidden_states=True, output_attentions=True)
        config.vision_config.output_hidden_states = config.text_config.output_hidden_states = True
        config.vision_config.output_attentions = config.text_config.output_attentions = True
        torch.manual_seed(0)
        flagged = self.model_class._from_config(config, attn_implementation="eager").eval()
        with torch.no_grad():
            out = flagged(**inputs)
        streams = [out] + [out[k] for k in ("text_model_output", "vision_model_output", "image_outputs") if out.get(k)]
        assert any(s.get("hidden_states") is not None for s in streams), "config.output_hidden_states was ignored"
        assert any(s.get("attentions") is not None for s in streams), "config.output_attentions was ignored"

    def test_trainer_step(self, tmp_path):
        if not self.has_loss():
            pytest.skip("An early-fusion MMModel has no training objective of its own: its heads train it.")
        from transformers import Trainer, TrainingArguments

        model = self.make_model(initializer_range=0.2)
        inputs = self.inputs()
        rows = [{k: v[i] for k, v in inputs.items() if torch.is_tensor(v)} for i in range(tester.batch_size)]
        extra = {k: v for k, v in inputs.items() if not torch.is_tensor(v)}

        def collate(batch: list[dict]) -> dict:
            return {**{k: torch.stack([row[k] for row in batch]) for k in batch[0]}, **extra}

        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        args = TrainingArguments(
            output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=3, learning_rate=1e-3,
            report_to=[], save_strategy="no", remove_unused_columns=False, use_cpu=True, logging_steps=1,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
        result = trainer.train()
        assert torch.isfinite(torch.tensor(result.training_loss))
        changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
        assert changed, "a Trainer step changed no parameter"

    def test_lora_wrap_trains_only_adapters(self):
        if not self.has_loss():
            pytest.skip("An early-fusion MMModel has no training objective of its own: its heads train it.")
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(self.make_model(initializer_range=0.2), LoraConfig(r=4, lora_alpha=8))
        inputs = self.inputs()
        model.train()
        self.loss_of(model, inputs).backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert with_grad, "no adapter received a gradient"
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert with_grad <= trainable
        assert all("lora_" in n or "modules_to_save" in n for n in with_grad), sorted(with_grad)[:5]
