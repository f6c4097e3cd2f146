"""timm's ImageNet ResNets by name: hub addresses, timm's test-size preprocessing and published
accuracy, the committed timm key/shape fixtures, a stand-in downloader, the hub-cache reuse."""
import dataclasses
import hashlib
import http.server
import io
import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from imagenet_utils import one_thread
from interop_utils import deterministic_input, deterministic_state_dict
from resnet import create_model
from resnet.weights import WeightsError, WeightsUnavailableError, model_from_weights, timm_hub
from resnet.weights import sources as W

single_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
TIMM = json.loads((Path(__file__).parent / "fixtures" / "timm_resnets.json").read_text())
REQUIRED = ["timm:resnet50.a1_in1k", "timm:resnet50.a2_in1k", "timm:resnet50.a3_in1k", "timm:resnet18.a1_in1k",
            "timm:resnet101.a1h_in1k"]


class Response(io.BytesIO):
    """What urlopen returns, with the headers the hub sends for an LFS file."""

    def __init__(self, blob: bytes, sha: str | None):
        super().__init__(blob)
        self.headers = {"Content-Length": str(len(blob)), **({"X-Linked-Etag": f'"{sha}"'} if sha else {})}


def test_named_sources_have_timms_addresses_preprocessing_and_accuracy():
    names = [n for n in W.SOURCES if n.startswith("timm:")]
    assert set(REQUIRED) <= set(names)
    for name in names:
        s = W.get_source(name)
        tag = name.split(":", 1)[1]
        assert s.url == f"https://huggingface.co/timm/{tag}/resolve/main/model.safetensors" and s.hf_repo == f"timm/{tag}"
        assert s.preprocess.interpolation == "bicubic" and s.license == "Apache-2.0" and s.sha256_prefix is None
        assert s.pretrained_cfg["hf_hub_id"] == f"timm/{tag}" and s.pretrained_cfg["crop_pct"] == 0.95
        # the architecture is timm's, key for key (the committed fixture written by timm itself)
        with torch.device("meta"):
            ours = create_model(s.model).state_dict()
        assert [[k, list(v.shape)] for k, v in ours.items()] == TIMM[s.model]["keys"]
    a1 = W.get_source("timm:resnet50.a1_in1k")  # _rcfg: trained at 224, tested at 288 with crop_pct 1.0
    assert (a1.preprocess.resize, a1.preprocess.crop, a1.acc1, a1.acc5) == (288, 288, 81.22, 95.11)
    a3 = W.get_source("timm:resnet50.a3_in1k")  # _r3cfg: trained at 160, tested at 224 with crop_pct 0.95
    assert (a3.preprocess.resize, a3.preprocess.crop, a3.acc1) == (235, 224, 78.06)
    assert W.get_source("timm:resnet101.a1h_in1k").acc1 == 82.80 and W.get_source("timm:resnet18.a1_in1k").acc1 == 73.16
    assert W.get_source("timm:resnet50") is a1 and W.get_source("timm:resnet101").name == "timm:resnet101.a1h_in1k"
    assert a1.pretrained_cfg["test_input_size"] == [3, 288, 288] and timm_hub.RELEASES in a1.pretrained_cfg["url"]


@pytest.fixture(scope="module")
def timm_file():
    """timm's resnet18 state dict as the fixture records it, deterministic values, no BN counters."""
    keys = TIMM["resnet18"]["keys"]
    empty = {k: torch.zeros(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
             for k, s in keys}
    sd = {k: v for k, v in deterministic_state_dict(empty).items() if not k.endswith("num_batches_tracked")}
    blob = save(sd)
    return blob, hashlib.sha256(blob).hexdigest()


@pytest.fixture
def caches(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_stand_in_download_gives_timms_outputs(timm_file, caches):
    blob, sha = timm_file
    calls = []

    def opener(url, timeout):
        calls.append(url)
        return Response(blob, sha)
    model, meta = model_from_weights("timm:resnet18.a1_in1k", opener=opener)
    assert calls == ["https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors"]
    assert (caches / "w" / "timm-resnet18.a1_in1k.safetensors").read_bytes() == blob
    with torch.no_grad():
        logits = model(deterministic_input())
    torch.testing.assert_close(logits[:, :16], torch.tensor(TIMM["resnet18"]["logits_head"]), rtol=0, atol=1e-5)
    assert meta["input_size"] == 288 and meta["resize"] == 288 and meta["interpolation"] == "bicubic"
    assert meta["classes"][0] == "tench" and meta["published"]["top1"] == 73.16
    model_from_weights("timm:resnet18.a1_in1k", opener=opener)
    assert len(calls) == 1  # cached


def test_a_download_that_does_not_match_the_hubs_hash_is_not_kept(timm_file, caches):
    blob, sha = timm_file
    with pytest.raises(WeightsError, match="corrupt"):
        W.download(W.get_source("timm:resnet18.a1_in1k"), opener=lambda url, timeout: Response(blob[:-5], sha),
                   stream=io.StringIO())
    assert not (caches / "w").exists() or list((caches / "w").iterdir()) == []


def test_a_download_whose_hash_the_server_does_not_state_is_not_kept(timm_file, caches):
    """A proxy or mirror that drops X-Linked-Etag: timm's files have no hash of their own, so the bytes cannot be
    checked and must not reach the cache (the next call would load them unchecked)."""
    blob, _ = timm_file
    for _ in range(2):  # and the second call is not served from the cache
        with pytest.raises(WeightsUnavailableError, match="stated no sha256.*place it at"):
            model_from_weights("timm:resnet18.a1_in1k", opener=lambda url, timeout: Response(blob, None))
    assert not (caches / "w").exists() or list((caches / "w").iterdir()) == []


def test_weights_timm_already_downloaded_are_reused_offline(timm_file, caches):
    blob, _ = timm_file
    repo = caches / "hf" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(blob)

    def no_network(url, timeout):
        raise AssertionError("the hub cache should have been used")
    model, _ = model_from_weights("timm:resnet18.a1_in1k", opener=no_network)
    with torch.no_grad():
        logits = model(deterministic_input())
    torch.testing.assert_close(logits[:, :16], torch.tensor(TIMM["resnet18"]["logits_head"]), rtol=0, atol=1e-5)


class HubLikeServer:
    """127.0.0.1 standing in for the hub: /resolve/... answers 302 with the file's sha256 in
    X-Linked-Etag (as huggingface.co does), the storage URL it points to serves the bytes, no hash."""

    def __init__(self, blob: bytes, stated_sha: str):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if self.path.startswith("/timm/"):
                    self.send_response(302)
                    self.send_header("Location", "/storage/blob")
                    self.send_header("X-Linked-Etag", f'"{stated_sha}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                self.wfile.write(blob)

            def log_message(self, *args):
                pass

        self.requests = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("honest", [True, False])
def test_the_real_downloader_checks_the_hash_the_hub_states_on_its_redirect(timm_file, caches, honest):
    blob, sha = timm_file
    server = HubLikeServer(blob, sha if honest else "0" * 64)
    source = dataclasses.replace(W.get_source("timm:resnet18.a1_in1k"),
                                 url=server.base + "/timm/resnet18.a1_in1k/resolve/main/model.safetensors")
    try:
        if honest:
            path = W.download(source, stream=io.StringIO())  # urllib itself, through open_url
            assert path.read_bytes() == blob and server.requests[-1] == "/storage/blob"
        else:
            with pytest.raises(WeightsError, match="corrupt"):
                W.download(source, stream=io.StringIO())
            assert not (caches / "w" / source.filename).exists()
    finally:
        server.close()
