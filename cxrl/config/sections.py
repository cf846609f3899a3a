"""The sections of cxrl's one configuration (:class:`cxrl.config.Config`), every field documented.

RL runs (``cxrl train``) read ``model``, ``sampling``, ``rewards``, ``train``, ``data``, ``eval``, ``log``,
``checkpoint`` and ``dist``; ``cxrl evaluate`` reads ``eval`` and ``sampling``; ``cxrl pretrain`` reads
``pretrain``; ``cxrl train-reward`` reads ``reward_training``. Components receive their section.
"""
from __future__ import annotations

from dataclasses import dataclass

from cxrl.config.schema import opt

SPLITS = ("train", "validate", "test")   # the one spelling of dataset splits, everywhere
SPLIT_RENAMES = {"validation": "validate", "val": "validate"}
DATA_SOURCES = ["phantom", "iuxray", "mimic", "file"]
EVAL_SOURCES = ["phantom", "iuxray", "mimic"]
ADVANTAGE_MODES = ("per_prompt", "group", "group_batch")   # cxrl.trajectory.advantages has their semantics
GROUP_ADVANTAGES = ("group", "group_batch")                # the modes whose groups are one prompt's images


@dataclass
class ModelConfig:
    path: str = opt("asset:base", "generator: a diffusers-layout directory, 'asset:NAME' (shipped with cxrl) or 'tiny' (random tiny model for tests)")
    tiny_seed: int = opt(0, "seed of the random tiny generator when path is 'tiny'", lo=0)
    dtype: str = opt("float32", "dtype of the frozen weights (the trained ones stay float32)", choices=["float32", "bfloat16", "float16"])
    device: str = opt("auto", "'auto' (CUDA when available, one GPU per rank), 'cpu' or 'cuda'", choices=["auto", "cpu", "cuda"])
    finetune: str = opt("lora", "what is trained in the UNet: LoRA adapters or all weights", choices=["lora", "full"])
    lora_rank: int = opt(4, "LoRA rank (finetune: lora)", lo=1)
    lora_alpha: float = opt(4.0, "LoRA scaling numerator (scale = alpha / rank)", lo=0.0, lo_open=True)
    ace_tokens: int = opt(2, "number of adaptive condition embedding tokens appended to the text context; 0 disables ACE", lo=0)
    train_text_encoder: bool = opt(False, "train every weight of the text encoder too (learning rate "
                                   "train.text_encoder_learning_rate); the KL and RLCF's anchor keep a frozen copy. "
                                   "The paper trains the UNet and ACE only; on the demo it moved which seeds "
                                   "miss, not how many (docs/demo.md, 'Session 20')")
    gradient_checkpointing: bool = opt(False, "recompute UNet activations in the backward pass to save memory")
    memory_format: str = opt("contiguous", "UNet weight layout for the convolutions: 'channels_last' (NHWC) is the "
                             "layout cuDNN's tensor-core kernels prefer; on the demo's CPU it sped the rollouts ~4% "
                             "and the update not at all (docs/demo.md); the same maths, rounded differently", choices=["contiguous", "channels_last"])
    compile: str = opt("off", "torch.compile the UNet's forward (and a full fine-tune's anchor copy): 'off' or 'default' "
                       "(inductor; CUDA-graph and max-autotune modes are not offered: untested in training). The same work "
                       "in fewer kernels, 1.19-1.23x TRL's epoch on the CPU (docs/benchmarks.md); each input shape compiles "
                       "once (~70 s cold for a tiny UNet on a CPU), and stored and recomputed log-probs then agree to "
                       "rounding, not to the bit (cxrl/diffusion/compiled.py)", choices=["off", "default"])
    attention: str = opt("auto", "UNet attention backend: 'auto' (on CUDA one timed decision per shape family, shared by "
                         "sampling and the PPO recompute and cached on disk per device; SDPA on CPU), 'triton', "
                         "'xformers', 'sdpa', or 'diffusers' (leave the model's own processors)",
                         choices=["auto", "triton", "xformers", "sdpa", "diffusers"])


