"""``auto`` attention: one decision per shape family, shared by sampling and the PPO recompute, on disk.

On the CPU ``auto`` means SDPA, so these tests drive the timed path on the CPU through
``configure_auto(timed_devices=("cpu",))`` with an injected timing function; the triton candidate runs
its kernel bodies under TRITON_INTERPRET=1.
"""
import json
import logging
import os

import pytest
import torch
import torch.nn.functional as F

if os.environ.get("CXRL_TEST_GPU") != "1" or not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first triton import, as tests/conftest.py
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="times the triton candidate on CPU tensors: needs TRITON_INTERPRET=1")

from cxrl.diffusion import (  # noqa: E402
    apply_lora,
    attention,
    load_generator,
    recompute_log_prob,
    rollout,
)
from cxrl.diffusion.attention import (  # noqa: E402
    configure_auto,
    dispatch_attention,
    set_attention_backend,
)
from cxrl.diffusion.attention_auto import (  # noqa: E402
    CACHE_DIR_ENV,
    AutoAttention,
    default_cache_dir,
    shape_family,
)
from cxrl.kernels import flash_attention  # noqa: E402
from cxrl.trajectory import TrajectoryStore  # noqa: E402

AUTO_LOG = "cxrl.diffusion.attention_auto"


class BatchAndGradTimer:
    """Fake timings that depend on exactly what the old key held: batch size and train/infer.

    SDPA "wins" for an inference call at the rollout batch, triton for anything else, so a dispatcher
    that decided per (batch, train/infer) would run the PPO recompute on another backend than the rollout.
    """

    def __init__(self, rollout_batch: int):
        self.rollout_batch = rollout_batch
        self.calls: list[tuple[str, int, bool]] = []

    def __call__(self, name, run, q, k, v, scale):
        grad = torch.is_grad_enabled() and q.requires_grad
        self.calls.append((name, q.shape[0], grad))
        favoured = "sdpa" if (q.shape[0] == self.rollout_batch and not grad) else "triton"
        return 1.0 if name == favoured else 2.0


@pytest.fixture
def auto_on_cpu(tmp_path):
    """Install a fresh ``auto`` decider timed on the CPU with a per-test cache dir; restore the default."""
    def install(timer, cache_dir=tmp_path / "cache"):
        return configure_auto(timer=timer, cache_dir=cache_dir, timed_devices=("cpu",))

    yield install
    configure_auto()


def _qkv(batch, n=8, nk=8, d=16, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = [(batch, 2, n, d), (batch, 2, nk, d), (batch, 2, nk, d)]
    return tuple(torch.randn(shape, generator=g).requires_grad_(grad) for shape in shapes)


def test_shape_family_drops_batch_and_buckets_lengths():
    q, k, _ = _qkv(2, n=37, nk=77)
    q8, k8, _ = _qkv(8, n=64, nk=79)
    assert shape_family(q, k, cross=True) == shape_family(q8, k8, cross=True) == "cross N<=64 Nk<=128 D16 float32 cpu"
    assert shape_family(q, q, cross=False) == "self N<=64 D16 float32 cpu"
    others = {shape_family(*_qkv(2, n=65)[:2], cross=False), shape_family(*_qkv(2, d=40)[:2], cross=False),
              shape_family(q.half(), q.half(), cross=False), shape_family(q, q, cross=True)}
    assert len(others) == 4 and shape_family(q, q, cross=False) not in others


def test_one_decision_per_family_whatever_the_batch_and_grad_mode(auto_on_cpu):
    timer = BatchAndGradTimer(rollout_batch=6)
    auto_on_cpu(timer)
    q, k, v = _qkv(6)
    with torch.no_grad():  # the rollout's call decides: sdpa
        out = dispatch_attention(q, k, v, scale=0.3, cross=False)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, scale=0.3))
    assert sorted(c[0] for c in timer.calls) == ["sdpa", "triton"]  # xformers is off on the CPU
    q2, k2, v2 = _qkv(2, seed=1, grad=True)
    out = dispatch_attention(q2, k2, v2, scale=0.3, cross=False)  # a PPO minibatch: other batch, grad on
    assert len(timer.calls) == 2, "the recompute shape must reuse the rollout's decision"
    assert torch.equal(out, F.scaled_dot_product_attention(q2, k2, v2, scale=0.3))
    dispatch_attention(*_qkv(2, d=40), cross=False)  # another family is decided on its own
    assert len(timer.calls) == 4
    dispatch_attention(*_qkv(2, d=40, grad=True), cross=False)
    assert len(timer.calls) == 4


