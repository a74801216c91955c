"""Distributed training on CPU with the engines the GPUs use: DDP and FSDP2 (torch's `fully_shard` through accelerate's
FSDP integration, see `training.distributed`) across 2 gloo processes, launched by `torchrun` (one node, and two
"nodes" on this machine). Each run is checked against one process holding the same global batch.

The file is also the worker those launches run (`python tests/test_distributed.py --out DIR ...`)."""

import argparse
import json
import os
import socket
import subprocess
import sys

import pytest
import torch


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GLOBAL_BATCH = 8
STEPS = 4
# Each worker writes its per-step losses here (rank 0) and a probe of its engine (every rank).
LOSSES_FILE = "losses.json"


# ----------------------------------------------------------------------------------------------------------------------
# Worker
# ----------------------------------------------------------------------------------------------------------------------


def _tiny_pretraining_model():
    from modeling_mm import MMForPreTraining
    from tests.mm_tester import MMModelTester

    torch.manual_seed(0)
    # ITC (features gathered over ranks), MLM and captioning LM over the hybrid model: fusion layers, both towers,
    # the decoder and the tied vocabulary projections all get sharded.
    config = MMModelTester().get_config("hybrid", objectives=["itc", "mlm", "lm"])
    return MMForPreTraining(config)


class _PairData(torch.utils.data.Dataset):
    """Fixed pretraining rows: every text is full length with exactly two masked tokens, so each rank's token-mean MLM
    and LM losses average to the one-process mean (equal token counts per row)."""

    def __init__(self, size: int = 64, seed: int = 0):
        from tests.mm_tester import MMModelTester

        tester = MMModelTester(batch_size=size)
        inputs = tester.get_inputs(seed=seed, padded=False)
        g = torch.Generator().manual_seed(seed + 1)
        masked = inputs["input_ids"].clone()
        labels = torch.full_like(masked, -100)
        for row in range(size):
            positions = torch.randperm(masked.shape[1] - 1, generator=g)[:2] + 1
            labels[row, positions] = masked[row, positions]
            masked[row, positions] = 3
        self.rows = dict(inputs, mlm_input_ids=masked, mlm_labels=labels, image_ids=torch.arange(size))

    def __len__(self) -> int:
        return self.rows["input_ids"].shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[i] for key, value in self.rows.items()}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--fsdp", default="")
    parser.add_argument("--state_dict_type", default="FULL_STATE_DICT")
    parser.add_argument("--save_steps", type=int, default=0)
    parser.add_argument("--resume_from_step", type=int, default=0, help="then resume its checkpoint in out/resumed")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--then_lora", action="store_true", help="then a LoRA run in out/lora")
    parser.add_argument("--push_check", action="store_true", help="push_to_hub (publish faked) after the first run")
    parser.add_argument("--then_full", action="store_true", help="then full state-dict checkpoints, resumed, in out/full")
    return parser.parse_args(argv)


def _train(opts: argparse.Namespace, out: str, resume: str | None = None, push: bool = False) -> None:
    """One training run of the tiny model (under torchrun, or in this process for the one-process reference); rank 0
    writes its per-step logs, every rank a probe of its engine and of the steps it trained."""
    from transformers import TrainerCallback, TrainingArguments

    from training import MMTrainer
    from training.trainer import _use_cpu_processes_under_launcher

    _use_cpu_processes_under_launcher()  # what `parse_args` of the run scripts does under torchrun
    world = int(os.environ.get("WORLD_SIZE", "1"))
    fsdp_config = None
    if opts.fsdp:
        with open(os.path.join(ROOT, "configs", "fsdp_config.json")) as f:
            fsdp_config = dict(json.load(f), state_dict_type=opts.state_dict_type)
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=GLOBAL_BATCH // world,
        max_steps=STEPS,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="steps" if opts.save_steps else "no",
        save_steps=opts.save_steps or 500,
        train_sampling_strategy="sequential",
        remove_unused_columns=False,
        label_names=[],
        report_to="none",
        ddp_backend="gloo" if world > 1 else None,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
        fsdp=opts.fsdp or None,
        fsdp_config=fsdp_config,
    )
    model = _tiny_pretraining_model()
    if opts.lora:
        from training.lora import apply_lora

        model = apply_lora(model, dropout=0.0)
    trained = []

    class _Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            trained.append(state.global_step)

    trainer = MMTrainer(model=model, args=args, train_dataset=_PairData(), callbacks=[_Steps()])
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is not None:
        # The accelerator state (and its FSDP plugin) lives as long as the process: set this run's checkpoint format.
        plugin.set_state_dict_type(opts.state_dict_type)
    trainer.train(resume_from_checkpoint=resume)
    from torch.distributed.fsdp import FSDPModule

    probe = {
        "world_size": args.world_size,
        "distributed_type": trainer.accelerator.distributed_type.value,
        "fsdp_units": sorted({type(m).__name__.removeprefix("FSDP") for m in trainer.model_wrapped.modules()
                              if isinstance(m, FSDPModule)}),
        "trained_steps": trained,
    }
    with open(os.path.join(out, f"probe{args.process_index}.json"), "w") as f:
        json.dump(probe, f)
    trainer.save_model(os.path.join(out, "final"))
    if push:
        # push_to_hub with the upload faked: what would be published is the folder it hands to `publish`.
        import publishing.hub

        def fake_publish(options, token=None) -> dict:
            with open(os.path.join(out, "pushed.json"), "w") as f:
                json.dump(sorted(os.listdir(options.checkpoint)), f)
            return {"commit": None}

        publishing.hub.publish = fake_publish
        trainer.hub_model_id = "mm-test/tiny"  # no repo is created
        trainer.push_to_hub()
    if trainer.is_world_process_zero():
        losses = {row["step"]: row for row in trainer.state.log_history if "loss" in row}
        with open(os.path.join(out, LOSSES_FILE), "w") as f:
            json.dump(losses, f)


