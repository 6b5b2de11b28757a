"""What a model card tells a user in the widgets: score units, speed and where it was timed, how a
flagged fraction compares with healthy scans, and the full card in a dialog."""
from __future__ import annotations

from html import escape

from qtpy.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout

from ..scoring import ScoringConfig

FAR_BEYOND = 5.0
"""A flagged fraction this many times the healthy reference gets a warning."""


def score_units(scoring: ScoringConfig) -> str:
    """Units of the anomaly map a scoring configuration produces."""
    if scoring.normative:
        return "z-score (healthy SDs)"
    if scoring.minmax:
        unit = "min-max scaled residual"
    elif scoring.scan_scale:
        unit = "residual (multiples of the scan's median)"
    else:
        unit = "residual (normalised intensity, 0-1)"
    return unit + (" x LPIPS" if scoring.lpips else "")


def measured_on(card) -> str:
    """The card's seconds per volume and the machine it was timed on, or '' when the card has none."""
    seconds = card.metrics.get("summary", {}).get("seconds/volume (CPU)")
    machine = card.metrics.get("evaluation", {}).get("machine")
    if seconds is None:
        return ""
    machine = (machine or "an unrecorded machine").split(", torch")[0]
    return f"{seconds:.1f} s/volume timed on {machine} (a shared or busy machine takes longer)"


def healthy_reference(card) -> float | None:
    """The largest flagged fraction the card reports for healthy scans (calibration target or test maximum)."""
    metrics = card.metrics
    values = [metrics.get("calibration", {}).get("max_flagged")]
    healthy = metrics.get("healthy_test_flagged_fraction", {})
    values += [healthy.get("max")] + [v.get("max") for v in healthy.values() if isinstance(v, dict)]
    values = [float(v) for v in values if isinstance(v, (int, float))]
    return max(values) if values else None


def flagged_note(card, fraction: float, threshold: float) -> str:
    """A warning when ``fraction`` of the brain is flagged, at or above the default threshold, far beyond what
    healthy scans give; else ''."""
    reference = healthy_reference(card)
    if reference is None or fraction <= FAR_BEYOND * reference or threshold < card.threshold:
        return ""
    return (f"{100 * fraction:.1f}% of the brain is flagged, {fraction / reference:.0f}x the most this model flags "
            f"on healthy scans ({100 * reference:.2f}%): the scan may differ from the training data (scanner, "
            "contrast, preprocessing), so read the map with care.")


def card_line(card) -> str:
    """A few lines under the model choice: kind, healthy false positives, speed and where it was timed, licence;
    the rest is in :class:`CardDialog`."""
    scoring = "normative scoring" if card.scoring.get("normative") else "residual scoring"
    parts = [f"{card.family}, {card.spatial_dims}D, accepts {'/'.join(card.accepted_contrasts)}, {scoring}"]
    healthy = card.metrics.get("summary", {}).get("healthy test voxels flagged")
    if healthy is not None:
        parts.append(f"healthy voxels flagged {100 * healthy:.2g}%")
    parts.append(measured_on(card))
    if "BY-NC" in str(card.training.get("data", "")):
        parts.append("non-commercial use only (CC BY-NC training data)")
    return "; ".join(p for p in parts if p) + "."


def card_html(card) -> str:
    """The whole card as HTML: description, input, training data and licence, calibration, figures, limits."""
    d, metrics = card.data, card.metrics
    training, calibration = d.get("training", {}), metrics.get("calibration", {})
    parts = [f"<h2>{escape(card.name)}</h2><p>{escape(d.get('description', card.family))}</p>",
             "<h3>Input</h3>", _table({"contrasts accepted": ", ".join(card.accepted_contrasts),
                                       "model": f"{card.family}, {card.spatial_dims}D",
                                       "grid": f"{card.template} {card.grid_shape} at {card.spacing_mm} mm",
                                       "normalisation": card.normalisation,
                                       "scoring": ", ".join(f"{k} {v}" for k, v in card.scoring.items()),
                                       "units": score_units(ScoringConfig.from_card(card.scoring)),
                                       "default threshold": f"{card.threshold:.4g}"}),
             "<h3>Training data and licence</h3>", f"<p>{escape(str(training.get('data', 'none')))}</p>",
             _table({k: v for k, v in training.items() if k != "data"})]
    if "BY-NC" in str(training.get("data", "")):
        parts.append("<p><b>Trained on CC BY-NC data: these weights are for non-commercial use only.</b></p>")
    parts += ["<h3>Calibration on healthy scans</h3>", _table(calibration),
              "<h3>Measured figures</h3>", _table(metrics.get("summary", {})),
              "<p>Healthy test scans, fraction of brain voxels flagged at the default threshold:</p>",
              _table(metrics.get("healthy_test_flagged_fraction", {}))]
    evaluation = metrics.get("evaluation", {})
    if evaluation:
        parts += [f"<p>Evaluation: <code>{escape(str(evaluation.get('command', '')))}</code></p>",
                  _table({k: v for k, v in evaluation.items() if k != "command"})]
    parts += ["<h3>Speed</h3>", f"<p>{escape(measured_on(card) or 'not measured')}.</p>",
              "<h3>Known limits</h3>", "<ul>" + "".join(f"<li>{escape(s)}</li>" for s in known_limits(card)) + "</ul>"]
    return "".join(parts)


def known_limits(card) -> list[str]:
    """Limits that follow from the card's own fields and figures."""
    accepted = card.accepted_contrasts
    limits = [f"Trained on {accepted[0]} scans only; other contrasts give meaningless maps." if len(accepted) == 1 else
              f"Accepts {', '.join(accepted)} scans; its figures per contrast are in the measured figures.",
              f"Every scan is registered to {card.template} and resampled to {card.spacing_mm} mm: findings "
              f"smaller than a few {card.spacing_mm} mm voxels are not resolved.",
              f"Knows only the healthy data it was trained on: {card.training.get('data', 'none recorded')}."]
    if card.spatial_dims == 2:
        limits.append("Reconstructs axial slices one at a time (2D).")
    reference = healthy_reference(card)
    if reference is not None:
        limits.append(f"Flags up to {100 * reference:.2f}% of the brain on healthy scans at the default threshold.")
    return limits


def _table(values: dict) -> str:
    rows = "".join(f"<tr><td><i>{escape(str(k))}</i></td><td>{_cell(v)}</td></tr>" for k, v in values.items())
    return f"<table cellspacing='2'>{rows}</table>" if rows else "<p>none</p>"


def _cell(value) -> str:
    if isinstance(value, dict):
        return _table(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


class CardDialog(QDialog):
    """The full model card, read-only."""

    def __init__(self, card, parent=None):
        super().__init__(parent)
        self.setWindowTitle(f"Model card: {card.name}")
        self.text = QTextBrowser(openExternalLinks=False)
        self.text.setHtml(card_html(card))
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addWidget(buttons)
        self.resize(640, 720)
