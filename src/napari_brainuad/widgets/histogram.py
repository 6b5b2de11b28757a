"""A small histogram of anomaly scores with the threshold drawn on it (QPainter, no plotting library)."""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget


class ScoreHistogram(QWidget):
    """Log-count histogram of scores inside the brain; the threshold is a red line."""

    def __init__(self, parent=None, bins: int = 64):
        super().__init__(parent)
        self.bins = bins
        self.counts = np.zeros(bins)
        self.edges = np.linspace(0, 1, bins + 1)
        self.threshold: float | None = None
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setToolTip("Anomaly scores inside the brain (log counts); red: threshold")

    def set_scores(self, scores: np.ndarray) -> None:
        """Show ``scores``, binned from 0 to their maximum."""
        hi = float(scores.max()) if scores.size else 1.0
        self.counts, self.edges = np.histogram(scores, bins=self.bins, range=(0.0, hi if hi > 0 else 1.0))
        self.update()

    def set_threshold(self, threshold: float) -> None:
        self.threshold = threshold
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt API)
        painter = QPainter(self)
        rect = QRectF(self.rect()).adjusted(4, 4, -4, -14)
        painter.fillRect(self.rect(), QColor(38, 41, 48))
        heights = np.log1p(self.counts)
        top = heights.max() if heights.max() > 0 else 1.0
        width = rect.width() / self.bins
        painter.setPen(Qt.NoPen)
        for i, h in enumerate(heights):
            bar = h / top * rect.height()
            painter.fillRect(QRectF(rect.left() + i * width, rect.bottom() - bar, max(width - 1, 1), bar),
                             QColor(255, 170, 60) if self.threshold is not None and self.edges[i] >= self.threshold
                             else QColor(150, 160, 175))
        span = self.edges[-1] - self.edges[0]
        painter.setPen(QColor(200, 200, 200))
        axis = QRectF(rect.left(), rect.bottom(), rect.width(), self.height() - rect.bottom())
        painter.drawText(axis, Qt.AlignLeft | Qt.AlignBottom, f"{self.edges[0]:.2f}")
        painter.drawText(axis, Qt.AlignRight | Qt.AlignBottom, f"{self.edges[-1]:.2f}")
        if self.threshold is not None and span > 0:
            x = rect.left() + (self.threshold - self.edges[0]) / span * rect.width()
            painter.setPen(QPen(QColor(230, 50, 50), 2))
            painter.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom()))
        painter.end()
