"""distill.train's settings arithmetic: the min_lr schedule, steps from epochs, when checkpoints
are written, and the one pad-id rule. Fast: no model is trained here."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from distill.io import InputError, pad_id
from distill.train import (
    EpochSampler,
    checkpoint_due,
    make_optimizers,
    resolve_steps,
    steps_of_epochs,
    train_settings,
)


def reference_lr(step: int, lr: float, min_lr: float, warmup: int, steps: int) -> float:
    """The schedule as DDK's paper states it, in float64: linear warmup to lr, then cosine
    decay from lr to min_lr at the last step."""
    if step < warmup:
        return lr * step / warmup
    progress = (step - warmup) / (steps - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize("min_lr", [0.0, 3e-6, 5e-5])
def test_cosine_decays_to_min_lr(min_lr):
    settings = train_settings({"lr": 1e-4, "min_lr": min_lr, "warmup_steps": 10, "steps": 50})
    model = torch.nn.Linear(2, 2)
    extra = [torch.nn.Parameter(torch.zeros(3))]
    optimizer, extra_optimizer, schedulers = make_optimizers(model, extra, settings)
    assert len(schedulers) == 2 and extra_optimizer is not None
    for step in range(51):  # step 50, the last, trains at min_lr
        for scheduler, opt in zip(schedulers, (optimizer, extra_optimizer), strict=True):
            expected = reference_lr(step, 1e-4, min_lr, 10, 50)
            assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15)
            opt.step()
            scheduler.step()


def test_min_lr_above_lr_is_refused_naming_both():
    with pytest.raises(InputError, match=r"train.min_lr 0.01 is above train.lr 0.001"):
        train_settings({"lr": 1e-3, "min_lr": 1e-2})


def test_unknown_training_key_is_refused():
    with pytest.raises(InputError, match=r"unknown training keys \['min_lrr'\]"):
        train_settings({"min_lrr": 0})


@pytest.mark.parametrize(
    ("epochs", "rows", "batch", "accum", "world", "expected"),
    [
        (2, 100_000, 8, 64, 8, 49),  # KD-DAE's DAE: 2 epochs at 4,096 rows per step
        (1, 32, 4, 1, 1, 8),
        (1, 32, 4, 1, 2, 4),  # two processes: half the steps
        (0.5, 33, 4, 2, 1, 3),  # ceil(16.5 / 8)
        (3, 10, 64, 1, 1, 1),  # fewer rows than one step: at least one step
    ],
)
def test_steps_of_epochs(epochs, rows, batch, accum, world, expected):
    assert steps_of_epochs(epochs, rows, batch, accum, world) == expected


@pytest.mark.parametrize("epochs", [1, 2, 0.25, 1.5])
def test_epoch_steps_draw_just_enough_rows(epochs):
    """Counted with the loop's own sampler, independently of the formula: after the computed
    steps the sampler has drawn at least `epochs` passes, one step fewer would not have."""
    rows, batch, accum, world = 37, 3, 2, 2
    steps = steps_of_epochs(epochs, rows, batch, accum, world)
    sampler = EpochSampler(rows, seed=0)
    drawn = 0
    for _ in range(steps):
        for _ in range(accum):
            drawn += len(sampler.next_batch(batch * world))
    assert drawn >= epochs * rows > drawn - batch * accum * world


def test_epochs_replace_steps_and_the_arithmetic_is_logged(caplog):
    settings = train_settings({"epochs": 2, "batch_size": 4, "grad_accum": 2, "steps": 7})
    with caplog.at_level(logging.INFO):
        resolved = resolve_steps(settings, rows=40, world=2, log=logging.getLogger("t"))
    assert resolved["steps"] == 5 and settings["steps"] == 7  # ceil(80 / 16); input untouched
    assert "ceil(2 epochs x 40 rows / (4 batch x 2 accumulation x 2 processes" in caplog.text
    assert resolve_steps(train_settings({"steps": 7}), 40, 2, logging.getLogger("t"))["steps"] == 7


def test_checkpoints_are_due_every_interval_and_at_the_end_only_when_kept():
    settings = train_settings({"steps": 10, "checkpoint_every": 4})
    assert [s for s in range(1, 11) if checkpoint_due(s, settings)] == [4, 8]
    kept = {**settings, "keep_checkpoints": True}
    assert [s for s in range(1, 11) if checkpoint_due(s, kept)] == [4, 8, 10]


def test_train_seed_is_a_setting_with_a_schema_default():
    assert train_settings({})["seed"] == 0
    assert train_settings({"seed": 43})["seed"] == 43


class FakeTokenizer:
    def __init__(self, pad, eos):
        self.pad_token_id, self.eos_token_id = pad, eos


@pytest.mark.parametrize(("pad", "eos", "expected"), [(5, 2, 5), (None, 2, 2), (None, None, 0)])
def test_pad_id_falls_back_to_eos_then_zero(pad, eos, expected):
    assert pad_id(FakeTokenizer(pad, eos)) == expected


def test_cli_defaults_come_from_the_schema():
    from distill.config import validate_config
    from distill.train import parse_args

    config = validate_config({})
    args = parse_args(["--objective", "sft", "--student", "s", "--train", "t", "--valid", "v",
                       "--ckpt-dir", "c", "--out", "o"])  # fmt: skip
    assert args.precision == config["precision"]
    assert args.distributed == config["launch"]["distributed"]
    assert args.seed is None  # the run's seed is then train.seed (see setup)
