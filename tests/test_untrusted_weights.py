"""A model folder from a stranger cannot run code: safetensors only, strict tensor matching."""
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from napari_brainuad.models import ModelError, find_card, load_model
from napari_brainuad.models.families import build_network


class Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def model_folder(tmp_path, family="ae", architecture=None):
    card = dict(find_card("ae-t1").data, name="stranger", family=family)
    card["architecture"] = architecture or {"channels": [4, 8, 8, 4], "strides": [2, 2, 2, 2], "num_res_units": 1}
    folder = tmp_path / "stranger"
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps(card))
    return folder, card


def test_pickle_disguised_as_weights_is_refused_and_never_runs(tmp_path):
    folder, _ = model_folder(tmp_path)
    marker = tmp_path / "pwned"
    (folder / "weights.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    torch.save({"x": Payload(marker)}, folder / "also.pt")  # a torch pickle, not named in the card
    with pytest.raises(ModelError, match="not a valid safetensors"):
        load_model(folder, "cpu")
    assert not marker.exists()


def test_weights_that_do_not_match_the_architecture(tmp_path):
    folder, card = model_folder(tmp_path)
    other = build_network("ae", {"channels": [4, 8, 16, 4], "strides": [2, 2, 2, 2], "num_res_units": 1})
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, folder / "weights.safetensors")
    with pytest.raises(ModelError, match="do not match"):
        load_model(folder, "cpu")


def test_missing_weights_and_bad_architecture(tmp_path):
    folder, card = model_folder(tmp_path)
    with pytest.raises(ModelError, match="missing"):
        load_model(folder, "cpu")
    card["architecture"] = {"channels": "lots"}
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="architecture"):
        load_model(folder, "cpu")


def test_matching_safetensors_load(tmp_path):
    folder, card = model_folder(tmp_path)
    net = build_network("ae", card["architecture"])
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / "weights.safetensors")
    model = load_model(folder, "cpu")
    for key, value in net.state_dict().items():
        torch.testing.assert_close(model.network.state_dict()[key], value)
