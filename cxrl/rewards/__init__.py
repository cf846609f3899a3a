"""CXR reward models and RL with Comparative Feedback (RLCF).

Rewards: ``PostureReward`` (r_align), ``DiagnosticReward`` (s_diag; own classifier or torchxrayvision),
``ConsistencyReward`` (s_cons; own dual encoder or a transformers CLIP directory), custom rewards
(``load_custom_reward``). ``RewardSuite`` combines them with weights and comparative feedback against the
frozen anchor, using a ``SeedBank`` and an ``AnchorScoreCache``. ``AsyncScorer`` overlaps scoring with
sampling. See docs/rewards.md.
"""
from cxrl.rewards.async_scorer import AsyncScorer
from cxrl.rewards.base import RewardError, RewardModel, check_reward_output, prepare_cxr, to_grayscale
from cxrl.rewards.consistency import CLIPDirEncoder, ConsistencyReward, DualEncoder, info_nce_loss
from cxrl.rewards.custom import FunctionReward, load_custom_reward
from cxrl.rewards.diagnostic import CXRClassifier, DiagnosticReward, masked_bce_loss, masked_bce_score
from cxrl.rewards.loading import load_evaluator, load_reward_model, shipped_path
from cxrl.rewards.posture import (
                                  IDENTITY_POSTURE,
                                  PostureNet,
                                  PostureReward,
                                  canonicalize,
                                  pose_images,
                                  posture_matrix,
                                  sample_postures,
)
from cxrl.rewards.rlcf import AnchorScoreCache, SeedBank, noise_for
from cxrl.rewards.suite import RewardOutput, RewardSuite
from cxrl.rewards.xrv_backend import XRV_TO_CHEXPERT, XRVClassifier

__all__ = [
    "AnchorScoreCache", "AsyncScorer", "CLIPDirEncoder", "CXRClassifier", "ConsistencyReward", "DiagnosticReward",
    "DualEncoder", "FunctionReward", "IDENTITY_POSTURE", "PostureNet", "PostureReward", "RewardError", "RewardModel", "RewardOutput",
    "RewardSuite", "SeedBank", "XRVClassifier", "XRV_TO_CHEXPERT", "canonicalize", "pose_images",
    "check_reward_output", "info_nce_loss", "load_custom_reward", "load_evaluator", "load_reward_model",
    "masked_bce_loss", "masked_bce_score", "noise_for", "posture_matrix", "prepare_cxr", "sample_postures", "shipped_path", "to_grayscale",
]
