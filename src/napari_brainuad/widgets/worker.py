"""Shared plumbing for widgets that run a step generator in a napari thread worker."""
from __future__ import annotations

import logging

from napari.qt.threading import create_worker
from napari.utils import notifications, progress
from qtpy.QtWidgets import QComboBox, QFrame, QLabel, QPushButton, QScrollArea, QVBoxLayout, QWidget

from ..io import InputError
from ..models import ModelError

log = logging.getLogger(__name__)
COMBO_CHARACTERS = 10
"""Characters a choice box shows at its narrowest."""


class JobFailed(Exception):
    """A job's RuntimeError carried out of the worker thread (superqt takes a RuntimeError for a deleted worker
    and then never reports the end); its message is :func:`one_sentence` of the original."""


def one_sentence(exc: BaseException, limit: int = 200) -> str:
    """A short message for a notification: our errors' sentence, else the type and the first line, cut short."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not isinstance(exc, (InputError, ModelError, JobFailed)):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


class _BodyScroll(QScrollArea):
    """A vertical scroll area at least as wide as its body (in the body's final style), beside its scroll bar."""

    def showEvent(self, event):
        super().showEvent(event)
        self.updateGeometry()  # the body's hint changes once the viewer's style reaches it

    def minimumSizeHint(self):
        hint = super().minimumSizeHint()
        if self.widget() is not None:
            hint.setWidth(self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width())
        return hint


class WorkerWidget(QWidget):
    """A widget with Run / Cancel buttons and a status line around one background job at a time.

    The job is a generator of :class:`~napari_brainuad.progress.Step` (it can stop between steps
    when cancelled); its return value goes to the ``on_return`` callback in the UI thread, whose
    returned text stays in the status line; an exception becomes one short napari notification.
    Subclasses lay out their controls with :meth:`set_body`, inside a scroll area.
    """

    def __init__(self, run_text: str = "Run"):
        super().__init__()
        self.worker = None
        self._progress = None
        self._cancelling = False
        self._final_text: str | None = None
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel", enabled=False)
        self.status = QLabel("", wordWrap=True)
        self.cancel_button.clicked.connect(self.cancel)

    def set_body(self, layout) -> None:
        """Put ``layout`` in a scroll area filling the widget, so docked widgets never squeeze their contents.

        Choice boxes shrink to a few characters (long layer names and choices are cut, the full text is in
        the list) and the scroll area asks for the body's full width, so a dock opens without a sideways
        scroll bar.
        """
        body = QWidget()
        body.setLayout(layout)
        for box in body.findChildren(QComboBox):
            box.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            box.setMinimumContentsLength(COMBO_CHARACTERS)
        self.scroll = _BodyScroll(widgetResizable=True, frameShape=QFrame.NoFrame)
        self.scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll)

    def start(self, job, *args, desc: str, on_return, cancelled: str = "Cancelled.", **kwargs) -> None:
        steps = job(*args, **kwargs)

        def drive():
            try:
                return (yield from steps)
            except RuntimeError as exc:
                raise JobFailed(one_sentence(exc)) from exc

        def returned(value):
            self._final_text = on_return(value)

        # errored is connected here so superqt does not re-raise the error in the UI thread
        self.worker = create_worker(drive, _start_thread=False, _connect={"errored": self._on_error})
        # The worker stops iterating on Cancel but keeps the generator open; closing it runs the
        # job's cleanup (a registration running in its own thread is told to stop).
        self.worker.aborted.connect(steps.close)
        self._progress = progress(total=100, desc=desc)
        self.worker.yielded.connect(self._on_step)
        self.worker.returned.connect(returned)
        self.worker.aborted.connect(lambda: setattr(self, "_final_text", cancelled))
        self.worker.finished.connect(self._on_finished)
        self._cancelling = False
        self._final_text = None
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText("Running...")
        self.worker.start()

    def cancel(self) -> None:
        if self.worker is not None:
            self._cancelling = True
            self.worker.quit()
            self.status.setText("Cancelling...")

    def _on_step(self, step) -> None:
        if self._cancelling or self.worker is None:  # a step reported after Cancel or after the end
            return
        self.status.setText(f"{step.stage} ({100 * step.fraction:.0f}%)")
        bar = self._progress  # updating it may process events, the job's end included: it goes last
        if bar is not None:
            bar.n = round(100 * step.fraction)
            bar.set_description(step.stage)
            bar.refresh()

    def _on_error(self, exc) -> None:
        log.debug("background job failed", exc_info=exc)
        text = one_sentence(exc)
        notifications.show_error(text)
        self._final_text = "Failed: " + text
        self.status.setText(self._final_text)  # the end may have been reported first

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.worker = None
        if self._final_text is not None:
            self.status.setText(self._final_text)
