"""The rule tables of the CheXpert-14 report labeler (``cxrl.data.labeler`` is the engine).

All patterns run on lower-cased text with whitespace collapsed. A *mention* pattern finds a finding;
its polarity is decided by the cue tables below, scoped to the mention's clause. A *normal* pattern
is a phrase that states the finding is absent in positive wording ("heart size is normal").
"""
from __future__ import annotations

import re


def _rx(*alternatives: str) -> re.Pattern:
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


def _words(*alternatives: str) -> re.Pattern:
    """Like _rx, but each alternative must start on a word boundary ("stent" is not in "consistent")."""
    return re.compile("|".join(f"\\b(?:{a})" for a in alternatives))


_HEART = r"(?:heart|cardiac (?:silhouette|shadow|contours?|size)|heart (?:size|shadow|silhouette))"
_DEGREE = r"(?:(?:is|are|appears?|remains?|appear|has|which is|also)\s+)*(?:not\s+)?(?:\w+ly\s+|borderline\s+|slightly\s+|top[- ]normal\s+)?"
_VESSELS = r"(?:vasculature|vascularity|vessels|vascular markings)"
_LOBE = r"(?:(?:left|right|middle|upper|lower|bibasilar|basilar|lingular)\s+){0,3}(?:lobe|lobes|lung|lungs|lingula)"

MENTIONS: dict[str, re.Pattern] = {
    "Enlarged Cardiomediastinum": _words(
        r"(?:widen(?:ed|ing)|enlarged|prominent)\s+(?:superior\s+)?(?:cardio)?mediastin(?:um|al (?:silhouette|contours?))",
        r"(?:cardio)?mediastin(?:um|al (?:silhouette|contours?))\s+" + _DEGREE + r"(?:widened|enlarged|wide|prominent)",
        r"widening of the (?:superior )?mediastinum",
    ),
    "Cardiomegaly": _words(
        r"cardiomegaly",
        r"(?:enlarged|large|prominent|increased)\s+(?:size of the\s+)?" + _HEART,
        _HEART + r"\s+" + _DEGREE + r"(?:enlarged|enlargement|large|prominent|increased)",
        r"(?:cardiac|heart)\s+enlargement",
        r"enlargement of the (?:cardiac silhouette|heart)",
        r"(?:heart|cardiac silhouette)(?: size)? (?:is |remains )?(?:at |towards? )?(?:the )?"
        r"upper (?:limits?|range)(?: of)? normal",
    ),
    "Lung Opacity": _words(
        r"opacit(?:y|ies)", r"opacification", r"densit(?:y|ies)", r"infiltrat(?:e|es|ion|ive)",
        r"air[- ]?space (?:disease|process|opacit\w+)", r"hazy", r"haziness",
        r"(?:increased|prominent|coarse|coarsened)\s+(?:interstitial|bronchovascular|pulmonary)\s+markings",
        r"interstitial (?:markings|pattern|prominence|opacit\w+|disease|thickening)",
        r"reticul(?:ar|ation|onodular)", r"ground[- ]glass",
    ),
    "Lung Lesion": _words(
        # IU X-ray indexes a "nodular opacity/density/infiltrate" as a round opacity, not a nodule (train
        # split: 31 of 44); "nodular" alone names a lesion only in these phrases
        r"nodules?", r"nodular (?:prominence|mass(?:es)?|lesions?)", r"(?:fibro|reticulo|reticular-)nodular",
        r"(?<!soft tissue )mass(?:es)?\b", r"mass[- ]?like", r"tumou?r", r"neoplasm", r"carcinoma",
        r"malignan(?:cy|t)", r"metasta(?:sis|ses|tic)", r"cavitary lesion", r"lung lesion", r"pulmonary lesion",
    ),
    "Edema": _words(
        r"edema", r"oedema", r"(?:vascular|pulmonary|venous)\s+congestion", r"congestive heart failure",
        r"\bchf\b", r"heart failure", r"fluid overload", r"kerley", r"cephalization",
        r"(?:pulmonary )?vascular (?:engorgement|redistribution)",
        # IU X-ray indexes a prominent pulmonary vasculature as Pulmonary Congestion (train split: every one)
        r"vascular (?:prominence|plethora|indistinctness)",
        r"indistinct (?:pulmonary )?vascular (?:margination|markings)",
        r"(?:prominen(?:t|ce of)|increased|engorged)\s+(?:the\s+)?(?:central\s+)?(?:pulmonary\s+|lung\s+)?" + _VESSELS,
        r"(?:pulmonary\s+|lung\s+|central\s+)" + _VESSELS + r"\s+" + _DEGREE + r"(?:prominent|increased|engorged)",
        r"pulmonary venous hypertension",
    ),
    "Consolidation": _words(r"consolidat(?:ion|ions|ive|ed)"),
    "Pneumonia": _words(r"pneumonia", r"pneumonitis", r"infectio(?:n|us)", r"bronchopneumonia"),
    "Atelectasis": _words(
        r"atelecta(?:sis|ses|tic)", r"collapsed? (?:of )?(?:the )?" + _LOBE, _LOBE + r" collapse",
        r"(?:platelike|plate-like|discoid|subsegmental)\s+(?:opacit\w+|densit\w+)",
    ),
    "Pneumothorax": _words(r"pneumothora(?:x|ces)", r"\bptx\b"),
    "Pleural Effusion": _words(
        r"(?<!pericardial )(?<!pericardial or )effusions?", r"pleural fluid", r"hydrothorax",
        r"blunt(?:ing|ed)?(?: of)?(?: the)?(?: (?:left|right|bilateral|lateral|posterior))*\s+costophrenic",
        r"costophrenic (?:angles?|sulcus|sulci|recess(?:es)?)\s+" + _DEGREE + r"blunt(?:ed|ing)",
        r"costophrenic (?:angle )?blunting", r"fluid (?:in|within) the (?:major |minor )?fissure",
    ),
    "Pleural Other": _words(
        r"pleural (?:thickening|plaques?|scarring|calcification|reaction)", r"fibrothorax",
        r"apical (?:pleural )?(?:cap|capping|thickening)", r"pleural[- ]parenchymal scarring",
        r"fissural thickening", r"thickening (?:of|in) the (?:\w+ )?fissures?", r"thickened (?:\w+ )?fissures?",
    ),
    "Fracture": _words(r"fractur(?:e|es|ed)", r"\bfx\b"),
    "Support Devices": _words(
        r"pacemaker", r"\bpacer\b", r"defibrillator", r"\b(?:a?icd)\b", r"catheters?", r"\bpicc\b",
        r"(?:central|venous|arterial|jugular|subclavian|dialysis|midline|swan[- ]ganz|port)\s+(?:venous\s+)?(?:line|catheter)s?",
        r"(?:endotracheal|tracheostomy|nasogastric|orogastric|feeding|chest|enteric|gastric|dobhoff|et|ng|og|mediastinal|thoracostomy)\s+tubes?",
        r"tracheostomy", r"port[- ]a[- ]cath", r"\b(?:power)?port\b", r"stents?", r"(?:pacing|cardiac|transvenous)\s+leads?",
        r"(?:implanted|cardiac|medical)\s+device", r"(?:valve|valvular)\s+(?:replacement|prosthesis)",
        r"prosthetic (?:valve|aortic|mitral)", r"(?:aortic|mitral) valve (?:replacement|prosthesis)",
        r"loop recorder", r"\blvad\b", r"\biabp\b", r"balloon pump", r"devices?\b", r"stimulator",
        r"(?:pulse )?generator", r"(?:monitor|ecg|ekg|electrocardiogram|external)\s+(?:\w+\s+)?leads?\b",
        r"leads? (?:project|overl|terminat|in |at )", r"tip (?:is |projects? |overlies |terminates? |in the |at the )",
    ),
}

