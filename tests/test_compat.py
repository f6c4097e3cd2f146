"""The module paths of the previous layout keep working for one release, each with a DeprecationWarning
that names the new place."""
import importlib
import sys

import pytest
import torch

OLD = {"resnet.inference": ("fold_bn", "prepare_inference", "load_for_inference", "compare_with_fp32"),
       "resnet.evaluation": ("run_eval", "eval_data"), "resnet.eval_stream": ("run_eval_stream", "label_map", "eval_folder"),
       "resnet.predict": ("load_any", "run_predict"), "resnet.export": ("export_onnx", "compare_outputs"),
       "resnet.benchmark": ("benchmark", "run_benchmark"), "resnet.plots": ("plot_confusion",),
       "resnet.demo": ("run_demo",), "resnet.models.interop": ("load_weights", "WeightsError"),
       "resnet.data.presets": ("CenterTest", "load_rgb")}


@pytest.mark.parametrize("name", sorted(OLD))
def test_old_module_paths_re_export_with_a_warning(name, monkeypatch):
    monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.warns(DeprecationWarning, match="moved to resnet"):
        module = importlib.import_module(name)
    assert all(callable(getattr(module, attr)) for attr in OLD[name])


def test_old_entry_points_still_take_their_old_arguments(monkeypatch):
    monkeypatch.delitem(sys.modules, "resnet.inference", raising=False)
    with pytest.warns(DeprecationWarning):
        inference = importlib.import_module("resnet.inference")
    model, meta = inference.load_for_inference("resnet20")
    assert meta["random_init"] and meta["input_size"] == 32
    assert inference.agreement(torch.eye(3), torch.eye(3)) == 1.0
