"""Evaluation: the paper's metrics (posture r_align, AUROC, consistency, FID, MS-SSIM), results
tables, sample grids, and :func:`evaluate_models` (sample + score + report) used by ``cxrl evaluate``
and the trainer."""
from cxrl.eval.auroc import binary_auroc, macro_auroc
from cxrl.eval.evaluate import FID_FEATURE_CHOICES, SamplingSettings, build_feature_extractor, evaluate_models, generate_samples
from cxrl.eval.evaluators import DEFAULT_EVALUATOR_ROOT, EVALUATOR_KINDS, Evaluators, load_evaluators
from cxrl.eval.fid import ClassifierFeatures, XRVDenseNetFeatures, extract_features, fid_from_features, frechet_distance
from cxrl.eval.grids import save_comparison_grid, save_grid
from cxrl.eval.metrics import image_report_consistency, posture_alignment
from cxrl.eval.ms_ssim import ms_ssim, ms_ssim_diversity, ssim
from cxrl.eval.report import write_report
from cxrl.eval.scoring import score_samples
from cxrl.eval.tables import markdown_table

__all__ = [
    "binary_auroc", "macro_auroc", "FID_FEATURE_CHOICES", "build_feature_extractor", "SamplingSettings", "evaluate_models", "generate_samples",
    "DEFAULT_EVALUATOR_ROOT", "EVALUATOR_KINDS", "Evaluators", "load_evaluators",
    "ClassifierFeatures", "XRVDenseNetFeatures", "extract_features", "fid_from_features", "frechet_distance",
    "save_comparison_grid", "save_grid", "image_report_consistency", "posture_alignment",
    "ms_ssim", "ms_ssim_diversity", "ssim", "write_report", "score_samples", "markdown_table",
]
