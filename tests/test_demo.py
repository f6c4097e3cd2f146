"""The README's main job: `resnet demo` (plain vs residual on scikit-learn's digits, then resnet eval)."""
import pytest
import torch

pytest.importorskip("sklearn")

from resnet.cli import main  # noqa: E402
from resnet.data import load_dataset  # noqa: E402


def test_digits_dataset_is_offline_and_split():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    assert train.images.shape == (1500, 1, 32, 32) and test.images.shape == (297, 1, 32, 32)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    counts = torch.bincount(test.labels, minlength=10)
    assert int(counts.sum()) == 297 and int(counts.max() - counts.min()) <= 3  # stratified
    seen = {bytes(x.numpy()) for x in train.images}
    assert sum(bytes(x.numpy()) in seen for x in test.images) <= 3  # the sets are disjoint (rare duplicates aside)


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--depths", "8", "--epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test err" in text and "plain8" in text and "resnet8" in text
    assert "the degradation finding is not at this budget: the deeper plain net trains no worse" in text  # one depth
    assert (out / "degradation.png").is_file() and (out / "report.md").is_file()
    assert (out / "runs" / "resnet8-s0" / "metrics.jsonl").read_text().count("\n") == 1
