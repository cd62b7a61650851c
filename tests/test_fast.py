"""Fast paths: standardize-once gradients, prepared inference modes, per-stage layouts, compile fallback."""

from __future__ import annotations

import copy
import warnings
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bigtransfer as bt
from bigtransfer.errors import BitError
from bigtransfer.models import PreActBottleneck, StdConv2d, kernels, standardize
from bigtransfer.models.fast import (
    INFERENCE_MODES,
    FastStdConv2d,
    FusedGroupNormReLU,
    LayoutBottleneck,
    fast_path_kind,
    prepare_for_inference,
    remove_fast_path,
    standardize_once,
    use_fast_path,
)
from bigtransfer.weights.timm import load_timm_state


def small_model(seed: int = 0, name: str = "BiT-R26x0.5") -> bt.ResNetV2:
    torch.manual_seed(seed)
    model = bt.create_model(name, num_classes=5)
    torch.nn.init.normal_(model.head.conv.weight, std=0.1)  # a zero head would hide every difference
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, 0.1)
    return model


def micro_batches(n: int = 3, size: int = 32, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, size, size, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(n)]


def accumulate(model: torch.nn.Module, batches, bf16: bool = False) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y) / len(batches)
        loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def max_rel_err(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).norm() / b[k].norm()).item() for k in a if b[k].norm() > 0)


# --------------------------------------------------------------------------------------- standardize_once
@pytest.mark.parametrize("bf16", [False, True])
def test_standardize_once_gradients_equal_the_per_micro_batch_path(bf16):
    model = small_model(name="BiT-R14x0.5").train()
    batches = micro_batches()
    plain = accumulate(model, batches, bf16)
    model.zero_grad(set_to_none=True)
    with standardize_once(model):
        for x, y in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), y) / len(batches)
            loss.backward()
    once = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(v.abs().sum() > 0 for v in plain.values())  # every parameter gets a gradient
    assert max_rel_err(once, plain) < 1e-6


@pytest.mark.slow
def test_standardize_once_standardizes_once_per_step(monkeypatch):
    import bigtransfer.models.resnetv2 as resnetv2

    calls = []
    real = resnetv2.standardize
    monkeypatch.setattr(resnetv2, "standardize", lambda w, eps: calls.append(1) or real(w, eps))
    model = small_model().train()
    n_convs = sum(isinstance(m, StdConv2d) for m in model.modules())
    with standardize_once(model):
        for x, y in micro_batches(4):
            F.cross_entropy(model(x), y).backward()
    assert calls == []  # no per-micro-batch standardization inside the block
    calls.clear()
    x, y = micro_batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    assert len(calls) == n_convs  # the plain path standardizes on every forward


@pytest.mark.slow
def test_standardize_once_then_optimizer_step_matches_plain_training():
    a, b = small_model(name="BiT-R14x0.5"), small_model(name="BiT-R14x0.5")
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    for step in range(2):
        batches = micro_batches(2, seed=10 + step)
        accumulate(a, batches)
        opt_a.step()
        b.zero_grad(set_to_none=True)
        with standardize_once(b):
            for x, y in batches:
                (F.cross_entropy(b(x), y) / len(batches)).backward()
        opt_b.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, rtol=1e-5, atol=1e-6), name


def test_standardize_once_cleans_up_and_refuses_nesting():
    model = small_model().train()
    plain = model.root.conv
    with pytest.raises(ValueError, match="boom"), standardize_once(model):
        conv = model.root.conv  # swapped in for the block, holding the same parameters
        assert isinstance(conv, FastStdConv2d) and conv.weight is plain.weight
        assert conv.shared is not None and conv.shared.is_leaf and conv.shared.requires_grad
        raise ValueError("boom")
    assert model.root.conv is plain and conv.shared is None and plain.weight.grad is None  # nothing half-applied
    with standardize_once(model), pytest.raises(RuntimeError, match="already active"), standardize_once(model):
        pass
    with standardize_once(model):  # a block without backward leaves no gradient
        pass
    assert conv.weight.grad is None


