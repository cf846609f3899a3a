"""Data: report sections + CheXpert labeler, prompts, IU X-ray reports, MIMIC-CXR-JPG, phantom world."""
from cxrl.data.issues import DataError, DataIssues
from cxrl.data.iuxray import IUXrayReports
from cxrl.data.labeler import label_report, label_sections, label_text
from cxrl.data.labels import CHEXPERT_LABELS, apply_label_policy, labels_to_tensor, tensor_to_labels
from cxrl.data.mimic import MimicCXR
from cxrl.data.phantom import PhantomCXR, render_phantom, sample_posture
from cxrl.data.prompts import build_prompt, prompt_from_labels
from cxrl.data.sections import parse_sections

__all__ = ["CHEXPERT_LABELS", "DataError", "DataIssues", "IUXrayReports", "MimicCXR", "PhantomCXR",
           "apply_label_policy", "build_prompt", "label_report", "label_sections", "label_text", "labels_to_tensor",
           "parse_sections", "prompt_from_labels", "render_phantom", "sample_posture", "tensor_to_labels"]
