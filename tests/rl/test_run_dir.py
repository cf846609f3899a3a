"""Run directories that cannot be mixed up (issue 18): a new run refuses a directory holding a run, --overwrite
deletes only a run's files, resume truncates metrics in every case and repairs a torn line, a failed resume
leaves config.yaml alone, code named in a run's config.yaml is imported only with consent, and a reward that is
never finite stops the run. ``cxrl train`` runs in this process on the tiny generator; the default directory
rule (runs/demo, then runs/demo-2) is tested with the real no-argument command in test_cli_resume.py."""
import hashlib
import json
import re
import shutil

from rl_run_helpers import tiny_overrides

from cxrl.cli import main
from cxrl.rl import checkpoint as ck
from cxrl.rl.run_dir import clear_run, next_free_run_dir, run_files, run_markers

MARKED_REWARD = '''
import pathlib
import torch

pathlib.Path(__file__).with_suffix(".imports").open("a").write("imported\\n")   # one line per import


def score(images, prompts, metadata):
    return images.float().mean(dim=(1, 2, 3))
'''


def _train(capsys, *args):
    rc = main(["train", *map(str, args)])
    return rc, capsys.readouterr().err


def _epochs(run):
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("cxrl train: error: "), err
    return last


def test_run_dir_rules(tmp_path):
    run = tmp_path / "runs" / "demo"
    assert next_free_run_dir(run) == run and run_markers(run) == []
    (run / "checkpoints").mkdir(parents=True)
    assert run_markers(run) == ["checkpoints"] and next_free_run_dir(run) == run.with_name("demo-2")
    (run.with_name("demo-2")).mkdir()
    (run.with_name("demo-2") / "metrics.jsonl").write_text("")
    assert next_free_run_dir(run) == run.with_name("demo-3")
    for name in ("run.json", "config.yaml", "metrics.jsonl", "samples_epoch0004.png", "anchor_cache.json", "notes.txt"):
        (run / name).write_text("x")
    (run / "eval").mkdir()
    (run / "data").mkdir()
    removed = clear_run(run)
    assert sorted(p.name for p in removed) == ["anchor_cache.json", "checkpoints", "config.yaml", "eval", "metrics.jsonl",
                                               "run.json", "samples_epoch0004.png"]
    assert sorted(p.name for p in run.iterdir()) == ["data", "notes.txt"]   # the user's files stay
    (run / "anchor_cache.json").write_text("x")
    assert run_files(run, anchor_cache="/shared/cache.json") == []   # a cache configured elsewhere is not the run's


def test_new_run_refuses_a_run_directory_overwrite_starts_over(tiny_pixel_dir, tmp_path, capsys):
    run = tmp_path / "run"
    rc, err = _train(capsys, *tiny_overrides(tiny_pixel_dir, run, epochs=2))
    assert rc == 0, err
    first = json.loads((run / "run.json").read_text())
    _, groups = ck.load_checkpoint(ck.latest_checkpoint(run / "checkpoints"))
    assert groups["trainer"]["run_id"] == first["run_id"] and len(first["run_id"]) == 32
    assert first["config_sha256"] == hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest()
    # the run's times beside the machine's yardstick, measured in the same run
    assert first["machine"]["matmul_fp32_1024_1thread_tflops"] > 0
    times = first["seconds"][-1]
    # each time is rounded to 0.1 s on its own, so a sum may exceed the rounded total by up to 0.1
    assert times["total"] >= times["train"] > 0 and times["total"] >= times["setup"] + times["train"] - 0.1 - 1e-6
    (run / "notes.txt").write_text("mine")
    kept = tmp_path / "first_run_checkpoint"
    shutil.copytree(run / "checkpoints" / "epoch_000002", kept)

    for named in (["--output", run], []):   # --output, or log.output_dir= (inside tiny_overrides)
        rc, err = _train(capsys, *named, *tiny_overrides(tiny_pixel_dir, run, epochs=1, extra=["train.seed=7"]))
        line = _one_line_error(err)
        assert rc == 2 and f"{run} already holds a run" in line and f"--resume {run}" in line and "--overwrite" in line
    assert _epochs(run) == [0, 1] and json.loads((run / "run.json").read_text()) == first

    rc, err = _train(capsys, "--overwrite", *tiny_overrides(tiny_pixel_dir, run, epochs=1, extra=["train.seed=7"]))
    assert rc == 0, err
    assert "--overwrite: deleted" in err and "metrics.jsonl" in err and "checkpoints" in err
    assert _epochs(run) == [0] and [p.name for p in ck.list_checkpoints(run / "checkpoints")] == ["epoch_000001"]
    second = json.loads((run / "run.json").read_text())
    assert second["run_id"] != first["run_id"] and (run / "notes.txt").read_text() == "mine"

    # a checkpoint of the first run dropped into the second run's directory is not resumed from
    shutil.copytree(kept, run / "checkpoints" / "epoch_000002")
    rc, err = _train(capsys, "--resume", run, "--trust-run-code", "train.epochs=3")
    line = _one_line_error(err)
    assert rc == 2 and f"belongs to run {first['run_id']}" in line and second["run_id"] in line


