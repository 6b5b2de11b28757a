"""Saved per-model evaluation results: a fingerprint of what they depend on, a lossless round trip, no pickle."""
import json
import subprocess
import sys

import numpy as np

from napari_brainuad.models.card import ModelCard
from training import partials


def card(tmp_path, **changes) -> ModelCard:
    data = {"name": "m", "threshold": 0.5, "scoring": {"shift": 1}, **changes}
    return ModelCard(data, tmp_path)


def test_fingerprint_follows_weights_card_and_options_but_not_metrics(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"abc")
    caches = [tmp_path / "ixi"]
    key = partials.fingerprint(card(tmp_path), {"seed": 0}, caches)
    assert partials.fingerprint(card(tmp_path, metrics={"AP": 0.3}), {"seed": 0}, caches) == key
    assert partials.fingerprint(card(tmp_path, threshold=0.4), {"seed": 0}, caches) != key
    assert partials.fingerprint(card(tmp_path), {"seed": 1}, caches) != key
    (tmp_path / "weights.safetensors").write_bytes(b"abd")
    assert partials.fingerprint(card(tmp_path), {"seed": 0}, caches) != key
    (tmp_path / "weights.safetensors").write_bytes(b"abc")
    (tmp_path / "ixi").mkdir()
    (tmp_path / "ixi" / "splits.csv").write_text("subject,file,split\n")
    assert partials.fingerprint(card(tmp_path), {"seed": 0}, caches) != key


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    flagged = rng.random((4, 5, 6)) > 0.5
    plots = {"IXI + fluid": {"panel": (rng.random((4, 5), dtype=np.float32), rng.random((4, 5)), 0.5, 1.25),
                             "curve": (np.linspace(1, 0, 7), np.linspace(0, 1, 7), 0.4), "flagged": {}},
             "OASIS healthy": {"panel": (np.zeros((4, 5)), np.ones((4, 5)), 0.5, 1.0),
                               "curve": (np.empty(0), np.empty(0), float("nan")), "flagged": {"a": flagged}}}
    result = partials.ModelResult([{"dataset": "IXI + fluid", "AP": 0.4, "lesion kept": float("nan")}],
                                  [{"case": "x", "AP": np.float64(0.25)}], plots, "restore", "2026-12-07", 3.5)
    folder = tmp_path / "partial"
    partials.save(folder, "m", "key", result)
    assert partials.load(folder, "m", "other key") is None and partials.load(folder, "n", "key") is None
    back = partials.load(folder, "m", "key")
    assert back.volumes == [{"case": "x", "AP": 0.25}] and np.isnan(back.summaries[0]["lesion kept"])
    assert (back.family, back.evaluated, back.detect_seconds) == ("restore", "2026-12-07", 3.5)
    for name, plot in plots.items():
        for a, b in zip(plot["panel"], back.plots[name]["panel"]):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(plot["curve"], back.plots[name]["curve"]):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.plots["OASIS healthy"]["flagged"]["a"], flagged)
    assert json.loads((folder / "m.json").read_text())["fingerprint"] == "key"
    (folder / "m.npz").unlink()  # the JSON alone is not a result
    assert partials.load(folder, "m", "key") is None


def test_fingerprint_covers_the_code_evaluation_runs_and_not_the_report_or_training():
    """A new report layout or training code reuses saved results; a change to how they are computed does not."""
    names = {p.name for p in partials._source_files()}
    assert {"evaluate.py", "measures.py", "cases.py", "synth.py", "scoring.py", "preprocess.py"} <= names
    assert not names & {"report.py", "seed_tables.py", "markdown.py", "fit.py", "pseudo.py", "export.py"}
    script = ("import sys, training.evaluate, training.cases; training.cases.build_contrast_datasets; "
              "import training.synth; print(' '.join(m for m in sys.modules if m.startswith('training.')))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    report = {"training.report", "training.seed_tables", "training.markdown"}
    assert {f"training.{n[:-3]}" for n in partials.EVALUATION_MODULES} >= set(loaded) - report
