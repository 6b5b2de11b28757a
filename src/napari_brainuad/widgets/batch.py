"""The "Batch detection" widget: a folder in, NIfTI outputs and summary.csv out, in a thread."""
from __future__ import annotations

from pathlib import Path

from magicgui.widgets import FileEdit
from napari.qt.threading import create_worker
from napari.utils import notifications, progress
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                            QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from ..io import InputError
from ..models import ModelError, available_models, load_model
from ..pipeline import iter_batch


class BatchWidget(QWidget):
    """Runs :func:`napari_brainuad.pipeline.iter_batch`; same outputs and summary.csv as ``brainuad batch``."""

    def __init__(self, napari_viewer=None):
        super().__init__()
        self.viewer = napari_viewer
        self.cards = {card.name: card for card in available_models()}
        self.worker = None
        self._progress = None
        self.input_dir = FileEdit(mode="d", label="input folder")
        self.pattern = QLineEdit("*.nii*")
        self.pattern.setToolTip("glob pattern, e.g. *_T1w.nii.gz, or **/*_T1w.nii.gz for BIDS sub-folders")
        self.out_dir = FileEdit(mode="d", label="output folder")
        self.model = QComboBox()
        self.model.addItems(list(self.cards))
        self.t_int = QSpinBox()
        self.threshold = QDoubleSpinBox(decimals=4, singleStep=0.01, maximum=1e6)
        self.threshold.setSpecialValueText("model default")
        self.run_button = QPushButton("Run batch")
        self.cancel_button = QPushButton("Cancel", enabled=False)
        self.status = QLabel("Files whose outputs are complete are skipped (resume).", wordWrap=True)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["file", "status", "findings / reason"])
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)

        form = QFormLayout()
        form.addRow("input folder", self.input_dir.native)
        form.addRow("pattern", self.pattern)
        form.addRow("output folder", self.out_dir.native)
        form.addRow("model", self.model)
        form.addRow("T_int", self.t_int)
        form.addRow("threshold", self.threshold)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.table)
        self.model.currentTextChanged.connect(self._model_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self._model_changed(self.model.currentText())

    def _model_changed(self, name: str) -> None:
        card = self.cards.get(name)
        if card is None:
            return
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
                   "threshold": self.threshold.value() if self.threshold.value() > 0 else None}
        self.table.setRowCount(0)
        self.worker = create_worker(iter_batch, Path(self.input_dir.value), Path(self.out_dir.value), model, **options)
        self._progress = progress(total=100, desc="Batch detection")
        self.worker.yielded.connect(self._on_step)
        self.worker.returned.connect(self._on_done)
        self.worker.errored.connect(self._on_error)
        self.worker.aborted.connect(lambda: self.status.setText("Cancelled; run again to resume."))
        self.worker.finished.connect(self._on_finished)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("Running...")
        self.worker.start()

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _on_step(self, step) -> None:
        bar = self._progress
        if bar is not None:  # a late yield may arrive after the worker finished
            bar.n = round(100 * step.fraction)
            bar.refresh()
        self.status.setText(f"{step.stage} ({100 * step.fraction:.0f}%)")

    def _on_done(self, items) -> None:
        self.table.setRowCount(len(items))
        for row, it in enumerate(items):
            detail = it.message if it.status == "error" else f"{it.n_findings} findings, {it.lesion_volume_ml or 0:.2f} ml"
            for col, text in enumerate([it.file.name, it.status, detail]):
                self.table.setItem(row, col, QTableWidgetItem(text))
        bad = sum(it.status == "error" for it in items)
        self.status.setText(f"{len(items) - bad} of {len(items)} files done; summary.csv in {self.out_dir.value}")

    def _on_error(self, exc) -> None:
        message = str(exc) if isinstance(exc, (InputError, ModelError)) else f"{type(exc).__name__}: {exc}"
        notifications.show_error(message.splitlines()[0])
        self.status.setText("Failed: " + message.splitlines()[0])

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.worker = None