@dataclass
class SamplingConfig:
    num_steps: int = opt(20, "DDIM steps per rollout (and per evaluation sample)", lo=1)
    guidance_scale: float = opt(5.0, "classifier-free guidance scale (1 = no CFG)", lo=0.0)
    eta: float = opt(1.0, "DDIM eta in (0, 1]; > 0 makes each step a Gaussian policy", lo=0.0, hi=1.0, lo_open=True)
    batch_size: int = opt(4, "images per rollout forward pass on one rank", lo=1)
    samples_per_epoch: int = opt(32, "images sampled per RL epoch, summed over all ranks", lo=1)
    group_size: int = opt(1, "images per prompt in one epoch (the group for group-relative advantages)", lo=1)


REWARD_ENTRY_KEYS = ("name", "weight", "path", "backend", "comparative", "callable", "kwargs", "strict", "dtype")


@dataclass
class RewardsConfig:
    components: list = opt([{"name": "posture"}, {"name": "diagnostic"}, {"name": "consistency"}],
                           "reward entries, each a mapping: name, weight (1), path (null = shipped weights), backend "
                           "(own | xrv | clip), comparative, or callable ('module:fn' / 'file.py:fn') for a custom reward")
    feedback: str = opt("comparative", "'comparative' = RLCF (score minus the frozen anchor's score on the same prompt "
                        "and initial noise); 'direct' = raw scores (the w/o-RLCF ablation)", choices=["comparative", "direct"])
    anchor_cache: str = opt("", "anchor-score cache file (JSON); '' puts it at <output>/anchor_cache.json")
    anchor_scores: str = opt("", "a directory of precomputed anchor scores (`cxrl anchor-scores --out DIR`), read when "
                             "their namespace matches; the ones shipped in cxrl/assets/anchor_scores are always read")
    seed_bank_size: int = opt(4, "initial-noise seeds kept per prompt (the anchor cache hits across epochs)", lo=1)
    seed_bank_seed: int = opt(0, "seed of the seed bank (apart from train.seed, so that every training seed draws its "
                              "initial noises — and hits cached anchor scores — from the same bank)", lo=0)
    overlap: bool = opt(True, "score each rollout chunk on a worker thread (own CUDA stream) while the next chunk is "
                        "sampled; the rewards are identical either way. On the CPU it pays only when scoring is "
                        "slow (an RLCF anchor to sample); beside train.rollout_threads > 1 it cost the rollout its "
                        "second thread (docs/demo.md)")


