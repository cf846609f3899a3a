"""seed_everything's deterministic mode: deterministic algorithms on, the NaN fill of fresh memory off."""
import pytest
import torch

from cxrl.rl.seeding import seed_everything


@pytest.fixture
def restore_torch_flags(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # seed_everything sets it; undone after the test
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.utils.deterministic.fill_uninitialized_memory = saved[2]
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[3:]


def test_deterministic_mode_does_not_nan_fill_fresh_allocations(restore_torch_flags):
    torch.utils.deterministic.fill_uninitialized_memory = True  # torch's default, as a fresh process has it
    seed_everything(7, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    # with the fill on, every torch.empty of floats comes back all NaN; now it is left as allocated
    assert not torch.empty(1 << 16).isnan().all()


def test_seeding_alone_leaves_deterministic_algorithms_alone(restore_torch_flags):
    torch.use_deterministic_algorithms(False)
    seed_everything(7, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    a = torch.rand(3)
    seed_everything(7, deterministic=False)
    assert torch.equal(a, torch.rand(3))