# Phrases that assert absence without a negation word.
NORMALS: dict[str, re.Pattern] = {
    "Cardiomegaly": _rx(
        _HEART + r"\s+(?:size\s+)?(?:is\s+|are\s+|appears?\s+|remains?\s+)*(?:normal|within normal limits|unremarkable|upper normal|top normal)",
        r"normal(?:-| )(?:sized?\s+)?" + _HEART, r"(?:heart|cardiac silhouette) (?:is )?normal in size",
        r"(?:cardiomediastinal|cardiac and mediastinal|heart and mediastin\w+)\s+(?:silhouettes?|contours?|size)?\s*"
        r"(?:is |are |appears? |remains? )*(?:normal|within normal limits|unremarkable)",
        r"normal (?:cardiomediastinal|heart and mediastinal)",
    ),
    "Enlarged Cardiomediastinum": _rx(
        r"(?:cardio)?mediastin(?:um|al)\s+(?:silhouettes?|contours?|size|width)?\s*(?:is |are |appears? |remains? )*"
        r"(?:normal|within normal limits|unremarkable)",
        r"(?:heart and mediastin\w+|cardiac and mediastinal)\s+(?:silhouettes?|contours?|size)?\s*(?:is |are |appears? |remains? )*(?:normal|within normal limits|unremarkable)",
        r"normal (?:cardio)?mediastinal",
    ),
    "Lung Opacity": _rx(r"lungs? (?:are |is |appear |remain )*clear", r"clear lungs"),
}

