"""Smoke tests of the benchmark suite at tiny sizes: every case runs through the runner, the end-to-end
RL epoch's providers do the same UNet work and the same arithmetic, and the trainer's overlapped reward
scoring gives exactly the rewards and updates of the inline path. Timings are not asserted."""
import copy
import csv
import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import (bench_attention, bench_ddim_step, bench_rewards, bench_rl_epoch, bench_trajectory, eager_ddpo,
                        peer_trl, runner)

ROOT = Path(__file__).resolve().parents[1]
TINY_PIXEL = dataclasses.replace(bench_rl_epoch.SETTINGS["cpu"], name="tiny-pixel", latent=16, samples=4,
                                 sample_batch=2, steps=2, train_batch=1, reps=1)


def _sd_scheduler(steps=10):
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1)
    s.set_timesteps(steps)
    return s


def test_eager_ddpo_steps_compute_what_cxrl_computes():
    """The baseline's sampling step (diffusers step + separate log-prob) and its training recompute
    (host-gathered schedule, per-sample timesteps) agree with cxrl's fused step: same work, same answer."""
    from cxrl.diffusion.ddim import ddim_step_with_logprob

    scheduler = _sd_scheduler()
    g = torch.Generator().manual_seed(3)
    guided, x = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 4, 5, 6, generator=g)
    for t in (scheduler.timesteps[0], scheduler.timesteps[4], scheduler.timesteps[-1]):   # incl. the final step
        prev_e, lp_e = eager_ddpo.eager_sampling_step(scheduler, guided, t, x, 1.0, torch.Generator().manual_seed(7))
        prev_c, lp_c = ddim_step_with_logprob(scheduler, guided, int(t), x, 1.0, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(prev_e, prev_c, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lp_e, lp_c, rtol=1e-4, atol=1e-4)
    per_sample_t = scheduler.timesteps[[0, 5, 9]]
    prev = torch.randn(3, 4, 5, 6, generator=g) * 0.1 + x
    lp_e = eager_ddpo.eager_recompute_log_prob(scheduler, guided, per_sample_t, x, prev, 1.0)
    lp_c = ddim_step_with_logprob(scheduler, guided, per_sample_t, x, 1.0, prev_sample=prev)[1]
    torch.testing.assert_close(lp_e, lp_c, rtol=1e-4, atol=1e-3)


def test_unet_audit_counts_rows_with_and_without_grad():
    lin = torch.nn.Linear(2, 2)
    audit = bench_rl_epoch.UNetAudit(lin)

    def work():
        lin(torch.zeros(3, 2))
        with torch.no_grad():
            lin(torch.zeros(5, 2))
    assert audit(work) == {"grad": 3, "no_grad": 5}
    assert audit(lambda: None) == {"grad": 0, "no_grad": 0}   # hook removed, counts reset
    lin(torch.zeros(1, 2))


@pytest.mark.parametrize("setting", [TINY_PIXEL, bench_rl_epoch.TINY_SD15], ids=["cpu-path", "gpu-path"])
def test_rl_epoch_case_runs_and_providers_do_the_same_unet_work(setting, tmp_path, one_thread):
    """The CPU size's builders and the GPU size's (SD-1.5-layout UNet + VAE, random text encoder) at a tiny
    width; run_setting itself refuses providers whose audited UNet rows differ."""
    result = bench_rl_epoch.run_setting(setting, "cpu", tmp_path)
    assert set(result.timings) == {"eager_ddpo", "cxrl", "cxrl_sequential_scoring", "bare_unet"}
    assert result.baseline == "eager_ddpo"
    x = result.extra
    assert x["unet_rows_fwd"] == 2 * setting.samples * setting.steps                # CFG: 2 rows per image
    assert x["unet_rows_fwd_bwd"] == 2 * setting.samples * setting.trained_steps
    assert x["cxrl_anchor_images_sampled_in_timed_epochs"] == 0                     # anchor scores from the cache
    assert x["unet_tflop_per_epoch"] > 0 and 0 < x["mfu_bare_unet"]
    for key in ("overhead_epoch_vs_bare_unet", "eager_ddpo_sample_img_per_s", "cxrl_train_img_per_s",
                "cxrl_score_img_per_s", "cxrl_sequential_scoring_score_img_per_s"):
        assert 0 < x[key] < float("inf"), key
    assert all(len(t.seconds) == setting.reps for t in result.timings.values())


def test_trainer_reward_overlap_gives_identical_rewards_and_updates(tmp_path, one_thread):
    """rewards.overlap scores chunk k on the scoring thread (anchor sampled there, with the policy's LoRA
    disabled under the trainer's UNet lock) while chunk k+1 is sampled; nothing may change but the time."""
    from cxrl.rewards import AnchorScoreCache

    trainer, _ = bench_rl_epoch.build_trainer(TINY_PIXEL, "cpu", tmp_path)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # LoRA B starts at zero: make policy != anchor so a mixed-up adapter state would show
        for p in trainer.policy.unet_params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    snapshot = copy.deepcopy(trainer.state_groups())
    runs = {}
    for overlap in (True, False):
        trainer.load_state_groups(copy.deepcopy(snapshot))
        trainer.suite.cache = AnchorScoreCache(None, "test", {})     # every anchor score is a miss: sampled
        trainer.suite.anchor_images_generated = 0
        trainer.cfg.rewards.overlap = overlap
        metrics = trainer.run_epoch(1)
        runs[overlap] = ({k: v for k, v in metrics.items() if not k.startswith("throughput/")},
                         [p.detach().clone() for p in trainer.policy.params])
    trainer.close()
    (m_on, w_on), (m_off, w_off) = runs[True], runs[False]
    assert m_on["anchor/images_generated"] == TINY_PIXEL.samples
    assert m_on == m_off
    assert all(torch.equal(a, b) for a, b in zip(w_on, w_off))
    assert any(not torch.equal(a, b) for a, b in zip(w_on, snapshot["weights"].values()))   # it did train


def test_every_case_runs_through_the_runner_at_a_tiny_size(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(bench_ddim_step, "SHAPES", {"tiny": (2, 1, 4, 4)})
    monkeypatch.setattr(bench_attention, "cpu_shapes", lambda: [bench_attention.Shape("tiny", 1, 2, 9, 5, 8)])
    monkeypatch.setitem(bench_rewards.SIZES, "cpu", dict(batch=2, res=32, widths=(16, 32), steps=1, batches=2,
                                                         epochs=2, reps=1))
    workload = bench_trajectory.Workload
    monkeypatch.setattr(bench_trajectory, "Workload",
                        lambda n, t, shape, device, reps, warmup: workload(12, 2, (1, 3, 3), device, reps=1, warmup=0))
    monkeypatch.setitem(bench_rl_epoch.SETTINGS, "cpu", TINY_PIXEL)
    monkeypatch.setitem(peer_trl.PEER_SETTINGS, "cpu", peer_trl.TINY_PEERS["cpu-path"])
    json_path = tmp_path / "all.json"
    assert runner.main(["--size", "cpu", "--json", str(json_path), "--results-dir", str(tmp_path / "res")]) == 0
    cases = {row["case"] for row in json.loads(json_path.read_text())["results"]}
    peer = {"rl_epoch_trl"} if peer_trl.trl_unavailable_reason() is None else set()   # the optional TRL peer
    assert cases == {"ddim_step", "attention", "trajectory_store", "rewards_overlap", "rewards_anchor_cache", "rl_epoch"} | peer
    with (tmp_path / "res" / "rl_epoch.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["provider"] for r in rows} == {"eager_ddpo", "cxrl", "cxrl_sequential_scoring", "bare_unet"}
    assert all(r["git_sha"] and r["device"] for r in rows)


def test_gpu_suite_script_parses():
    # what the suite runs, in which order and within which caps: tests/test_gpu_suite.py
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_suite.sh")], check=True)


def test_gpu_check_rl_epoch_checks_run_on_the_cpu(capsys, one_thread):
    """The GPU check's new sections are device-generic: run them here so the lent GPU only meets tested code."""
    from benchmarks import gpu_check

    gpu_check.FAILURES.clear()
    gpu_check.check_eager_baseline_step(torch.device("cpu"))
    gpu_check.check_overlapped_scoring(torch.device("cpu"))
    out = capsys.readouterr().out
    assert gpu_check.FAILURES == [], out
    assert out.count("[ok]") == 2


def test_gpu_size_without_cuda_is_an_error_not_a_silent_cpu_run():
    from benchmarks.harness import device_for_size

    assert device_for_size("cpu") == "cpu"
    with pytest.raises(ValueError, match="'tpu'"):
        device_for_size("tpu")
    if not torch.cuda.is_available():
        for case in (bench_attention, bench_ddim_step, bench_rewards, bench_rl_epoch, bench_trajectory):
            with pytest.raises(RuntimeError, match="CUDA"):
                case.run("gpu")


def test_cpu_sampling_benchmark_times_each_case_against_what_it_replaces(tmp_path):
    from benchmarks import cpu_sampling

    out = tmp_path / "cpu_sampling.json"
    assert cpu_sampling.main(["--threads", "2", "--reps", "2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["machine"]["matmul_fp32_1024_1thread_tflops"] > 0
    cases = {r["case"]: r for r in record["results"]}
    assert len(cases) == 2 and all(c.startswith("8 forwards") for c in cases)
    for r in cases.values():
        times = [v for k, v in r.items() if k.endswith("_ms")]
        assert len(times) == 2 and all(v > 0 for v in times)
        assert r["speedup"] == pytest.approx(times[0] / times[1], rel=1e-2)


def test_bootstrap_benchmark_agrees_with_the_per_resample_path(tmp_path):
    from benchmarks import bootstrap_speed

    out = tmp_path / "bootstrap.json"
    assert bootstrap_speed.main(["--resamples", "20", "--prompts", "80", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["prompts"] == 80 and record["resamples"] == 20 and record["samples_per_prompt"] == 4
    assert record["max_abs_difference"] < 1e-12   # the same intervals as building every resample
    assert record["per_resample_s"] > 0 and record["all_at_once_s"] > 0