def _worker(argv: list[str]) -> None:
    opts = _parse(argv)
    _train(opts, opts.out, push=opts.push_check)
    if opts.resume_from_step:
        # A second Trainer over a fresh model in the same processes, resuming the first run's checkpoint.
        _train(opts, os.path.join(opts.out, "resumed"), os.path.join(opts.out, f"checkpoint-{opts.resume_from_step}"))
    if opts.then_full:
        # Then full state-dict checkpoints (one gathered file) and a new Trainer resuming the step-2 one.
        full = argparse.Namespace(**{**vars(opts), "state_dict_type": "FULL_STATE_DICT", "save_steps": 2})
        _train(full, os.path.join(opts.out, "full"))
        _train(full, os.path.join(opts.out, "full", "resumed"), os.path.join(opts.out, "full", "checkpoint-2"))
    if opts.then_lora:
        # Then LoRA on the sharded model, with full state-dict checkpoints (one launch for all three runs).
        lora = argparse.Namespace(**{**vars(opts), "lora": True, "state_dict_type": "FULL_STATE_DICT", "save_steps": 4})
        _train(lora, os.path.join(opts.out, "lora"))


# ----------------------------------------------------------------------------------------------------------------------
# Launching
# ----------------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    return env


def _run(out, *worker_args: str, nproc: int = 1, nnodes: int = 1, timeout: int = 240) -> dict:
    """Runs the worker under `torchrun` (`nproc` processes), or as `nnodes` torchrun "nodes" of one process each that
    meet through the c10d rendezvous on 127.0.0.1; returns rank 0's per-step logs."""
    worker = [__file__, "--out", str(out), *worker_args]
    run = [sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1:
        commands = [[*run, "--nproc_per_node", str(nproc), "--master_port", str(_free_port()), *worker]]
    else:
        endpoint = f"127.0.0.1:{_free_port()}"
        commands = [
            [*run, "--nnodes", str(nnodes), "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
             endpoint, "--rdzv_id", "mm-test", "--node_rank", str(rank), *worker]
            for rank in range(nnodes)
        ]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in commands]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
    losses = _read_losses(out)
    losses["_log"] = "\n".join(outputs)
    return losses


def _probe(out, rank: int = 0) -> dict:
    with open(os.path.join(out, f"probe{rank}.json")) as f:
        return json.load(f)


def _assert_same_losses(got: dict, want: dict, steps) -> None:
    for step in steps:
        for key in ("loss", "itc_loss", "mlm_loss", "lm_loss"):
            assert got[step][key] == pytest.approx(want[step][key], rel=2e-4, abs=2e-4), (step, key, got[step], want[step])


def _read_losses(out) -> dict:
    with open(os.path.join(out, LOSSES_FILE)) as f:
        return {int(step): row for step, row in json.load(f).items()}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """The reference: one process holding the whole global batch of 8 (run here, without a launcher)."""
    out = tmp_path_factory.mktemp("single")
    _train(_parse(["--out", str(out)]), str(out))
    return _read_losses(out)


# ----------------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------------


