"""Shared plumbing for widgets that run a step generator in a napari thread worker."""
from __future__ import annotations

from napari.qt.threading import create_worker
from napari.utils import notifications, progress
from qtpy.QtWidgets import QLabel, QPushButton, QWidget


class WorkerWidget(QWidget):
    """A widget with Run / Cancel buttons and a status line around one background job at a time.

    The job is a generator of :class:`~napari_brainuad.progress.Step` (it can stop between steps
    when cancelled); its return value goes to the ``on_return`` callback in the UI thread and any
    exception becomes a one-sentence napari notification.
    """

    def __init__(self, run_text: str = "Run"):
        super().__init__()
        self.worker = None
        self._progress = None
        self._cancelling = False
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel", enabled=False)
        self.status = QLabel("", wordWrap=True)
        self.cancel_button.clicked.connect(self.cancel)

    def start(self, job, *args, desc: str, on_return, cancelled: str = "Cancelled.", **kwargs) -> None:
        steps = job(*args, **kwargs)

        def drive():
            return (yield from steps)

        self.worker = create_worker(drive)
        # The worker stops iterating on Cancel but keeps the generator open; closing it runs the
        # job's cleanup (a registration running in its own thread is told to stop).
        self.worker.aborted.connect(steps.close)
        self._progress = progress(total=100, desc=desc)
        self.worker.yielded.connect(self._on_step)
        self.worker.returned.connect(on_return)
        self.worker.errored.connect(self._on_error)
        self.worker.aborted.connect(lambda: self.status.setText(cancelled))
        self.worker.finished.connect(self._on_finished)
        self._cancelling = False
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
        if self._cancelling:  # a step reported before the worker saw the Cancel
            return
        bar = self._progress
        if bar is not None:  # a late yield may arrive after the worker finished
            bar.n = round(100 * step.fraction)
            bar.set_description(step.stage)
            bar.refresh()
        self.status.setText(f"{step.stage} ({100 * step.fraction:.0f}%)")

    def _on_error(self, exc) -> None:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        notifications.show_error(text)
        self.status.setText("Failed: " + text)

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.worker = None
