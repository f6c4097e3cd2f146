"""`--backend auto`: the rule from the processor's flags (both kinds of machine, mocked), the cached
measurements that override it, the job-size threshold, and int8's reduced range without VNNI."""
import pytest
import torch

import resnet
from resnet.deploy import choose
from resnet.deploy.choose import inference_model
from resnet.engine import precision

# /proc/cpuinfo flags of the two processors this project runs on (abridged to what matters)
AMX = frozenset("fma avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8".split())
VNNI = frozenset("fma avx avx2 avx512f avx512bw avx512_vnni avx512_bf16".split())  # the AMD EPYC with AVX-512 of earlier sessions: VNNI, no AMX
ZEN3 = frozenset("fma avx avx2 bmi2 sha_ni vaes vpclmulqdq".split())  # AMD EPYC Zen 3: no AVX-512, no VNNI


def everything(name):
    return None


def test_cpu_kinds():
    assert choose.cpu_kind(AMX) == "amx" and choose.cpu_kind(ZEN3) == "avx2"
    assert choose.cpu_kind({"avx2", "avx_vnni"}) == "vnni" and choose.cpu_kind({"sse4_2"}) == "other"
    assert choose.needs_reduced_range(ZEN3) and not choose.needs_reduced_range(AMX)
    assert not choose.needs_reduced_range({"avx2", "avx512_vnni"})


def test_reduced_range_follows_onednns_isa_limit(monkeypatch):
    # oneDNN held to AVX2 on a VNNI machine runs its int8 kernels without VNNI: 7 bits, as on a real AVX2 CPU
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert not precision.needs_reduced_range()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert precision.needs_reduced_range() and not precision.needs_reduced_range(AMX)  # given flags: as they say
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2_VNNI")
    assert not precision.needs_reduced_range()


@pytest.mark.parametrize("flags, batch, expected", [
    (AMX, 16, "int8"),  # PT2E on AMX: the best batch throughput measured
    (AMX, 1, "int8"),  # with inductor's C++ wrapper: 8.2-9.5 ms against onnxruntime-int8's 10.5-11.8
    (VNNI, 1, "onnxruntime-int8"),  # the least per-call overhead (AMD EPYC: 13.5 against 14.4 ms)
    (VNNI, 16, "int8"),
    (ZEN3, 16, "onnxruntime-int8"),  # fastest at both batches on the AVX2 machine
    (ZEN3, 1, "onnxruntime-int8"),
])
def test_rule_picks_by_processor(flags, batch, expected, tmp_path):
    name, why = choose.choose_backend("resnet50", 224, batch, bf16="amx_bf16" in flags, flags=flags,
                                      cache=choose.ChoiceCache(tmp_path), available=everything)
    assert name == expected and "rule" in why


def test_rule_prefers_compiled_bf16_for_small_images_on_amx(tmp_path):
    cache = choose.ChoiceCache(tmp_path)
    assert choose.choose_backend("resnet20", 32, 256, True, AMX, cache, everything)[0] == "compiled-bf16"
    assert choose.choose_backend("resnet20", 32, 1, True, AMX, cache, everything)[0] == "onnxruntime-int8"
    assert choose.choose_backend("resnet20", 32, 256, False, ZEN3, cache, everything)[0] == "onnxruntime-int8"


def test_rule_falls_back_when_packages_are_missing(tmp_path):
    def no_onnx_no_torchao(name):
        return "not installed" if name in ("int8", "onnxruntime-int8", "onnxruntime") else None
    cache = choose.ChoiceCache(tmp_path)
    assert choose.choose_backend("resnet50", 224, 16, True, AMX, cache, no_onnx_no_torchao)[0] == "compiled-bf16"
    # on the AVX2 machine without onnxruntime: PT2E int8 (reduced range) is next
    only_torchao = lambda name: "not installed" if "onnxruntime" in name else None  # noqa: E731
    assert choose.choose_backend("resnet50", 224, 16, False, ZEN3, cache, only_torchao)[0] == "int8"
    nothing = lambda name: None if name == "eager-fp32" else "no"  # noqa: E731
    assert choose.choose_backend("resnet50", 224, 16, False, ZEN3, cache, nothing)[0] == "eager-fp32"


