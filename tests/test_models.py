import json
import shutil

import numpy as np
import pytest

from napari_brainuad.models import ModelError, available_models, find_card, load_model, read_card, validate_card


def test_bundled_models_have_valid_cards():
    cards = available_models()
    assert "intensity-t1" in [c.name for c in cards]
    for card in cards:
        assert card.grid_shape == [96, 112, 96] and card.spacing_mm == 2.0
        assert "calibration" in card.metrics, f"{card.name}: threshold must come from the calibration command"


def test_user_model_folder_loads_by_path(tmp_path):
    folder = tmp_path / "my-model"
    shutil.copytree(find_card("intensity-t1").folder, folder)
    data = json.loads((folder / "card.json").read_text())
    data["name"] = "my-model"
    data["architecture"]["polarity"] = "bright"
    (folder / "card.json").write_text(json.dumps(data))
    model = load_model(folder, "cpu")
    assert model.name == "my-model"
    image = np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10)
    recon = model.reconstruct(image, np.ones(image.shape, bool))
    assert recon.max() == pytest.approx(np.median(image))  # bright polarity clips the top half


@pytest.mark.parametrize("change, message", [
    ({"family": 3}, "family"),
    ({"spatial_dims": 4}, "spatial_dims"),
    ({"weights": "weights.pt"}, "weights"),
    ({"t_int": {"default": 900, "min": 0, "max": 500}}, "t_int"),
    ({"extra_field": 1}, "extra_field"),
])
def test_invalid_cards_are_refused(change, message):
    data = dict(find_card("intensity-t1").data, **change)
    with pytest.raises(ModelError, match=message):
        validate_card(data, "somewhere/card.json")


def test_missing_or_broken_card(tmp_path):
    with pytest.raises(ModelError, match="no model card"):
        read_card(tmp_path)
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(ModelError, match="not readable JSON"):
        read_card(tmp_path)


def test_unknown_family(tmp_path):
    data = dict(find_card("intensity-t1").data, family="alien", name="alien")
    (tmp_path / "card.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="unknown model family"):
        load_model(tmp_path, "cpu")


def test_a_card_with_scan_scaled_scoring_says_so_and_maps_in_those_units():
    from napari_brainuad.scoring import ScoringConfig
    from napari_brainuad.widgets.card_view import score_units

    data = dict(find_card("intensity-t1").data)
    data["scoring"] = dict(data["scoring"], scan_scale=True)
    card = validate_card(data, "somewhere/card.json")
    assert "scaled to the scan's median" in card.summary()
    assert score_units(ScoringConfig.from_card(card.scoring)) == "residual (multiples of the scan's median)"
    with pytest.raises(ModelError, match="scan_scale"):
        validate_card(dict(data, scoring=dict(data["scoring"], scan_scale="yes")), "somewhere/card.json")