def test_resume_before_the_first_checkpoint_and_a_torn_line(tiny_pixel_dir, tmp_path, capsys):
    """A kill after epoch 0 was logged, before any checkpoint, in the middle of writing epoch 1's line."""
    run = tmp_path / "run"
    rc, err = _train(capsys, *tiny_overrides(tiny_pixel_dir, run, epochs=1))
    assert rc == 0, err
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run / "final")
    (run / "reward_curves.png").unlink()
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 1, "reward/bright/me')
    rc, err = _train(capsys, "--resume", run, "--trust-run-code", "train.epochs=2")
    assert rc == 0, err
    assert "starting from epoch 0" in err and f"{run / 'metrics.jsonl'}:2 is not a complete JSON record" in err
    assert _epochs(run) == [0, 1]   # not [0, 0, 1]: the run restarted at 0, so its old epoch-0 record went too
    assert (run / "final" / "unet").is_dir() and (run / "reward_curves.png").stat().st_size > 1000
    record = json.loads((run / "run.json").read_text())
    assert [r["epoch"] for r in record["resumes"]] == [0]


def test_failed_resume_keeps_config_and_run_code_needs_consent(tiny_pixel_dir, tmp_path, capsys):
    reward = tmp_path / "marked_reward.py"
    reward.write_text(MARKED_REWARD)
    imports = tmp_path / "marked_reward.imports"
    components = f"rewards.components=[{{name: marked, callable: '{reward}:score'}}]"
    run = tmp_path / "run"
    rc, err = _train(capsys, *tiny_overrides(tiny_pixel_dir, run, epochs=1, extra=[components]))
    assert rc == 0, err
    assert imports.read_text().count("imported") == 1
    config, record = (run / "config.yaml").read_bytes(), (run / "run.json").read_bytes()

    # resuming (someone else's) run does not import the code its config.yaml names ...
    rc, err = _train(capsys, "--resume", run, "train.epochs=2")
    line = _one_line_error(err)
    assert rc == 2 and f"'{reward}:score'" in line and "--trust-run-code" in line
    assert imports.read_text().count("imported") == 1
    # ... unless the command line names it; this resume then fails on its override, after building the trainer
    rc, err = _train(capsys, "--resume", run, components, "model.lora_rank=3", "train.epochs=2")
    assert rc == 2 and "weight has shape (2, 64) in the checkpoint, (3, 64) here" in _one_line_error(err)
    assert imports.read_text().count("imported") == 2
    # a resume whose overriding reward fails in its first epoch: config.yaml still names the run's own reward
    broken = tmp_path / "broken_reward.py"
    broken.write_text("def score(images, prompts, metadata):\n    raise RuntimeError('broken reward')\n")
    rc, err = _train(capsys, "--resume", run, f"rewards.components=[{{name: marked, callable: '{broken}:score'}}]",
                     "train.epochs=2")
    assert rc == 2 and "reward 'marked' raised RuntimeError: broken reward" in _one_line_error(err)
    assert (run / "config.yaml").read_bytes() == config and (run / "run.json").read_bytes() == record
    # the failed resume left the run as it was: a plain resume (with consent) continues it
    rc, err = _train(capsys, "--resume", run, "--trust-run-code", "train.epochs=2")
    assert rc == 0, err
    saved = (run / "config.yaml").read_text()
    assert _epochs(run) == [0, 1] and re.search(r"^  epochs: 2 ", saved, re.MULTILINE) and re.search(r"^  lora_rank: 2 ", saved, re.MULTILINE)
    resumed = json.loads((run / "run.json").read_text())
    assert resumed["run_id"] == json.loads(record)["run_id"] and [r["epoch"] for r in resumed["resumes"]] == [1]


def test_a_reward_that_is_never_finite_stops_the_run(tiny_pixel_dir, tmp_path, capsys):
    reward = tmp_path / "nan_reward.py"
    reward.write_text("import torch\n\ndef score(images, prompts, metadata):\n"
                      "    return torch.full((images.shape[0],), float('nan'))\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt\nsecond prompt\n")
    run = tmp_path / "run"
    rc, err = _train(capsys, *tiny_overrides(tiny_pixel_dir, run, epochs=2, extra=[
        f"rewards.components=[{{name: broken, callable: '{reward}:score'}}]", "data.source=file", f"data.path={prompts}"]))
    line = _one_line_error(err)
    assert rc == 2 and "every one of the 4 samples" in line and "reward 'broken' on 4 sample(s)" in line
    assert re.search(r"e\.g\. prompt '(first|second) prompt'", line)
    assert not (run / "final").exists() and not (run / "checkpoints").exists()