def test_rule_puts_onnxruntime_fp32_before_the_compiled_path_where_bf16_is_not_native():
    # Zen 3 2026-12-07, ResNet-50 batch 1 / 16: onnxruntime fp32 18.7 / 19.6 against compiled fp32 15.4 / 14.8
    assert choose.rule(ZEN3, 16, bf16=False) == ["onnxruntime-int8", "int8", "onnxruntime", "compiled-bf16",
                                                 "eager-fp32"]
    assert choose.rule(AMX, 16, bf16=False).index("onnxruntime") < choose.rule(AMX, 16, bf16=False).index(
        "compiled-bf16")  # --precision fp32 on the AMX machine: the compiled path is fp32 there too
    assert choose.rule(AMX, 16, bf16=True).index("compiled-bf16") < choose.rule(AMX, 16, bf16=True).index(
        "onnxruntime")  # native bf16: compiled bf16 is the faster


def test_measured_table_overrides_the_rule_but_never_below_99_percent(tmp_path):
    cache = choose.ChoiceCache(tmp_path)
    rows = [{"backend": "int8", "batch": 16, "images_per_sec": 300.0, "agreement": 0.97},  # fast, disagrees
            {"backend": "compiled-bf16", "batch": 16, "images_per_sec": 200.0, "agreement": 0.995},
            {"backend": "eager-fp32", "batch": 16, "images_per_sec": 20.0, "agreement": 1.0},
            {"backend": "onnxruntime", "batch": 1, "images_per_sec": 50.0, "agreement": 1.0}]
    cache.save_rows("resnet50", 224, rows)
    name, why = choose.choose_backend("resnet50", 224, 16, True, AMX, cache, everything)
    assert name == "compiled-bf16" and "measured here" in why and "99.5%" in why
    assert choose.choose_backend("resnet50", 224, 1, True, AMX, cache, everything)[0] == "onnxruntime"
    assert choose.choose_backend("resnet50", 224, 8, True, AMX, cache, everything)[0] == "compiled-bf16"  # 16's
    assert choose.choose_backend("resnet20", 32, 16, True, AMX, cache, everything)[0] == "compiled-bf16"


def test_a_batch_not_measured_takes_the_nearest_measured_batch_of_its_kind(tmp_path):
    """`benchmark --save` measures batches 1 and 16, eval runs 64 or 1000: the saved table was never found."""
    cache = choose.ChoiceCache(tmp_path)
    cache.save_rows("resnet50", 224, [{"backend": "onnxruntime", "batch": 16, "images_per_sec": 90.0, "agreement": 1.0},
                                      {"backend": "eager-fp32", "batch": 16, "images_per_sec": 20.0, "agreement": 1.0}])
    for batch in (64, 1000):
        name, why = choose.choose_backend("resnet50", 224, batch, True, AMX, cache, everything)
        assert name == "onnxruntime" and f"at batch 16 (the nearest measured to this job's {batch})" in why
    name, why = choose.choose_backend("resnet50", 224, 1, True, AMX, cache, everything)  # batch 1: overhead, alone
    assert name == "int8" and "rule" in why
    cache.save_rows("resnet50", 224, [{"backend": "eager-fp32", "batch": 256, "images_per_sec": 3.0, "agreement": 1}])
    assert choose.choose_backend("resnet50", 224, 1000, True, AMX, cache, everything)[0] == "eager-fp32"  # 256's
    assert "at batch 16," in choose.choose_backend("resnet50", 224, 16, True, AMX, cache, everything)[1]


def test_small_jobs_stay_eager_and_large_ones_take_the_fast_path(monkeypatch):
    model = resnet.create_model("resnet20").eval()  # 40.6 M MACs an image
    monkeypatch.setattr(choose, "cpu_flags", lambda: ZEN3)
    monkeypatch.setattr(choose, "backend_status", everything)
    [(name, why)] = choose.resolve_auto(model, False, (10_000, 1000, 32))
    assert name == "eager-fp32" and "too little work" in why
    assert choose.resolve_auto(model, True, (10_000, 1000, 32))[0][0] == "eager-bf16"
    assert choose.resolve_auto(model, False, None)[0][0] == "eager-fp32"


