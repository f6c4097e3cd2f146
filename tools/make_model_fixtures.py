"""Write tests/fixtures/model_reference.json: parameters, MACs and fixed-seed outputs of every model.

Run after a deliberate change to a model's architecture or initialisation, and say why in the
commit: the test suite compares against these numbers to catch accidental changes.
    .venv/bin/python tools/make_model_fixtures.py
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from model_utils import regression_output  # noqa: E402

import resnet  # noqa: E402
from resnet.models import get_entry  # noqa: E402
from resnet.models.complexity import measure  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    out = {"meta": {"torch": torch.__version__, "numpy": np.__version__}}
    for name in resnet.list_models():
        logits = regression_output(name)
        c = measure(resnet.create_model(name), get_entry(name).input_size, name)
        out[name] = dict(params=c.params, macs=c.macs, logits_head=logits[:, :10].tolist(),
                         logits_sum=logits.double().sum(1).tolist())
        print(name, c.params, c.macs, flush=True)
    path = ROOT / "tests" / "fixtures" / "model_reference.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
