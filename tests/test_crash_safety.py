"""Crash safety: a run killed while writing a checkpoint resumes with `--resume_from_checkpoint auto` from the last
*complete* checkpoint (the one carrying `checkpoint_complete.json`), never from the partial one, and finishes; the
losses logged before that checkpoint are kept.

Faults are injected two ways: deterministically, by turning a finished `checkpoint-8` into what a kill at various
points of its write leaves behind; and for real, by `kill -9` of `mm pretrain` at a random moment after
a checkpoint folder appears.
"""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import time

import pytest
from pretrain_tester import (
    pretrain_command,
    save_tiny_text_tower,
    step_losses,
    subprocess_env,
    tiny_pretrain_args,
)
from safetensors.torch import load_file

from training.trainer import (
    COMPLETE_MARKER,
    latest_complete_checkpoint,
    resolve_resume,
)


def _truncate(path: str, keep: float = 0.5) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def _drop_marker(folder: str) -> None:
    os.remove(os.path.join(folder, COMPLETE_MARKER))


def _empty(folder: str) -> None:
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))


# What a kill at different moments of writing checkpoint-8 leaves behind (Trainer writes the model, then optimizer,
# scheduler, RNG and trainer state; the callback then fsyncs everything and renames the marker into place).
PARTIAL_WRITES = {
    "folder-just-created": lambda c: _empty(c),
    "weights-half-written": lambda c: (_drop_marker(c), _truncate(os.path.join(c, "model.safetensors"))),
    "optimizer-half-written": lambda c: (
        _drop_marker(c),
        _truncate(os.path.join(c, "optimizer.pt")),
        os.remove(os.path.join(c, "scheduler.pt")),
        os.remove(os.path.join(c, "rng_state.pth")),
        os.remove(os.path.join(c, "trainer_state.json")),
    ),
    "trainer-state-missing": lambda c: (_drop_marker(c), os.remove(os.path.join(c, "trainer_state.json"))),
    "marker-not-yet-renamed": lambda c: os.replace(
        os.path.join(c, COMPLETE_MARKER), os.path.join(c, COMPLETE_MARKER + ".tmp")
    ),
}


@pytest.fixture(scope="module")
def text_tower(tmp_path_factory) -> str:
    return save_tiny_text_tower(str(tmp_path_factory.mktemp("tower")))


@pytest.fixture(scope="module")
def complete_run(text_tower, tmp_path_factory) -> str:
    """An 8-step run with complete checkpoints 4 and 8."""
    from run_scripts import pretrain

    output_dir = str(tmp_path_factory.mktemp("complete") / "run")
    pretrain.main(tiny_pretrain_args(text_tower, output_dir, lr_scheduler_type="constant"))
    for step in (4, 8):
        assert os.path.isfile(os.path.join(output_dir, f"checkpoint-{step}", COMPLETE_MARKER))
    return output_dir


def _copy_run(source: str, tmp_path) -> str:
    target = str(tmp_path / "run")
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("fault", sorted(PARTIAL_WRITES))
def test_auto_resume_skips_partial_checkpoint(fault, complete_run, tmp_path, caplog):
    output_dir = _copy_run(complete_run, tmp_path)
    partial = os.path.join(output_dir, "checkpoint-8")
    PARTIAL_WRITES[fault](partial)
    with caplog.at_level(logging.WARNING, logger="training.trainer"):
        assert latest_complete_checkpoint(output_dir) == os.path.join(output_dir, "checkpoint-4")
        assert resolve_resume("auto", output_dir) == os.path.join(output_dir, "checkpoint-4")
    assert "Skipping incomplete checkpoint" in caplog.text and "checkpoint-8" in caplog.text
    # Naming the partial checkpoint explicitly is refused, with the reason and the way out.
    with pytest.raises(SystemExit, match=rf"checkpoint-8.*{COMPLETE_MARKER}.*--resume_from_checkpoint auto"):
        resolve_resume(partial, output_dir)


