"""The GPU suite's driver: ``bash benchmarks/gpu_suite.sh [--rehearse] [--only a,b] [--budget S]``.

Runs the steps below in order, most valuable first, each in its own process with its own cap, so that
whatever happens to one step (a compile error, a crash, a hang) the next one runs and what was learned
comes back. Caps sum to at most the budget (default 480 s of script time, the build included); a step
that no longer fits is ``skipped`` with the reason, one killed at its cap is ``timeout``. The driver uses
the standard library only: it never imports torch, so nothing it does can break on the device.

Leaves at most 4 files in ``$OUT`` (``gpu_report.py``): ``summary.json`` (one entry per step: status,
seconds, compile vs run seconds, headline numbers), ``suite.log``, ``bundle.tar.gz`` (every step's log
and JSON, the CSV rows, the Triton cache with the autotune picks) and ``table.txt``; the console ends
with the same compact table. Exit code 0 only when every step passed.

``--rehearse`` runs every step on the CPU at tiny sizes (Triton kernels under ``TRITON_INTERPRET=1``)
so the script never runs for the first time on a GPU. ``CXRL_SUITE_INJECT="step=fail,step=hang"``
replaces a step by a failing or hanging process (the tests use it to check the isolation).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import gpu_report

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 480
REHEARSAL_BUDGET_S = 1000
RESERVE_S = 10   # kept back from the last step for summary.json, the bundle and the table
WHEEL_DIR = ROOT / ".whl"   # what ../shared/tools/device-wheels.sh fills and the device call carries
WHEEL_SITE = "/tmp/site"
WHEEL_HINT = ("diffusers is not importable and no wheels were carried: on the dev machine run "
              "`../shared/tools/device-wheels.sh --peers` in the project root, then call the device tool with "
              "carry [\".whl\"]; the steps that need diffusers are skipped")


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    title: str
    cap_s: int              # on the GPU
    rehearse_cap_s: int
    needs: tuple = ()       # 'diffusers', 'cxrl._C', 'cuda', 'trl', 'torchxrayvision'
    kind: str = "python"    # python: benchmarks.gpu_steps STEP; pytest: ``target`` on the device; driver: here
    target: str = ""
    optional: bool = False  # runs last, in what the budget has left (up to its cap); not in caps_sum


STEPS = (
    Step("setup", "carried wheels, import paths, what is installed", 10, 50, kind="driver"),
    Step("build", "cxrl._C (C++ trajectory store)", 25, 80, kind="driver"),
    Step("backend", "versions, device, cxrl backend report", 12, 50),
    Step("kernels_ddim", "tests/kernels: fused DDIM step vs reference, fp32/bf16", 35, 90, ("diffusers", "cuda"),
         "pytest", "tests/kernels/test_ddim_logprob.py"),
    Step("kernels_flash", "tests/kernels: flash attention vs fp64, fp32/fp16/bf16", 85, 90, ("cuda",),
         "pytest", "tests/kernels/test_flash_attention.py"),
    Step("ddim_bandwidth", "fused DDIM step GB/s vs copy GB/s, same run; blocks of 2048/4096 beside the default", 12, 60, ("cuda",)),
    Step("attention", "flash attention fwd, fwd+bwd at SD-1.5 shapes vs SDPA/xformers, auto's pick", 60, 90, ("cuda",)),
    Step("unet_equivalence", "SD-1.5 UNet: cxrl processor == SDPA processor, bf16 fwd+bwd", 30, 100,
         ("diffusers", "cuda")),
    Step("rl_epoch", "RL epoch at the SD-1.5 shape (16 images x 10 steps): cxrl vs eager vs bare UNet", 75, 150,
         ("diffusers", "cxrl._C", "cuda")),
    Step("peer_trl", "RL epoch at the SD-1.5 shape: cxrl vs TRL's DDPOTrainer, equal settings (goal >= 1.5x)", 55, 120,
         ("diffusers", "cxrl._C", "cuda", "trl")),
    Step("gpu_check", "large-shape kernels, eager step, overlapped scoring on CUDA streams", 40, 100,
         ("diffusers", "cuda")),
    # the product's main job on CUDA under torchrun (benchmarks/gpu_demo.py): whatever time the others left
    Step("demo", "cxrl train (embedded default) on CUDA under torchrun: epochs, evaluation, run.json", 150, 150,
         ("diffusers", "cxrl._C", "cuda", "torchxrayvision"), optional=True),
)


def caps_sum(rehearse: bool) -> int:
    """What the steps may take together, the reserve included (tests/test_gpu_suite.py: <= the budget)."""
    return sum(s.rehearse_cap_s if rehearse else s.cap_s for s in STEPS if not s.optional) + RESERVE_S


class Interrupted(Exception):
    """SIGTERM/SIGINT reached the driver: stop the running step, write what there is."""


@dataclasses.dataclass
class Suite:
    args: argparse.Namespace
    out: Path
    work: Path
    log: gpu_report.Log
    env: dict
    started: float = dataclasses.field(default_factory=time.monotonic)
    have: dict = dataclasses.field(default_factory=dict)
    results: list = dataclasses.field(default_factory=list)
    hint: str | None = None

    @property
    def rehearse(self) -> bool:
        return self.args.rehearse

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.started) - RESERVE_S


def base_env(work: Path, rehearse: bool) -> dict:
    env = dict(os.environ)
    paths = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", MPLBACKEND="Agg",
               TRITON_CACHE_DIR=str(work / "triton_cache"), TRITON_CACHE_AUTOTUNING="1",
               TRITON_PRINT_AUTOTUNING="1", XDG_CACHE_HOME=str(work / "cache"),
               CXRL_CACHE_DIR=str(work / "cache" / "cxrl"), CXRL_BENCH_RESULTS=str(work / "results"),
               CXRL_ATTENTION_CACHE_DIR=str(work / "cache" / "attention"))   # auto's decisions go into the bundle
    if rehearse:   # CPU only, kernels interpreted, one thread per process on a small shared machine
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env.pop("CXRL_TEST_GPU", None)
    else:
        env["CXRL_TEST_GPU"] = "1"   # tests/conftest.py then leaves TRITON_INTERPRET unset
        env.pop("TRITON_INTERPRET", None)
    return env


def run_process(argv: list, env: dict, timeout: float, log_path: Path) -> tuple[int | None, bool]:
    """(exit code, timed out). The process gets its own session; on timeout its whole group is ended."""
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(map(str, argv))}\n".encode())
        log.flush()
        proc = subprocess.Popen([str(a) for a in argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=max(timeout, 1)), False
        except subprocess.TimeoutExpired:
            return None, True
        finally:   # also when SIGTERM reached the driver meanwhile (Interrupted)
            end_group(proc)


def end_group(proc: subprocess.Popen) -> None:
    """End what is left of the step's own process group (start_new_session): pytest workers, say."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def probe(suite: Suite, timeout: float) -> dict:
    path = suite.work / "logs" / "setup.log"
    code, _ = run_process([sys.executable, "-c", gpu_report.PROBE], suite.env, timeout, path)
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if code == 0 and lines else {}


