"""The "Batch detection" widget: a folder in, NIfTI outputs and summary.csv out, in a thread."""
from __future__ import annotations

from pathlib import Path

from magicgui.widgets import FileEdit
from napari.utils import notifications
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QSpinBox,
                            QTableWidget, QTableWidgetItem, QVBoxLayout)

from .._reader import read_layers
from ..io import InputError, read_volume
from ..models import ModelError, available_models, load_model
from ..pipeline import iter_batch
from ..sample import SAMPLE_MODEL
from ..scoring import ScoringConfig
from .card_view import card_line, score_units
from .contrast_choice import contrast_combo
from .layers import show_result
from .worker import WorkerWidget


class BatchWidget(WorkerWidget):
    """Runs :func:`napari_brainuad.pipeline.iter_batch`; same outputs and summary.csv as ``brainuad batch``.

    Double-clicking a row of the results table opens that scan and its outputs in the viewer.
    """

    def __init__(self, napari_viewer=None):
        super().__init__("Run batch")
        self.viewer = napari_viewer
        self.cards = {card.name: card for card in available_models()}
        self.items = []
        self.input_dir = FileEdit(mode="d", label="input folder")
        self.pattern = QLineEdit("*.nii*")
        self.pattern.setToolTip("glob pattern, e.g. *_T1w.nii.gz, or **/*_T1w.nii.gz for BIDS sub-folders")
        self.out_dir = FileEdit(mode="d", label="output folder")
        self.model = QComboBox()
        self.model.addItems(list(self.cards))
        self.model.setCurrentText(SAMPLE_MODEL)
        self.card_line = QLabel(wordWrap=True)
        self.t_int = QSpinBox()
        self.threshold = QDoubleSpinBox(decimals=4, singleStep=0.01, maximum=1e6)
        self.threshold.setSpecialValueText("model default")
        self.contrast = contrast_combo()
        self.status.setText("Files whose outputs are complete are skipped (resume).")
        self.table = QTableWidget(0, 3, minimumHeight=150)
        self.table.setHorizontalHeaderLabels(["file", "status", "findings / reason"])
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setToolTip("Double-click a row to open the scan and its outputs in the viewer")

        form = QFormLayout()
        form.addRow("input folder", self.input_dir.native)
        form.addRow("pattern", self.pattern)
        form.addRow("output folder", self.out_dir.native)
        form.addRow("model", self.model)
        form.addRow("", self.card_line)
        form.addRow("T_int", self.t_int)
        form.addRow("threshold", self.threshold)
        form.addRow("contrast", self.contrast)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout()
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("results (double-click a row to open it)"))
        layout.addWidget(self.table)
        self.set_body(layout)
        self.model.currentTextChanged.connect(self._model_changed)
        self.run_button.clicked.connect(self.run)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_row(row))
        self._model_changed(self.model.currentText())

    def _model_changed(self, name: str) -> None:
        card = self.cards.get(name)
        if card is None:
            return
        self.card_line.setText(card_line(card))
        self.t_int.setEnabled(card.is_diffusion)
        if card.is_diffusion:
            self.t_int.setRange(card.t_int["min"], card.t_int["max"])
            self.t_int.setValue(card.t_int["default"])

    def run(self) -> None:
        card = self.cards[self.model.currentText()]
        try:
            model = load_model(card.folder)
        except ModelError as exc:
            notifications.show_error(str(exc))
            return
        options = {"pattern": self.pattern.text() or "*.nii*",
                   "t_int": self.t_int.value() if card.is_diffusion else None,
                   "threshold": self.threshold.value() if self.threshold.value() > 0 else None,
                   "contrast": self.contrast.currentData()}
        self.table.setRowCount(0)
        self._run = {"input_dir": Path(self.input_dir.value), "out_dir": Path(self.out_dir.value), "card": card,
                     "threshold": options["threshold"] or card.threshold}
        self.start(iter_batch, self._run["input_dir"], self._run["out_dir"], model, desc="Batch detection",
                   on_return=self._on_done, cancelled="Cancelled; run again to resume.", **options)

    def _on_done(self, items) -> str:
        self.items = items
        self.table.setRowCount(len(items))
        for row, it in enumerate(items):
            detail = it.message if it.status == "error" else f"{it.n_findings} findings, {it.lesion_volume_ml or 0:.2f} ml"
            detail += "".join(f"; warning: {w}" for w in it.warnings)
            for col, text in enumerate([it.file.name, it.status, detail]):
                self.table.setItem(row, col, QTableWidgetItem(text))
        bad = sum(it.status == "error" for it in items)
        return (f"{len(items) - bad} of {len(items)} files done; summary.csv in {self.out_dir.value}. "
                "Double-click a row to open it.")

    def open_row(self, row: int) -> None:
        """Open the scan of a results row and its three output volumes as layers (as Detect shows them)."""
        item, run = self.items[row], self._run
        if item.status == "error":
            notifications.show_warning(f"{item.file.name} has no outputs: {item.message}")
            return
        paths = item.outputs
        try:
            (data, kwargs, kind), = read_layers(str(item.file))
            volume = read_volume(item.file)
            outputs = {k: read_volume(paths[k]).data for k in ("reconstruction", "anomaly", "mask")}
        except (ValueError, InputError) as exc:
            notifications.show_error(str(exc))
            return
        if kwargs["name"] not in self.viewer.layers:
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        card = run["card"]
        show_result(self.viewer, kwargs["name"], card.name, volume, outputs["reconstruction"], outputs["anomaly"],
                    outputs["mask"], run["threshold"], score_units(ScoringConfig.from_card(card.scoring)))
        self.status.setText(f"Opened {item.file.name} and its outputs ({card.name}).")
