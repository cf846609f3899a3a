"""RL test settings: one intra-op thread per process (the tiny models gain nothing from more, and
several test processes share few cores). Subprocess helpers live in ``rl_run_helpers.py``."""
import sys

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def python_exe():
    return sys.executable