# Cue tables. Pre cues sit before the mention (nearest cue wins); post cues follow it in its clause.
NEGATION_PRE = _rx(
    # first, so it wins over the bare "no" at the same position: in "no opacity to suggest
    # pneumonia" the hedge sits inside a negated clause
    r"\b(?:no|without)\b[^.]*?\b(?:to suggest|suggest(?:s|ing|ive of)?|to indicate|indicat(?:e|ing|ive of)|consistent with)\b",
    r"\bno\b", r"\bwithout\b", r"free of", r"negative for", r"absence of", r"\babsent\b", r"resolution of",
    r"\bresolved\b", r"removal of", r"\bremoved\b", r"clear of", r"\bnor\b", r"\bneither\b", r"ruled out",
    r"rules out", r"not (?:see|seen|identified|demonstrate|appreciate)", r"\bnot (?:a|an|any)\b",
    r"interval clearing of",
)
UNCERTAIN_PRE = _rx(
    r"\bmay\b", r"\bmight\b", r"\bcould\b", r"\bpossibl[ey]\b", r"\bprobabl[ey]\b", r"\blikely\b",
    r"\bsuspect(?:ed)?\b", r"suspicious (?:for|of)", r"concern(?:ing)? for", r"question of", r"questionabl[ey]",
    r"can ?not (?:be )?(?:exclude|excluded|rule out|ruled out)", r"can't (?:exclude|rule out)",
    r"not (?:be )?(?:excluded|ruled out)", r"suggest(?:s|ive of|ing|ed)?\b", r"\bversus\b", r"\bvs\.?\b",
    r"differential", r"\bborderline\b", r"\bequivocal\b", r"\bindeterminate\b", r"\brule out\b", r"\br/o\b",
    r"\bpotential\b", r"\bpresumed\b", r"difficult to exclude", r"evaluate for", r"\bquestioned\b",
    r"correlat\w+ (?:clinically )?(?:for|with)", r"\bexclude\b", r"worrisome for", r"rule-out",
    r"would be a consideration",
    r"\bquestion\b",
)
UNCERTAIN_POST = _rx(
    r"^\s*(?:[\w-]+\s+){0,8}?(?:can ?not|can't|could not|not)\s+(?:be\s+)?(?:excluded|ruled out|entirely excluded)",
    r"^\s*(?:[\w-]+\s+){0,6}?(?:is|are)\s+(?:also\s+)?(?:possible|suspected|questioned|likely|not excluded)",
    r"^\s*(?:[\w-]+\s+){0,4}?(?:may|might|could)\s+(?:be|also be|have)",
    r"^\s*(?:[\w-]+\s+){0,8}?(?:is|would be)\s+(?:a|another)\s+(?:\w+\s+)?consideration", r"^\s*is in the differential",
    r"^\s*(?:[\w-]+\s+){0,3}?versus\b", r"^\s*(?:[\w-]+\s+){0,3}?vs\b", r"^\s*\?",
)
# Post-negation: the mention's own predicate, AFTER it, denies it ("effusion has resolved", "heart size and
# pulmonary vascular engorgement appear within limits of normal"). Only the first verb group after the
# mention is its predicate (PREDICATE_START); the engine checks that the words in between are at most a
# coordinated subject ("A and B", "A, B and C"), so "cardiomegaly is stable and edema has resolved" keeps
# the cardiomegaly.
_VERB = r"(?:is|are|was|were|appears?|appeared|remains?|remained|seems?|looks?)"
_ADVERBS = r"(?:(?:\w+ly|now|again|still|otherwise|overall|felt to be|thought to be|considered|to be)\s+)*"
_ABSENT = (r"(?:no longer|not)\s+(?:(?:definitely|clearly) )?"
           r"(?:seen|identified|visualized|visible|present|evident|demonstrated|appreciated|"
           r"noted|detected|apparent|enlarged|widened|increased|prominent)"
           r"(?! (?:on|in) (?:the )?(?:previous|prior|old|earlier))")  # "not seen on the prior exam" is new
