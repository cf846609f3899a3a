"""What the GPU suite leaves behind: ``summary.json``, ``suite.log``, ``table.txt``, ``bundle.tar.gz`` in ``$OUT``
(4 files, no folders: the device tool returns at most 8 files, 16 MiB each) and a compact table that ends
the console output (< 8,000 characters, so the numbers survive even if no file comes back).

Standard library only, like the driver.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

TABLE_LIMIT = 7900
BUNDLE_LIMIT = 14 * 2**20   # compressed bytes; the device tool's limit is 16 MiB a file
AUTOTUNE = re.compile(r"Triton autotuning for function (\w+),\s*with key as (.*?),\s*finished after ([\d.]+)s,"
                      r"\s*best config selected: (.*?);", re.DOTALL)
PYTEST_WORD = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
PROGRESS = re.compile(r"\[\s*\d+%\]")

# what the setup step prints: the packages found (by metadata, not imported) and whether cxrl._C imports
PROBE = r"""
import importlib, importlib.metadata as md, importlib.util, json
found = {}
for name, dist in (("torch", "torch"), ("triton", "triton"), ("diffusers", "diffusers"), ("transformers", "transformers"),
                   ("peft", "peft"), ("torchxrayvision", "torchxrayvision"), ("trl", "trl"), ("xformers", "xformers"),
                   ("pybind11", "pybind11"), ("xdist", "pytest-xdist")):
    try:   # found, not imported: importing transformers & co. costs seconds; the steps import what they use
        found[name] = md.version(dist) if importlib.util.find_spec(name) else None
    except Exception:
        found[name] = "present" if importlib.util.find_spec(name) else None
try:
    importlib.import_module("cxrl._C")
    found["cxrl._C"] = "imports"
except Exception as err:
    found["cxrl._C"] = None
