"""The TRL peer of the RL-epoch benchmark (benchmarks/peer_trl.py): the mapping of a cxrl config onto TRL's
DDPOConfig (no trl needed), and, where trl==0.22.2 imports, one side-by-side epoch at a tiny size with its
equal-work audit, including the audit refusing unequal work."""
import math

import pytest
import torch

from benchmarks import peer_trl

TRL_MISSING = peer_trl.trl_unavailable_reason()
needs_trl = pytest.mark.skipif(TRL_MISSING is not None, reason=f"TRL peer not runnable here: {TRL_MISSING}")


def _config(tmp_path, preset="case", device="cpu", **overrides):
    cfg = peer_trl.peer_config(preset, peer_trl.PEER_SETTINGS["cpu"], tmp_path / "model", tmp_path / "out", device)
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(cfg, section), key, value)
    return cfg


def test_case_preset_maps_to_the_same_epoch_in_trl(tmp_path):
    """TRL's own arithmetic on the mapped settings gives cxrl's epoch: images, trained steps (TRL truncates,
    cxrl rounds up), optimizer steps, CFG in both sampling and training, LoRA, fp32 on the CPU."""
    s = peer_trl.PEER_SETTINGS["cpu"]
    cfg = _config(tmp_path)
    kw, use_lora = peer_trl.ddpo_settings(cfg, "cpu")
    assert kw["sample_batch_size"] * kw["sample_num_batches_per_epoch"] == s.samples == cfg.sampling.samples_per_epoch
    assert int(kw["sample_num_steps"] * kw["train_timestep_fraction"]) == s.trained_steps == 2
    trl_optimizer_steps = s.samples // (kw["train_batch_size"] * kw["train_gradient_accumulation_steps"])
    assert trl_optimizer_steps == math.ceil(s.samples / s.train_batch / s.grad_accum) == 2
    assert (kw["sample_num_steps"], kw["sample_guidance_scale"], kw["sample_eta"]) == (s.steps, s.guidance, 1.0)
    assert kw["train_cfg"] is True and use_lora is True and kw["mixed_precision"] == "no"
    assert (kw["per_prompt_stat_tracking"], kw["per_prompt_stat_tracking_buffer_size"],
            kw["per_prompt_stat_tracking_min_count"]) == (True, 16, 16)
    assert (kw["train_clip_range"], kw["train_adv_clip_max"], kw["train_learning_rate"]) == (1e-4, 5.0, 3e-4)
    assert kw["save_freq"] > 10**6   # no checkpoint inside a timed TRL epoch


def test_defaults_preset_is_cxrl_config_defaults(tmp_path):
    from cxrl.config import Config

    d = Config()
    kw, _ = peer_trl.ddpo_settings(_config(tmp_path, "defaults"), "cpu")
    assert kw["sample_num_steps"] == d.sampling.num_steps == 20
    assert kw["sample_batch_size"] * kw["sample_num_batches_per_epoch"] == d.sampling.samples_per_epoch == 32
    assert kw["train_timestep_fraction"] == d.train.timestep_fraction == 1.0
    assert (kw["train_batch_size"], kw["train_gradient_accumulation_steps"]) == (d.train.batch_size, d.train.gradient_accumulation)
    assert kw["sample_guidance_scale"] == d.sampling.guidance_scale == 5.0


def test_gpu_mapping_is_bf16_weights_on_both_sides(tmp_path):
    cfg = _config(tmp_path, device="cuda")
    assert cfg.model.dtype == "bfloat16"
    assert peer_trl.ddpo_settings(cfg, "cuda")[0]["mixed_precision"] == "bf16"
    cfg.model.dtype = "float32"   # fp32 weights under bf16 autocast: TRL would cast them to bf16
    with pytest.raises(ValueError, match="model.dtype=float32 with train.mixed_precision=auto on cuda"):
        peer_trl.ddpo_settings(cfg, "cuda")