@dataclass
class TrainConfig:
    seed: int = opt(0, "global seed; every epoch's randomness is derived from (seed, epoch, rank)", lo=0)
    epochs: int = opt(100, "RL epochs (rollout + update rounds)", lo=1)
    learning_rate: float = opt(3e-4, "AdamW learning rate of the UNet parameters", lo=0.0, lo_open=True)
    ace_learning_rate: float = opt(1e-3, "AdamW learning rate of the ACE tokens", lo=0.0, lo_open=True)
    text_encoder_learning_rate: float = opt(1e-4, "AdamW learning rate of the text encoder (model.train_text_encoder), "
                                            "without weight decay", lo=0.0, lo_open=True)
    weight_decay: float = opt(1e-4, "AdamW weight decay", lo=0.0)
    adam_beta1: float = opt(0.9, "AdamW beta1", lo=0.0, hi=1.0)
    adam_beta2: float = opt(0.999, "AdamW beta2", lo=0.0, hi=1.0)
    adam_eps: float = opt(1e-8, "AdamW epsilon", lo=0.0, lo_open=True)
    warmup_steps: int = opt(0, "optimizer steps of linear learning-rate warm-up", lo=0)
    lr_schedule: str = opt("constant", "after warm-up: 'constant', or 'cosine' decay to 0 at the last optimizer step "
                           "of train.epochs (a resume with more epochs stretches the rest of the curve)",
                           choices=["constant", "cosine"])
    max_grad_norm: float = opt(1.0, "clip the global gradient norm to this; 0 disables clipping", lo=0.0)
    batch_size: int = opt(2, "samples per training minibatch on one rank", lo=1)
    gradient_accumulation: int = opt(1, "sample minibatches accumulated per optimizer step (each already spans its trained timesteps)", lo=1)
    inner_epochs: int = opt(1, "passes of PPO updates over one epoch's stored transitions", lo=1)
    timestep_fraction: float = opt(1.0, "fraction of each trajectory's timesteps that is trained", lo=0.0, hi=1.0, lo_open=True)
    skip_first_steps: int = opt(0, "DDIM steps at the start of each trajectory that are never trained (timestep_fraction "
                                "applies to the rest); see docs/method.md, 'Which steps to train'", lo=0)
    skip_last_steps: int = opt(0, "DDIM steps at the end of each trajectory that are never trained: at a few steps their "
                               "noise barely changes the image, so their gradient is mostly noise (`cxrl step-credit` "
                               "measures it); both are capped so that one step stays trainable", lo=0)
    clip_range: float = opt(1e-4, "PPO clip epsilon of the importance ratio", lo=0.0, lo_open=True)
    adv_clip: float = opt(5.0, "advantages are clipped to +-adv_clip", lo=0.0, lo_open=True)
    advantage: str = opt("per_prompt", "advantage normalisation: 'per_prompt' (DDPO's per-prompt windows), 'group' "
                         "(each prompt's images against their mean, divided by their std: GRPO), 'group_batch' (against "
                         "their mean, divided by one std over the epoch: a prompt whose images barely differ stays small)",
                         choices=list(ADVANTAGE_MODES))
    reward_normalization: str = opt("none", "'components': divide each reward component by its std over the epoch's "
                                    "samples before the weighted sum, so rewards.components weights are relative "
                                    "importances whatever each reward's scale; 'none': the weighted sum of raw rewards",
                                    choices=["none", "components"])
    advantage_window: int = opt(32, "per_prompt: rewards kept per prompt", lo=1)
    advantage_min_count: int = opt(16, "per_prompt: below this many rewards a prompt uses the batch statistics", lo=1)
    kl_beta: float = opt(0.0, "weight of the KL penalty to the anchor, beta*|mu_theta - mu_anchor|^2/(2 sigma_t^2); 0 disables", lo=0.0)
    ema_decay: float = opt(0.0, "EMA of the trained weights, updated after every optimizer step and started at the "
                           "generator's: the policy the monitor probes and the run ends with (final/); the trained "
                           "weights go on training underneath. < 1; 0 disables", lo=0.0, hi=1.0)
    final_policy: str = opt("last", "the policy a run ends with (saved to final/, evaluated): 'last', or 'best_probe': "
                            "of the monitor's probes after an update, the one whose validation images score highest "
                            "under the training rewards (never the held-out evaluators), when it beats the last by > 2 "
                            "paired standard errors (cxrl/rl/selection.py); without monitor probes, the last",
                            choices=["last", "best_probe"])
    mixed_precision: str = opt("auto", "'auto' = bf16 autocast on CUDA, none on CPU; 'no' or 'bf16' force it (bf16 on a CPU: "
                                  "faster only where it is native, AVX-512-BF16 or AMX; docs/demo.md, 'Session 18')",
                                  choices=["auto", "no", "bf16"])
    deterministic: bool = opt(True, "deterministic algorithms (bitwise-reproducible resume on CPU); fresh memory is not "
                              "NaN-filled. Measured on CPU: ~0-10% slower, within noise (docs/benchmarks.md). On CUDA not bitwise: torch's SDPA "
                              "backward (cuDNN / memory-efficient kernels) stays nondeterministic and says so (H200, docs/benchmarks.md)")
    max_nonfinite: int = opt(3, "abort after this many consecutive updates with a non-finite loss or gradient", lo=1)
    torch_threads: int = opt(0, "intra-op CPU threads for torch (torch.set_num_threads); 0 = auto: on the CPU the cores "
                             "this rank may use (cores / ranks), one left to the scoring thread when rewards.overlap "
                             "is on — two thread teams on the same cores mostly spin; on CUDA torch's default", lo=0)
    rollout_threads: int = opt(0, "intra-op CPU threads while sampling rollouts, scoring and monitor probes (forward passes "
                               "only; the update keeps train.torch_threads, whose gradient sums depend on the thread "
                               "count). The demo UNet samples the same bits on 1 and 2 threads (measured, docs/demo.md); "
                               "other models may differ in the last bits; 0 = train.torch_threads", lo=0)
    rollout_workers: int = opt(0, "CPU: sample this many rollout chunks (and monitor probe batches) at a time, each on "
                               "its own thread with one intra-op thread (0/1 = one chunk at a time on "
                               "train.rollout_threads). Each chunk's noise is its own, so the trajectories are those of "
                               "one chunk at a time on one thread; 2 on the demo's 2 vCPUs: ~9% faster (python -m benchmarks.cpu_sampling). "
                               "Not with rewards.overlap (its scorer takes the chunks in order)", lo=0)


