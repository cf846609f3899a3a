"""The paper's path as a MIMIC user runs it, at tiny size, every step through the ``cxrl`` command (issue 17):
``data synth-mimic`` -> ``data prepare`` -> ``train-reward posture|diagnostic|consistency --data mimic`` on the
reward half of the train reports and again on the evaluator half -> ``train --config configs/mimic_roentgen.yaml``
(with its end-of-run evaluation by the MIMIC-trained evaluators) -> ``evaluate --config RUN/config.yaml`` ->
the same run under ``torchrun --nproc_per_node 2`` (gloo). No network, no optional weights: torchxrayvision's
cache is an empty directory. examples/paper_rehearsal.sh is the same chain at a useful size.

The steps run in this process (one torch import for all) except torchrun. Budget: ~60 s on a loaded 2-core machine.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrl.cli import main
from cxrl.compose.sources import prompt_pool
from cxrl.config import load_config
from cxrl.data import MimicCXR
from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.data.prompts import prompt_from_labels
from cxrl.data.synth_mimic import read_manifest
from cxrl.rl import checkpoint as ck
from cxrl.training.reward_data import mimic_training_set, report_subset_of

# a few validation images per reward model at this size: the posture model's misalignment correlation can be
# undefined (torch warns, the number is NaN in its config.json); the real-size chain is examples/paper_rehearsal.sh
pytestmark = pytest.mark.filterwarnings("ignore:cov:UserWarning")   # "cov(): degrees of freedom is <= 0"

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "mimic_roentgen.yaml"
RES = 32
KINDS = ("posture", "diagnostic", "consistency")
TINY_REWARD_NETS = ["--epochs", "2", "--batch-size", "8", "reward_training.widths=[8,16]", "reward_training.feature_dim=16",
                    "--vocab-size", "600"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The synthetic tree, its image cache, a RoentGen-layout generator, and reward models + evaluators trained on
    the two halves of the train reports — all written by the commands a MIMIC user runs."""
    base = tmp_path_factory.mktemp("rehearsal")
    w = {"base": base, "mimic": base / "mimic", "reports": base / "mimic" / "reports", "gen": base / "roentgen",
         "cache": base / "cache", "no_xrv": base / "no-xrv"}
    w["no_xrv"].mkdir()
    assert main(["data", "synth-mimic", str(w["mimic"]), "--resolution", str(RES), "--studies", "40",
                 "--generator-out", str(w["gen"])]) == 0
    assert main(["data", "prepare", "--root", str(w["mimic"]), "--reports-root", str(w["reports"]), "--split", "train",
                 "--resolution", str(RES), "--cache-dir", str(w["cache"])]) == 0
    for half, seed in (("reward", 0), ("evaluator", 1)):
        for kind in KINDS:
            assert main(["train-reward", kind, "--data", "mimic", "--mimic-root", str(w["mimic"]), "--reports-root",
                         str(w["reports"]), "--cache-dir", str(w["cache"]), "--report-subset", half, "--resolution",
                         str(RES), "--seed", str(seed), "--out", str(base / half / kind), *TINY_REWARD_NETS]) == 0
    return w


def run_overrides(w, out, gradient_accumulation=4):
    """configs/mimic_roentgen.yaml at tiny size: the rehearsal's paths, 2 epochs of 4 images, 2 DDIM steps. A global
    batch of 4 per optimizer step over every timestep, and an adam_eps well above the gradient scale (AdamW's step
    stays linear in the gradient), so that two ranks can be compared with one process (as tests/rl/test_torchrun.py)."""
    b = w["base"]
    # float32 frozen weights on the CPU (the config's bfloat16 is for GPUs): the saved tuned model, LoRA merged into the
    # UNet, then evaluates to 1e-6 of the in-memory one (in bfloat16 the merge rounds: ~3e-3 relative, measured)
    return [f"model.path={w['gen']}", "model.device=cpu", "model.dtype=float32", "model.lora_rank=2", "sampling.num_steps=2",
            "sampling.batch_size=2", "sampling.samples_per_epoch=4", "sampling.group_size=2", "train.epochs=2",
            "train.batch_size=1", f"train.gradient_accumulation={gradient_accumulation}", "train.timestep_fraction=1.0",
            "train.advantage_window=4", "train.advantage_min_count=2", "train.adam_eps=1e-3", "train.learning_rate=1e-3",
            f"data.path={w['mimic']}", f"data.reports_path={w['reports']}",
            "rewards.components=[" + ", ".join(f"{{name: {k}, path: '{b / 'reward' / k}'}}" for k in KINDS) + "]",
            f"eval.evaluators={b / 'evaluator'}", f"eval.xrv_cache_dir={w['no_xrv']}", "eval.num_prompts=0",
            "eval.samples_per_prompt=2", "eval.bootstrap=20", "eval.batch_size=8", "log.progress=false",
            "log.sample_every=0", "log.tensorboard=off", "checkpoint.keep=1", "--output", str(out)]


