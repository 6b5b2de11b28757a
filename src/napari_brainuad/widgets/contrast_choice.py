"""The "contrast" choice the Detect and Batch widgets share: read from the scan, or stated by the user."""
from __future__ import annotations

from qtpy.QtWidgets import QComboBox

from ..models.card import CONTRASTS


def contrast_combo() -> QComboBox:
    """A combo box whose ``currentData()`` is None (read the contrast from the scan) or a contrast name."""
    box = QComboBox()
    box.addItem("read from the scan", None)
    for contrast in CONTRASTS:
        box.addItem(contrast, contrast)
    box.setToolTip("The scans' contrast, if you know it. It settles an 'auto' polarity (brighter-only residuals "
                   "except on T1) and the contrast warning; read from the scan, it is T1, T2 or FLAIR only, "
                   "and weak grey-white contrast can fool it.")
    return box
