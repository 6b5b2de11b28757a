"""Does the scan suit the model? Warnings for what is not a brain, another contrast, a partial brain.

Each check compares the scan, once registered to the model grid, with the template brain:

- brain coverage: the share of the template brain the scan's brain mask covers (a slab, a cut-off cerebellum);
- brain-likeness: how much of the scan's intensity variance the template's tissue layout explains
  (the correlation ratio over template intensity bins; any MRI contrast of a registered brain
  scores high, noise or a failed registration low);
- contrast: the order of mean intensities in the template's CSF, grey and white matter
  (T1: CSF < GM < WM; T2: CSF brightest; FLAIR: CSF dark and GM > WM), against the contrasts the card
  accepts (its ``contrasts``, else its ``modality``);
- orientation: a NIfTI with qform and sform codes 0 has no reliable left and right.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .io import has_orientation
from .template import Template

MIN_COVERAGE = 0.85
"""Warn below this share of the template brain covered by the scan's brain."""
MIN_BRAIN_LIKENESS = 0.08
"""Warn below this correlation ratio (0-1) between the scan and the template's tissue layout. Measured:
0.17-0.31 on real T1 scans (IXI, the bundled stroke and MSLUB samples), 0.11-0.18 on real T2 and FLAIR,
0.02 on smooth noise inside a brain-shaped mask; a z-scored BraTS FLAIR with a large tumour gave 0.03."""
BINS = 8


@lru_cache(maxsize=4)
def _tissue(template: Template) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Template brain voxels binned by template intensity, and CSF / GM / WM masks (by intensity quantile)."""
    values = template.image[template.mask]
    edges = np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1])
    bins = np.full(template.shape, -1)
    bins[template.mask] = np.digitize(values, edges)
    q = np.quantile(values, [0.15, 0.35, 0.6, 0.7])
    inside = template.mask
    return bins, {"CSF": inside & (template.image <= q[0]),
                  "GM": inside & (template.image > q[1]) & (template.image <= q[2]),
                  "WM": inside & (template.image > q[3])}


def guess_contrast(means: dict[str, float]) -> str:
    """T1, T2 or FLAIR from the mean CSF, GM and WM intensities."""
    if means["CSF"] > max(means["GM"], means["WM"]):
        return "T2"
    return "T1" if means["WM"] > means["GM"] > means["CSF"] else "FLAIR"


def scan_contrast(image: np.ndarray, mask: np.ndarray, template: Template) -> str:
    """T1, T2 or FLAIR: :func:`guess_contrast` of a registered ``image`` (brain ``mask``) on ``template``'s grid;
    T1 when the brain misses a tissue of the template (nothing to read the contrast from)."""
    means = measures(image, mask, template)["means"]
    return "T1" if np.isnan(list(means.values())).any() else guess_contrast(means)


def measures(image: np.ndarray, mask: np.ndarray, template: Template) -> dict:
    """Coverage, brain-likeness and tissue means of a registered ``image`` (brain ``mask``) on ``template``'s grid."""
    bins, tissue = _tissue(template)
    both = mask & template.mask
    coverage = float(both.sum() / template.mask.sum())
    values, labels = image[both], bins[both]
    if not values.size:  # no brain on the template: nothing to measure
        return {"coverage": coverage, "brain_likeness": 0.0, "means": {name: float("nan") for name in tissue}}
    total = float(values.var()) * values.size
    counts = np.bincount(labels, minlength=BINS)
    sums = np.bincount(labels, weights=values, minlength=BINS)
    used = counts > 0
    between = float((sums[used] ** 2 / counts[used]).sum() - values.sum() ** 2 / values.size)
    means = {name: float(image[region & mask].mean()) if (region & mask).any() else float("nan")
             for name, region in tissue.items()}
    return {"coverage": coverage, "brain_likeness": between / total if total > 0 else 0.0, "means": means}


def scan_warnings(pre, accepted: list[str] | str, contrast: str | None = None) -> list[str]:
    """One sentence per way the preprocessed scan ``pre`` (:class:`~.preprocess.Preprocessed`) may not suit a
    model accepting the contrasts ``accepted`` (a list, or one modality name; ``"any"`` accepts every
    contrast); empty when none. ``contrast`` is the scan's contrast as the user stated it (else it is guessed)."""
    accepted = [accepted] if isinstance(accepted, str) else list(accepted)
    name = pre.native.path or pre.native.name
    m = measures(pre.image, pre.mask, pre.template)
    out = []
    if m["brain_likeness"] < MIN_BRAIN_LIKENESS:
        out.append(f"{name}: does not look like a brain registered to the template (brain-likeness "
                   f"{m['brain_likeness']:.2f}, healthy brains score above {MIN_BRAIN_LIKENESS}); check the scan "
                   "and its registration before trusting the findings.")
    elif "any" not in accepted and contrast is not None:
        if contrast not in accepted:
            out.append(f"{name}: a {contrast} scan, not the {'/'.join(accepted)} this model accepts; findings may be "
                       "meaningless.")
    elif "any" not in accepted and not np.isnan(list(m["means"].values())).any():
        guess = guess_contrast(m["means"])
        if guess not in accepted:
            out.append(f"{name}: its contrast looks like {guess}, not the {'/'.join(accepted)} this model accepts "
                       "(CSF, grey and white matter intensities {CSF:.2f}, {GM:.2f}, {WM:.2f}); findings may be "
                       "meaningless.".format(**m["means"]))
    if m["coverage"] < MIN_COVERAGE:
        out.append(f"{name}: covers only {100 * m['coverage']:.0f}% of the template brain (a partial scan?); "
                   "nothing outside it can be found.")
    if not has_orientation(pre.native):
        out.append(f"{name}: has no orientation in its header (qform and sform codes 0), so left and right "
                   "may be swapped.")
    return out
