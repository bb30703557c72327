"""`python -m vsrpp_dist.export`: ONNX export with dynamic batch and size, checked with onnxruntime
against PyTorch, for every alignment; nothing written when export or the check fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vsrpp_dist.inference import export
from vsrpp_dist.inference.loading import load_model
from vsrpp_dist.weights import read_weights
from vsrpp_dist.weights import save_weights as write_weights_file

from ..helpers import run, save_weights

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
onnxruntime = pytest.importorskip("onnxruntime")

SMALL_FLOW = dict(flow_channels=4, flow_levels=1, max_flow=1.0, deform_groups=2)


@pytest.fixture(scope="module")
def real_frames(tmp_path_factory) -> Path:
    from vsrpp_dist.tools.demo_data import write_frame_folders

    return write_frame_folders(tmp_path_factory.mktemp("real"), sequences=1, frames=5, frame_hw=(40, 56), seed=1)[0]


def moving_weights(path: Path, **overrides) -> Path:
    """A tiny model whose flow net and offsets are not at their zero start: the warps and the
    deformable sampling then move pixels, which is what the exported graph must reproduce."""
    save_weights(path, seed=1, **overrides)
    weights = read_weights(path)
    generator = torch.Generator().manual_seed(0)
    for key, tensor in weights.state_dict.items():
        if (key.startswith("flow_net.") or ".align.conv_offset." in key) and not tensor.any():
            tensor.copy_(0.5 * torch.randn(tensor.shape, generator=generator))
    write_weights_file(path, weights.state_dict, model_config=weights.model_config, ema=False, step=weights.step,
                       provenance=[])
    return path


def onnx_vs_torch(weights: Path, onnx_file: Path, shape: tuple[int, ...]) -> float:
    """Our own check, independent of the command's: a size and batch it did not verify."""
    model = load_model(weights, torch.device("cpu")).model
    lr = torch.rand(*shape)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"lq_btchw": lr.numpy()})
    with torch.no_grad():
        expected = model(lr).clamp(0, 1).numpy()
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max())


@pytest.mark.parametrize("alignment", ["implicit", pytest.param("flow_deform", marks=pytest.mark.slow)])
def test_export_runs_in_onnxruntime_like_pytorch(alignment, real_frames, tmp_path, capsys, recwarn):
    """flow_deform covers the flow net, grid_sample warps and the deformable conv's decomposition (its
    export takes ~30 s here: slow). The model keeps nothing of a call on its modules: the exporter, which
    warns about tensors a traced forward assigns to attributes, has nothing to say (no filter needed)."""
    extra = {} if alignment == "implicit" else SMALL_FLOW
    weights = moving_weights(tmp_path / "w.pt", alignment=alignment, **extra)
    if alignment != "implicit":
        model = load_model(weights, torch.device("cpu")).model
        with torch.no_grad():
            _, report = model(torch.rand(1, 5, 3, 32, 40), with_alignment=True)
        assert report["flow_magnitude"] > 0.1 and report["offset_mean"] > 0.1
    out = tmp_path / "model.onnx"
    rc, stdout, err = run(capsys, export, "--checkpoint", weights, "--onnx", out, "--size", "40x32",
                          "--frames", real_frames)
    assert rc == 0, err
    assert not [w for w in recwarn if "tensor attributes" in str(w.message)]
    assert f"exported {alignment} model" in stdout and "real frames" in stdout
    assert stdout.count("max |onnxruntime - PyTorch|") == 5  # four cases and the summary
    assert onnx_vs_torch(weights, out, (2, 5, 3, 27, 45)) < 1e-4
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".onnx" or "partial" in p.name] == ["model.onnx"]
    # the file names the weights it came from
    import json

    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["vsrpp.source"])["sha256"] == read_weights(weights).sha256
    assert json.loads(props["vsrpp.provenance"]) == []


def test_failed_export_or_check_writes_nothing(tmp_path, capsys, monkeypatch):
    weights = save_weights(tmp_path / "w.pt")
    out = tmp_path / "model.onnx"
    # a check that cannot pass (float rounding differs by more than 0)
    rc, _, err = run(capsys, export, "--checkpoint", weights, "--onnx", out, "--size", "24x16", "--tolerance", "0")
    assert rc == 2 and "differs from PyTorch" in err and "nothing written" in err
    assert len(err.strip().splitlines()[-1]) > 0 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [weights]

    def unsupported(module, example, path, opset, metadata):
        Path(path).write_bytes(b"half a model")
        raise RuntimeError("no ONNX symbolic for aten::something")

    monkeypatch.setattr(export, "export_onnx", unsupported)
    rc, _, err = run(capsys, export, "--checkpoint", weights, "--onnx", out)
    assert rc == 2
    assert "alignment implicit: the model cannot be exported" in err and "aten::something" in err
    assert list(tmp_path.iterdir()) == [weights]


def test_bad_arguments_are_one_line(tmp_path, capsys, monkeypatch):
    weights = save_weights(tmp_path / "w.pt")
    taken = tmp_path / "taken.onnx"
    taken.write_bytes(b"the user's")
    for argv, words in (((("--onnx", taken)), "exists"), ((("--onnx", tmp_path / "m.txt")), "ending in .onnx")):
        rc, _, err = run(capsys, export, "--checkpoint", weights, *argv)
        assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert taken.read_bytes() == b"the user's"
    monkeypatch.setattr(export, "_absent", lambda name: name == "onnxruntime")
    rc, _, err = run(capsys, export, "--checkpoint", weights, "--onnx", tmp_path / "m.onnx")
    assert rc == 2 and "pip install 'vsrpp-dist[export]'" in err