@dataclass
class DataConfig:
    source: str = opt("phantom", "prompt source: built-in dataset or a text/CSV/JSONL file", choices=DATA_SOURCES,
                      renamed={"iu_xray": "iuxray"})
    path: str = opt("", "dataset root (mimic: MIMIC-CXR-JPG; iuxray: Open-i PNGs, optional) or prompt file (file: .txt one "
                        "per line, .csv/.jsonl with a prompt column, optional labels, weight and metadata columns)")
    prompt_column: str = opt("", "file source, .csv/.jsonl: the prompt column ('' = 'prompt', else 'report')")
    weight_column: str = opt("", "file source, .csv/.jsonl: sample prompts in proportion to this column ('' = uniformly)")
    reports_path: str = opt("", "mimic: root of the MIMIC-CXR reports (files/pXX/...); '' writes prompts from the labels")
    split: str = opt("train", "dataset split to draw prompts from", choices=list(SPLITS), renamed=SPLIT_RENAMES)
    max_prompts: int = opt(0, "use at most this many distinct prompts (0 = all)", lo=0)
    draw: str = opt("uniform", "how each epoch picks its prompts: 'uniform' (at random, or by weight_column), or "
                    "'balanced': of 8 such draws, the one that keeps the run's count of each finding closest to the "
                    "pool's share (needs labelled prompts; cxrl/rl/prompts.py)", choices=["uniform", "balanced"])
    label_balance: float = opt(0.0, "weigh each prompt by n**-a for the rarest finding it states present or absent (n: "
                               "the pool's prompts stating it): 0 = off, 0.5 = square-root class-balanced draws that "
                               "show rare findings about twice as often (needs labelled prompts; cxrl/rl/prompts.py)",
                               lo=0.0)
    exclude_findings: list = opt([], "leave out of the RL prompt pool every prompt that states one of these CheXpert "
                                 "findings present, e.g. [Lung Lesion]: for a finding the reward models cannot see, "
                                 "whose prompts teach the policy only side effects (needs labelled prompts; the demo: "
                                 "docs/demo.md, 'Session 19')")


@dataclass
class EvalConfig:
    enabled: bool = opt(False, "after training, sample the base and the tuned generator on held-out prompts from the "
                        "same initial noises and score both with the held-out evaluators (never the reward models)")
    source: str = opt("phantom", "where the held-out prompts and FID reference images come from (iuxray and mimic "
                      "read data.path / data.reports_path)", choices=EVAL_SOURCES)
    split: str = opt("test", "split of the held-out prompts; must differ from data.split", choices=list(SPLITS),
                     renamed=SPLIT_RENAMES)
    num_prompts: int = opt(48, "held-out prompts evaluated (0 = every distinct prompt of eval.split)", lo=0)
    samples_per_prompt: int = opt(4, "samples per prompt (the MS-SSIM protocol uses 4: 6 pairs)", lo=1)
    seed: int = opt(1234, "seed of the prompt choice and the evaluation initial noises (apart from train.seed)", lo=0)
    batch_size: int = opt(16, "images per sampling / scoring batch", lo=1)
    resolution: int = opt(0, "size of the reference images (0 = the generator's output size)", lo=0)
    evaluators: str = opt("", "directory with posture/ diagnostic/ consistency/ evaluators ('' = cxrl/assets/evaluators)")
    evaluator_paths: dict = opt({}, "per-kind evaluator directories over eval.evaluators, e.g. {diagnostic: DIR} or "
                                "{diagnostic: 'xrv:densenet121-res224-mimic_ch'} (a torchxrayvision classifier)")
    fid_features: str = opt("auto", "FID features: 'evaluator' (the diagnostic evaluator's), 'xrv' (torchxrayvision "
                            "DenseNet-121 features2), 'none', or 'auto'", choices=["auto", "evaluator", "xrv", "none"])
    xrv_weights: str = opt("densenet121-res224-all", "torchxrayvision weights of the 'xrv' FID features")
    xrv_cache_dir: str = opt("", "torchxrayvision weights directory ('' = ~/.torchxrayvision/models_data)")
    min_label_prompts: int = opt(3, "a label enters the macro AUROC only with at least this many positive and as many "
                                 "negative held-out prompts (1 = every label with both classes; both are reported)", lo=1)
    bootstrap: int = opt(1000, "bootstrap resamples of the prompts for the tuned-minus-base confidence intervals (0 = none)", lo=0)
    output_subdir: str = opt("eval", "where the evaluation goes, relative to log.output_dir")
    use_cache: bool = opt(True, "reuse a cached evaluation of a model when everything it depends on is unchanged (content-"
                          "hashed: weights, evaluators, items, settings, scoring version, torch, device); the demo ships "
                          "its base model's")
    cache_dir: str = opt("", "also write each model's evaluation to this cache directory ('' = read only)")
    torch_threads: int = opt(0, "intra-op CPU threads for the evaluation (0 = as in training, train.torch_threads); "
                               "it samples with no scorer thread beside it, so it can use more cores than training", lo=0)
    sampling_workers: int = opt(0, "CPU: sample this many batches at a time, each on its own thread with one intra-op "
                                "thread (0/1 = one batch at a time on eval.torch_threads). The samples are the same bits "
                                "(each batch's noise is its own); the demo's 2 workers sample ~12% faster than 1 batch on "
                                "2 threads (python -m benchmarks.cpu_sampling)", lo=0)