def test_recomputed_log_probs_equal_the_stored_ones_bitwise_under_auto(auto_on_cpu, tiny_pixel_dir, one_thread):
    gen = load_generator(tiny_pixel_dir)
    prompts = ["small left pleural effusion", "no acute cardiopulmonary process", "mild cardiomegaly"]
    steps, scale = 3, 3.0
    timer = BatchAndGradTimer(rollout_batch=2 * len(prompts))  # CFG runs the rollout as one [2B] batch
    auto_on_cpu(timer)
    set_attention_backend(gen.unet, "auto")
    apply_lora(gen.unet, rank=2)  # trainable parameters: the recompute runs with grad, as in PPO
    embeds = gen.encode_prompts(prompts)
    store = TrajectoryStore(num_samples=3, num_steps=steps, latent_shape=gen.latent_shape, num_rewards=1)
    rollout(gen, embeds, store, num_steps=steps, guidance_scale=scale, eta=1.0, generator=5, decode=False)
    decided = list(timer.calls)
    # self- and cross-attention families, each timed on sdpa and triton, all by the rollout (no grad)
    assert len(decided) >= 4 and not any(grad for _, _, grad in decided)

    for step in range(steps):
        log_prob = recompute_log_prob(gen, store.latents[:, step], store.latents[:, step + 1], store.timesteps[:, step],
                                      embeds, guidance_scale=scale, eta=1.0, num_steps=steps)
        assert log_prob.requires_grad
        assert torch.equal(log_prob.detach(), store.log_probs[:, step]), step
    assert timer.calls == decided, "the recompute must not decide again"


def test_decisions_persist_to_disk_and_are_reloaded(auto_on_cpu, tmp_path):
    q, k, v = _qkv(2, seed=2)
    auto = auto_on_cpu(BatchAndGradTimer(rollout_batch=6))  # batch 2: triton wins
    expected = flash_attention(q, k, v, scale=0.5)
    assert torch.equal(dispatch_attention(q, k, v, scale=0.5, cross=False), expected)
    path = auto.path_for("cpu")
    assert path.parent == tmp_path / "cache" and path.name.startswith("cpu-torch")
    saved = json.loads(path.read_text())
    assert saved["decisions"]["self N<=8 D16 float32 cpu"]["backend"] == "triton"

    reloaded = BatchAndGradTimer(rollout_batch=2)  # would now pick sdpa, if it were asked
    auto_on_cpu(reloaded)
    assert torch.equal(dispatch_attention(q, k, v, scale=0.5, cross=False), expected)
    assert reloaded.calls == []
    assert "[from " in attention._recorded["self N<=8 D16 float32 cpu"]


def test_a_family_another_process_saved_first_is_adopted(tmp_path):
    def decider(timer):
        return AutoAttention(attention._RUNNERS, attention.backend_unavailable_reason, timer=timer,
                             cache_dir=tmp_path, timed_devices=("cpu",))

    first, second = decider(BatchAndGradTimer(rollout_batch=6)), decider(BatchAndGradTimer(rollout_batch=2))
    other_family, family = _qkv(2, d=8), _qkv(2)
    assert second.choose(*other_family, 1.0, cross=False).backend == "sdpa"  # reads the (empty) file
    assert first.choose(*family, 1.0, cross=False).backend == "triton"      # saves its decision
    # the second decider's own timing says sdpa, but the rank that saved first wins
    assert second.choose(*family, 1.0, cross=False).backend == "triton"
    assert len(json.loads(first.path_for("cpu").read_text())["decisions"]) == 2  # merged, not overwritten


