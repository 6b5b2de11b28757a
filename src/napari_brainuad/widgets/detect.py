"""The "Detect anomalies" widget: pick a scan and a model, run in a thread, tune the threshold live."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from magicgui.widgets import create_widget
from napari.utils import notifications
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                            QPushButton, QSlider, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout)

from .._reader import to_layer_data
from ..models import ModelError, available_models, load_model
from ..pipeline import Result, iter_detect, save_result
from ..progress import Step
from ..sample import SAMPLE_MODEL
from ..scoring import POLARITY_WORDS, ScoringConfig
from .card_view import CardDialog, card_line, flagged_note, score_units
from .contrast_choice import contrast_combo
from .histogram import ScoreHistogram
from .layers import layer_volume, mask_colormap, result_names, show_result
from .worker import WorkerWidget

SLIDER_STEPS = 1000


class DetectWidget(WorkerWidget):
    """Detection on an image layer; outputs as layers on the scan's grid, one set per model, updated in place."""

    def __init__(self, napari_viewer):
        super().__init__("Run")
        self.viewer = napari_viewer
        self.cards = {card.name: card for card in available_models()}
        self.result: Result | None = None

        self.image = create_widget(annotation="napari.layers.Image", label="image")
        self.model = QComboBox()
        self.model.addItems(list(self.cards))
        self.model.setCurrentText(SAMPLE_MODEL)
        self.card_line = QLabel(wordWrap=True)
        self.card_button = QPushButton("Model card...")
        self.t_int = QSpinBox()
        self.skull = QComboBox()
        self.skull.addItems(["auto", "on", "off"])
        self.register = QCheckBox("register to MNI152")
        self.register.setChecked(True)
        self.lpips = QCheckBox("LPIPS weighting")
        self.polarity = QComboBox()
        for value, words in POLARITY_WORDS.items():
            self.polarity.addItem(words, value)
        self.polarity.setToolTip("Which side of the residual is anomalous: the image brighter or darker than its "
                                 "reconstruction, brighter only (hyperintense lesions, as on FLAIR, T2, DWI), darker "
                                 "only, or brighter only unless the scan looks like a T1. Starts at the card's.")
        self.contrast = contrast_combo()
        self.seed = QSpinBox(maximum=2**31 - 1)

        self.slider = QSlider(Qt.Horizontal, maximum=SLIDER_STEPS, enabled=False)
        self.threshold = QDoubleSpinBox(decimals=4, singleStep=0.01, maximum=1e6, enabled=False)
        self.histogram = ScoreHistogram()
        self.threshold_label = QLabel("threshold", wordWrap=True)  # with the map's units after a run; wraps
        self.table = QTableWidget(0, 4, minimumHeight=150)
        self.table.setHorizontalHeaderLabels(["volume (ml)", "peak", "mean", "centroid (mm)"])
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.save_button = QPushButton("Save results...", enabled=False)
        self.save_button.setToolTip("Write reconstruction, anomaly map, mask (NIfTI, on the scan's grid) and "
                                    "findings CSV, as 'brainuad detect' does")
        self._findings_timer = QTimer(self, singleShot=True, interval=150)

        form = QFormLayout()
        form.addRow("image", self.image.native)
        form.addRow("model", self.model)
        form.addRow("", self.card_line)
        form.addRow("", self.card_button)
        form.addRow("T_int", self.t_int)
        form.addRow("skull stripping", self.skull)
        form.addRow("", self.register)
        form.addRow("", self.lpips)
        form.addRow("anomalous", self.polarity)
        form.addRow("contrast", self.contrast)
        form.addRow("seed", self.seed)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        thresh = QHBoxLayout()
        thresh.addWidget(self.slider)
        thresh.addWidget(self.threshold)
        layout = QVBoxLayout()
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.threshold_label)
        layout.addLayout(thresh)
        layout.addWidget(self.histogram)
        layout.addWidget(QLabel("findings (select a row to go there)"))
        layout.addWidget(self.table)
        layout.addWidget(self.save_button)
        self.set_body(layout)

        self.model.currentTextChanged.connect(self._model_changed)
        self.card_button.clicked.connect(self.show_card)
        self.run_button.clicked.connect(self.run)
        self.save_button.clicked.connect(self.save)
        self.slider.valueChanged.connect(self._slider_moved)
        self.threshold.editingFinished.connect(lambda: self.set_threshold(self.threshold.value()))
        self._findings_timer.timeout.connect(self._update_findings)
        self.table.itemSelectionChanged.connect(self._go_to_finding)
        self.viewer.layers.events.inserted.connect(self.image.reset_choices)
        self.viewer.layers.events.removed.connect(self.image.reset_choices)
        self.image.reset_choices()
        self._model_changed(self.model.currentText())

    # ---- model choice ----------------------------------------------------------------------
    def _model_changed(self, name: str) -> None:
        card = self.cards.get(name)
        if card is None:
            return
        self.card_line.setText(card_line(card))
        self.card_line.setToolTip(card.data.get("description", card.summary()))
        self.t_int.setEnabled(card.is_diffusion)
        if card.is_diffusion:
            self.t_int.setRange(card.t_int["min"], card.t_int["max"])
            self.t_int.setSingleStep(card.t_int.get("steps", 1))
            self.t_int.setValue(card.t_int["default"])
        self.lpips.setChecked(bool(card.scoring.get("lpips", False)))
        self.polarity.setCurrentIndex(self.polarity.findData(card.scoring.get("polarity", "both")))

    def show_card(self) -> CardDialog:
        """Open the selected model's full card in a dialog."""
        dialog = CardDialog(self.cards[self.model.currentText()], self)
        dialog.show()
        return dialog

    # ---- running ---------------------------------------------------------------------------
    def run(self) -> None:
        layer = self.image.value
        if layer is None:
            notifications.show_warning("Open a brain scan first (File > Open, or File > Open Sample).")
            return
        try:
            volume = layer_volume(layer)
            card = self.cards[self.model.currentText()]
            model = load_model(card.folder)
        except (ValueError, ModelError) as exc:
            notifications.show_error(str(exc))
            return
        scoring = ScoringConfig.from_card({**card.scoring, "lpips": self.lpips.isChecked(),
                                           "polarity": self.polarity.currentData()})
        options = {"t_int": self.t_int.value() if card.is_diffusion else None, "skull_strip": self.skull.currentText(),
                   "register": self.register.isChecked(), "seed": self.seed.value(), "scoring": scoring,
                   "contrast": self.contrast.currentData()}
        self._pending_run = (layer, card, score_units(scoring))
        self.start(iter_detect, volume, model, desc=f"Detecting anomalies in {layer.name}",
                   on_return=self._on_result, **options)

    def _on_result(self, result: Result) -> str:
        self.result = result
        self._source, self._card, units = self._pending_run
        self._names = result_names(self._source.name, result.model)
        show_result(self.viewer, self._source.name, result.model, result.volume, result.reconstruction,
                    result.anomaly_map, result.mask, result.threshold, units, result.brain_mask)
        self.histogram.set_scores(result.anomaly_map[result.brain_mask])
        self.threshold_label.setText(f"threshold, in {units}")
        self._score_max = max(float(result.anomaly_map.max()), result.threshold, 1e-6)
        self._score_view = np.ascontiguousarray(to_layer_data(result.anomaly_map, result.volume.affine))
        self._brain_voxels = max(int(result.brain_mask.sum()), 1)
        for w in (self.slider, self.threshold, self.save_button):
            w.setEnabled(True)
        self.set_threshold(result.threshold)
        self._fill_table()
        return self.summary()

    def summary(self) -> str:
        """The last run's outcome at the current threshold, with a warning when far beyond healthy scans."""
        result = self.result
        flagged = float(np.count_nonzero(result.mask[result.brain_mask])) / self._brain_voxels
        text = (f"Done in {result.seconds['total']:.1f} s ({result.model}): {len(result.findings)} findings, "
                f"{sum(f.volume_ml for f in result.findings):.2f} ml at threshold {result.threshold:.4g}; "
                f"anomalous: {POLARITY_WORDS[result.polarity]}.")
        notes = [*result.warnings, flagged_note(self._card, flagged, result.threshold)]
        return text + "".join(f"\nWarning: {note}" for note in notes if note)

    # ---- threshold -------------------------------------------------------------------------
    def _slider_moved(self, value: int) -> None:
        if self.result is not None:
            self.set_threshold(value / SLIDER_STEPS * self._score_max, from_slider=True)

    def set_threshold(self, threshold: float, from_slider: bool = False) -> None:
        """Re-threshold the cached anomaly map: the mask layer updates now, the findings shortly after."""
        if self.result is None:
            return
        self._pending = float(threshold)
        self.threshold.blockSignals(True)
        self.threshold.setValue(threshold)
        self.threshold.blockSignals(False)
        if not from_slider:
            self.slider.blockSignals(True)
            self.slider.setValue(round(threshold / self._score_max * SLIDER_STEPS))
            self.slider.blockSignals(False)
        self.histogram.set_threshold(threshold)
        layer = self._mask_layer()
        if layer is not None:
            layer.data = (self._score_view >= threshold).astype(np.int32)
        self._findings_timer.start()

    def _mask_layer(self):
        """The mask layer of the last run, unless the user removed it."""
        name = self._names["mask"]
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _update_findings(self) -> None:
        self._findings_timer.stop()
        self.result = self.result.with_threshold(self._pending)
        layer = self._mask_layer()
        if layer is not None:
            layer.data = to_layer_data(self.result.mask, self.result.volume.affine)
            layer.colormap = mask_colormap()
        self._fill_table()
        if self.worker is None:
            self.status.setText(self.summary())

    def _fill_table(self) -> None:
        found = self.result.findings
        self.table.setRowCount(len(found))
        for row, f in enumerate(found):
            cells = [f"{f.volume_ml:.3f}", f"{f.peak_score:.3g}", f"{f.mean_score:.3g}",
                     "({:.0f}, {:.0f}, {:.0f})".format(*f.centroid_mm)]
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(text))

    def _go_to_finding(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows or self.result is None:
            return
        finding = self.result.findings[rows[0].row()]
        x, y, z = finding.centroid_mm
        world = np.array([z, -y, -x])  # napari world axes are (S, -A, -R)
        self.viewer.dims.set_point(range(3), world)
        self.viewer.scene.camera.center = world
        layer = self._mask_layer()
        if layer is not None:
            layer.colormap = mask_colormap(finding.label)

    # ---- saving ----------------------------------------------------------------------------
    def save(self, folder: str | None = None) -> None:
        """Write the four files ``brainuad detect`` writes, at the current threshold, into a chosen folder."""
        if self.result is None or self.worker is not None:
            notifications.show_warning("Wait for a detection to finish before saving.")
            return
        folder = folder or QFileDialog.getExistingDirectory(self, "Save results into folder")
        if not folder:
            return
        if self._findings_timer.isActive():
            self._update_findings()
        result = self.result
        name = result.volume.name if result.volume.path else re.sub(r"[^\w.-]+", "_", self._source.name)
        self.start(_save, result, Path(folder), name, desc="Saving results",
                   on_return=lambda paths: f"Saved {len(paths)} files to {folder} ({name}_*).")


def _save(result: Result, folder: Path, name: str):
    yield Step("saving", 0.0)
    return save_result(result, folder, name)
