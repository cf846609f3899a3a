"""One step of the GPU suite, run in its own process: ``python -m benchmarks.gpu_steps STEP --json FILE [--rehearse]``.

``benchmarks/gpu_suite.py`` starts one such process per step with a timeout, so a crash, a compile error
or a hang costs that step only. Each step writes what it learned to its JSON file (a :class:`StepRecord`)
after every row or check, so a step killed at its cap still leaves the rows it finished.

``--rehearse`` runs the same code on the CPU at tiny sizes (Triton kernels under ``TRITON_INTERPRET=1``,
which the suite sets before Python starts); without it a step needs a CUDA device.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path


class StepRecord:
    """A step's findings: headline numbers, table rows, named checks, compile vs run seconds, notes.

    Rewritten to ``path`` (atomically) after every change."""

    def __init__(self, path: str | Path, step: str, rehearse: bool):
        self.path = Path(path)
        self.data: dict = {"step": step, "rehearse": rehearse, "headline": {}, "rows": [], "checks": [],
                           "compile_s": 0.0, "run_s": 0.0, "notes": [], "error": None}
        self.save()

    @property
    def failures(self) -> list[str]:
        return [c["name"] for c in self.data["checks"] if not c["ok"]]

    def headline(self, **values) -> None:
        self.data["headline"].update(values)
        self.save()

    def row(self, row: dict) -> None:
        self.data["rows"].append(row)
        self.save()

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        self.data["checks"].append({"name": name, "ok": bool(ok), "detail": detail})
        self.save()
        return ok

    def add_time(self, compile_s: float = 0.0, run_s: float = 0.0) -> None:
        self.data["compile_s"] += compile_s
        self.data["run_s"] += run_s
        self.save()

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.data["notes"].append(text)
        self.save()

    def error(self, text: str) -> None:
        self.data["error"] = text
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def device_for(rehearse: bool) -> str:
    """``cpu`` for a rehearsal; ``cuda`` otherwise, and then a missing GPU is an error, not a CPU run."""
    if rehearse:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible to torch; run the suite with --rehearse on a CPU machine")
    return "cuda"


def median_ms(fn, reps: int, device: str, inner: int = 1) -> float:
    """Median milliseconds of one call of ``fn`` over ``reps`` timings of ``inner`` back-to-back calls.

    CUDA events on a GPU (no host clock in the loop), ``perf_counter`` on the CPU."""
    import torch

    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t0) * 1e3 / inner)
    return statistics.median(times)


def timed_first_call(fn, device: str) -> float:
    """Seconds of one call, synchronized: on a first call that is mostly Triton's compile (and autotune)."""
    import torch

    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


# -- the small steps -------------------------------------------------------------------------------


def backend_step(rec: StepRecord, rehearse: bool) -> None:
    """Versions, the device, and cxrl's backend report (which of its fast paths are on, and why not)."""
    import platform

    import torch

    # cxrl imported here, like each step's heavy imports: a step's process loads only what that step uses
    import cxrl
    from cxrl._backend import format_report

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as err:
        info["triton"] = f"missing ({err})"
    if torch.cuda.is_available() and not rehearse:
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))
    else:
        info["device"] = f"cpu x{os.cpu_count()}"
    report = cxrl.backend_report()
    for name in ("cpp_store", "triton", "xformers", "sdpa"):
        info[f"{name}_on"] = report[name]["active"]
    rec.headline(**info)
    print(json.dumps(info, indent=1))
    print(format_report(report), flush=True)
    rec.data["backend_report"] = report
    rec.save()
    if rehearse:
        rec.check("triton kernels run (interpreter)", report["triton"]["active"], report["triton"]["reason"])
    else:
        rec.check("CUDA device", torch.cuda.is_available(), info.get("device", "none"))
        rec.check("triton kernels compiled for CUDA", report["triton"]["active"] and
                  os.environ.get("TRITON_INTERPRET") != "1", report["triton"]["reason"])
    rec.check("cxrl._C trajectory store", report["cpp_store"]["active"], report["cpp_store"]["reason"])


def rl_epoch_step(rec: StepRecord, rehearse: bool) -> None:
    """The end-to-end RL epoch (bench_rl_epoch) at the SD-1.5 shape, UNet attention through cxrl's processor.

    Runs whatever providers the case defines (cxrl, eager_ddpo, bare_unet, ... and a peer when the case
    has one), so a provider added to the case shows up here with no change."""
    import dataclasses
    import tempfile

    from . import bench_rl_epoch
    from .harness import append_csv

    device = device_for(rehearse)
    # one timed epoch per provider (after the warm-up and the audited one), a quarter of the full case: the 8-minute budget
    setting = bench_rl_epoch.TINY_SD15 if rehearse else bench_rl_epoch.GPU_SUITE
    rec.headline(setting=setting.name, attention=setting.attention_backend, reps=setting.reps, steps=setting.steps,
                 images_per_epoch=setting.samples)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cxrl-suite-rl-") as work:
        result = bench_rl_epoch.run_setting(setting, device, Path(work))
    wall = time.perf_counter() - t0
    timed = sum(sum(t.seconds) for t in result.timings.values())
    # everything before the timed epochs: model build, Triton compiles, auto's timing, the audited epochs
    rec.add_time(compile_s=wall - timed, run_s=timed)
    append_csv(result, os.environ.get("CXRL_BENCH_RESULTS"))
    print(result.table(), flush=True)
    x = result.extra
    for name, t in result.timings.items():
        rec.row({"provider": name, "epoch_s": t.median, "images_per_s": setting.samples / t.median,
                 "x_vs_eager": result.ratio(name)})
    keys = ("overhead_epoch_vs_bare_unet", "mfu_bare_unet", "mfu_cxrl_epoch", "unet_tflop_per_epoch",
            "cxrl_anchor_images_sampled_in_timed_epochs")
    rec.headline(providers=list(result.timings), **{k: x[k] for k in keys if k in x},
                 **{k: v for k, v in x.items() if k.startswith("matmul_tflops")},
                 cxrl_vs_eager=result.ratio("cxrl"),
                 **{f"{n}_img_per_s": setting.samples / t.median for n, t in result.timings.items()})
    # run_setting itself refuses providers whose audited UNet rows differ (it raises)
    want = {"cxrl", "eager_ddpo", "bare_unet"}
    rec.check("providers ran", want <= set(result.timings), f"{sorted(result.timings)}")
    anchors = x.get("cxrl_anchor_images_sampled_in_timed_epochs", -1)
    rec.check("cxrl's anchor scores came from the cache", anchors == 0, f"{anchors:g} anchor images sampled")


