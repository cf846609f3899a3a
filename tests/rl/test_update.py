"""PPOUpdater's grouping of minibatches into optimizer steps: the trained timesteps per sample come from the
store's own (float-safe) count, so gradient accumulation groups exactly the planned minibatches."""
import math

import pytest
import torch

from cxrl.config import Config, apply_overrides
from cxrl.rl.update import PPOUpdater, lr_schedule, optimizer_steps_per_epoch
from cxrl.trajectory import TrajectoryStore, num_trained_steps


def _store(num_samples: int, num_steps: int) -> TrajectoryStore:
    store = TrajectoryStore(num_samples, num_steps, (1, 2, 2), backend="reference")
    g = torch.Generator().manual_seed(0)
    store.write_initial(0, torch.randn(num_samples, 1, 2, 2, generator=g))
    for j in range(num_steps):
        store.write_step(j, 0, torch.randn(num_samples, 1, 2, 2, generator=g), torch.zeros(num_samples), 999 - j)
    store.write_advantages(0, torch.linspace(-1, 1, num_samples))
    return store


@pytest.mark.parametrize("num_steps, fraction, samples, batch, accumulation", [
    (50, 0.28, 8, 2, 2),    # ceil(50 * 0.28) is 15 in floating point; the plan trains 14 steps per sample
    (50, 0.3, 7, 2, 3),     # 0.3 * 50 = 15.000000000000002
    (10, 0.5, 6, 4, 1),
    (3, 1.0, 5, 2, 2),
])
def test_optimizer_steps_group_exactly_the_planned_minibatches(num_steps, fraction, samples, batch, accumulation):
    cfg = apply_overrides(Config(), [f"train.batch_size={batch}", f"train.timestep_fraction={fraction}",
                                     f"train.gradient_accumulation={accumulation}", "train.inner_epochs=2",
                                     "train.clip_range=0.2"]).train
    weight = torch.nn.Parameter(torch.zeros(()))
    updater = PPOUpdater([weight], torch.optim.SGD([weight], lr=0.1), cfg)
    seen_per_step: list[int] = []
    calls = []

    def log_prob_fn(mb):
        calls.append(len(mb.sample_idx))
        return weight * mb.advantages.float() + mb.log_probs, None   # a differentiable stand-in for the UNet

    original_step = updater._optimizer_step

    def counting_step(result, sample_idx, describe):
        seen_per_step.append(int(sample_idx.numel()))
        return original_step(result, sample_idx, describe)

    updater._optimizer_step = counting_step
    result = updater.run(_store(samples, num_steps), log_prob_fn, plan_seed=3, describe=lambda idx: [])
    trained = num_trained_steps(num_steps, fraction)
    sample_batches = math.ceil(samples / batch)
    assert trained <= math.ceil(num_steps * fraction)
    assert result.minibatches == 2 * sample_batches * trained == len(calls)
    assert result.optimizer_steps == 2 * math.ceil(sample_batches / accumulation)
    assert result.optimizer_steps == optimizer_steps_per_epoch(cfg, samples)   # what the cosine schedule counts on
    # every optimizer step holds `accumulation` sample batches x `trained` timesteps (the last group may be short)
    expected = []
    for _ in range(2):
        sizes = [min(batch, samples - b * batch) for b in range(sample_batches)]
        for g in range(0, sample_batches, accumulation):
            expected.append(trained * sum(sizes[g:g + accumulation]))
    assert seen_per_step == expected
    assert weight.grad is None   # nothing left over to leak into the next epoch


@pytest.mark.parametrize("skip_first, skip_last, fraction", [(1, 2, 1.0), (1, 2, 0.7), (0, 3, 0.5), (4, 0, 1.0)])
def test_skipped_steps_are_never_trained(skip_first, skip_last, fraction):
    num_steps, samples = 10, 6
    cfg = apply_overrides(Config(), ["train.batch_size=4", f"train.timestep_fraction={fraction}",
                                     f"train.skip_first_steps={skip_first}", f"train.skip_last_steps={skip_last}"]).train
    weight = torch.nn.Parameter(torch.zeros(()))
    updater = PPOUpdater([weight], torch.optim.SGD([weight], lr=0.1), cfg)
    steps = []

    def log_prob_fn(mb):
        steps.extend(mb.step_idx.tolist())
        return weight * mb.advantages.float() + mb.log_probs, None

    result = updater.run(_store(samples, num_steps), log_prob_fn, plan_seed=5, describe=lambda idx: [])
    window = range(skip_first, num_steps - skip_last)
    trained = num_trained_steps(len(window), fraction)
    assert set(steps) <= set(window) and len(steps) == samples * trained
    assert result.optimizer_steps == math.ceil(math.ceil(samples / 4) / cfg.gradient_accumulation)