def test_auto_resume_after_truncated_checkpoint_finishes_the_run(complete_run, text_tower, tmp_path):
    """The brief's scenario: checkpoint-8's marker deleted and its weights truncated, as a kill mid-write leaves it."""
    from run_scripts import pretrain

    output_dir = _copy_run(complete_run, tmp_path)
    partial = os.path.join(output_dir, "checkpoint-8")
    PARTIAL_WRITES["weights-half-written"](partial)
    os.remove(os.path.join(output_dir, "trainer_state.json"))  # the final state of the run that "crashed"
    pretrain.main(
        tiny_pretrain_args(text_tower, output_dir, lr_scheduler_type="constant", resume_from_checkpoint="auto")
    )
    before = step_losses(os.path.join(complete_run, "checkpoint-4", "trainer_state.json"))
    after = step_losses(os.path.join(output_dir, "trainer_state.json"))
    assert sorted(after) == list(range(1, 9))
    assert {s: after[s] for s in before} == before  # the history up to the resumed checkpoint is kept
    # The rewritten checkpoint-8 is complete and its weights load.
    assert os.path.isfile(os.path.join(partial, COMPLETE_MARKER))
    assert load_file(os.path.join(partial, "model.safetensors"))
    with open(os.path.join(partial, "trainer_state.json"), encoding="utf-8") as f:
        assert json.load(f)["global_step"] == 8


@pytest.mark.parametrize("save_total_limit", [2, 1])
def test_rotation_never_deletes_the_last_complete_checkpoint(save_total_limit, text_tower, tmp_path, monkeypatch):
    """Whenever Trainer deletes an old checkpoint (`save_total_limit`), another complete one must remain: a kill
    right after the deletion must still leave something to resume from."""
    from run_scripts import pretrain

    output_dir = str(tmp_path / "run")
    unsafe_deletions = []
    real_rmtree = shutil.rmtree

    def watched_rmtree(path, *args, **kwargs):
        path = os.fspath(path)
        if os.path.basename(path).startswith("checkpoint-") and os.path.dirname(os.path.abspath(path)) == output_dir:
            others = [
                name for name in os.listdir(output_dir)
                if name.startswith("checkpoint-") and os.path.join(output_dir, name) != os.path.abspath(path)
                and os.path.isfile(os.path.join(output_dir, name, COMPLETE_MARKER))
            ]
            if not others:
                unsafe_deletions.append(f"{os.path.basename(path)} deleted while {sorted(os.listdir(output_dir))} "
                                        "held no other complete checkpoint")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", watched_rmtree)
    pretrain.main(
        tiny_pretrain_args(text_tower, output_dir, max_steps=12, save_total_limit=save_total_limit,
                           lr_scheduler_type="constant")
    )
    checkpoints = sorted(n for n in os.listdir(output_dir) if n.startswith("checkpoint-"))
    assert len(checkpoints) == save_total_limit
    assert not unsafe_deletions, unsafe_deletions


@pytest.mark.slow
def test_kill_9_while_saving_then_resume_auto(text_tower, tmp_path):
    """A real `kill -9` of `pretrain.py` at a random moment (0-20 ms) after the `checkpoint-8` folder appears."""
    from run_scripts import pretrain

    output_dir = str(tmp_path / "run")
    args = tiny_pretrain_args(text_tower, output_dir, max_steps=16, lr_scheduler_type="constant")
    delay = random.Random().uniform(0.0, 0.02)
    victim = os.path.join(output_dir, "checkpoint-8")
    with open(tmp_path / "killed_run.log", "w") as log:
        process = subprocess.Popen(
            pretrain_command(args), env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
        )
        try:
            deadline = time.monotonic() + 600
            while not os.path.isdir(victim):
                assert process.poll() is None, (tmp_path / "killed_run.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "checkpoint-8 never appeared"
                time.sleep(0.0005)
            time.sleep(delay)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    landed_mid_write = not os.path.isfile(os.path.join(victim, COMPLETE_MARKER))
    resumed_from = latest_complete_checkpoint(output_dir)
    expected = "checkpoint-4" if landed_mid_write else "checkpoint-8"
    assert resumed_from == os.path.join(output_dir, expected), f"delay {delay:.4f}s, files {os.listdir(victim)}"
    history = step_losses(os.path.join(resumed_from, "trainer_state.json"))

    pretrain.main(args[:] + ["--resume_from_checkpoint", "auto"])
    final = step_losses(os.path.join(output_dir, "trainer_state.json"))
    assert sorted(final) == list(range(1, 17))
    assert {s: final[s] for s in history} == history
    # pretrain.py keeps the last two checkpoints (save_total_limit=2): both complete and loadable.
    assert sorted(n for n in os.listdir(output_dir) if n.startswith("checkpoint-")) == ["checkpoint-12", "checkpoint-16"]
    for step in (12, 16):
        folder = os.path.join(output_dir, f"checkpoint-{step}")
        assert os.path.isfile(os.path.join(folder, COMPLETE_MARKER)), step
        assert load_file(os.path.join(folder, "model.safetensors"))
