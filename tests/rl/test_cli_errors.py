"""Every expected error of a command is one line naming what and where, exit 2 (issue 18, item 8); --debug shows
the traceback. The commands run in this process on the tiny generator."""
import resource
import signal

import pytest
import torch

from rl_run_helpers import tiny_overrides
from cxrl.cli import main
from cxrl.rewards import RewardError
from cxrl.rl import checkpoint as ck

REWARDS = '''
import torch


def raises(images, prompts, metadata):
    scale = images.shape[0] / 0
    return images.mean(dim=(1, 2, 3)) * scale


def wrong_shape(images, prompts, metadata):
    return images.mean(dim=(2, 3))
'''


def _one_line(capsys, argv) -> str:
    rc = main(list(map(str, argv)))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"cxrl {argv[0]}: error: ") and line.endswith("(--debug for the traceback)"), err
    return line


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "user_rewards.py"
    path.write_text(REWARDS)
    return path


def _with_reward(gen_dir, out, callable_spec):
    return ["train", *tiny_overrides(gen_dir, out, epochs=1, extra=[f"rewards.components=[{{name: mine, callable: '{callable_spec}'}}]"])]


def test_custom_reward_errors_are_one_line(tiny_pixel_dir, tmp_path, capsys, reward_file):
    line = _one_line(capsys, _with_reward(tiny_pixel_dir, tmp_path / "a", "no_such_reward_module:score"))
    assert "custom reward 'no_such_reward_module:score': no module named 'no_such_reward_module'" in line
    line = _one_line(capsys, _with_reward(tiny_pixel_dir, tmp_path / "b", f"{reward_file}:missing"))
    assert f"{reward_file} has no attribute 'missing'" in line
    line = _one_line(capsys, _with_reward(tiny_pixel_dir, tmp_path / "c", f"{reward_file}:raises"))
    assert f"reward 'mine' raised ZeroDivisionError: division by zero (at {reward_file}:6)" in line
    line = _one_line(capsys, _with_reward(tiny_pixel_dir, tmp_path / "d", f"{reward_file}:wrong_shape"))
    assert "reward 'mine' returned shape (2, 1); expected [2]" in line
    with pytest.raises(RewardError, match="raised ZeroDivisionError") as info:   # --debug: the traceback
        main([*_with_reward(tiny_pixel_dir, tmp_path / "e", f"{reward_file}:raises"), "--debug"])
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_missing_models_bad_paths_and_text_are_one_line(tiny_pixel_dir, tmp_path, capsys):
    nowhere = tmp_path / "nowhere"
    assert f"{nowhere}: generator directory not found" in _one_line(capsys, ["sample", "--model", nowhere, "--prompt", "x"])
    assert f"{nowhere}: generator directory not found" in _one_line(capsys, ["evaluate", "--model", nowhere])
    latin1 = tmp_path / "prompts.txt"
    latin1.write_bytes("clear lungs\nsmall left effusion, no pneumothorax\nr\xe9sum\xe9\n".encode("latin-1"))
    expected = f"{latin1}:3: not UTF-8 text (byte 0xe9 at column 2)"
    assert expected in _one_line(capsys, ["sample", "--model", tiny_pixel_dir, "--prompts", latin1])
    assert expected in _one_line(capsys, ["train", *tiny_overrides(tiny_pixel_dir, tmp_path / "r", extra=[
        "data.source=file", f"data.path={latin1}"])])
    (tmp_path / "file").write_text("")
    assert f"--output {tmp_path / 'file'}: cannot be a run directory: it is a regular file" in _one_line(
        capsys, ["train", "--output", tmp_path / "file", *tiny_overrides(tiny_pixel_dir, tmp_path / "file")])


@pytest.fixture
def file_size_limit():
    """Writes beyond ``limit`` bytes fail with EFBIG — as a full disk fails them — while the fixture is active."""
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # else the kernel ends the process instead

    def set_limit(limit):
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
    yield set_limit
    resource.setrlimit(resource.RLIMIT_FSIZE, before)
    signal.signal(signal.SIGXFSZ, handler)


def test_a_full_disk_at_checkpoint_time_is_one_line_and_leaves_no_partial_checkpoint(tmp_path, capsys, file_size_limit):
    root = tmp_path / "checkpoints"
    groups = {"weights": {"w": torch.arange(4096, dtype=torch.float32)}, "trainer": {"epoch": 1}}
    good = ck.save_checkpoint(root, 1, groups)
    file_size_limit(8192)   # the 16 KiB weights file does not fit
    try:
        with pytest.raises(ck.CheckpointWriteError) as info:
            ck.save_checkpoint(root, 2, groups)
    finally:
        file_size_limit(resource.RLIM_INFINITY)
    assert f"cannot write checkpoint {root / 'epoch_000002'}" in str(info.value) and "File too large" in str(info.value)
    assert isinstance(info.value, OSError) and [p.name for p in root.iterdir()] == ["epoch_000001"]
    assert ck.latest_checkpoint(root) == good
    from cxrl.cli import _report

    assert _report("train", info.value) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"cxrl train: error: cannot write checkpoint {root / 'epoch_000002'}")
