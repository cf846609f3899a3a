"""Evaluation: the paper's metrics (posture r_align, AUROC, consistency, FID, MS-SSIM), the paired tuned − base
comparison, results tables and sample grids, and :func:`run_evaluation` (sample + score + compare + report),
the one path used by ``cxrl evaluate`` and at the end of ``cxrl train``."""
from cxrl.eval.auroc import binary_auroc, macro_auroc
from cxrl.eval.compare import TARGET_METRICS, comparison_markdown, paired_bootstrap
from cxrl.eval.evaluate import evaluate_models, generate_samples, initial_noise
from cxrl.eval.evaluators import DEFAULT_EVALUATOR_ROOT, EVALUATOR_KINDS, Evaluators, load_evaluators
from cxrl.eval.fid import ClassifierFeatures, XRVDenseNetFeatures, extract_features, fid_from_features, frechet_distance
from cxrl.eval.grids import save_comparison_grid, save_grid
from cxrl.eval.metrics import image_report_consistency, posture_alignment
from cxrl.eval.ms_ssim import ms_ssim, ms_ssim_diversity, ssim
from cxrl.eval.report import write_report
from cxrl.eval.run import Evaluation, run_evaluation
from cxrl.eval.scoring import SampleScores, score_samples
from cxrl.eval.tables import markdown_table

__all__ = [
    "binary_auroc", "macro_auroc", "TARGET_METRICS", "comparison_markdown", "paired_bootstrap", "evaluate_models",
    "generate_samples", "initial_noise", "DEFAULT_EVALUATOR_ROOT", "EVALUATOR_KINDS", "Evaluators", "load_evaluators",
    "ClassifierFeatures", "XRVDenseNetFeatures", "extract_features", "fid_from_features", "frechet_distance",
    "save_comparison_grid", "save_grid", "image_report_consistency", "posture_alignment",
    "ms_ssim", "ms_ssim_diversity", "ssim", "write_report", "Evaluation", "run_evaluation", "SampleScores",
    "score_samples", "markdown_table",
]
