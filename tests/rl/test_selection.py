"""train.final_policy=best_probe: the rule that replaces the last policy by an earlier probe's (hand-computed paired
statistics), its checkpointed state, and on real tiny runs that the final weights are exactly those of the policy
it names, also across a resume."""
import json
import logging
import math

import torch
from rl_run_helpers import tiny_overrides

from cxrl.compose import build_trainer
from cxrl.config import Config, apply_overrides
from cxrl.rl.checkpoint import load_checkpoint, save_checkpoint
from cxrl.rl.selection import Z_SELECT, ProbeSelection


def _weights(value: float) -> dict:
    return {"w": torch.full((2, 3), value), "ace": torch.tensor([value])}


def test_an_earlier_probe_replaces_the_last_only_beyond_the_paired_noise():
    base = [0.0, 1.0, -1.0, 0.5, 0.2, -0.3]
    selection = ProbeSelection()
    early = _weights(1.0)
    selection.observe(4, torch.tensor([v + 0.30 + 0.01 * i for i, v in enumerate(base)]), early)
    early["w"].add_(5.0)   # the snapshot is a copy: later updates of the live weights do not reach it
    selection.observe(8, torch.tensor(base), _weights(2.0))
    chosen, why = selection.choice()
    diff = torch.tensor([0.30 + 0.01 * i for i in range(6)], dtype=torch.float64)
    assert float(diff.mean()) > Z_SELECT * float(diff.std() / math.sqrt(6))
    assert chosen["epochs"] == 4 and torch.equal(chosen["weights"]["w"], torch.full((2, 3), 1.0))
    assert "after 4 epochs scored +0.325 over the last (after 8" in why

    noisy = ProbeSelection()   # better on average but within its noise: the last policy stands
    noisy.observe(4, torch.tensor([v + (0.5 if i % 2 else -0.4) for i, v in enumerate(base)]), _weights(1.0))
    noisy.observe(8, torch.tensor(base), _weights(2.0))
    chosen, why = noisy.choice()
    assert chosen is None and "the last policy stands" in why

    rising = ProbeSelection()   # the last probe is the best: nothing to replace
    rising.observe(4, torch.tensor(base), _weights(1.0))
    rising.observe(8, torch.tensor([v + 1.0 for v in base]), _weights(2.0))
    assert rising.choice()[0] is None and "the last probe (after 8 epochs) scored highest" in rising.choice()[1]
    assert ProbeSelection().choice()[0] is None


def test_unscored_samples_are_left_out_of_the_comparison():
    selection = ProbeSelection()
    selection.observe(2, torch.tensor([float("nan")] * 4), _weights(1.0))   # nothing scored: never the best
    selection.observe(4, torch.tensor([1.0, 2.0, float("nan"), 3.0]), _weights(2.0))
    selection.observe(6, torch.tensor([0.0, 0.5, 0.0, 1.0]), _weights(3.0))
    assert selection.best["epochs"] == 4
    chosen, why = selection.choice()
    assert "3 paired validation samples" in why
    diff = torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64)
    assert (chosen is not None) == (float(diff.mean()) > Z_SELECT * float(diff.std() / math.sqrt(3)))


def test_selection_state_survives_a_checkpoint(tmp_path):
    selection = ProbeSelection()
    selection.observe(4, torch.tensor([1.0, 2.0, float("nan")]), _weights(1.5))
    selection.observe(8, torch.tensor([0.0, 1.0, 0.5]), _weights(2.5))
    path = save_checkpoint(tmp_path, 8, {"selection": selection.state_dict()})
    _, groups = load_checkpoint(path)
    restored = ProbeSelection()
    restored.load_state_dict(groups["selection"])
    assert restored.best["epochs"] == 4 and restored.last["epochs"] == 8
    assert torch.equal(restored.best["weights"]["w"], torch.full((2, 3), 1.5))
    assert restored.best["scores"][:2] == [1.0, 2.0] and math.isnan(restored.best["scores"][2])
    assert restored.choice()[1] == selection.choice()[1]