def test_standardize_once_skips_frozen_weights():
    model = small_model().train()
    model.root.conv.weight.requires_grad_(False)
    with standardize_once(model):
        x, y = micro_batches(1)[0]
        F.cross_entropy(model(x), y).backward()
        assert model.root.conv.shared is None and model.body.block1.unit01.conv1.shared is not None
    assert model.root.conv.weight.grad is None
    assert model.body.block1.unit01.conv1.weight.grad is not None


def test_standardize_once_keeps_the_modules_of_a_fast_path_model():
    model = use_fast_path(small_model().train())
    conv = model.body.block1.unit01.conv1
    with standardize_once(model):
        assert model.body.block1.unit01.conv1 is conv and conv.shared is not None
        x, y = micro_batches(1)[0]
        F.cross_entropy(model(x), y).backward()
    assert model.body.block1.unit01.conv1 is conv and conv.shared is None and conv.weight.grad is not None


# ---------------------------------------------------------------------------- weight standardization
def test_standardize_matches_the_definition_with_gradients():
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
    want = (w - mean) / torch.sqrt(var + 1e-10)
    got = standardize(w, 1e-10)
    g = torch.randn_like(w)
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(torch.autograd.grad(got, w, g)[0], torch.autograd.grad(want, w, g)[0], atol=1e-10)
    cl = w.detach().contiguous(memory_format=torch.channels_last)
    assert torch.allclose(standardize(cl, 1e-10), want, atol=1e-12)


@pytest.mark.slow
def test_training_gradients_equal_timm(timm_r50):
    """In-place ReLU and residual add change no gradient."""
    ref = copy.deepcopy(timm_r50).train()
    ours = load_timm_state(bt.create_model("BiT-M-R50x1-ILSVRC2012", ws_eps=1e-8), ref.state_dict()).train()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2])
    F.cross_entropy(ref(x), y).backward()
    F.cross_entropy(ours(x), y).backward()
    from bigtransfer.weights.timm import to_timm_key

    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        want = ref_grads[to_timm_key(name)].grad
        assert (p.grad - want).norm() <= 1e-4 * want.norm() + 1e-7, name


# ------------------------------------------------------------------------------------- inference modes
@pytest.mark.parametrize("mode", INFERENCE_MODES)
def test_every_inference_mode_gives_fp32_logits_close_to_fp32(mode):
    model = small_model()
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = copy.deepcopy(model).eval()(x)
    prepared = prepare_for_inference(model, mode)
    got = prepared(x)
    assert got.dtype == torch.float32 and got.shape == (6, 5) and not got.requires_grad
    assert not model.training
    # channels_last changes only the summation order; bf16 rounds to 8 bits of mantissa.
    tol = 1e-4 if mode in ("fp32", "channels_last") else 0.1 * want.abs().max().item()
    assert (got - want).abs().max().item() < tol
    if mode == "fp32":
        assert torch.equal(got, want)


def test_unknown_inference_mode_is_a_clear_error():
    with pytest.raises(BitError, match="unknown inference mode 'fast'.*fastest"):
        prepare_for_inference(small_model(), "fast")


def test_prepared_model_keeps_state_dict_keys_and_tracks_weight_changes():
    model = small_model()
    keys = list(model.state_dict())
    prepared = prepare_for_inference(model, "fastest")
    assert list(model.state_dict()) == keys
    assert list(prepared.state_dict()) == [f"model.{k}" for k in keys]
    x = torch.randn(2, 3, 32, 32)
    before = prepared(x)
    with torch.no_grad():
        model.body.block1.unit01.conv1.weight.mul_(-1.0)  # in place: the cached weight must follow
    after = prepared(x)
    assert not torch.equal(after, before)
    assert torch.equal(after, prepare_for_inference(copy.deepcopy(model), "fastest")(x))