def test_skips_leave_one_step_when_the_trajectory_is_short():
    from cxrl.rl.update import trained_step_window
    assert trained_step_window(10, 0, 2) == (0, 8) and trained_step_window(10, 1, 2) == (1, 8)
    assert trained_step_window(2, 0, 2) == (0, 1) and trained_step_window(1, 0, 2) == (0, 1)
    assert trained_step_window(3, 5, 0) == (2, 3) and trained_step_window(4, 2, 2) == (2, 3)


def test_normalized_combination_divides_each_component_by_its_std():
    from cxrl.rl.trainer import normalized_combination

    components = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0], [float("nan"), 0.0]])
    valid = torch.tensor([True, True, True, False])
    weights = torch.tensor([2.0, 1.0])
    got = normalized_combination(torch.nan_to_num(components), weights, valid)
    std0, std1 = torch.tensor([1.0, 3.0, 5.0]).std(unbiased=False), torch.tensor([10.0, 30.0, 20.0]).std(unbiased=False)
    expected = torch.tensor([2 * 1 / std0 + 10 / std1, 2 * 3 / std0 + 30 / std1, 2 * 5 / std0 + 20 / std1, 0.0])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # scaling a component by any factor changes nothing: the weights alone set how much each reward counts
    rescaled = torch.nan_to_num(components) * torch.tensor([1000.0, 0.01])
    torch.testing.assert_close(normalized_combination(rescaled, weights, valid), got, rtol=1e-4, atol=1e-4)


def test_constant_schedule_is_the_linear_warmup_then_one():
    factor = lr_schedule(4)
    assert [factor(k) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_schedule(0)(0) == 1.0


@pytest.mark.parametrize("warmup", [0, 3])
def test_cosine_schedule_decays_from_one_to_zero_at_the_last_step(warmup):
    total = 20
    factor = lr_schedule(warmup, "cosine", total)
    values = [factor(k) for k in range(total + 5)]
    assert values[:warmup] == [(k + 1) / warmup for k in range(warmup)]
    assert values[warmup] == 1.0
    assert values[warmup + (total - warmup) // 2] == pytest.approx(0.5 * (1 + math.cos(math.pi * ((total - warmup) // 2)
                                                                                         / (total - warmup))))
    assert all(a >= b for a, b in zip(values[warmup:], values[warmup + 1:]))   # never rises after the warm-up
    assert values[total:] == [0.0] * 5                                          # 0 from the last step on


def test_cosine_schedule_needs_the_run_length():
    with pytest.raises(ValueError, match="optimizer steps"):
        lr_schedule(0, "cosine", 0)
    with pytest.raises(ValueError, match="'constant' or 'cosine'"):
        lr_schedule(0, "linear", 10)
    cfg = apply_overrides(Config(), ["train.lr_schedule=cosine"]).train
    weight = torch.nn.Parameter(torch.zeros(()))
    with pytest.raises(ValueError, match="samples_per_rank"):
        PPOUpdater([weight], torch.optim.SGD([weight], lr=0.1), cfg)


def test_cosine_schedule_sets_each_optimizer_steps_learning_rate():
    """Two epochs of 3 optimizer steps: the learning rates the optimizer used follow the cosine over all six."""
    cfg = apply_overrides(Config(), ["train.batch_size=2", "train.epochs=2", "train.lr_schedule=cosine",
                                     "train.clip_range=0.2"]).train
    weight = torch.nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    updater = PPOUpdater([weight], optimizer, cfg, samples_per_rank=6)
    used = []
    original = optimizer.step

    def recording_step(*args, **kwargs):
        used.append(optimizer.param_groups[0]["lr"])
        return original(*args, **kwargs)

    optimizer.step = recording_step
    for epoch in range(2):
        updater.run(_store(6, 4), lambda mb: (weight * mb.advantages.float() + mb.log_probs, None), plan_seed=epoch,
                    describe=lambda idx: [])
    assert used == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)])