def _config(gen_dir, out, epochs, final_policy="best_probe"):
    extra = ["rewards.components=[{name: posture, weight: 10.0}, {name: bright, callable: 'tiny_rewards:brightness'}]",
             "monitor.every=1", "monitor.num_prompts=3", "monitor.samples_per_prompt=2", "checkpoint.keep=5",
             f"train.final_policy={final_policy}"]
    return apply_overrides(Config(), tiny_overrides(gen_dir, out, epochs=epochs, extra=extra))


def test_final_policy_is_exactly_the_policy_it_names(tiny_pixel_dir, tmp_path):
    trainer = build_trainer(_config(tiny_pixel_dir, tmp_path / "run", epochs=3))
    trainer.fit()
    record = json.loads((tmp_path / "run" / "final_policy.json").read_text())
    assert record["epochs_run"] == 3 and 1 <= record["epochs_trained"] <= 3
    _, groups = load_checkpoint(tmp_path / "run" / "checkpoints" / f"epoch_{record['epochs_trained']:06d}")
    final = {k: v.detach() for k, v in trainer.policy.named_trainable().items()}
    assert all(torch.equal(final[k], groups["weights"][k]) for k in final)
    assert record["selected_earlier_probe"] == (record["epochs_trained"] < 3)
    # an earlier probe that clearly beats the last: the trainer switches to exactly its weights
    fake = {k: torch.full_like(v, 0.25) for k, v in final.items()}
    last_scores = trainer.selection.last["scores"]
    trainer.selection.best = {"epochs": 1, "scores": [v + 10.0 + 0.1 * i for i, v in enumerate(last_scores)],
                              "weights": fake}
    assert trainer.apply_final_policy() == 1
    assert all(torch.equal(p.detach(), fake[k]) for k, p in trainer.policy.named_trainable().items())
    assert json.loads((tmp_path / "run" / "final_policy.json").read_text())["selected_earlier_probe"] is True


def test_a_resumed_run_ends_with_the_same_policy(tiny_pixel_dir, tmp_path):
    whole = build_trainer(_config(tiny_pixel_dir, tmp_path / "whole", epochs=3))
    whole.fit()
    first = build_trainer(_config(tiny_pixel_dir, tmp_path / "split", epochs=2))
    first.fit()
    second = build_trainer(_config(tiny_pixel_dir, tmp_path / "split", epochs=3))
    assert second.resume(tmp_path / "split") and second.selection.last["epochs"] == 2
    second.fit()
    for name in ("whole", "split"):
        record = json.loads((tmp_path / name / "final_policy.json").read_text())
        assert record["epochs_run"] == 3
    assert (json.loads((tmp_path / "whole" / "final_policy.json").read_text())
            == json.loads((tmp_path / "split" / "final_policy.json").read_text()))
    a, b = whole.policy.named_trainable(), second.policy.named_trainable()
    assert all(torch.equal(a[k].detach(), b[k].detach()) for k in a)


def test_best_probe_without_probes_ends_with_the_last_policy(tiny_pixel_dir, tmp_path, caplog):
    """The default asks for best_probe; a run without monitor probes (custom rewards with no held-out evaluator, or
    monitor.every=0) says so once and ends with its last policy instead of failing."""
    caplog.set_level(logging.WARNING, logger="cxrl")
    for name, extra in (("custom", ["monitor.every=1"]), ("off", ["monitor.every=0"])):
        cfg = apply_overrides(Config(), tiny_overrides(tiny_pixel_dir, tmp_path / name, epochs=1,
                                                       extra=[*extra, "train.final_policy=best_probe"]))
        trainer = build_trainer(cfg)
        assert trainer.selection is None
        trainer.fit()
        assert not (tmp_path / name / "final_policy.json").exists()
    assert caplog.text.count("train.final_policy=best_probe has no probes to choose from") == 2


