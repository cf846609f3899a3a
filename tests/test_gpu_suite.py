"""The GPU suite (benchmarks/gpu_suite.sh) rehearsed on the CPU: it leaves its 4 files whatever happens,
records every step, isolates failures and hangs, and says how to provide missing wheels.

The full rehearsal (every step, ~2.5 min on the 2-core dev machine) is ``@pytest.mark.slow``; the default
run rehearses the subset ``--only build,backend,ddim_bandwidth,attention`` (setup always runs), which
covers the driver-run steps, the Python steps with their Triton kernels interpreted, the bundle and the
table; the pytest-kind steps' parsing is checked on a two-test file; the UNet, rl_epoch and gpu_check steps
run in the slow test (their code also runs in tests/test_benchmarks.py and tests/diffusion); the demo step (`cxrl
train` under torchrun, one epoch, ~30 s) runs in the default set."""
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from benchmarks import gpu_demo, gpu_report, gpu_suite

ROOT = Path(__file__).resolve().parents[1]
FILES = {"summary.json", "suite.log", "table.txt", "bundle.tar.gz"}


def _run_suite(out: Path, *args: str, env_extra: dict | None = None, timeout: float = 900):
    env = dict(os.environ, OUT=str(out), **(env_extra or {}))
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--rehearse", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    summary = json.loads((out / "summary.json").read_text())
    return proc, summary, time.monotonic() - t0


def _bundle_names(out: Path) -> set[str]:
    with tarfile.open(out / "bundle.tar.gz") as tar:
        return set(tar.getnames())


def _check_files_and_table(out: Path, proc) -> None:
    assert {p.name for p in out.iterdir()} == FILES                      # at most 4 files, no folders
    table = (out / "table.txt").read_text().strip()
    assert len(table) < 8000
    assert proc.stdout.rstrip().endswith(table)                            # the console ends with the table


def test_steps_come_in_the_issue_order_and_their_caps_fit_the_budget():
    names = [s.name for s in gpu_suite.STEPS]
    assert names == ["setup", "build", "backend", "kernels_ddim", "kernels_flash", "ddim_bandwidth", "attention",
                     "unet_equivalence", "rl_epoch", "peer_trl", "gpu_check", "demo"]
    assert [s.name for s in gpu_suite.STEPS if s.optional] == ["demo"]   # last: it gets what the others left
    assert gpu_suite.caps_sum(rehearse=False) <= gpu_suite.BUDGET_S == 480
    assert gpu_suite.caps_sum(rehearse=True) <= gpu_suite.REHEARSAL_BUDGET_S
    needs = {s.name: s.needs for s in gpu_suite.STEPS}
    assert "cxrl._C" in needs["rl_epoch"] and "diffusers" in needs["unet_equivalence"] and "trl" in needs["peer_trl"]
    assert "diffusers" not in needs["kernels_flash"] + needs["ddim_bandwidth"] + needs["attention"]


def test_quick_rehearsal_passes_and_leaves_its_four_files(tmp_path):
    out = tmp_path / "out"
    proc, summary, wall = _run_suite(out, "--only", "build,backend,ddim_bandwidth,attention")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    _check_files_and_table(out, proc)
    assert [e["name"] for e in summary["steps"]] == ["setup", "build", "backend", "ddim_bandwidth", "attention"]
    assert all(e["status"] == "pass" for e in summary["steps"]), summary["steps"]
    steps = {e["name"]: e for e in summary["steps"]}
    assert steps["backend"]["headline"]["triton_on"] is True
    bandwidth = steps["ddim_bandwidth"]
    sizes = ("sd", "hbm", "hbm-b256", "hbm-b512", "hbm-b512w2")
    assert {(r["size"], r["dtype"]) for r in bandwidth["rows"]} == {(s, d) for s in sizes for d in ("float32", "bfloat16")}
    assert all(c["ok"] for c in bandwidth["checks"]) and len(bandwidth["checks"]) == 10  # each row checked first
    attention = steps["attention"]
    assert len(attention["rows"]) == 16                                   # 8 SD-1.5 shape families x 2 modes
    assert all(r["auto_pick"] == "sdpa" for r in attention["rows"])      # auto on a CPU
    assert all("ms_triton" in r and "ms_sdpa" in r and "ms_auto" in r for r in attention["rows"])
    assert attention["compile_s"] > 0 and attention["run_s"] > 0
    names = _bundle_names(out)
    for step in ("setup", "backend", "ddim_bandwidth", "attention"):
        assert f"bundle/logs/{step}.log" in names
    assert {"bundle/json/attention.json", "bundle/summary.json", "bundle/autotune_picks.txt"} <= names
    assert any(n.startswith("bundle/results/attention") for n in names)   # the CSV rows
    print(f"quick rehearsal wall {wall:.1f} s")