def test_large_job_on_avx2_chooses_int8_and_skips_what_needs_calibration(monkeypatch, tmp_path):
    model = resnet.create_model("resnet20").eval()
    monkeypatch.setattr(choose, "cpu_flags", lambda: ZEN3)
    monkeypatch.setattr(choose, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(choose, "cache_root", lambda: tmp_path)
    monkeypatch.setattr(choose, "backend_status", everything)
    order = [n for n, _ in choose.resolve_auto(model, False, (300_000, 1000, 32))]
    assert order == ["onnxruntime-int8", "int8", "onnxruntime", "compiled-bf16", "eager-fp32"]
    assert choose.resolve_auto(model, False, (300_000, 1000, 32), calibrated=False)[0][0] == "compiled-bf16"
    monkeypatch.setattr(choose, "cpu_supports_bf16", lambda: True)  # an AMX machine asked for fp32
    monkeypatch.setattr(choose, "bf16_pays", lambda: True)
    monkeypatch.setattr(choose, "cpu_flags", lambda: AMX)
    name = choose.resolve_auto(model, False, (300_000, 1000, 32), calibrated=False)[0][0]
    assert name == "eager-fp32"  # compiled-bf16 would run bf16 there
    monkeypatch.setattr(choose, "bf16_pays", lambda: False)  # native bf16 slower than fp32: compiled runs fp32
    name = choose.resolve_auto(model, False, (300_000, 1000, 32), calibrated=False)[0][0]
    assert name == "compiled-bf16"


def test_eval_of_a_small_set_keeps_the_eager_path():
    model = resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4)
    net, prec = inference_model(model, "auto", "fp32", torch.device("cpu"), lambda: torch.randn(8, 3, 32, 32),
                                work=(100, 50, 32))
    assert net.predictor.backend == "eager-fp32" and prec.name == "fp32"


def test_auto_skips_a_backend_that_disagrees_with_fp32(monkeypatch):
    """The rule cannot know every network: auto keeps the first backend that agrees >= 99% on the
    calibration images. Here the first choice is made to disagree and the second to agree."""
    from resnet.deploy import backends

    model = resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4).eval()
    images = torch.randn(64, 3, 32, 32)
    monkeypatch.setattr(choose, "resolve_auto", lambda *a, **k: [("int8", "rule"), ("eager-bf16", "rule")])

    def fake_prepare(m, name, calibration=None, example=None, dynamic_size=False):
        wrong = backends.Predictor(name, lambda x: -m(x))  # every top-1 flips
        return wrong if name == "int8" else backends.Predictor(name, m)
    monkeypatch.setattr(choose, "prepare_inference", fake_prepare)
    with pytest.warns(UserWarning, match="int8 agrees with fp32 on 0.0% of 64 images"):
        net, _ = inference_model(model, "auto", "fp32", torch.device("cpu"), lambda: images, work=(10 ** 9, 64, 32))
    assert net.predictor.backend == "eager-bf16"


def test_int8_quantizes_to_seven_bits_without_vnni(monkeypatch):
    """The saturation guard reaches the quantizers: PT2E's config and onnxruntime's call (mocked flags)."""
    pytest.importorskip("torchao")
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    seen = {}
    real = xiq.get_default_x86_inductor_quantization_config

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(xiq, "get_default_x86_inductor_quantization_config", spy)
    monkeypatch.setattr("resnet.engine.precision.cpu_flags", lambda: ZEN3)
    from resnet.deploy.backends import _int8_pt2e

    model = resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4, layers=(1, 1, 1)).eval()
    calibration = torch.randn(8, 3, 32, 32)
    # preparing runs export, prepare and convert; the compiled call is not needed for the check
    monkeypatch.setattr("resnet.deploy.backends._compile_frozen", lambda m, autocast_bf16=False, settings=None: m)
    from torch._inductor import config as inductor_config

    # importing torchao installs it, on the process's first import only: set as that import leaves it, so
    # the check holds whichever test imported torchao first (not with monkeypatch: its undo deletes
    # inductor's config entries, and every later torch.compile of the process then fails)
    inductor_config.pre_grad_custom_pass = xiq.quant_lift_up
    predictor = _int8_pt2e(model, calibration)
    # torchao's int8 graph pass must not stay installed for every later torch.compile of the process
    assert inductor_config.pre_grad_custom_pass is None
    assert seen == {"reduce_range": True} and "7-bit activations" in predictor.note
    assert predictor(calibration).shape == (8, 10)
