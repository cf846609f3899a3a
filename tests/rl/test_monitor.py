"""The reward-hacking monitor: its paired probe arithmetic and warning rule against hand-computed values, the
reason it gives when it is off, and on a real run its probes beside the training rewards — without changing a
single training number."""
import json
import logging
import math

import pytest
import torch
from rl_run_helpers import tiny_overrides

from cxrl.compose import build_trainer
from cxrl.config import Config, apply_overrides
from cxrl.eval.evaluators import Evaluators
from cxrl.rl.logging import moving_average, plot_reward_curves, read_metrics
from cxrl.rl.monitor import ProbeMonitor, probe_set

PROMPTS = ["small left pleural effusion", "no acute cardiopulmonary process", "mild cardiomegaly"]


class ScriptedMonitor(ProbeMonitor):
    """The monitor's bookkeeping with the sampling replaced by a script of per-sample scores."""

    def __init__(self, script, every=2):
        items = [{"prompt": p, "labels": None} for p in PROMPTS]
        super().__init__(probe_set(items, 2, (1, 4, 4), seed=0), Evaluators(), {"consistency": "consistency"},
                         Config().sampling, every, batch_size=4)
        self.script = list(script)

    def measure(self, gen, ace):
        step = self.script.pop(0)
        series = step if isinstance(step, dict) else {"consistency": step}
        return {name: torch.tensor(values, dtype=torch.float64) for name, values in series.items()}


def test_probe_changes_are_paired_and_a_rise_against_a_fall_warns(caplog):
    caplog.set_level(logging.WARNING, logger="cxrl")
    before = [0.50, 0.40, 0.30, 0.60, 0.55, 0.45]
    steady = [0.51, 0.41, 0.31, 0.61, 0.56, 0.46]                 # +0.01 everywhere: a real, tiny rise
    fallen = [v - 0.05 + 0.001 * i for i, v in enumerate(steady)]  # falls by ~0.047, far beyond its paired noise
    monitor = ScriptedMonitor([before, steady, fallen])
    assert monitor.step(0, None, None)["probe/consistency"] == pytest.approx(sum(before) / 6)
    for epoch in range(2):
        monitor.record_training({"reward/consistency/mean": 0.1 * epoch})
    second = monitor.step(2, None, None)
    assert second["probe/consistency/change"] == pytest.approx(0.01) and second["probe/consistency/change_stderr"] < 1e-9
    assert "probe/consistency/diverging" not in second and not caplog.records
    for epoch in range(2):
        monitor.record_training({"reward/consistency/mean": 0.2 + 0.1 * epoch})   # training reward keeps rising
    third = monitor.step(4, None, None)
    diff = torch.tensor(fallen, dtype=torch.float64) - torch.tensor(steady, dtype=torch.float64)
    assert third["probe/consistency/change"] == pytest.approx(float(diff.mean()))
    assert third["probe/consistency/change_stderr"] == pytest.approx(float(diff.std() / math.sqrt(6)))
    assert third["probe/consistency/diverging"] == 1
    assert "reward 'consistency' rose over epochs 2-3" in caplog.text and "held-out probe fell" in caplog.text
    assert monitor.step(5, None, None) == {}              # not due
    # a probe that falls within its noise while the reward rises is not a warning
    noisy = ScriptedMonitor([before, [v + (0.05 if i % 2 else -0.06) for i, v in enumerate(before)]])
    noisy.step(0, None, None)
    noisy.record_training({"reward/consistency/mean": 0.0})
    noisy.record_training({"reward/consistency/mean": 1.0})
    assert "probe/consistency/diverging" not in noisy.step(2, None, None)


def test_moving_average_reference_values():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([2.0], 5) == [2.0]