@pytest.mark.parametrize("overrides, message", [
    ({"rewards__feedback": "comparative"}, "RLCF anchor"),
    ({"model__ace_tokens": 2}, "no ACE"),
    ({"model__train_text_encoder": True}, "keeps the text encoder frozen"),
    ({"model__lora_rank": 8}, "rank 4, alpha 4"),
    ({"train__timestep_fraction": 0.3}, "trains 2 steps in cxrl .ceil. but 1 in TRL"),
    ({"train__advantage": "group"}, "per prompt or over the batch"),
    ({"train__kl_beta": 0.1}, "train.kl_beta=0.1"),
    ({"sampling__samples_per_epoch": 6}, "not a multiple of sampling.batch_size"),
    ({"train__batch_size": 3}, "sampling.batch_size=4 is not a multiple of train.batch_size=3"),
])
def test_settings_trl_cannot_express_are_refused_by_name(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        peer_trl.ddpo_settings(_config(tmp_path, **overrides), "cpu")


def test_full_finetuning_maps_to_trl_without_lora(tmp_path):
    assert peer_trl.ddpo_settings(_config(tmp_path, model__finetune="full"), "cpu")[1] is False


@needs_trl
@pytest.mark.parametrize("path", sorted(peer_trl.TINY_PEERS))
def test_trl_and_cxrl_epochs_run_side_by_side_doing_the_same_work(path, tmp_path, one_thread):
    s = peer_trl.TINY_PEERS[path]
    model = peer_trl.save_model(s, "cpu", tmp_path)
    result = peer_trl.run_preset("case", s, "cpu", tmp_path, model)
    assert set(result.timings) == {"trl", "cxrl"} and result.baseline == "trl" and result.case == "rl_epoch_trl"
    x = result.extra
    assert x["unet_rows_fwd"] == 2 * s.samples * s.steps            # CFG: 2 rows per image and step
    assert x["unet_rows_fwd_bwd"] == 2 * s.samples * s.trained_steps
    assert x["vae_decode_rows"] == s.samples                         # no anchor images on either side
    # both sides train LoRA r4 (A: 4 x in, B: out x 4) on the UNet's attention projections and nothing else
    lora = sum(m.in_features * 4 + 4 * m.out_features for n, m in _unet_linears(model) if n.endswith(_TARGETS))
    assert x["trained_parameters"] == lora
    for key in ("trl_sample_s", "trl_train_s", "cxrl_sample_s", "cxrl_train_s", "trl_epoch_cpu_s", "cxrl_epoch_cpu_s"):
        assert 0 < x[key] < float("inf"), key
    assert all(len(t.seconds) == s.reps for t in result.timings.values())


_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _unet_linears(model_dir):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet"))
    return [(n, m) for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)]


@needs_trl
def test_unequal_work_is_refused(tmp_path, monkeypatch, one_thread):
    """TRL given one step more than cxrl: the audited epoch sees the extra UNet rows and the case stops."""
    s = peer_trl.TINY_PEERS["cpu-path"]
    mapping = peer_trl.ddpo_settings

    def one_step_more(cfg, device_type):
        kw, use_lora = mapping(cfg, device_type)
        return {**kw, "sample_num_steps": kw["sample_num_steps"] + 2}, use_lora
    monkeypatch.setattr(peer_trl, "ddpo_settings", one_step_more)
    model = peer_trl.save_model(s, "cpu", tmp_path)
    with pytest.raises(RuntimeError, match="not the same work"):
        peer_trl.run_preset("case", s, "cpu", tmp_path, model)


def test_command_line_overrides_reach_the_cxrl_side_and_the_mapping_checks_them(tmp_path):
    s = peer_trl.PEER_SETTINGS["cpu"]
    cfg = peer_trl.peer_config("case", s, tmp_path, tmp_path / "o", "cpu", ["train.deterministic=false"])
    assert cfg.train.deterministic is False and peer_trl.ddpo_settings(cfg, "cpu")[0]["sample_num_steps"] == s.steps
    cfg = peer_trl.peer_config("case", s, tmp_path, tmp_path / "o", "cpu", ["model.ace_tokens=2"])
    with pytest.raises(ValueError, match="no ACE"):
        peer_trl.ddpo_settings(cfg, "cpu")