def test_corrupt_cache_file_warns_once_and_decides_again(auto_on_cpu, caplog):
    timer = BatchAndGradTimer(rollout_batch=6)
    auto = auto_on_cpu(timer)
    path = auto.path_for("cpu")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger=AUTO_LOG):
        dispatch_attention(*_qkv(2, seed=3), cross=False)
        dispatch_attention(*_qkv(2, d=8, seed=3), cross=False)
    warnings = [r for r in caplog.records if r.name == AUTO_LOG]
    assert len(warnings) == 1 and "unreadable decision cache" in warnings[0].getMessage()
    assert len(timer.calls) == 4  # both families timed
    assert len(json.loads(path.read_text())["decisions"]) == 2  # and the file is whole again


def test_cached_backend_that_cannot_run_is_decided_again(auto_on_cpu, caplog):
    timer = BatchAndGradTimer(rollout_batch=6)
    auto = auto_on_cpu(timer)
    path = auto.path_for("cpu")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": 1, "decisions": {"self N<=8 D16 float32 cpu": {"backend": "xformers",
                                                                                         "why": "elsewhere"}}}))
    with caplog.at_level(logging.WARNING, logger=AUTO_LOG):
        dispatch_attention(*_qkv(2), cross=False)
    assert any("cannot run now" in r.getMessage() for r in caplog.records if r.name == AUTO_LOG)
    assert len(timer.calls) == 2
    assert json.loads(path.read_text())["decisions"]["self N<=8 D16 float32 cpu"]["backend"] == "triton"


def test_cpu_auto_is_sdpa_without_timing_or_files(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    auto = configure_auto(timer=lambda *a: pytest.fail("timed on the CPU"))
    try:
        q, k, v = _qkv(2)
        assert torch.equal(dispatch_attention(q, k, v, cross=False), F.scaled_dot_product_attention(q, k, v))
        assert auto.path_for("cpu").parent == tmp_path / "env" and not (tmp_path / "env").exists()
    finally:
        configure_auto()


def test_hopper_takes_sdpa_untimed_unless_asked_to_time(monkeypatch):
    # the rule from the H200 measurements: sm90+ gets SDPA with the reason; older GPUs and CXRL_ATTENTION_AUTO=time time
    from cxrl.diffusion import attention_auto

    monkeypatch.delenv(attention_auto.MODE_ENV, raising=False)
    hopper = attention_auto.rule_for_capability((9, 0))
    assert hopper.backend == "sdpa" and "sm90" in hopper.why and "H200" in hopper.why
    assert attention_auto.rule_for_capability((10, 0)).backend == "sdpa"
    assert attention_auto.rule_for_capability((8, 0)) is None and attention_auto.rule_for_capability((8, 9)) is None
    monkeypatch.setenv(attention_auto.MODE_ENV, "time")
    assert attention_auto.rule_for_capability((9, 0)) is None
    assert attention_auto.measured_rule(torch.device("cpu")) is None


def test_a_rule_decision_is_not_timed_and_not_cached(auto_on_cpu, tmp_path, monkeypatch):
    from cxrl.diffusion import attention_auto

    monkeypatch.setattr(attention_auto, "measured_rule", lambda device: attention_auto.Decision("sdpa", "rule"))
    auto = auto_on_cpu(lambda *a: pytest.fail("timed although a rule decided"))
    q, k, v = _qkv(2)
    assert auto.choose(q, k, v, None, cross=False) == attention_auto.Decision("sdpa", "rule")
    assert not list((tmp_path / "cache").glob("*.json"))   # the cache file holds timed decisions only