def peer_overrides(environ=os.environ) -> list[str]:
    """cxrl-side settings for the peer step from ``CXRL_SUITE_PEER_SET`` (``key=value`` words, as on cxrl's command
    line), e.g. ``train.deterministic=false`` to time what determinism costs on the GPU; checked before any model is
    built, so a typo costs seconds, not the step."""
    from cxrl.config import Config, apply_overrides

    words = environ.get("CXRL_SUITE_PEER_SET", "").split()
    apply_overrides(Config(), words)   # raises with the config's own message on an unknown key or a bad value
    return words


def peer_trl_step(rec: StepRecord, rehearse: bool) -> None:
    """TRL's DDPOTrainer beside cxrl at equal settings (benchmarks/peer_trl.py) at the SD-1.5 shape: one timed epoch
    each after the audited one; the goal is cxrl >= 1.5x TRL. Skipped with the reason when trl does not import.
    ``CXRL_SUITE_PEER_SET`` changes cxrl-side run-time settings (:func:`peer_overrides`); the row's preset names them."""
    import dataclasses
    import tempfile

    from . import peer_trl
    from .harness import append_csv

    overrides = peer_overrides()
    reason = peer_trl.trl_unavailable_reason()
    if reason is not None:
        # the driver checks trl before it starts this step; reaching here means the import broke after that check
        raise RuntimeError(f"trl not importable ({reason}); carry the wheels of ../shared/tools/device-wheels.sh --peers")
    device = device_for(rehearse)
    size = "gpu"
    if rehearse:   # the GPU code path (SD-1.5 layout, bf16 mapping) at tiny widths on the CPU
        peer_trl.PEER_SETTINGS[size] = dataclasses.replace(peer_trl.TINY_PEERS["gpu-path"], reps=1)
    else:          # the rl_epoch step's setting: the SD-1.5 shape at a quarter of the full case's work
        from .bench_rl_epoch import GPU_SUITE

        peer_trl.PEER_SETTINGS[size] = GPU_SUITE
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cxrl-suite-trl-") as work:
        results = peer_trl.run_peers(size, device, Path(work), reps=1, overrides=overrides)
    wall = time.perf_counter() - t0
    timed = sum(sum(t.seconds) for r in results for t in r.timings.values())
    rec.add_time(compile_s=wall - timed, run_s=timed)
    for result in results:
        append_csv(result, os.environ.get("CXRL_BENCH_RESULTS"))
        print(result.table(), flush=True)
        speedup = result.timings["trl"].median / result.timings["cxrl"].median
        rec.row({"preset": result.mode, "trl_epoch_s": result.timings["trl"].median,
                 "cxrl_epoch_s": result.timings["cxrl"].median, "cxrl_speedup_over_trl": speedup})
        label = result.mode.split("-")[0] + "".join(f" {o}" for o in overrides)
        rec.headline(**{f"cxrl_vs_trl[{label}]": speedup})
    rec.check("peer rows", bool(results), f"{len(results)} preset(s)")


STEPS = {
    "backend": "benchmarks.gpu_steps:backend_step",
    "ddim_bandwidth": "benchmarks.gpu_bandwidth:bandwidth_step",
    "attention": "benchmarks.bench_attention:suite_step",
    "unet_equivalence": "benchmarks.gpu_unet_check:unet_equivalence_step",
    "rl_epoch": "benchmarks.gpu_steps:rl_epoch_step",
    "peer_trl": "benchmarks.gpu_steps:peer_trl_step",
    "gpu_check": "benchmarks.gpu_check:suite_step",
    "demo": "benchmarks.gpu_demo:demo_step",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_steps", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--json", required=True, help="where the step's record goes")
    parser.add_argument("--rehearse", action="store_true", help="CPU, tiny sizes, Triton interpreted")
    args = parser.parse_args(argv)
    rec = StepRecord(args.json, args.step, args.rehearse)
    module, func = STEPS[args.step].split(":")
    try:
        getattr(importlib.import_module(module), func)(rec, args.rehearse)
    except Exception as err:  # recorded; the suite reads the record and goes on with the next step
        traceback.print_exc()
        rec.error(f"{type(err).__name__}: {err}".splitlines()[0][:500])
        return 1
    if rec.failures:
        print(f"{args.step}: {len(rec.failures)} failed check(s): {rec.failures}", flush=True)
    return 1 if rec.failures else 0


if __name__ == "__main__":
    sys.exit(main())