def rl_prompts(w) -> list[str]:
    """The prompts the RL draws with the config's data section on the rehearsal tree."""
    cfg = load_config(CONFIG, [f"data.path={w['mimic']}", f"data.reports_path={w['reports']}"])
    return [entry["prompt"] for entry in prompt_pool(cfg.data).entries]


@pytest.fixture(scope="module")
def mimic_run(world):
    out = world["base"] / "run"
    assert main(["train", "--config", str(CONFIG), *run_overrides(world, out)]) == 0
    return out


def test_reward_halves_learn_from_the_rl_report_prompts(world, capsys):
    w = world
    ds = MimicCXR(w["mimic"], split="train", resolution=RES, reports_root=w["reports"], cache_dir=w["cache"])
    pool = set(rl_prompts(w))
    unreadable = {r["dicom_id"] for r in read_manifest(w["mimic"]) if r["state"].startswith("corrupt")}
    halves = {}
    for half in ("reward", "evaluator"):
        data = mimic_training_set(w["mimic"], "train", RES, None, reports_root=w["reports"], subset=half, cache_dir=w["cache"])
        rows = [i for i in range(len(ds)) if report_subset_of(ds.records[i][2]) == half]
        # corrupt JPEGs are skipped, not stood in for by a neighbour (the cache knows them after `data prepare`)
        expected = [ds.prompt_entry(i)["prompt"] for i in rows if ds.records[i][0] not in unreadable]
        assert data["prompts"] == expected and data["meta"]["prompts_from"] == "reports"
        assert set(data["prompts"]) <= pool   # exactly the prompts the RL draws from data.reports_path
        written_from_labels = [prompt_from_labels(data["labels"][j]) for j in range(len(data["prompts"]))]
        assert sum(p != q for p, q in zip(data["prompts"], written_from_labels)) > len(expected) // 2
        halves[half] = {ds.records[i][2] for i in rows}
        saved = json.loads((w["base"] / half / "consistency" / "config.json").read_text())["training"]["data"]
        assert saved["subset"] == half and saved["prompts_from"] == "reports" and saved["n"] == len(expected)
    assert halves["reward"] and halves["evaluator"] and not halves["reward"] & halves["evaluator"]
    assert halves["reward"] | halves["evaluator"] == {r[2] for r in ds.records}
    capsys.readouterr()
    assert main(["train-reward", "consistency", "--data", "mimic", "--mimic-root", str(w["mimic"]),
                 "--out", str(w["base"] / "nope")]) == 2
    assert "needs --reports-root" in capsys.readouterr().err
    assert main(["train-reward", "posture", "--reports-root", str(w["reports"]), "--out", str(w["base"] / "nope")]) == 2
    assert "--reports-root is for --data mimic" in capsys.readouterr().err


def test_train_evaluates_with_the_mimic_evaluators_without_optional_weights(world, mimic_run):
    metrics = json.loads((mimic_run / "eval" / "metrics.json").read_text())
    run_info = json.loads((mimic_run / "eval" / "run.json").read_text())
    assert set(metrics) == {"base", "tuned"} and run_info["data"] == "mimic" and len(run_info["prompt_ids"]) >= 2
    for kind in KINDS:   # judged by the evaluator half's models, never the phantom ones or the rewards
        assert metrics["tuned"]["evaluators"][kind].startswith(str(world["base"] / "evaluator" / kind))
    for name in ("base", "tuned"):
        m = metrics[name]
        assert m["fid"] is not None and m["fid"] >= 0 and m["fid_reference_images"] == len(run_info["prompt_ids"])
        assert m["feature_extractor"].startswith("cxrl-diagnostic-evaluator/features")
        assert "are not in the cache" in m["feature_extractor_reason"] and str(world["no_xrv"]) in m["feature_extractor_reason"]
    assert run_info["feature_extractor_reason"] == metrics["tuned"]["feature_extractor_reason"]
    assert "are not in the cache" in (mimic_run / "eval" / "results.md").read_text()
    # the held-out prompts are MIMIC test reports, never RL prompts
    held_out = MimicCXR(world["mimic"], split="test", resolution=RES, reports_root=world["reports"])
    assert not {held_out.prompt_entry(i)["prompt"] for i in range(len(held_out))} & set(rl_prompts(world))