def test_fsdp_fallback_to_ddp_is_detected_and_can_be_refused(monkeypatch, tmp_path):
    """accelerate's silent CPU fallback (FSDP arguments, no FSDP plugin, MULTI_CPU) is detected; MMTrainer then
    shards with FSDP2 and logs it (next test) or, with `cpu_fsdp=False`, refuses."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from transformers import TrainingArguments

    import training.distributed
    from training import MMTrainer
    from training.distributed import FSDPOnCPUError, fsdp_fallback_to_ddp

    args = SimpleNamespace(fsdp_plugin_args={"fsdp_version": 2})
    cpu = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=None), distributed_type=DistributedType.MULTI_CPU)
    gpu = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=object()), distributed_type=DistributedType.FSDP)
    assert fsdp_fallback_to_ddp(args, cpu)
    assert not fsdp_fallback_to_ddp(args, gpu)
    assert not fsdp_fallback_to_ddp(SimpleNamespace(fsdp_plugin_args=None), cpu)

    monkeypatch.setattr(training.distributed, "fsdp_fallback_to_ddp", lambda *_: True)
    plain = TrainingArguments(output_dir=str(tmp_path), report_to="none", remove_unused_columns=False)
    with pytest.raises(FSDPOnCPUError, match="plain DDP"):
        MMTrainer(model=_tiny_pretraining_model(), args=plain, cpu_fsdp=False)


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory) -> tuple:
    """One launch of two torchrun "nodes" on this machine (`--nnodes 2 --nproc_per_node 1 --rdzv_backend c10d
    --rdzv_endpoint 127.0.0.1:PORT`, node ranks 0 and 1) running five FSDP2 trainings in turn: sharded checkpoints
    every 2 steps; a new Trainer resuming the step-2 checkpoint; the same two with full state-dict checkpoints; LoRA
    with full state-dict checkpoints."""
    out = tmp_path_factory.mktemp("fsdp")
    losses = _run(out, "--fsdp", "full_shard auto_wrap", "--state_dict_type", "SHARDED_STATE_DICT", "--save_steps", "2",
                  "--resume_from_step", "2", "--push_check", "--then_full", "--then_lora", nnodes=2, timeout=420)
    return out, losses


def test_shipped_configs_resolve_with_trainers_own_handling(monkeypatch, tmp_path):
    """configs/: both DeepSpeed files resolve every "auto" through Trainer's HfTrainerDeepSpeedConfig (checked
    statically: deepspeed is not installed here and accelerate disables it on CPU), the accelerate YAMLs parse with
    accelerate's own ClusterConfig, and fsdp_config.json lists exactly the model's `_no_split_modules` (MMTrainer
    wraps those a given model has: `wrap_only_present_classes`)."""
    from accelerate.commands.config.config_args import ClusterConfig
    from transformers import TrainingArguments

    from training.distributed import CONFIGS_DIR, resolve_deepspeed_config

    model = _tiny_pretraining_model()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4,
                             gradient_accumulation_steps=2, learning_rate=3e-4, weight_decay=0.02, warmup_steps=5)
    hidden = model.config.text_config.hidden_size
    for stage in (2, 3):
        config = resolve_deepspeed_config(os.path.join(CONFIGS_DIR, f"ds_zero{stage}.json"), args, model, 100)
        assert config["zero_optimization"]["stage"] == stage
        assert config["train_batch_size"] == 4 * 2 * args.world_size
        assert config["optimizer"]["params"]["lr"] == 3e-4
        assert config["scheduler"]["params"]["total_num_steps"] == 100
        assert config["zero_optimization"]["reduce_bucket_size"] == hidden * hidden
    with pytest.raises(ValueError, match="mismatch"):
        resolve_deepspeed_config({"train_micro_batch_size_per_gpu": 16}, args, model, 100)

    expected = {"accelerate_multi_gpu": ("MULTI_GPU", 1), "accelerate_fsdp": ("FSDP", 1),
                "accelerate_multi_node": ("MULTI_GPU", 2)}
    for name, (kind, machines) in expected.items():
        cluster = ClusterConfig.from_yaml_file(os.path.join(CONFIGS_DIR, f"{name}.yaml"))
        assert (cluster.distributed_type.value, cluster.num_machines) == (kind, machines), name
    # The shipped files wrap every layer class of the family: this model's, plus the co-attention layer that only
    # co-attention models have (MMTrainer keeps the classes a model contains).
    family = set(model._no_split_modules) | {"MMCoAttentionLayer"}
    fsdp_yaml = ClusterConfig.from_yaml_file(os.path.join(CONFIGS_DIR, "accelerate_fsdp.yaml")).fsdp_config
    assert set(fsdp_yaml["fsdp_transformer_layer_cls_to_wrap"].split(",")) == family

    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # TrainingArguments sets it from the config
    fsdp = TrainingArguments(output_dir=str(tmp_path), report_to="none", fsdp="full_shard auto_wrap",
                             fsdp_config=os.path.join(CONFIGS_DIR, "fsdp_config.json"))
    assert fsdp.fsdp_plugin_args["fsdp_version"] == 2
    assert set(fsdp.fsdp_plugin_args["transformer_cls_names_to_wrap"].split(",")) == family


def test_fsdp2_on_two_nodes_matches_one_process_and_resumes(one_process, fsdp_runs):
    """`--fsdp "full_shard auto_wrap"` with the shipped fsdp_config across two torchrun "nodes" on this machine
    (`--nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:PORT`, node ranks 0 and 1): FSDP2
    shards every MMLayer and embedding block, as on GPUs, and 2 processes x batch 4 train to the one-process losses of
    batch 8 (ITC's negatives span the global batch: its loss equals the one-process loss). The CPU switch is logged,
    never silent. Sharded checkpoints are written, and a new Trainer resuming the step-2 one trains steps 3-4 to the
    same losses; the final model loads with `from_pretrained` in one process."""
    from modeling_mm import MMForPreTraining

    out, losses = fsdp_runs
    for rank in (0, 1):
        probe = _probe(out, rank)
        assert probe["world_size"] == 2 and probe["distributed_type"] == "FSDP", probe
        assert {"MMLayer", "MMTextEmbeddings", "MMVisionEmbeddings"} <= set(probe["fsdp_units"]), probe
    assert "sharding with torch's FSDP2" in losses["_log"]
    _assert_same_losses(losses, one_process, range(1, STEPS + 1))
    assert {"optimizer_0", "pytorch_model_fsdp_0"} <= set(os.listdir(out / "checkpoint-2"))

    assert _probe(out / "resumed")["trained_steps"] == [3, 4]
    _assert_same_losses(_read_losses(out / "resumed"), one_process, range(3, STEPS + 1))

    assert not [name for name in os.listdir(out / "final") if name.startswith("_fsdp")]  # no copies of torch's FSDP code
    # push_to_hub under SHARDED_STATE_DICT publishes a gathered, loadable model, not a folder without weights.
    with open(out / "pushed.json") as f:
        assert "model.safetensors" in json.load(f)
    MMForPreTraining.from_pretrained(out)
    reloaded = MMForPreTraining.from_pretrained(out / "final")
    reference = _tiny_pretraining_model().state_dict()
    assert set(reloaded.state_dict()) == set(reference)
    assert any(not torch.equal(v, reference[k]) for k, v in reloaded.state_dict().items()), "initial weights saved"


def test_fsdp2_full_state_dict_checkpoints_resume_to_the_same_losses(one_process, fsdp_runs):
    """FULL_STATE_DICT: the checkpoint holds one gathered model file (not a folder of shards), and a new Trainer
    resuming it trains steps 3-4 to the one-process losses."""
    out = fsdp_runs[0] / "full"
    _assert_same_losses(_read_losses(out), one_process, range(1, STEPS + 1))
    checkpoint = out / "checkpoint-2"
    assert any(name.startswith("pytorch_model_fsdp") and not (checkpoint / name).is_dir()
               for name in os.listdir(checkpoint)), os.listdir(checkpoint)
    assert _probe(out / "resumed")["trained_steps"] == [3, 4]
    _assert_same_losses(_read_losses(out / "resumed"), one_process, range(3, STEPS + 1))


def test_ddp_on_two_nodes_matches_one_process(one_process, tmp_path):
    """The same two-node launch without --fsdp trains DDP over gloo to the one-process losses."""
    ddp = _run(tmp_path / "ddp", nnodes=2)
    assert _probe(tmp_path / "ddp", rank=1)["distributed_type"] == "MULTI_CPU"
    _assert_same_losses(ddp, one_process, range(1, STEPS + 1))


def test_lora_under_fsdp_trains_saves_full_checkpoints_and_merges(fsdp_runs):
    """peft LoRA on the FSDP2-sharded model (frozen base weights and trainable adapters in one unit) trains, writes
    FULL_STATE_DICT checkpoints, and the saved adapter merges into the base model."""
    from peft import PeftModel

    out = fsdp_runs[0] / "lora"
    losses = _read_losses(out)
    assert _probe(out)["distributed_type"] == "FSDP"
    assert all(torch.isfinite(torch.tensor(losses[step]["loss"])) for step in range(1, STEPS + 1))
    checkpoint = set(os.listdir(out / "checkpoint-4"))
    assert any(name.startswith("pytorch_model_fsdp") and not os.path.isdir(out / "checkpoint-4" / name)
               for name in checkpoint), checkpoint  # one full file, not a folder of shards
    assert any(name.startswith("optimizer") for name in checkpoint), checkpoint

    base = _tiny_pretraining_model()
    initial = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, out / "final").merge_and_unload()
    changed = [k for k, v in merged.state_dict().items() if k in initial and not torch.equal(v, initial[k])]
    assert any("q_proj" in k or "v_proj" in k for k in changed), changed


if __name__ == "__main__":
    _worker(sys.argv[1:])
