import pytest
import torch

from edgeflow.checkpoint import load_checkpoint, load_weights, save_checkpoint
from edgeflow.errors import CheckpointError
from edgeflow.models import create_model


def test_round_trip_keeps_tensors_and_meta(tmp_path):
    model = create_model("conv4", num_classes=3, width=8)
    path = save_checkpoint(tmp_path / "m.pt", state_dict=model.state_dict(), meta={"a": [1, 2]})
    sd, meta = load_checkpoint(path)
    assert meta == {"a": [1, 2]}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(sd[k], v)
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


def test_head_of_other_size_is_skipped_body_must_match(tmp_path):
    src = create_model("conv4", num_classes=3, width=8)
    path = save_checkpoint(tmp_path / "m.pt", state_dict=src.state_dict())
    dst = create_model("conv4", num_classes=5, width=8)
    load_weights(dst, path)
    torch.testing.assert_close(dst.encoder[0].weight, src.encoder[0].weight)
    with pytest.raises(CheckpointError, match="shape"):
        load_weights(create_model("conv4", num_classes=3, width=16), path)


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": object()}, path)
    with pytest.raises(CheckpointError, match="tensor-only"):
        load_checkpoint(path)


def test_truncated_file_is_explained(tmp_path):
    model = create_model("conv4", num_classes=3, width=8)
    path = save_checkpoint(tmp_path / "m.pt", state_dict=model.state_dict())
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