def test_cxrl_evaluate_reproduces_the_runs_evaluation(world, mimic_run, capsys):
    out = world["base"] / "evaluate"
    assert main(["evaluate", "--config", str(mimic_run / "config.yaml"), "--model", str(mimic_run / "final"),
                 "--baseline", str(world["gen"]), "--out", str(out), "--device", "cpu"]) == 0
    again, first = (json.loads((d / "metrics.json").read_text()) for d in (out, mimic_run / "eval"))
    for name in ("base", "tuned"):
        for metric in ("posture", "consistency", "fid", "ms_ssim"):
            # base: the same weights; tuned: LoRA merged into the saved UNet (float rounding)
            assert again[name][metric] == pytest.approx(first[name][metric], rel=1e-4, abs=1e-7), (name, metric)
        assert again[name]["feature_extractor"] == first[name]["feature_extractor"]
    capsys.readouterr()   # the phantom evaluators are refused for MIMIC, in one line that says how to train MIMIC ones
    assert main(["evaluate", "--model", str(mimic_run / "final"), "--data", "mimic", "--data-root", str(world["mimic"]),
                 "--reports-root", str(world["reports"]), "--out", str(world["base"] / "refused")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--report-subset evaluator" in err and "eval.evaluators=DIR" in err


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_match_one_process(world, mimic_run):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    two = world["base"] / "run-2ranks"
    overrides = [*run_overrides(world, two, gradient_accumulation=2), "eval.enabled=false"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                             "127.0.0.1", "--master_port", str(_port()), "-m", "cxrl", "train", "--config", str(CONFIG),
                             *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _, a = ck.load_checkpoint(mimic_run / "checkpoints" / "epoch_000002")
    _, b = ck.load_checkpoint(two / "checkpoints" / "epoch_000002")
    assert a["trainer"]["updater"]["global_step"] == b["trainer"]["updater"]["global_step"] == 2
    # Tolerance as in tests/rl/test_torchrun.py: 0.1% of one AdamW step (lr 1e-3); a sharding or averaging bug
    # moves weights by a whole step.
    for key, value in a["weights"].items():
        torch.testing.assert_close(b["weights"][key], value, atol=1e-6, rtol=1e-4, msg=key)
    assert sum(int(v.abs().max() > 0) for k, v in a["weights"].items() if "lora_B" in k) > 0   # training moved them
    assert a["tracker"]["prompts"] == b["tracker"]["prompts"]
    flat = [torch.tensor([v for window in t["window_values"] for v in window]) for t in (a["tracker"], b["tracker"])]
    torch.testing.assert_close(flat[1], flat[0], atol=1e-6, rtol=1e-4)   # the same rewards, summed in another order


def _random_xrv_weights(directory: Path, weights: str) -> Path:
    """torchxrayvision's own DenseNet-121, random weights, saved where its loader looks for ``weights`` (it
    unpickles a whole module and copies its state dict into a fresh DenseNet-121)."""
    xrv = pytest.importorskip("torchxrayvision")
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = xrv.models.DenseNet(num_classes=len(xrv.models.model_urls[weights]["labels"]))
    torch.save(model, directory / Path(xrv.models.model_urls[weights]["weights_url"]).name)
    return directory


def _random_clip_dir(directory: Path, texts: list[str]) -> Path:
    """A tiny transformers CLIPModel with a tokenizer trained on ``texts`` (as tests/rewards/test_clip_adapter.py)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from cxrl.diffusion.tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer(texts, 600, directory)
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": tok.eos_token_id,
                     "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def test_paper_config_with_the_xrv_and_clip_backends(world):
    """The config's own reward entries (diagnostic: torchxrayvision's DenseNet-121 from a local directory; consistency:
    a transformers CLIP directory) with small random weights, and FID on torchxrayvision features once its weights
    are on disk (eval.fid_features: auto)."""
    import torchxrayvision as xrv

    from cxrl.compose.rewards import reward_from_config

    b, weights = world["base"], "densenet121-res224-mimic_ch"
    xrv_dir = _random_xrv_weights(b / "xrv", weights)
    clip_dir = _random_clip_dir(b / "clip", rl_prompts(world))
    entries = [{"name": "posture", "path": str(b / "reward" / "posture")},
               {"name": "diagnostic", "backend": "xrv", "path": str(xrv_dir), "kwargs": {"weights": weights}},
               {"name": "consistency", "backend": "clip", "path": str(clip_dir)}]
    # the entry loads torchxrayvision's own network with the weights file of that directory
    diagnostic, _ = reward_from_config(entries[1])
    reference = xrv.models.DenseNet(weights=weights, cache_dir=str(xrv_dir)).eval()
    images = torch.rand(2, 3, RES, RES)
    with torch.no_grad():
        x = torch.nn.functional.interpolate((images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True),
                                            size=(224, 224), mode="bilinear", align_corners=False) * 2048 - 1024
        expected = reference(x)[:, reference.pathologies.index("Effusion")]
    effusion = CHEXPERT_LABELS.index("Pleural Effusion")
    torch.testing.assert_close(diagnostic.predict_proba(images)[:, effusion], expected, atol=1e-5, rtol=1e-4)
    out = b / "run-backends"
    flow = "[" + ", ".join(json.dumps(e) for e in entries) + "]"
    assert main(["train", "--config", str(CONFIG), *run_overrides(world, out), "train.epochs=1", f"rewards.components={flow}",
                 f"eval.xrv_cache_dir={xrv_dir}", f"eval.xrv_weights={weights}"]) == 0
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    for kind in ("diagnostic", "consistency"):   # both backends scored every rollout (a constant would mean no signal)
        assert logged[f"reward/{kind}/std"] > 0 and logged["reward/invalid_samples"] == 0
    metrics = json.loads((out / "eval" / "metrics.json").read_text())["tuned"]
    assert metrics["feature_extractor"] == f"xrv-{weights}/features2" and metrics["fid"] is not None
    assert f"torchxrayvision weights '{weights}' found in {xrv_dir}" in metrics["feature_extractor_reason"]