def test_a_failing_and_a_hanging_step_are_recorded_and_the_others_run(tmp_path):
    out = tmp_path / "out"
    proc, summary, wall = _run_suite(out, "--only", "backend,ddim_bandwidth,gpu_check", "--cap", "gpu_check=4",
                                     env_extra={"CXRL_SUITE_INJECT": "backend=fail,gpu_check=hang"})
    assert proc.returncode != 0
    _check_files_and_table(out, proc)
    status = {e["name"]: e["status"] for e in summary["steps"]}
    assert status == {"setup": "pass", "backend": "fail", "ddim_bandwidth": "pass", "gpu_check": "timeout"}
    assert summary["exit_code"] == 1 and summary["counts"] == {"pass": 2, "fail": 1, "timeout": 1, "skipped": 0}
    assert "failure injected" in (out / "suite.log").read_text()          # the failing step's log tail
    assert {"bundle/logs/backend.log", "bundle/logs/gpu_check.log"} <= _bundle_names(out)
    assert wall < 120   # the hanging step was ended at its 4 s cap, not left to sleep


def test_missing_diffusers_skips_its_steps_with_one_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.setattr(gpu_suite, "WHEEL_DIR", tmp_path / "no-wheels")           # nothing carried
    monkeypatch.setattr(gpu_suite, "probe", lambda suite, timeout: {"torch": "2", "diffusers": None,
                                                                     "cxrl._C": "imports"})
    code = gpu_suite.main(["--rehearse", "--only", "unet_equivalence,rl_epoch"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert code == 1
    skipped = {e["name"]: e for e in summary["steps"] if e["status"] == "skipped"}
    assert set(skipped) == {"unet_equivalence", "rl_epoch"}
    assert all("diffusers" in e["reason"] for e in skipped.values())
    assert "device-wheels.sh --peers" in summary["hint"] and '".whl"' in summary["hint"]
    log_lines = [ln for ln in (tmp_path / "out" / "suite.log").read_text().splitlines() if "device-wheels" in ln]
    assert len(log_lines) == 1
    assert "!! " + summary["hint"] in capsys.readouterr().out            # and in the table that ends the console


def test_pytest_step_outcome_from_junit_and_from_the_log_of_a_killed_run(tmp_path):
    (tmp_path / "test_two.py").write_text("def test_good():\n    assert 1\n\ndef test_bad():\n    assert 0\n")
    junit, log = tmp_path / "j.xml", tmp_path / "step.log"
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "addopts=",
                               str(tmp_path / "test_two.py"), "--junitxml", str(junit)], stdout=f,
                              stderr=subprocess.STDOUT, cwd=tmp_path, check=False).returncode
    done = gpu_report.step_outcome("pytest", code, False, tmp_path / "none.json", junit, log)
    assert done["headline"] == {"passed": 1, "failed": 1, "errors": 0, "skipped": 0}
    assert done["status"] == "fail" and "test_bad" in done["reason"]
    killed = gpu_report.step_outcome("pytest", None, True, tmp_path / "none.json", tmp_path / "absent.xml", log)
    assert killed["status"] == "timeout" and killed["headline"]["passed"] == 1 and killed["headline"]["failed"] == 1


