"""The composition layer: the one place where configuration becomes objects.

Names resolve here and nowhere else — a data source and split become a reader (:mod:`.sources`),
``model.path`` a generator and the ``model``/``train`` sections a trainable policy with its optimizer
(:mod:`.models`), ``rewards.components`` a reward suite and the ``eval`` section held-out evaluators and FID
features (:mod:`.rewards`), and a whole config a :class:`~cxrl.rl.trainer.Trainer` (:mod:`.run`). The
packages below (``rl``, ``eval``, ``rewards``, ``diffusion``, ``data``) receive built objects and never
construct their collaborators from names.
"""
from cxrl.compose.evaluation import EvaluationInputs, evaluation_inputs
from cxrl.compose.models import DTYPES, build_generator, build_optimizer, build_policy, resolve_asset
from cxrl.compose.rewards import build_evaluators, build_reward_suite, fid_extractor, reward_from_config
from cxrl.compose.run import build_trainer
from cxrl.compose.sources import held_out_items, open_dataset, prompt_entries, prompt_pool

__all__ = ["DTYPES", "EvaluationInputs", "evaluation_inputs", "build_evaluators", "build_generator", "build_optimizer", "build_policy", "build_reward_suite",
           "build_trainer", "fid_extractor", "held_out_items", "open_dataset", "prompt_entries", "prompt_pool",
           "resolve_asset", "reward_from_config"]
