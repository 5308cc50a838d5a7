"""recon.train.loop: steps, log, checkpoints, exact resume, signals, bad checkpoints."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from recon.errors import InputError
from recon.io.run import RunDir
from recon.train import CHECKPOINT_FORMAT, Interrupted, Trainer, read_checkpoint, train


class Toy:
    """A noisy SGD fit of a vector: draws from torch's global generator (like densification
    noise) and from its own numpy generator (like the view order), so exact resume needs both."""

    def __init__(self, seed: int = 0, state: dict | None = None, stop_at: int | None = None):
        self.w = torch.zeros(4)
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self.history: list[dict] = []
        self.stop_at = stop_at
        if state is not None:
            self.load_state_dict(state)

    def train_step(self) -> dict:
        target = torch.as_tensor(self.rng.normal(size=4), dtype=torch.float32)
        noise = 0.1 * torch.randn(4)
        loss = float(((self.w - target) ** 2).mean())
        self.w = self.w - 0.1 * (self.w - target) + noise
        self.step += 1
        if self.stop_at is not None and self.step == self.stop_at:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during this step
        return {"loss": loss}

    def state_dict(self) -> dict:
        return {"w": self.w.clone(), "rng": self.rng.bit_generator.state, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.w = state["w"].clone()
        self.rng.bit_generator.state = state["rng"]
        self.step = int(state["step"])


def test_toy_is_a_trainer():
    assert isinstance(Toy(), Trainer)


def test_runs_to_n_steps_logs_and_checkpoints(tmp_path):
    run = RunDir(tmp_path / "run")
    seen = []
    torch.manual_seed(0)
    seconds = train(Toy(), 25, run=run, checkpoint_every=10, log_every=4, progress=lambda s, n, r: seen.append((s, n, r["loss"])))
    assert seconds > 0 and [s for s, _, _ in seen] == list(range(1, 26)) and {n for _, n, _ in seen} == {25}
    assert [r["step"] for r in run.read_log()] == [4, 8, 12, 16, 20, 24, 25]  # every 4th and the last
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["ckpt_0000020.pt", "ckpt_0000025.pt"]  # newest two
    ckpt = read_checkpoint(run)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["step"] == 25 and ckpt["elapsed_s"] >= 0


def test_resume_from_a_checkpoint_is_bit_identical(tmp_path):
    torch.manual_seed(1)
    whole = Toy(seed=5)
    train(whole, 30)
    run = RunDir(tmp_path / "cut")
    torch.manual_seed(1)
    train(Toy(seed=5), 12, run=run, checkpoint_every=12)
    torch.manual_seed(123)  # the global state is restored from the checkpoint, not left as is
    ckpt = read_checkpoint(run)
    resumed = Toy(seed=5, state=ckpt["trainer"])
    train(resumed, 30, run=run, resumed=ckpt)
    assert torch.equal(whole.w, resumed.w)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history][12:]


def test_resumed_must_match_the_trainer_step(tmp_path):
    run = RunDir(tmp_path / "r")
    train(Toy(), 5, run=run)
    with pytest.raises(ValueError, match="step 5"):
        train(Toy(), 10, run=run, resumed=read_checkpoint(run))


def test_sigint_saves_a_checkpoint_and_raises_interrupted(tmp_path):
    run = RunDir(tmp_path / "run")
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # not always the default: a
    with pytest.raises(Interrupted) as err:  # library an earlier test loaded may have replaced it
        train(Toy(stop_at=7), 50, run=run, checkpoint_every=100)
    assert err.value.step == 7 and err.value.signal_name == "SIGINT"
    assert read_checkpoint(run)["step"] == 7  # the step that finished, not a half-done one
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored


def test_checkpoints_that_cannot_be_loaded_are_input_errors(tmp_path):
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    bad = run.checkpoint_path(3)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable recon checkpoint"):
        read_checkpoint(run)
    torch.save({"step": 3, "model": {}}, bad)  # an older recon's layout
    with pytest.raises(InputError, match="written by another recon version"):
        read_checkpoint(run)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": CHECKPOINT_FORMAT, "x": Evil()}, bad)
    with pytest.raises(InputError, match="not a readable recon checkpoint"):  # weights_only refuses code
        read_checkpoint(run)
    assert read_checkpoint(RunDir(tmp_path / "empty")) is None


def test_negative_steps_refused():
    with pytest.raises(ValueError, match="n_steps"):
        train(Toy(), -1)
