"""DDIM step of a diffusers ``DDIMScheduler`` with the Gaussian log-density of x_prev (DDPO convention).

``ddim_step_with_logprob`` gives the same x_prev as ``DDIMScheduler.step`` for the same noise (to
float32 rounding) plus ``log pi(x_prev | x_t)``, the density under N(mu, sigma_t^2) averaged over all
non-batch dimensions. Unlike diffusers' step it takes per-sample timesteps and never synchronises
with the host inside the sampling loop: the schedule lives on the device in :class:`DDIMTables`
(one ``[3, T]`` table: alpha_cumprod_t, alpha_cumprod_prev, sqrt(variance) for every train timestep
t, with prev = t - T // num_inference_steps and the final step using ``final_alpha_cumprod``, as
diffusers does), so a step is one gather of the table plus the fused kernel of
``cxrl.kernels.fused_ddim_step`` (Triton on CUDA; the torch reference on CPU and for thresholding).
"""
from __future__ import annotations

import numbers
import weakref

import torch
from diffusers.utils.torch_utils import randn_tensor

from cxrl.kernels.ddim_logprob import PREDICTION_TYPES, fused_ddim_step


class DDIMTables:
    """A DDIMScheduler's schedule on ``device``, for ``scheduler.num_inference_steps`` steps.

    ``table[:, t]`` = (alpha_cumprod[t], alpha_cumprod[t - step_ratio] or final_alpha_cumprod,
    sqrt(variance(t))) in float32, computed with the same float32 operations as diffusers.
    Also carries the scheduler settings the step needs (prediction type, clipping, thresholding).
    """

    def __init__(self, scheduler, device):
        config = getattr(scheduler, "config", None)
        if config is None or not hasattr(scheduler, "alphas_cumprod") or not hasattr(scheduler, "final_alpha_cumprod"):
            raise ValueError(f"scheduler must be a diffusers DDIMScheduler, got {type(scheduler).__name__}")
        if getattr(scheduler, "num_inference_steps", None) is None:
            raise ValueError("scheduler.num_inference_steps is None: call scheduler.set_timesteps(num_steps) first")
        if config.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"scheduler.config.prediction_type {config.prediction_type!r} must be one of "
                             f"{sorted(PREDICTION_TYPES)}")
        self.num_train_timesteps = int(config.num_train_timesteps)
        self.num_inference_steps = int(scheduler.num_inference_steps)
        self.step_ratio = self.num_train_timesteps // self.num_inference_steps
        self.prediction_type = config.prediction_type
        self.clip_sample_range = float(config.clip_sample_range) if config.clip_sample and not config.thresholding else None
        self.threshold = ((float(config.dynamic_thresholding_ratio), float(config.sample_max_value))
                          if config.thresholding else None)

        alphas = scheduler.alphas_cumprod.detach().to("cpu", torch.float32)
        if alphas.shape != (self.num_train_timesteps,):
            raise ValueError(f"scheduler.alphas_cumprod has shape {tuple(alphas.shape)}, "
                             f"expected [{self.num_train_timesteps}] (config.num_train_timesteps)")
        final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32).reshape(())
        prev_t = torch.arange(self.num_train_timesteps) - self.step_ratio
        alphas_prev = torch.where(prev_t >= 0, alphas[prev_t.clamp(min=0)], final)
        variance = ((1 - alphas_prev) / (1 - alphas)) * (1 - alphas / alphas_prev)
        sqrt_variance = variance**0.5
        # host copy: timesteps known on the host are checked for sigma = 0 without touching the device
        self._deterministic = ~(sqrt_variance > 0)
        self.final_alpha_cumprod = float(final)
        self.table = torch.stack([alphas, alphas_prev, sqrt_variance]).to(device)
        self.device = self.table.device  # with its index ("cuda" -> "cuda:0"), to compare with tensors'
        self.alphas_cumprod = alphas.to(self.device)

    def deterministic_timesteps(self) -> list[int]:
        """Train timesteps whose DDIM step has sigma = 0 (no density), e.g. t = 0 or the final step with
        ``set_alpha_to_one=True``."""
        return torch.nonzero(self._deterministic).flatten().tolist()

    def check_stochastic(self, timesteps) -> None:
        """Raise ValueError if any of these host-known timesteps has sigma = 0 (call once per schedule
        when the loop's timesteps live on the device)."""
        t = torch.as_tensor(timesteps).detach().to("cpu", torch.long).flatten()
        self._check_range(t)
        bad = t[self._deterministic[t]]
        if bad.numel():
            raise ValueError(
                f"timestep(s) {sorted(set(bad.tolist()))} give a deterministic DDIM step (sigma_t = 0), which has "
                "no log-density; use a scheduler with set_alpha_to_one=False and steps_offset=1 (as Stable "
                "Diffusion does) or leave those steps out of the trajectory"
            )

    def _check_range(self, t: torch.Tensor) -> None:
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ValueError(f"timestep values must lie in [0, {self.num_train_timesteps}), got "
                             f"min {int(t.min())}, max {int(t.max())}")

    def timestep_indices(self, timestep, batch_size: int) -> torch.Tensor:
        """``timestep`` (int, 0-dim or [B] integer tensor) as a LongTensor [B] on the device.

        Host-known timesteps (int or CPU tensor) are range- and sigma-checked here; device timesteps
        are not (that would synchronise); a device timestep out of range fails in the gather."""
        if isinstance(timestep, numbers.Integral) and not isinstance(timestep, bool):
            self.check_stochastic([int(timestep)])
            return torch.full((batch_size,), int(timestep), dtype=torch.long, device=self.device)
        if not isinstance(timestep, torch.Tensor):
            raise ValueError(f"timestep must be an int or an integer tensor, got {type(timestep).__name__}")
        if timestep.is_floating_point() or timestep.is_complex() or timestep.dtype == torch.bool:
            raise ValueError(f"timestep must be an integer tensor, got dtype {timestep.dtype}")
        if timestep.dim() > 1 or (timestep.dim() == 1 and timestep.shape[0] not in (1, batch_size)):
            raise ValueError(f"timestep must be a scalar or have shape [B] = [{batch_size}], got {tuple(timestep.shape)}")
        if timestep.device.type == "cpu":
            self.check_stochastic(timestep)
        return timestep.to(self.device, torch.long, non_blocking=True).reshape(-1).expand(batch_size)

    def coefficients(self, timestep, batch_size: int, eta: float):
        """(alpha_cumprod_t, alpha_cumprod_prev, std_dev_t = eta * sqrt(variance)), each [B] on the device."""
        coef = self.table.index_select(1, self.timestep_indices(timestep, batch_size))
        return coef[0], coef[1], (coef[2] if eta == 1.0 else coef[2] * eta)  # 1.0 * s == s: skip a launch