def test_with_ema_the_run_probes_and_ends_with_the_average(tiny_pixel_dir, tmp_path):
    """train.ema_decay > 0: the EMA is the policy — probed by the monitor, saved as final — while the trained weights
    go on training underneath and are what the checkpoints resume from."""
    decay = 0.5
    cfg = _config(tiny_pixel_dir, tmp_path / "run", epochs=2, final_policy="last")
    cfg = apply_overrides(cfg, [f"train.ema_decay={decay}"])
    trainer = build_trainer(cfg)
    base = {k: v.detach().clone() for k, v in trainer.policy.named_trainable().items()}
    trained_after = []
    trainer.on_checkpoint = lambda path: trained_after.append(load_checkpoint(path)[1])
    trainer.fit()
    groups = trained_after[-1]
    names = list(trainer.policy.named_trainable())
    final = {k: v.detach() for k, v in trainer.policy.named_trainable().items()}
    shadow = dict(zip(names, groups["ema"]["shadow"]))
    assert all(torch.equal(final[k], shadow[k].to(final[k].dtype)) for k in names)
    moved = [k for k in names if not torch.equal(groups["weights"][k], base[k])]
    assert moved and any(not torch.equal(final[k], groups["weights"][k]) for k in moved)   # not the trained weights
    # the last probe scored these weights: probing them again gives its scores
    probed = trainer.monitor.last["scores"]
    again = trainer.monitor.measure(trainer.gen, trainer.policy.ace)
    assert probed and set(again) == set(probed)
    assert all(torch.equal(again[k].double(), torch.tensor(probed[k], dtype=torch.float64)) for k in probed)


def test_ema_applied_restores_the_trained_weights():
    from cxrl.rl.update import EMA
    p = torch.nn.Parameter(torch.tensor([0.0, 2.0]))
    ema = EMA([p], decay=0.75)
    with torch.no_grad():
        p.add_(4.0)
    ema.update()
    torch.testing.assert_close(ema.shadow[0], torch.tensor([1.0, 3.0]))   # 0.75 * old + 0.25 * new
    with ema.applied():
        assert torch.equal(p.detach(), torch.tensor([1.0, 3.0]))
    assert torch.equal(p.detach(), torch.tensor([4.0, 6.0]))


def test_with_ema_best_probe_keeps_the_averaged_weights_it_probed(tiny_pixel_dir, tmp_path):
    cfg = apply_overrides(_config(tiny_pixel_dir, tmp_path / "run", epochs=3), ["train.ema_decay=0.5"])
    trainer = build_trainer(cfg)
    trainer.fit()
    names = list(trainer.policy.named_trainable())
    for record in (trainer.selection.best, trainer.selection.last):
        if "weights" not in record:
            continue
        _, groups = load_checkpoint(tmp_path / "run" / "checkpoints" / f"epoch_{record['epochs']:06d}")
        shadow = dict(zip(names, groups["ema"]["shadow"]))
        assert all(torch.equal(record["weights"][k], shadow[k].to(record["weights"][k].dtype)) for k in names)
    final = {k: v.detach() for k, v in trainer.policy.named_trainable().items()}
    chosen = json.loads((tmp_path / "run" / "final_policy.json").read_text())
    assert chosen["weights"] == "ema (decay 0.5)"
    _, groups = load_checkpoint(tmp_path / "run" / "checkpoints" / f"epoch_{chosen['epochs_trained']:06d}")
    shadow = dict(zip(names, groups["ema"]["shadow"]))
    assert all(torch.equal(final[k], shadow[k].to(final[k].dtype)) for k in names)


def test_the_last_epoch_is_probed_when_monitor_every_does_not_divide_the_run(tiny_pixel_dir, tmp_path):
    """3 epochs, a probe every 2: probes after 0, 2 and 3 epochs, so best_probe compares with the policy the run ends
    with (before, the last probe was after 2 epochs and the run's own last policy was never probed)."""
    cfg = apply_overrides(_config(tiny_pixel_dir, tmp_path / "run", epochs=3), ["monitor.every=2"])
    trainer = build_trainer(cfg)
    trainer.fit()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [d["probe/epochs_trained"] for d in lines if "probe/epochs_trained" in d] == [0, 2, 3]
    assert trainer.selection.last["epochs"] == 3
    record = json.loads((tmp_path / "run" / "final_policy.json").read_text())
    assert record["epochs_trained"] in (2, 3) and ("(after 3 epochs)" in record["why"] or "(after 3;" in record["why"])