def test_demo_step_runs_cxrl_train_under_torchrun_and_keeps_its_files(tmp_path):
    out = tmp_path / "out"
    proc, summary, wall = _run_suite(out, "--only", "demo")
    assert proc.returncode == 0, proc.stdout[-4000:]
    _check_files_and_table(out, proc)
    demo = {e["name"]: e for e in summary["steps"]}["demo"]
    head = demo["headline"]
    assert demo["status"] == "pass" and head["exit_code"] == 0 and head["device"] == "cpu"
    assert head["epochs_done"] == 1 == len(demo["rows"]) and head["total_s"] > 0
    assert head["posture_ci_low"] is not None                              # the evaluation's table was read
    assert {"bundle/results/demo/run.json", "bundle/results/demo/metrics.jsonl",
            "bundle/results/demo/eval/comparison.json"} <= _bundle_names(out)
    # the timeout the driver gave the step reached it: the run got that minus the step's margin
    assert head["timeout_s"] == demo["timeout_s"] - gpu_demo.MARGIN_S


@pytest.mark.slow
def test_full_rehearsal_every_step_passes(tmp_path):
    out = tmp_path / "out"
    proc, summary, wall = _run_suite(out)
    assert proc.returncode == 0, proc.stdout[-4000:]
    _check_files_and_table(out, proc)
    assert [e["name"] for e in summary["steps"]] == [s.name for s in gpu_suite.STEPS]
    assert all(e["status"] == "pass" for e in summary["steps"]), [(e["name"], e.get("reason")) for e in summary["steps"]]
    names = _bundle_names(out)
    assert all(f"bundle/logs/{s.name}.log" in names for s in gpu_suite.STEPS if s.name != "build")
    assert {"bundle/junit/kernels_ddim.xml", "bundle/junit/kernels_flash.xml"} <= names
    steps = {e["name"]: e for e in summary["steps"]}
    assert steps["unet_equivalence"]["headline"]["triton_attention_shapes"] > 0
    assert {"cxrl", "eager_ddpo", "bare_unet"} <= set(steps["rl_epoch"]["headline"]["providers"])
    print(f"full rehearsal wall {wall:.1f} s")


def test_the_peer_steps_cxrl_settings_come_from_the_environment_and_are_checked_first():
    from benchmarks.gpu_steps import peer_overrides

    assert peer_overrides({}) == []
    assert peer_overrides({"CXRL_SUITE_PEER_SET": " train.deterministic=false  rewards.overlap=false "}) == [
        "train.deterministic=false", "rewards.overlap=false"]
    with pytest.raises(ValueError, match="did you mean 'train.deterministic'"):
        peer_overrides({"CXRL_SUITE_PEER_SET": "train.determinstic=false"})
    with pytest.raises(ValueError, match="must be true/false"):
        peer_overrides({"CXRL_SUITE_PEER_SET": "train.deterministic=maybe"})


def test_the_table_shows_every_peer_ratio_with_the_settings_that_made_it():
    rows = [{"preset": "case-16img-10steps-tf0.5-cfg5.0-lora-bf16 cxrl:model.compile=default", "trl_epoch_s": 3.7,
             "cxrl_epoch_s": 2.5, "cxrl_speedup_over_trl": 1.48}]
    summary = {"mode": "gpu", "device": "H200", "wall_s": 100, "budget_s": 480, "exit_code": 0,
               "steps": [{"name": "peer_trl", "status": "pass", "seconds": 90.0,
                          "headline": {"cxrl_vs_trl[case]": 0.99, "cxrl_vs_trl[case model.compile=default]": 1.48},
                          "rows": rows}]}
    text = gpu_report.table(summary)
    line = next(l for l in text.splitlines() if l.startswith("peer_trl"))
    assert "cxrl_vs_trl[case]=0.99" in line and "cxrl_vs_trl[case model.compile=default]=1.48" in line
    assert "lora-bf16 cxrl:model.compile=default" in text        # the preset is not cut before its settings
