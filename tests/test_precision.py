"""Precision resolution (fp32 | bf16 | fp16 | auto), bf16 CPU training, reduced-precision
checkpoints evaluated in fp32, the fused-Adam factory and the torch.compile fallback."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from poselift.core import precision as P
from poselift.core.compile import MaybeCompiled, maybe_compile
from poselift.core.optim import adam_impl, make_adam
from poselift.lifting.videopose3d.losses import mpjpe_loss
from poselift.lifting.videopose3d.model import TemporalModel, TemporalModelOptimized1f


@pytest.mark.parametrize("flags, expect", [
    ({"avx512f", "avx512_bf16"}, "bf16"),          # Zen 4, Cooper Lake
    ({"avx512f", "amx_bf16", "amx_tile"}, "bf16"),  # Sapphire Rapids
    ({"avx512f", "avx2"}, "fp32"),                  # Skylake-SP: bf16 would be emulated
    (set(), "fp32"),
])
def test_auto_on_cpu_follows_the_flags(flags, expect):
    p = P.resolve_precision("auto", "cpu", flags=flags)
    assert p.name == expect and p.scaler is False and p.tf32 is False
    assert p.dtype == (torch.bfloat16 if expect == "bf16" else None)
    assert p.record()["resolved"] == expect and p.record()["requested"] == "auto"


def test_auto_reads_proc_cpuinfo_and_falls_back_to_torch(monkeypatch):
    P._proc_cpuinfo.cache_clear()
    monkeypatch.setattr(P, "_proc_cpuinfo", lambda: "model name\t: X\nflags\t\t: fpu avx512_bf16\n")
    assert P.cpu_flags() == {"fpu", "avx512_bf16"} and P.resolve_precision("auto", "cpu").name == "bf16"
    monkeypatch.setattr(P, "_proc_cpuinfo", lambda: "")  # no /proc: torch's run-time probes
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert "amx_bf16" in P.cpu_flags() and P.resolve_precision("auto", "cpu").name == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert P.resolve_precision("auto", "cpu").name == "fp32"


def test_fp16_on_cpu_and_unknown_names_are_refused_clearly():
    with pytest.raises(P.PrecisionError, match="'fp16' is not supported on the CPU.*bf16"):
        P.resolve_precision("fp16", "cpu")
    with pytest.raises(P.PrecisionError, match="'half' is not one of fp32, bf16, fp16, auto"):
        P.resolve_precision("half", "cpu")
    emulated = P.resolve_precision("bf16", "cpu", flags={"avx2"})
    assert emulated.name == "bf16" and "emulated" in emulated.reason


@pytest.mark.parametrize("req, cap, name, scaler, tf32", [
    ("auto", (9, 0), "bf16", False, True), ("auto", (7, 0), "fp16", True, False),
    ("fp16", (8, 0), "fp16", True, True), ("fp32", (8, 6), "fp32", False, False),
])
def test_cuda_resolution_without_a_gpu(req, cap, name, scaler, tf32):
    p = P.resolve_precision(req, "cuda", cuda_capability=cap)
    assert (p.name, p.scaler, p.tf32, p.device_type) == (name, scaler, tf32, "cuda")


def _lifter_fit(prec: P.Precision, steps: int) -> tuple[float, float, TemporalModelOptimized1f]:
    """Tiny 9-frame lifter on a fixed learnable mapping; (first loss, last loss, model)."""
    torch.manual_seed(0)
    model = TemporalModelOptimized1f(4, 2, 4, [3, 3], dropout=0.0, channels=32).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 9, 4, 2, generator=g)
    w = torch.randn(18, 12, generator=g) * 0.3
    y = (x.reshape(64, -1)[:, :18] @ w).reshape(64, 1, 4, 3)
    opt = make_adam(model.parameters(), lr=3e-3, amsgrad=True)
    scaler = prec.grad_scaler()
    losses = []
    for _ in range(steps):
        with prec.autocast():
            loss = mpjpe_loss(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
    return losses[0], min(losses[-5:]), model


def test_bf16_cpu_autocast_trains_and_checkpoint_evaluates_in_fp32(tmp_path):
    prec = P.resolve_precision("bf16", "cpu")
    first, last, model = _lifter_fit(prec, 150)
    assert last < first / 4, (first, last)  # falls by a large factor (measured 57x bf16, 68x fp32)
    for p_ in model.parameters():  # master weights stay float32: checkpoints are fp32
        assert p_.dtype == torch.float32
    torch.save(model.state_dict(), tmp_path / "bf16.pt")
    ev = TemporalModel(4, 2, 4, [3, 3], dropout=0.0, channels=32).eval()
    ev.load_state_dict(torch.load(tmp_path / "bf16.pt", weights_only=True))
    x = torch.randn(2, 20, 4, 2)
    with torch.no_grad():
        fp32 = ev(x)
        with prec.autocast():
            bf16 = ev(x).float()
    assert fp32.dtype == torch.float32 and torch.isfinite(fp32).all()
    assert (fp32 - bf16).abs().max() < 0.05 * fp32.abs().max() + 1e-3  # bf16: ~3 significant digits


def test_fp32_and_auto_paths_train():
    for req in ("fp32", "auto"):
        first, last, _ = _lifter_fit(P.resolve_precision(req, "cpu"), 150)
        assert last < first / 4, (req, first, last)


def test_make_adam_forms_agree():
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 4)
    outs = {}
    for impl in ("loop", "foreach", "fused"):
        m = torch.nn.Linear(8, 4)
        m.load_state_dict(base.state_dict())
        opt = make_adam(m.parameters(), lr=1e-2, amsgrad=True, impl=impl)
        assert adam_impl(opt) == impl
        for i in range(5):
            opt.zero_grad(set_to_none=True)
            m(torch.full((3, 8), float(i))).pow(2).sum().backward()
            opt.step()
        outs[impl] = m.weight.detach().clone()
    torch.testing.assert_close(outs["foreach"], outs["loop"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs["fused"], outs["loop"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fused, foreach or loop"):
        make_adam(base.parameters(), lr=1e-3, impl="sgd")


def test_compile_switch_falls_back_to_eager(monkeypatch):
    m = torch.nn.Linear(3, 2)
    assert maybe_compile(m, False) is m

    def broken(module, **kw):
        def fn(*a, **k):
            raise RuntimeError("no C++ compiler found\nmore detail")
        return fn
    monkeypatch.setattr(torch, "compile", broken)
    wrapped = maybe_compile(m, True)
    assert isinstance(wrapped, MaybeCompiled) and wrapped.compiled
    x = torch.randn(4, 3)
    torch.testing.assert_close(wrapped(x), m(x))
    assert not wrapped.compiled and "no C++ compiler found" in wrapped.fallback_reason
    assert list(wrapped.parameters()) == list(m.parameters())


def test_predict_sequence_in_bf16_matches_fp32():
    from poselift.lifting.videopose3d.infer import predict_sequence

    torch.manual_seed(0)
    model = TemporalModel(4, 2, 4, [3, 3], dropout=0.0, channels=32).eval()
    kp = torch.randn(30, 4, 2).numpy()
    fp32 = predict_sequence(model, kp, pad=4)
    bf16 = predict_sequence(model, kp, pad=4, precision="bf16")
    assert fp32.shape == bf16.shape == (30, 4, 3) and bf16.dtype == fp32.dtype
    assert abs(bf16 - fp32).max() < 0.05 * abs(fp32).max() + 1e-3
    with pytest.raises(P.PrecisionError, match="fp16"):
        predict_sequence(model, kp, pad=4, precision="fp16")


def test_backbone_runner_bf16_on_cpu_close_to_fp32():
    from poselift.extract.backbones.resnet import ResNet
    from poselift.extract.contracts import PreprocessContract
    from poselift.extract.features import BackboneRunner

    torch.manual_seed(0)
    net = ResNet(18, 8).eval()
    contract = PreprocessContract(crop_size=32, bbox_scale=1.2)
    crops = torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8).numpy()
    fp32 = BackboneRunner(net, contract, "cpu")(crops)
    bf16 = BackboneRunner(net, contract, "cpu", precision="bf16")(crops)
    assert fp32.dtype == bf16.dtype == np.float32 and fp32.shape == bf16.shape
    assert np.linalg.norm(bf16 - fp32) < 0.05 * np.linalg.norm(fp32)
    with pytest.raises(P.PrecisionError, match="fp16"):
        BackboneRunner(net, contract, "cpu", precision="fp16")


def test_inference_precision_defaults_keep_the_old_behaviour():
    # No switch given: fp16 autocast on CUDA when amp, float32 otherwise (existing caches stay
    # reproducible); an explicit switch wins over amp.
    assert P.inference_precision(None, "cpu").dtype is None
    assert P.inference_precision(None, "cpu", amp=True).name == "fp32"
    assert P.inference_precision("bf16", "cpu", amp=False).dtype == torch.bfloat16
    assert P.precision_record(None, "cpu") == {"resolved": "fp32", "autocast_dtype": None}
    assert P.precision_record("bf16", "cpu") == {"resolved": "bf16", "autocast_dtype": "bfloat16"}
    with pytest.raises(P.PrecisionError):
        P.inference_precision("fp16", "cpu")