def test_monitor_is_off_with_a_reason_when_no_reward_has_a_held_out_counterpart(tiny_pixel_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cxrl")
    cfg = apply_overrides(Config(), tiny_overrides(tiny_pixel_dir, tmp_path, epochs=1, extra=["monitor.every=1"]))
    trainer = build_trainer(cfg)
    assert trainer.monitor is None
    assert "reward-hacking monitor off: no reward has a held-out evaluator" in caplog.text
    with pytest.raises(ValueError, match="monitor.split"):
        apply_overrides(cfg, ["monitor.split=train"])


def _posture_run(gen_dir, out, every):
    extra = ["rewards.components=[{name: posture, weight: 10.0}, {name: bright, callable: 'tiny_rewards:brightness'}]",
             f"monitor.every={every}", "monitor.num_prompts=3", "monitor.samples_per_prompt=2"]
    cfg = apply_overrides(Config(), tiny_overrides(gen_dir, out, epochs=2, extra=extra))
    trainer = build_trainer(cfg)
    trainer.fit()
    return read_metrics(out / "metrics.jsonl")


def test_reward_model_rising_on_the_same_probe_images_while_the_evaluator_falls_warns(caplog):
    """No training-batch trend at all: the paired change of the reward model's own score of the probe images is
    what shows the divergence; a reward model that stays put (or a held-out fall within the noise) does not warn."""
    caplog.set_level(logging.WARNING, logger="cxrl")
    held_out = [0.50, 0.40, 0.30, 0.60, 0.55, 0.45]
    fallen = [v - 0.05 + 0.001 * i for i, v in enumerate(held_out)]
    reward = [0.2, 0.1, 0.3, 0.2, 0.4, 0.3]
    risen = [v + 0.08 + 0.002 * i for i, v in enumerate(reward)]
    monitor = ScriptedMonitor([{"consistency": held_out, "consistency/reward": reward},
                               {"consistency": fallen, "consistency/reward": risen}])
    first = monitor.step(0, None, None)
    assert first["probe/consistency/reward"] == pytest.approx(sum(reward) / 6)
    second = monitor.step(2, None, None)
    rise = torch.tensor(risen, dtype=torch.float64) - torch.tensor(reward, dtype=torch.float64)
    assert second["probe/consistency/reward/change"] == pytest.approx(float(rise.mean()))
    assert second["probe/consistency/reward/change_stderr"] == pytest.approx(float(rise.std() / math.sqrt(6)))
    assert second["probe/consistency/diverging"] == 1
    assert "on the same 6 probe images, reward model 'consistency' rose by 0.085" in caplog.text
    caplog.clear()
    flat = ScriptedMonitor([{"consistency": held_out, "consistency/reward": reward},
                            {"consistency": fallen, "consistency/reward": reward}])
    flat.step(0, None, None)
    assert "probe/consistency/diverging" not in flat.step(2, None, None) and not caplog.records


def test_probes_run_beside_training_and_change_nothing_in_it(tiny_pixel_dir, tmp_path):
    watched = _posture_run(tiny_pixel_dir, tmp_path / "on", every=1)
    plain = _posture_run(tiny_pixel_dir, tmp_path / "off", every=0)
    probes = [r for r in watched if "probe/epochs_trained" in r]
    epochs = [r for r in watched if "probe/epochs_trained" not in r]
    assert [p["probe/epochs_trained"] for p in probes] == [0, 1, 2] and [p["epoch"] for p in probes] == [-1, 0, 1]
    assert all(p["probe/posture"] < 0 for p in probes)            # r_align of the held-out evaluator: <= 0
    assert all(p["probe/posture/reward"] < 0 for p in probes)     # and of the reward model, on the same images
    assert "probe/posture/reward/change" in probes[1] and "probe/bright/reward" not in probes[1]
    assert "probe/posture/change" in probes[1] and "probe/bright" not in probes[1]   # custom reward: no counterpart
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("throughput/")}
    assert [drop(r) for r in epochs] == [drop(r) for r in plain]   # the probes change no training number
    assert (tmp_path / "on" / "reward_curves.png").stat().st_size > 0
    png = plot_reward_curves(tmp_path / "on" / "metrics.jsonl", tmp_path / "curves.png", smoothing=2)
    assert png.stat().st_size > 0
    assert json.loads((tmp_path / "on" / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == -1
