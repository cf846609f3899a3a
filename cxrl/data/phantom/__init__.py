"""The phantom CXR world: procedural frontal chest radiographs rendered from CheXpert labels, on
real lung shapes, with a recorded posture ψ — the data of the embedded default (no CXR images can be
obtained offline)."""
from cxrl.data.phantom.dataset import PhantomCXR
from cxrl.data.phantom.posture import IDENTITY_POSTURE, posture_matrix, sample_posture
from cxrl.data.phantom.render import RENDERED_LABELS, render_phantom

__all__ = ["IDENTITY_POSTURE", "PhantomCXR", "RENDERED_LABELS", "posture_matrix", "render_phantom", "sample_posture"]