# not "within the limits of the study"
_NORMAL_LIMITS = r"within (?:the )?(?:normal limits|limits of normal|limits\b(?! of))"
PREDICATE_START = _words(
    _VERB + r"\b", r"(?:has|have|had|may|might|could|can|cannot|will|would|should|does|do|did)\b",
    r"(?:persist(?:s|ed)?|shows?|demonstrates?|represents?|suggests?|measures?|extends?|projects?|overlies|"
    r"obscures?|increased|decreased|improved|worsened|developed|progressed|unchanged|stable|present|noted|"
    r"enlarged|widened|prominent|large|blunted|upper (?:limits?|range|normal)|top[- ]normal|borderline|"
    r"mildly|moderately|markedly|severely)\b",
    r"(?:resolved|cleared|removed|" + _NORMAL_LIMITS + r"|no longer|not|absent|normal)\b",
)
# matched where PREDICATE_START found the predicate
NEGATING_PREDICATE = re.compile(
    rf"(?:{_VERB}\s+{_ADVERBS}(?:{_NORMAL_LIMITS}|normal\b|unremarkable|absent|"
    rf"negative|unlikely|resolved|cleared|{_ABSENT}|no longer\b))"
    rf"|(?:(?:has|have|had)\s+{_ADVERBS}(?:resolved|cleared|normalized|disappeared|been (?:removed|resolved)))"
)
# verbless forms ("heart size within normal limits", "effusion resolved", "pneumothorax no longer seen"):
# only after a short subject without commas, where no other clause can own the predicate
NEGATING_PREDICATE_BARE = re.compile(
    rf"{_NORMAL_LIMITS}|resolved|cleared|removed|absent|{_ABSENT}"
    r"|normal(?=(?: in (?:size|caliber|contour|appearance))?\s*[.!?]?\s*$)"
)
# A mention that already holds its predicate ("heart is enlarged", "heart enlarged") owns no later one:
# in "heart enlarged and lungs are normal" the "are normal" is about the lungs.
PREDICATIVE_MENTION = re.compile(r"\b(?:is|are|was|were|appears?|remains?|has|have)\b|"
                                 r"(?:enlarged|widened|wide|prominent|large|increased|blunted)$")

# Neutral subjects: nouns that name the structure of a finding without asserting it. They give the label
# a 0 when their predicate is negating ("heart size ... appear within limits of normal"), nothing otherwise.
SUBJECTS: dict[str, re.Pattern] = {
    "Cardiomegaly": _words(
        r"heart(?:\s+(?:size|shadow|silhouette|contours?))?(?!\s+(?:failure|valve|disease))",
        r"cardiac (?:silhouette|shadow|size|contours?)", r"cardiomediastinal (?:silhouettes?|contours?|size)",
        r"cardiac and mediastinal (?:silhouettes?|contours?)",
    ),
    "Enlarged Cardiomediastinum": _words(
        r"(?:cardio)?mediastin(?:um|al (?:silhouettes?|contours?|size|width|structures))",
    ),
    "Edema": _words(
        r"(?:pulmonary|lung|central) (?:vascularity|vasculature|vessels|vascular markings)",
        r"vascularity", r"vasculature",
    ),
}

# Wording inside a mention that makes it uncertain by itself ("heart size upper limits of normal").
HEDGED_MENTION = re.compile(r"\b(?:borderline|top[- ]normal|upper (?:limits?|range)(?: of)? normal)\b")

# Words that end a cue's scope (a new clause that can assert something else).
SCOPE_END_PRE = _rx(r"\bbut\b", r"\bhowever\b", r"\balthough\b", r"\bthough\b", r"\bexcept\b", r"aside from",
                    r"apart from", r"\bwhereas\b", r"\bwhile\b", r"\bthere (?:is|are|has been)\b", r"\bwith (?:a|an)\b",
                    r"\bnow\b", r"\bwhich\b", r"\bhas (?:developed|increased)\b")
# After the mention; a comma ends an uncertainty cue's scope too, but not a post-negation's subject list.
SCOPE_END_POST = _rx(r"\bbut\b", r"\bhowever\b", r"\balthough\b", r"\bthough\b", r"\bexcept\b", r"\bwhereas\b",
                     r"\bwhile\b", r"\bwhich\b", r"\bthat\b", r"\bthere\b", r"\bwith\b", r"\bwithout\b")

# A mention directly preceded by these words is another finding, not this label
# ("calcified density" is a granuloma, "bone density" not the lung).
EXCLUDED_AFTER: dict[str, re.Pattern] = {
    "Lung Opacity": re.compile(r"(?:calcifi\w+|bone|bony|osseous|soft tissue|sclerotic|granulomatous|"
                               r"breast|nipple|metallic|linear calcified)\s+(?:\w+\s+)?$"),
    "Lung Lesion": re.compile(r"granulomatous\s+$"),  # a calcified nodule is indexed as a Nodule
    "Edema": re.compile(r"(?:soft tissue|subcutaneous|extremity|ankle|leg|facial|scalp)\s+$"),
    "Pneumonia": re.compile(r"(?:granulomatous|prior|previous|old|remote|history of|symptoms of)\s+(?:[\w-]+\s+){0,3}$"),
}

# "No Finding" is positive only when none of these is positive or uncertain (CheXpert rule).
PATHOLOGIES = tuple(name for name in MENTIONS if name not in ("Support Devices",))
