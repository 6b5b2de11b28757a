from pathlib import Path

from npe2 import PluginManifest

import napari_brainuad

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_is_installed_valid_and_importable():
    manifest = PluginManifest.from_distribution("napari-brainuad")
    manifest.validate_imports()
    assert {c.display_name for c in manifest.contributions.sample_data}
    assert manifest.contributions.readers[0].filename_patterns == ["*.nii", "*.nii.gz", "*.mgz"]


def test_packaged_manifest_is_the_root_one():
    packaged = Path(napari_brainuad.__file__).parent / "napari.yaml"
    assert packaged.read_text() == (ROOT / "napari.yaml").read_text()