@dataclass
class MonitorConfig:
    every: int = opt(0, "reward-hacking monitor: every N epochs (and before the first update and after the last) "
                        "sample the policy on a fixed probe set and score it with the held-out evaluators of the "
                        "rewards that have one; 0 = off",
                     lo=0)
    split: str = opt("validate", "split of the probe prompts (eval.source's dataset; held out from data.split)",
                     choices=list(SPLITS), renamed=SPLIT_RENAMES)
    num_prompts: int = opt(16, "distinct probe prompts", lo=1)
    samples_per_prompt: int = opt(2, "samples per probe prompt (fixed initial noises: probes are paired sample by sample)", lo=1)
    seed: int = opt(4321, "seed of the probe prompts' choice and their initial noises", lo=0)
    smoothing: int = opt(5, "epochs in the moving average drawn over the raw points of reward_curves.png", lo=1)


@dataclass
class LogConfig:
    output_dir: str = opt("runs/demo", "run directory: checkpoints, metrics.jsonl, plots, resolved config")
    progress: bool = opt(True, "tqdm progress bars")
    tensorboard: str = opt("auto", "'auto' writes TensorBoard events when tensorboard is installed", choices=["auto", "on", "off"])
    sample_every: int = opt(10, "write a sample grid PNG every N epochs (0 disables)", lo=0)
    sample_count: int = opt(8, "images in a sample grid", lo=1)


@dataclass
class CheckpointConfig:
    every: int = opt(1, "write a checkpoint every N epochs (the last epoch always gets one)", lo=1)
    keep: int = opt(3, "complete checkpoints kept on disk (older ones are deleted)", lo=1)


@dataclass
class DistConfig:
    backend: str = opt("auto", "process-group backend under torchrun: 'auto' = nccl on CUDA, gloo on CPU", choices=["auto", "nccl", "gloo"])
    timeout_s: float = opt(600.0, "collective timeout: a stuck rank fails the run instead of hanging it", lo=1.0)