def test_prepacked_weights_are_reused_refreshed_and_never_copied(kernel):
    model = small_model()
    prepared = prepare_for_inference(model, "fastest")
    x = torch.randn(2, 3, 32, 32)
    first = prepared(x)
    conv = model.body.block2.unit01.conv2
    packed = conv._packed
    assert packed.layout == torch._mkldnn and torch.equal(prepared(x), first)
    assert conv._packed is packed  # reused, not packed again
    twin = copy.deepcopy(model)  # a copy neither carries nor needs the packed weights
    assert twin.body.block2.unit01.conv2._packed is None
    assert torch.equal(prepare_for_inference(twin, "fastest")(x), first)
    with torch.no_grad():
        conv.weight.mul_(0.5).add_(0.1)
    assert conv._packed is packed and not torch.equal(prepared(x), first)
    assert conv._packed is not None and conv._packed is not packed  # repacked after the change
    model.train()
    model(torch.randn(2, 3, 32, 32))
    assert conv._packed is None and conv._cached is None  # training frees them


def test_cached_weight_is_kept_in_the_autocast_dtype():
    model = small_model()
    prepare_for_inference(model, "fp32")
    conv = model.body.block2.unit01.conv2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert conv._cached.dtype == torch.bfloat16
    assert torch.equal(conv._cached, standardize(conv.weight.detach(), conv.eps).bfloat16())
    with torch.no_grad():
        model(x)
    assert conv._cached.dtype == torch.float32


def test_cached_inference_matches_the_reference_and_tracks_changes():
    model = small_model()
    reference = copy.deepcopy(model).eval()
    x = torch.randn(3, 3, 32, 32)
    prepare_for_inference(model, "fp32")
    with torch.no_grad():
        plain = model(x)  # grad disabled: the first call fills the cache
        cached = model(x)
        assert torch.equal(plain, reference(x)) and torch.equal(plain, cached)
    conv = model.root.conv
    assert conv._cached is not None
    with torch.enable_grad():
        assert conv.standardized_weight() is not conv._cached  # grad enabled: recomputed on every call
    with torch.no_grad():
        conv.weight.mul_(2.0).add_(0.01)  # an in-place change must invalidate the cache
        reference.root.conv.weight.copy_(conv.weight)
        assert torch.equal(model(x), reference(x))
    model.train()
    assert conv._cached is None


@pytest.mark.parametrize("disabled", [False, True])
@pytest.mark.parametrize("mode", INFERENCE_MODES)
def test_every_inference_mode_caches_the_standardized_weights(mode, disabled, monkeypatch):
    if disabled:  # no CPU kernels (as on a machine without a compiler): the cache still applies
        monkeypatch.setattr(kernels, "_module", None)
        monkeypatch.setattr(kernels, "_failed", True)
    model = small_model()
    prepare_for_inference(model, mode)(torch.randn(1, 3, 32, 32))
    convs = [m for m in model.modules() if isinstance(m, StdConv2d)]
    assert all(isinstance(c, FastStdConv2d) and c._cached is not None for c in convs)


@pytest.mark.slow
def test_compile_falls_back_to_eager_without_a_compiler():
    import torch._inductor.config as inductor_config

    model = small_model(name="BiT-R14x0.5")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = copy.deepcopy(model).eval()(x)
    torch._dynamo.reset()
    try:
        with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
            prepared = prepare_for_inference(model, "fp32", compile=True)
            assert prepared.compiled
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = prepared(x)
    finally:
        torch._dynamo.reset()
    assert not prepared.compiled
    assert any("running eagerly" in str(w.message) for w in caught)
    assert torch.equal(got, want)


def test_compile_falls_back_when_torch_compile_itself_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="running eagerly"):
        prepared = prepare_for_inference(small_model(), "fp32", compile=True)
    assert not prepared.compiled and prepared(torch.randn(1, 3, 32, 32)).shape == (1, 5)


# ---------------------------------------------------------------------------------- fast path, kernel
@pytest.fixture(scope="module")
def kernel():
    if kernels.load() is None:
        pytest.skip("the fused GroupNorm+ReLU kernel cannot be built here (no C++ compiler?)")
    return kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 64, 32, 32), (2, 96, 5, 7), (1, 512, 4, 4), (4, 256, 1, 1)])