print(json.dumps(found))
"""



class Log:
    """``suite.log`` and the console: one stamped line per event."""

    def __init__(self, path: Path):
        self.path = path

    def line(self, text: str) -> None:
        stamped = f"[gpu_suite {time.strftime('%H:%M:%S')}] {text}"
        print(stamped, flush=True)
        with open(self.path, "a") as f:
            f.write(stamped + "\n")

    def step_done(self, entry: dict, step_log: Path) -> None:
        self.line(f"{entry['name']}: {entry['status']} in {entry['seconds']:.1f} s{_times(entry)}"
                  f"{' | ' + entry['reason'] if entry.get('reason') else ''}")
        if entry["status"] in ("fail", "timeout") and step_log.exists():
            tail = step_log.read_text(errors="replace").splitlines()[-15:]
            text = "\n".join("    | " + ln[:200] for ln in tail)
            print(text, flush=True)
            with open(self.path, "a") as f:
                f.write(text + "\n")


def _times(entry: dict) -> str:
    parts = [f"{k.split('_')[0]} {entry[k]:.1f}" for k in ("compile_s", "run_s", "autotune_s") if entry.get(k)]
    return f" ({', '.join(parts)})" if parts else ""


# -- one step's outcome --------------------------------------------------------------------------------


def _pytest_counts(junit: Path, log_text: str) -> tuple[dict, list]:
    """Counts and failed test names: from the JUnit XML when pytest finished, else from its -v lines."""
    if junit.exists():
        root = ET.parse(junit).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = [f"{c.get('name')}" for c in suite.iter("testcase") if c.find("failure") is not None
                  or c.find("error") is not None]
        return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"],
                "errors": n["errors"], "skipped": n["skipped"]}, failed
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failed = []
    for line in log_text.splitlines():
        m = PYTEST_WORD.search(line)
        if m and "::" in line and PROGRESS.search(line):   # progress lines, not the short summary's
            key = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors"}.get(m.group(1), "skipped")
            counts[key] += 1
            if key in ("failed", "errors"):
                failed.append(line.split("::", 1)[-1].split()[0])
    return counts, failed


def step_outcome(kind: str, code: int | None, timed_out: bool, json_path: Path, junit: Path, log: Path) -> dict:
    text = log.read_text(errors="replace") if log.exists() else ""
    picks = AUTOTUNE.findall(text)
    out: dict = {"autotune_s": round(sum(float(p[2]) for p in picks), 2), "autotune_picks": len(picks)}
    failed: list = []
    if kind == "pytest":
        counts, failed = _pytest_counts(junit, text)
        out["headline"] = counts
        ok = code == 0 and counts["passed"] > 0
        if not failed and code not in (0, None):
            failed = [f"pytest exit code {code}"]
    else:
        record = json.loads(json_path.read_text()) if json_path.exists() else {}
        out.update({k: record.get(k) for k in ("headline", "rows", "checks", "notes") if record.get(k)})
        out.update({k: round(record[k], 2) for k in ("compile_s", "run_s") if record.get(k)})
        failed = [c["name"] for c in record.get("checks", []) if not c["ok"]]
        if record.get("error"):
            failed.insert(0, record["error"])
        ok = code == 0 and not failed and bool(record)
    if timed_out:
        out["status"], out["reason"] = "timeout", "killed at its cap" + (f"; failed so far: {failed[:3]}" if failed else "")
    elif ok:
        out["status"] = "pass"
    else:
        last = [ln for ln in text.splitlines() if ln.strip()][-1:] or [f"exit code {code}"]
        out["status"], out["reason"] = "fail", "; ".join(str(f) for f in failed[:4]) or last[0][:300]
    return out


# -- the table -----------------------------------------------------------------------------------------


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(v, list):
        return "[" + ",".join(map(str, v))[:60] + "]"
    return str(v)


SHORT = {  # the headline keys each step shows on its one table line
    "setup": ("wheels", "diffusers", "trl", "xformers", "cxrl._C"),
    "build": ("compiled", "cxrl._C"),
    "backend": ("device", "torch", "triton", "cuda", "triton_on", "xformers_on", "cpp_store_on"),
    "kernels_ddim": ("passed", "failed", "errors", "skipped"),
    "kernels_flash": ("passed", "failed", "errors", "skipped"),
    "ddim_bandwidth": ("hbm_float32_fraction", "hbm_bfloat16_fraction", "goal_met"),
    "attention": ("rows", "goal_met", "auto_slower_than_best"),
    "unet_equivalence": ("precision", "rel_err_triton_out", "rel_err_triton_grad", "triton_attention_shapes"),
    "rl_epoch": ("cxrl_vs_eager", "overhead_epoch_vs_bare_unet", "mfu_bare_unet", "mfu_cxrl_epoch"),
    "peer_trl": ("cxrl_vs_trl[",),   # a key ending in '[' stands for every key it begins (presets, cxrl settings)
    "gpu_check": ("checks", "failed"),
    "demo": ("device", "epochs_done", "epoch_s_median", "train_s", "save_and_evaluate_s", "total_s", "posture_ci_low",
             "consistency_ci_low", "auroc_ci_low"),
}


def _details(entry: dict) -> list[str]:
    rows, name = entry.get("rows") or [], entry["name"]
    if not rows:
        return []
    if name == "ddim_bandwidth":
        lines = ["  size      dtype      MB   fused us  fused GB/s  copy GB/s  of copy (goal >= 0.8 at hbm)"]
        lines += [f"  {r['size']:9s} {r['dtype']:8s} {r['moved_MB']:7.3g} {r['fused_us']:10.2f} {r['fused_GBps']:11.1f}"
                  f" {r['copy_GBps']:10.1f}  {r['fraction_of_copy']:.2f}" for r in rows]
        return lines
    if name == "attention":
        providers = [p for p in ("sdpa", "triton", "xformers", "auto") if any(f"ms_{p}" in r for r in rows)]
        lines = ["  shape                         mode    " + "".join(f"{p + ' ms':>11s}" for p in providers)
                 + "  auto pick  auto/best  triton TFLOP/s"]
        for r in rows:
            cells = "".join(f"{r[f'ms_{p}']:11.4g}" if f"ms_{p}" in r else f"{'-':>11s}" for p in providers)
            lines.append(f"  {r['shape'][:29]:29s} {r['mode']:7s} {cells}  {str(r.get('auto_pick'))[:9]:9s}"
                         f"  {r.get('auto_vs_best', float('nan')):9.2f}  {r.get('tflops_triton', float('nan')):8.1f}")
        return lines
    if name == "unet_equivalence":
        return ["  processor  fwd+bwd ms  rel err out  grad      attn grad  first call s"] + [
            f"  {r['processor']:9s} {r['fwd_bwd_ms']:10.2f}  {r['rel_err_out']:.2e}   {r['rel_err_grad']:.2e}  "
            f"{r['rel_err_attn_grad']:.2e}  {r['first_call_s']:.1f}" for r in rows]
    if name == "peer_trl":
        return ["  preset                                        TRL epoch s  cxrl epoch s  cxrl speed-up (goal >= 1.5)"] + [
            f"  {r['preset']:45s} {r['trl_epoch_s']:11.2f} {r['cxrl_epoch_s']:13.2f} {r['cxrl_speedup_over_trl']:9.2f}"
            for r in rows]
    if name == "demo":   # one line per epoch: where its seconds went
        return ["  epoch  epoch s  sample s  score s  update s  reward"] + [
            f"  {r['epoch']:5d} {r.get('epoch_seconds', 0):8.2f} {r.get('sample_seconds', 0):9.2f} {r.get('score_seconds', 0):8.2f}"
            f" {r.get('update_seconds', 0):9.2f}  {_fmt(r.get('reward'))}" for r in rows]
    if name == "rl_epoch":
        return ["  provider                   epoch s   img/s  x vs eager"] + [
            f"  {r['provider']:26s} {r['epoch_s']:7.2f} {r['images_per_s']:7.2f} {r['x_vs_eager']:10.2f}" for r in rows]
    return []


def table(summary: dict) -> str:
    s = summary
    lines = [f"== cxrl GPU suite ({s['mode']}) on {s.get('device', '?')} | {s['wall_s']:.0f} s of {s['budget_s']:.0f} s"
             f" | exit {s['exit_code']}" + (f" | INTERRUPTED {s['interrupted']}" if s.get("interrupted") else "")]
    if s.get("hint"):
        lines.append("!! " + s["hint"])
    lines.append(f"{'step':17s} {'status':7s} {'secs':>6s} {'compile':>7s} {'run':>6s}  headline")
    for e in s["steps"]:
        head = e.get("headline") or {}
        keys = [k for want in SHORT.get(e["name"], ()) for k in head
                 if (k.startswith(want) if want.endswith("[") else k == want)]
        short = " ".join(f"{k}={_fmt(head[k])}" for k in keys)
        comp = f"{e['compile_s']:.1f}" if e.get("compile_s") else "-"
        run = f"{e['run_s']:.1f}" if e.get("run_s") else "-"
        lines.append(f"{e['name']:17s} {e['status']:7s} {e.get('seconds', 0):6.1f} {comp:>7s} {run:>6s}  {short}")
        if e["status"] != "pass" and e.get("reason"):
            lines.append(f"{'':17s} -> {e['reason'][:240]}")
    for e in s["steps"]:
        detail = _details(e)
        if detail:
            lines += [f"-- {e['name']}"] + detail
    text = "\n".join(lines)
    return text if len(text) <= TABLE_LIMIT else text[:TABLE_LIMIT - 40] + "\n... (table cut; see summary.json)"


# -- files -------------------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _bundle_members(out: Path, work: Path) -> list[tuple[str, Path]]:
    members = [(n, out / n) for n in ("summary.json", "suite.log", "table.txt")]
    for sub in ("logs", "json", "junit", "results", "cache"):
        members += [(str(p.relative_to(work)), p) for p in sorted((work / sub).rglob("*")) if p.is_file()]
    members.append(("autotune_picks.txt", work / "autotune_picks.txt"))
    cache = [p for p in (work / "triton_cache").rglob("*") if p.is_file()]
    cache.sort(key=lambda p: (not p.name.endswith(".json"), p.stat().st_size))   # metadata and picks first
    return members + [(str(p.relative_to(work)), p) for p in cache]


def write_bundle(out: Path, work: Path) -> dict:
    picks = []
    for log in sorted((work / "logs").glob("*.log")):
        picks += [f"{log.stem}\t{fn}\t{key.strip()}\t{secs}s\t{cfg.strip()}"
                  for fn, key, secs, cfg in AUTOTUNE.findall(log.read_text(errors="replace"))]
    (work / "autotune_picks.txt").write_text("step\tkernel\tkey\tautotune time\tbest config\n" + "\n".join(picks) + "\n")
    added, omitted = 0, []
    with open(out / "bundle.tar.gz", "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
            for arc, path in _bundle_members(out, work):
                if not path.exists():
                    continue
                if raw.tell() + path.stat().st_size // 3 > BUNDLE_LIMIT:
                    omitted.append(arc)
                    continue
                tar.add(path, arcname=f"bundle/{arc}")
                added += 1
            if omitted:   # say what did not fit, inside the bundle itself
                note = ("left out to stay under the 16 MiB file limit:\n" + "\n".join(omitted) + "\n").encode()
                info = tarfile.TarInfo("bundle/OMITTED.txt")
                info.size = len(note)
                tar.addfile(info, io.BytesIO(note))
    return {"members": added, "omitted": len(omitted), "bytes": (out / "bundle.tar.gz").stat().st_size,
            "autotune_picks": len(picks)}


def finish(suite, mode: str, wall: float, interrupted: str | None) -> int:
    """Write summary.json, table.txt and the bundle (each on its own, so one failing leaves the others),
    print the table last, and return the exit code: 0 only when every step passed."""
    steps = suite.results
    code = 0 if steps and all(e["status"] == "pass" for e in steps) else 1
    backend = next((e.get("headline", {}) for e in steps if e["name"] == "backend"), {})
    summary = {"suite": "cxrl gpu suite", "mode": mode, "argv": vars(suite.args), "wall_s": round(wall, 1),
               "budget_s": suite.args.budget, "exit_code": code, "interrupted": interrupted, "hint": suite.hint,
               "device": backend.get("device", "unknown (backend step did not report)"),
               "versions": {k: backend.get(k) for k in ("python", "torch", "triton", "cuda")},
               "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "counts": {s: sum(e["status"] == s for e in steps) for s in ("pass", "fail", "timeout", "skipped")},
               "steps": steps}
    _write_json(suite.out / "summary.json", summary)
    text = table(summary)
    (suite.out / "table.txt").write_text(text + "\n")
    try:
        summary["bundle"] = write_bundle(suite.out, suite.work)
        _write_json(suite.out / "summary.json", summary)
    except Exception as err:   # the summary and the table are written already
        suite.log.line(f"bundle failed: {type(err).__name__}: {err}")
    suite.log.line(f"done in {wall:.0f} s: {summary['counts']}; files in {suite.out}: "
                   + ", ".join(sorted(p.name for p in suite.out.iterdir())))
    print("\n" + text, flush=True)
    return code