def setup_step(suite: Suite, timeout: float) -> dict:
    t0 = time.monotonic()
    notes = []
    for name in ("benchmarks",):   # the package layout of a dev checkout (setup.py's package_dir)
        link = ROOT / "cxrl" / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(Path("..") / name)
            notes.append(f"linked cxrl/{name} -> ../{name}")
    wheels = sorted(WHEEL_DIR.glob("*.whl"))
    status = "pass"
    if wheels:
        target = suite.work / "site" if suite.rehearse else Path(WHEEL_SITE)
        code, timed_out = run_process([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                       "--no-compile", "--no-cache-dir", "--upgrade", "--target", target, *wheels],
                                      suite.env, max(timeout - 10, 5), suite.work / "logs" / "setup.log")
        if code != 0:
            status = "timeout" if timed_out else "fail"
            notes.append(f"pip install of {len(wheels)} carried wheels failed (setup.log)")
        elif suite.rehearse:   # the dev machine keeps its own packages: installed, checked, not put on the path
            notes.append(f"rehearsal: {len(wheels)} wheels installed to {target}, not put on PYTHONPATH")
        else:
            suite.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(target), suite.env["PYTHONPATH"]])
            notes.append(f"{len(wheels)} carried wheels installed to {target}")
    found = probe(suite, max(timeout - (time.monotonic() - t0), 5))
    suite.have = {"diffusers": bool(found.get("diffusers")), "cxrl._C": bool(found.get("cxrl._C")),
                  "pybind11": bool(found.get("pybind11")), "xdist": bool(found.get("xdist")), "trl": bool(found.get("trl")),
                  "torchxrayvision": bool(found.get("torchxrayvision"))}
    if not found:
        status, notes = "fail", notes + ["the import probe failed (setup.log)"]
        for name in ("diffusers", "cxrl._C", "trl", "torchxrayvision"):   # unknown: let the steps find out
            suite.have[name] = True
    if found and not found.get("diffusers") and not wheels:
        suite.hint = WHEEL_HINT
        suite.log.line(WHEEL_HINT)
    with open(suite.work / "logs" / "setup.log", "a") as log:
        log.write("".join(f"{n}\n" for n in notes) + f"found: {json.dumps(found)}\n")
    return {"status": status, "reason": "; ".join(notes),
            "headline": {"wheels": len(wheels), **{k: v or "missing" for k, v in found.items()}}}