def test_fused_gn_relu_matches_pytorch(kernel, dtype, shape):
    g = torch.Generator().manual_seed(sum(shape))
    norm = torch.nn.GroupNorm(32, shape[1])
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(shape[1], generator=g))
        norm.bias.copy_(0.1 * torch.randn(shape[1], generator=g))
    x = (3.0 + 2.0 * torch.randn(shape, generator=g)).to(dtype)  # an offset mean: cancellation must not hurt
    dy = torch.randn(shape, generator=g).to(dtype)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = kernel.gn_relu(norm, xc)
    got = (y, *torch.autograd.grad(y, (xc, norm.weight, norm.bias), dy.contiguous(memory_format=torch.channels_last)))
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    # float64 reference; bf16 results are compared after the same final rounding
    x64 = x.double().requires_grad_()
    w64, b64 = norm.weight.detach().double().requires_grad_(), norm.bias.detach().double().requires_grad_()
    y64 = F.relu(F.group_norm(x64, 32, w64, b64, norm.eps))
    want = (y64, *torch.autograd.grad(y64, (x64, w64, b64), dy.double()))
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16 outputs carry 8 mantissa bits
    for name, a, b in zip(("y", "dx", "dgamma", "dbeta"), got, want, strict=True):
        assert ((a.double() - b).abs().max() / b.abs().max()).item() < tol, name


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("shape,channels_last", [((64, 3, 7, 7), True), ((128, 64, 3, 3), False),
                                                 ((96, 40, 3, 3), True), ((256, 64, 1, 1), False)])
def test_standardize_kernel_matches_the_definition(kernel, shape, channels_last, bf16):
    g = torch.Generator().manual_seed(shape[0])
    w = 0.05 * torch.randn(shape, generator=g) + 0.01
    w = w.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    w.requires_grad_()
    grad = torch.randn(shape, generator=g)
    grad = grad.bfloat16() if bf16 else grad
    y = kernel.standardize(w, 1e-10, bf16)
    dw, = torch.autograd.grad(y, w, grad)
    assert y.dtype == (torch.bfloat16 if bf16 else torch.float32) and dw.stride() == w.stride()
    w64 = w.detach().double().requires_grad_()
    var, mean = torch.var_mean(w64, dim=(1, 2, 3), keepdim=True, unbiased=False)
    want = (w64 - mean) / torch.sqrt(var + 1e-10)
    want_dw, = torch.autograd.grad(want, w64, grad.double())
    assert ((y.double() - want).abs().max() / want.abs().max()).item() < (4e-3 if bf16 else 1e-6)
    assert ((dw.double() - want_dw).abs().max() / want_dw.abs().max()).item() < 1e-6


def test_fused_gn_relu_falls_back_outside_its_domain(kernel):
    norm = torch.nn.GroupNorm(32, 64)
    x = torch.randn(2, 64, 8, 8)
    assert not kernel.fits(norm, x)  # NCHW: PyTorch's own kernel is fast there
    assert torch.equal(kernel.gn_relu(norm, x), F.relu(norm(x)))
    assert kernel.fits(norm, x.contiguous(memory_format=torch.channels_last))
    assert not kernel.fits(norm, x.double().contiguous(memory_format=torch.channels_last))


def test_kernel_build_name_follows_the_sources(tmp_path):
    src = tmp_path / "k.cpp"
    src.write_text("int f() { return 1; }\n")
    first = kernels._build_name([src])
    assert kernels._build_name([src]) == first
    src.write_text("int f() { return 2; }\n")
    assert kernels._build_name([src]) != first


def test_kernel_sources_are_packaged():
    tomllib = pytest.importorskip("tomllib")
    package = Path(kernels.__file__).parents[1]  # src/bigtransfer
    pyproject = package.parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a source checkout")
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["bigtransfer"]
    files = [p.relative_to(package).as_posix() for p in kernels._CSRC.iterdir() if p.suffix in (".cpp", ".h")]
    assert "models/csrc/bindings.cpp" in files
    assert all(any(fnmatch(f, pattern) for pattern in patterns) for f in files)


