"""Checkpoints: exact round trip of nested state (optimizer incl.), atomicity, corruption fallback, RNG."""
import json
import logging
import random

import numpy as np
import pytest
import torch

from cxrl.rl import checkpoint as ck
from cxrl.rl.seeding import capture_rng_state, derive_seed, restore_rng_state


def _optimizer_after_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 2))
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-2}, {"params": model[1].parameters(), "lr": 3e-3}])
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 5)).square().sum().backward()
        opt.step()
    return model, opt


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


def test_round_trip_is_exact_and_optimizer_continues_identically(tmp_path):
    model, opt = _optimizer_after_steps()
    state = {"optimizer": opt.state_dict(), "trainer": {"epoch": 3, "nested": {"x": (1, 2.5, None), "t": torch.arange(4)}}}
    path = ck.save_checkpoint(tmp_path, 3, state, extra_files={"config.yaml": "a: 1\n"})
    epoch, loaded = ck.load_checkpoint(path)
    assert epoch == 3 and (path / "config.yaml").read_text() == "a: 1\n"
    _assert_same(state["optimizer"], loaded["optimizer"])
    _assert_same(state["trainer"], loaded["trainer"])
    assert not list(path.glob("*.pkl")) and not list(path.glob("*.pt"))

    # a fresh optimizer loaded from the checkpoint takes bitwise the same next step
    model2, opt2 = _optimizer_after_steps()
    opt2.load_state_dict(loaded["optimizer"])
    x = torch.randn(4, 5)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).square().sum().backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_corrupt_or_partial_checkpoint_falls_back(tmp_path, caplog):
    for e in (1, 2, 3):
        ck.save_checkpoint(tmp_path, e, {"w": {"x": torch.full((3,), float(e))}})
    # epoch 3: flip a byte of the tensors; epoch 2 fine; stale staging dir ignored
    blob = tmp_path / "epoch_000003" / "w.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    (tmp_path / ".tmp-epoch_000004-1").mkdir()
    caplog.set_level(logging.WARNING, logger="cxrl")
    best = ck.latest_checkpoint(tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    assert best.name == "epoch_000002"
    assert len(messages) == 1 and "epoch_000003" in messages[0] and "checksum" in messages[0]
    with pytest.raises(ValueError, match="checksum"):
        ck.load_checkpoint(tmp_path / "epoch_000003")
    # no manifest = partial write
    (tmp_path / "epoch_000002" / "manifest.json").unlink()
    assert ck.latest_checkpoint(tmp_path).name == "epoch_000001"
    assert "partial" in caplog.records[-1].getMessage()
    # unparseable manifest
    (tmp_path / "epoch_000001" / "manifest.json").write_text("{")
    assert ck.latest_checkpoint(tmp_path) is None
    before = len(caplog.records)
    assert ck.latest_checkpoint(tmp_path, quiet=True) is None and len(caplog.records) == before   # quiet: no message


def test_resave_same_epoch_and_prune(tmp_path):
    for e in range(5):
        ck.save_checkpoint(tmp_path, e, {"s": {"e": e}})
    ck.save_checkpoint(tmp_path, 4, {"s": {"e": 40}})
    assert ck.load_checkpoint(tmp_path / "epoch_000004")[1]["s"]["e"] == 40
    ck.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["epoch_000004", "epoch_000003"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unsupported_state_is_rejected(tmp_path):
    with pytest.raises(TypeError, match="unsupported type"):
        ck.save_checkpoint(tmp_path, 0, {"bad": {"f": object()}})


def test_rng_state_round_trip_through_checkpoint(tmp_path):
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    random.random(); np.random.rand(); torch.rand(2)
    tensors, js = capture_rng_state()
    ck.save_checkpoint(tmp_path, 0, {"rng": {"tensors": tensors, "state": js}})
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9); np.random.seed(9); torch.manual_seed(9)
    rng = ck.load_checkpoint(tmp_path / "epoch_000000")[1]["rng"]
    restore_rng_state(rng["tensors"], rng["state"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    json.dumps(js)  # the non-tensor part is plain JSON


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, 1, 0, "rollout") == derive_seed(0, 1, 0, "rollout")
    seeds = {derive_seed(s, e, r, p) for s in (0, 1) for e in (0, 1) for r in (0, 1) for p in ("prompts", "rollout", "plan")}
    assert len(seeds) == 24
    with pytest.raises(ValueError, match="purpose"):
        derive_seed(0, 0, 0, "nope")