@dataclass
class PretrainConfig:
    """Everything that determines the demo base generator (``cxrl pretrain``); the defaults are the shipped base."""

    seed: int = opt(0, "weights init, phantom renders, batch order, timesteps, noise and condition dropout", lo=0)
    resolution: int = opt(32, "pixels per side of the 1-channel pixel-space model (the phantom renderer needs >= 16)", lo=16)
    block_out_channels: list = opt([32, 64, 64], "UNet widths per resolution level (>= 2 levels)")
    layers_per_block: int = opt(1, "ResNet layers per UNet block", lo=1)
    attention_head_dim: int = opt(8, "heads of the cross-attention levels (diffusers' attention_head_dim)", lo=1)
    cross_attention_dim: int = opt(64, "text-encoder width = cross-attention width", lo=1)
    text_layers: int = opt(2, "CLIP text-encoder layers", lo=1)
    text_heads: int = opt(2, "CLIP text-encoder attention heads", lo=1)
    vocab_size: int = opt(2000, "upper bound of the BPE vocabulary (>= 514: 256 byte symbols with and without </w>, BOS, EOS)", lo=514)
    num_images: int = opt(20000, "phantoms rendered once from the train reports and held in memory as uint8", lo=1)
    posture_strength: float = opt(1.0, "random patient positioning of the training phantoms (0 = canonical pose)", lo=0.0, hi=2.0)
    prompt_source: str = opt("impression", "report section the prompt is taken from", choices=["impression", "findings", "both"])
    steps: int = opt(1500, "optimizer steps", lo=1)
    batch_size: int = opt(32, "images per step", lo=1)
    learning_rate: float = opt(1e-3, "AdamW peak learning rate", lo=0.0, lo_open=True)
    lr_schedule: str = opt("cosine", "after warm-up: cosine decay to 0 or constant", choices=["cosine", "constant"])
    warmup_steps: int = opt(100, "linear warm-up steps (< steps)", lo=0)
    weight_decay: float = opt(1e-2, "AdamW weight decay", lo=0.0)
    max_grad_norm: float = opt(1.0, "gradient-norm clip (0 disables)", lo=0.0)
    cond_dropout: float = opt(0.1, "share of prompts replaced by the empty prompt (the unconditional model CFG needs), < 1", lo=0.0)
    ema_decay: float = opt(0.995, "EMA decay of all weights, < 1 (0 = no EMA); the EMA is what is saved", lo=0.0)
    storage_dtype: str = opt("float16", "dtype of the saved weights (fp16 halves the package size)", choices=["float16", "float32"])
    # A pixel-space model on the DDPM linear schedule needs it at 10-20 steps: at t ~ 950 the x_0 estimate divides
    # the noise error by sqrt(alpha_t) ~ 0.01, and unclipped samples saturate (measured on the shipped base, 20
    # steps: 13 of 16 samples all-black/all-white without, 0 of 16 with). The step stays a Gaussian policy.
    clip_sample: bool = opt(True, "clip the DDIM step's predicted x_0 to [-1, 1] (saved in the scheduler config)")


@dataclass
class RewardTrainingConfig:
    """Training of the project's own reward models (``cxrl train-reward``): optimiser, network, augmentation."""

    epochs: int = opt(8, "passes over the training images", lo=1)
    batch_size: int = opt(64, "images per step", lo=1)
    learning_rate: float = opt(2e-3, "AdamW peak learning rate (cosine schedule after a 2% warm-up)", lo=0.0, lo_open=True)
    weight_decay: float = opt(1e-4, "AdamW weight decay", lo=0.0)
    val_fraction: float = opt(0.1, "share of the images held out for the validation numbers saved with the model",
                              lo=0.0, hi=1.0, lo_open=True)
    seed: int = opt(0, "initialisation, batch order and augmentations", lo=0)
    widths: list = opt([16, 32, 64, 128], "convolutional encoder widths per stage")
    feature_dim: int = opt(128, "image feature width", lo=1)
    max_scale: float = opt(0.15, "posture targets: largest relative scale change", lo=0.0)
    max_shift: float = opt(0.15, "posture targets: largest shift (normalised coordinates)", lo=0.0)
    max_rotation: float = opt(0.3, "posture targets: largest rotation (radians)", lo=0.0)
    aug_posture: float = opt(0.5, "share of the posture ranges used as augmentation for the diagnostic and consistency "
                             "models (they must be posture-invariant)", lo=0.0, hi=1.0)
    unmentioned: str = opt("masked", "diagnostic: a finding the report leaves unmentioned is 'masked' (no loss, CheXpert's "
                           "convention) or 'negative' (trained as absent: true of the phantom world, which draws only the "
                           "findings a report states; docs/rewards.md)", choices=["masked", "negative"])
    log_every: int = opt(0, "print a loss line every N steps (0: once per epoch)", lo=0)