def test_kernel_can_be_disabled(monkeypatch):
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_failed", False)
    monkeypatch.setenv("BIGTRANSFER_NO_KERNELS", "1")
    assert kernels.load() is None
    model = use_fast_path(small_model())
    assert fast_path_kind(model) == "layouts"
    assert not any(isinstance(m, FusedGroupNormReLU) for m in model.modules())
    assert all(not c.fused for c in model.modules() if isinstance(c, FastStdConv2d))


def layouts_seen(model: torch.nn.Module, x: torch.Tensor) -> list[bool]:
    """For each unit, whether it runs in channels_last (its first GroupNorm's input is channels_last)."""
    seen = []
    hooks = [m.gn1.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(
        memory_format=torch.channels_last) and not a[0].is_contiguous()))
        for m in model.modules() if isinstance(m, PreActBottleneck)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_layout_plan_without_the_kernel_follows_map_size():
    model = use_fast_path(small_model(), fused=False).eval()
    assert fast_path_kind(model) == "layouts"
    x = torch.randn(2, 3, 128, 128)  # unit inputs: 32x32 (block 1, unit 1 of block 2), then smaller
    with torch.no_grad():
        seen = layouts_seen(model, x)
    assert seen[:3] == [True, True, True] and not any(seen[3:])
    model.train()
    assert not any(layouts_seen(model, x))  # training: NCHW, where GroupNorm's backward is fast


@pytest.mark.parametrize("fused", [True, False])
def test_fast_path_eval_logits_equal_the_reference(fused):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    reference = small_model().eval()
    fast = use_fast_path(small_model(), fused=fused).eval()
    with torch.no_grad():
        want = reference(x)
        got, again = fast(x), fast(x)  # the second call runs on the cached (and prepacked) weights
    assert (got - want).abs().max() <= 1e-5 * want.abs().max() and torch.equal(got, again)


def fp64_error(model: torch.nn.Module, ref64: torch.nn.Module, x, y) -> tuple[float, float]:
    """Max relative error of ``model``'s logits and gradients against a float64 copy of the same weights."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    F.cross_entropy(out, y).backward()
    want = ref64(x.double())
    grads = {n: p.grad for n, p in model.named_parameters()}
    g_err = max(((grads[n] - p.grad).norm() / p.grad.norm()).item() for n, p in ref64.named_parameters())
    return ((out.double() - want).abs().max() / want.abs().max()).item(), g_err


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False])
def test_fast_path_is_as_accurate_as_the_plain_model(fused):
    x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2])
    plain = small_model().train()
    ref64 = copy.deepcopy(plain).double()
    F.cross_entropy(ref64(x.double()), y).backward()
    fast = small_model()
    params = list(fast.parameters())
    use_fast_path(fast, fused=fused)
    use_fast_path(fast)  # idempotent
    assert fast_path_kind(fast) == ("fused" if fused and kernels.load() is not None else "layouts")
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert all(a is b for a, b in zip(fast.parameters(), params, strict=True))  # optimizers keep working
    p_out, p_grad = fp64_error(plain, ref64, x, y)
    f_out, f_grad = fp64_error(fast.train(), ref64, x, y)
    # fp32 gradients of a random deep net are only good to ~1e-3 against fp64; the fast path must not be worse
    assert f_out < max(2 * p_out, 1e-5) and f_grad < max(2 * p_grad, 1e-5)
    remove_fast_path(fast)
    assert fast_path_kind(fast) is None and fast.root.conv.weight.is_contiguous()
    assert not any(isinstance(m, (FastStdConv2d, FusedGroupNormReLU, LayoutBottleneck)) for m in fast.modules())
    assert all(a is b for a, b in zip(fast.parameters(), params, strict=True))
    with torch.no_grad():
        assert not any(layouts_seen(fast.eval(), x))
