"""The "Detect anomalies" widget: pick a scan and a model, run in a thread, tune the threshold live."""
from __future__ import annotations

import numpy as np
from magicgui.widgets import create_widget
from napari.utils import notifications
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QSlider, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout)

from ..models import ModelError, available_models, load_model
from ..pipeline import Result, iter_detect
from ..sample import SAMPLE_MODEL
from ..scoring import ScoringConfig
from .histogram import ScoreHistogram
from .layers import layer_volume, show
from .worker import WorkerWidget

SLIDER_STEPS = 1000


class DetectWidget(WorkerWidget):
    """Detection on an image layer; outputs as layers on the scan's grid, updated in place on re-runs."""

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
        self.t_int = QSpinBox()
        self.skull = QComboBox()
        self.skull.addItems(["auto", "on", "off"])
        self.register = QCheckBox("register to MNI152")
        self.register.setChecked(True)
        self.lpips = QCheckBox("LPIPS weighting")
        self.seed = QSpinBox(maximum=2**31 - 1)

        self.slider = QSlider(Qt.Horizontal, maximum=SLIDER_STEPS, enabled=False)
        self.threshold = QDoubleSpinBox(decimals=4, singleStep=0.01, maximum=1e6, enabled=False)
        self.histogram = ScoreHistogram()
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["volume (ml)", "peak", "mean", "centroid (mm)"])
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self._findings_timer = QTimer(self, singleShot=True, interval=150)

        form = QFormLayout()
        form.addRow("image", self.image.native)
        form.addRow("model", self.model)
        form.addRow("", self.card_line)
        form.addRow("T_int", self.t_int)
        form.addRow("skull stripping", self.skull)
        form.addRow("", self.register)
        form.addRow("", self.lpips)
        form.addRow("seed", self.seed)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        thresh = QHBoxLayout()
        thresh.addWidget(self.slider)
        thresh.addWidget(self.threshold)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("threshold"))
        layout.addLayout(thresh)
        layout.addWidget(self.histogram)
        layout.addWidget(QLabel("findings (select a row to go there)"))
        layout.addWidget(self.table)

        self.model.currentTextChanged.connect(self._model_changed)
        self.run_button.clicked.connect(self.run)
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
        self.card_line.setText(card.summary())
        self.card_line.setToolTip(card.description if "description" in card.data else card.summary())
        self.t_int.setEnabled(card.is_diffusion)
        if card.is_diffusion:
            self.t_int.setRange(card.t_int["min"], card.t_int["max"])
            self.t_int.setSingleStep(card.t_int.get("steps", 1))
            self.t_int.setValue(card.t_int["default"])
        self.lpips.setChecked(bool(card.scoring.get("lpips", False)))

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
        scoring = ScoringConfig.from_card({**card.scoring, "lpips": self.lpips.isChecked()})
        options = {"t_int": self.t_int.value() if card.is_diffusion else None, "skull_strip": self.skull.currentText(),
                   "register": self.register.isChecked(), "seed": self.seed.value(), "scoring": scoring}
        self._source = layer
        self.start(iter_detect, volume, model, desc=f"Detecting anomalies in {layer.name}",
                   on_return=self._on_result, **options)

    def _on_result(self, result: Result) -> None:
        self.result = result
        name, volume = self._source.name, result.volume
        show(self.viewer, f"{name} reconstruction", result.reconstruction, volume, colormap="gray", visible=False)
        top = float(np.percentile(result.anomaly_map[result.brain_mask], 99.9)) if result.brain_mask.any() else 1.0
        show(self.viewer, f"{name} anomaly map", result.anomaly_map, volume, colormap="inferno", opacity=0.6,
             blending="additive", contrast_limits=[0.0, max(top, result.threshold, 1e-6)])
        show(self.viewer, f"{name} mask", result.mask, volume, kind="labels", opacity=0.7)
        self.histogram.set_scores(result.anomaly_map[result.brain_mask])
        self._score_max = max(float(result.anomaly_map.max()), result.threshold, 1e-6)
        self._score_view = np.ascontiguousarray(result.anomaly_map.transpose(2, 1, 0))  # napari axis order
        for w in (self.slider, self.threshold):
            w.setEnabled(True)
        self.set_threshold(result.threshold)
        self.status.setText(f"Done in {result.seconds['total']:.1f} s: {len(result.findings)} findings, "
                            f"{sum(f.volume_ml for f in result.findings):.2f} ml.")
        self._fill_table()

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
        name = f"{self._source.name} mask"
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _update_findings(self) -> None:
        self.result = self.result.with_threshold(self._pending)
        layer = self._mask_layer()
        if layer is not None:
            layer.data = self.result.mask.transpose(2, 1, 0)
        self._fill_table()

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
        x, y, z = self.result.findings[rows[0].row()].centroid_mm
        world = np.array([z, -y, -x])  # napari world axes are (S, -A, -R)
        self.viewer.dims.set_point(range(3), world)
        self.viewer.scene.camera.center = world