# Tables are cached per scheduler (weakly: they die with it), device and number of inference steps.
_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def tables_for(scheduler, device) -> DDIMTables:
    """The cached :class:`DDIMTables` of ``scheduler`` on ``device`` (built on first use)."""
    device = torch.device(device)
    per_scheduler = _TABLES.setdefault(scheduler, {})
    key = (str(device), getattr(scheduler, "num_inference_steps", None))
    if key not in per_scheduler:
        per_scheduler[key] = DDIMTables(scheduler, device)
    return per_scheduler[key]


def ddim_step_with_logprob(
    scheduler, model_output, timestep, sample, eta=1.0, prev_sample=None, generator=None, *,
    model_output_text=None, guidance_scale=1.0,
):
    """DDIM posterior step with the log-density of x_prev. Returns (prev_sample, log_prob [B] float32).

    scheduler: a diffusers ``DDIMScheduler`` after ``set_timesteps`` (its prediction type, clip_sample and
        thresholding settings apply), or a :class:`DDIMTables` built from one.
    model_output, sample: [B, ...] (model_output is the unconditional prediction when
        ``model_output_text`` is given; they are then combined as u + guidance_scale * (text - u) inside
        the fused step). timestep: int or integer tensor, scalar or [B] (per-sample timesteps).
    eta: in (0, 1]; sigma_t = eta * sqrt(variance) as in diffusers. eta = 0 is refused: a deterministic
        step has no density.
    prev_sample: given -> its log-prob (PPO recompute); None -> drawn as mu + sigma_t * noise with noise
        from ``randn_tensor(model_output.shape, generator=generator, ...)``, the call diffusers' step makes.
    Gradients flow to the model output(s); x_t and a given prev_sample are data.
    """
    if not isinstance(eta, numbers.Real) or isinstance(eta, bool):
        raise ValueError(f"eta must be a number in (0, 1], got {type(eta).__name__}")
    if not 0.0 < eta <= 1.0:
        raise ValueError(f"eta = {eta}: a log-prob needs a stochastic step, eta in (0, 1] (eta = 0 is deterministic "
                         "DDIM and has no density; eta > 1 makes the direction term imaginary)")
    if not isinstance(sample, torch.Tensor) or not isinstance(model_output, torch.Tensor):
        raise ValueError("model_output and sample must be tensors")
    if prev_sample is not None and generator is not None:
        raise ValueError("pass either prev_sample (log-prob of a stored step) or generator (draw a new one), not both")
    tables = scheduler if isinstance(scheduler, DDIMTables) else tables_for(scheduler, sample.device)
    if tables.device != sample.device:
        raise ValueError(f"DDIMTables live on {tables.device} but sample is on {sample.device}")
    alpha_t, alpha_prev, std_dev_t = tables.coefficients(timestep, sample.shape[0], float(eta))
    noise = None
    if prev_sample is None:
        noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
    return fused_ddim_step(
        model_output, sample, alpha_t, alpha_prev, std_dev_t, model_output_text=model_output_text,
        guidance_scale=guidance_scale, noise=noise, prev_sample=prev_sample,
        prediction_type=tables.prediction_type, clip_sample_range=tables.clip_sample_range,
        threshold=tables.threshold,
    )