def build_step(suite: Suite, timeout: float) -> dict:
    log = suite.work / "logs" / "build.log"
    if suite.rehearse and not suite.have.get("pybind11"):
        # CI and the dev machine build cxrl._C through pip's isolated environment and have no pybind11 to
        # rebuild with; the GPU image has it. Check instead that the extension the later steps use imports.
        ok = suite.have.get("cxrl._C", False)
        return {"status": "pass" if ok else "fail", "headline": {"compiled": False, "cxrl._C": "imports" if ok else "missing"},
                "reason": "rehearsal: not compiled (pybind11 is not importable here; the GPU image has it); "
                          + ("the existing cxrl._C imports" if ok else "and cxrl._C does not import")}
    env = dict(suite.env, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    if suite.rehearse:   # compile for real, but into the work dir: the checkout's own cxrl._C stays as it is
        where = ["--build-lib", suite.work / "build" / "lib", "--build-temp", suite.work / "build" / "tmp"]
    else:
        where = ["--inplace"]
    t0 = time.monotonic()
    code, timed_out = run_process([sys.executable, "setup.py", "build_ext", *where], env, timeout - 10, log)
    seconds = time.monotonic() - t0
    if code != 0:
        suite.have["cxrl._C"] = False
        return {"status": "timeout" if timed_out else "fail", "compile_s": seconds,
                "reason": "the build failed (build.log); the steps that need cxrl._C are skipped"}
    if suite.rehearse:
        built = next((suite.work / "build" / "lib" / "cxrl").glob("_C*.so"))
        check = (f"import importlib.util as u; s = u.spec_from_file_location('cxrl._C', {str(built)!r}); "
                 "m = u.module_from_spec(s); s.loader.exec_module(m); print('loaded', m)")
    else:
        check = "import cxrl._C as m; print('loaded', m.__file__)"
    code, _ = run_process([sys.executable, "-c", check], suite.env, 10, log)
    suite.have["cxrl._C"] = code == 0
    return {"status": "pass" if code == 0 else "fail", "compile_s": seconds,
            "headline": {"compiled": True, "cxrl._C": "imports" if code == 0 else "does not import"},
            "reason": "" if code == 0 else "built, but cxrl._C does not import (build.log)"}


def process_step(suite: Suite, step: Step, timeout: float, inject: str | None) -> dict:
    json_path = suite.work / "json" / f"{step.name}.json"
    log = suite.work / "logs" / f"{step.name}.log"
    if inject == "fail":
        argv = [sys.executable, "-c", "import sys; print('failure injected by CXRL_SUITE_INJECT'); sys.exit(3)"]
    elif inject == "hang":
        argv = [sys.executable, "-c", ("import time; print('hang injected by CXRL_SUITE_INJECT', flush=True); "
                                       "time.sleep(3600)")]
    elif step.kind == "pytest":
        argv = [sys.executable, "-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", step.target,
                "--junitxml", suite.work / "junit" / f"{step.name}.xml"]
        if suite.have.get("xdist") and not suite.rehearse:   # Triton compiles one kernel at a time per process:
            argv += ["-n", str(min(8, max(2, (os.cpu_count() or 2) // 2)))]   # compile on 8 of the 16 cores
    else:
        argv = [sys.executable, "-m", "benchmarks.gpu_steps", step.name, "--json", json_path]
        argv += ["--rehearse"] if suite.rehearse else []
    env = dict(suite.env, CXRL_SUITE_STEP_TIMEOUT_S=f"{timeout:.0f}")   # a step may keep a margin of its own
    code, timed_out = run_process(argv, env, timeout, log)
    return gpu_report.step_outcome(step.kind, code, timed_out, json_path, suite.work / "junit" / f"{step.name}.xml", log)


def unmet_need(suite: Suite, step: Step) -> str | None:
    for need in step.needs:
        if need == "cuda" and not suite.rehearse and suite.have.get("cuda") is False:
            return "needs a CUDA device; the backend step found none"
        if need == "diffusers" and not suite.have.get("diffusers", True):
            return "needs diffusers, which is not importable: " + ("carry .whl (see the hint)" if suite.hint else
                                                                    "see setup")
        if need == "cxrl._C" and not suite.have.get("cxrl._C", True):
            return "needs cxrl._C, which did not build or import (build.log)"
        if need == "trl" and not suite.have.get("trl"):
            return "needs trl: run ../shared/tools/device-wheels.sh --peers and carry .whl"
        if need == "torchxrayvision" and not suite.have.get("torchxrayvision"):
            return ("needs torchxrayvision (the demo reads its IU X-ray reports through it): carry its wheel "
                    "(../shared/tools/device-wheels.sh without --no-xrv)")
    return None


def run_step(suite: Suite, step: Step, inject: str | None) -> dict:
    cap = dict(suite.args.cap).get(step.name, step.rehearse_cap_s if suite.rehearse else step.cap_s)
    entry = {"name": step.name, "title": step.title, "cap_s": cap}
    reason = None if inject else unmet_need(suite, step)
    left = suite.left()
    if reason is None and left < min(cap, 30):
        reason = f"needs up to {cap} s; {max(left, 0):.0f} s left of the {suite.args.budget} s budget"
    if reason:
        suite.log.line(f"skip {step.name}: {reason}")
        return {**entry, "status": "skipped", "reason": reason, "seconds": 0.0}
    timeout = min(cap, left)
    suite.log.line(f"{step.name} (timeout {timeout:.0f} s): {step.title}")
    t0 = time.monotonic()
    if inject is None and step.kind == "driver":
        outcome = (setup_step if step.name == "setup" else build_step)(suite, timeout)
    else:
        outcome = process_step(suite, step, timeout, inject)
    entry.update(timeout_s=round(timeout, 1), seconds=round(time.monotonic() - t0, 2), **outcome)
    if (suite.work / "logs" / f"{step.name}.log").exists():
        entry["log"] = f"logs/{step.name}.log"
    if step.name == "backend" and "cuda_available" in entry.get("headline", {}):
        suite.have["cuda"] = bool(entry["headline"]["cuda_available"])
    suite.log.step_done(entry, suite.work / "logs" / f"{step.name}.log")
    return entry


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bash benchmarks/gpu_suite.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--rehearse", action="store_true", help="every step on the CPU at tiny sizes")
    parser.add_argument("--only", default="", help="comma-separated step names (setup always runs)")
    parser.add_argument("--budget", type=float, default=None, help="script seconds (default 480; rehearsal 1000)")
    parser.add_argument("--cap", action="append", default=[], type=lambda s: (s.split("=")[0], float(s.split("=")[1])),
                        help="STEP=SECONDS overrides a step's cap (repeatable)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work directory (default: kept on a GPU)")
    args = parser.parse_args(argv)
    args.budget = args.budget or float(os.environ.get("CXRL_GPU_SUITE_BUDGET_S") or
                                       (REHEARSAL_BUDGET_S if args.rehearse else BUDGET_S))
    names = [s.name for s in STEPS]
    args.only = [n for n in args.only.split(",") if n]
    unknown = [n for n in args.only + [c[0] for c in args.cap] if n not in names]
    if unknown:
        parser.error(f"unknown step(s) {unknown}; steps: {', '.join(names)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="cxrl-gpu-suite-out-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cxrl-gpu-suite-"))
    for sub in ("logs", "json", "junit", "results", "cache"):
        (work / sub).mkdir()
    suite = Suite(args, out, work, gpu_report.Log(out / "suite.log"), base_env(work, args.rehearse))
    inject = dict(kv.split("=", 1) for kv in os.environ.get("CXRL_SUITE_INJECT", "").split(",") if "=" in kv)

    def interrupt(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    mode = "rehearse" if args.rehearse else "gpu"
    suite.log.line(f"cxrl GPU suite ({mode}), budget {args.budget:.0f} s (caps + reserve {caps_sum(args.rehearse)} s),"
                   f" OUT={out}, work={work}")
    interrupted = None
    try:
        for step in STEPS:
            if args.only and step.name not in args.only and step.name != "setup":
                continue
            if interrupted:
                suite.results.append({"name": step.name, "title": step.title, "status": "skipped", "seconds": 0.0,
                                      "reason": f"suite interrupted ({interrupted})"})
                continue
            try:
                suite.results.append(run_step(suite, step, inject.get(step.name)))
            except Interrupted as sig:
                interrupted = str(sig)
                suite.results.append({"name": step.name, "title": step.title, "status": "timeout", "seconds": 0.0,
                                      "reason": f"suite interrupted ({interrupted}) while this step ran"})
            except Exception as err:   # a driver bug in one step must not cost the others
                suite.results.append({"name": step.name, "title": step.title, "status": "fail", "seconds": 0.0,
                                      "reason": f"driver error: {type(err).__name__}: {err}"})
    finally:
        for sig in previous:   # a second signal must not cut the writing of the files short
            signal.signal(sig, signal.SIG_IGN)
        code = gpu_report.finish(suite, mode, time.monotonic() - suite.started, interrupted)
        if args.rehearse and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
