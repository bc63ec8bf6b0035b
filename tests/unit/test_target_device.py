"""Availability follows the run's target device, not the machine: a CPU target on a GPU machine
never selects a CUDA-only path. The GPU machine is simulated (torch.cuda.is_available patched):
nothing here touches CUDA, so these run on any machine."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from arflowbench.attention import gpu_libs
from arflowbench.attention.hybrid import HybridAttention
from arflowbench.attention.mamba import MambaMixer
from arflowbench.attention.ops import fla_gla
from arflowbench.attention.xformers_backend import XFormersAttention
from arflowbench.benchmarks.attention import run_attention_bench
from arflowbench.config import Matrix, RunSpec, RuntimeOptions
from arflowbench.errors import PluginUnavailableError
from arflowbench.plugins import ATTENTION, all_info, availability_for, default_device
from arflowbench.resolve import resolve
from arflowbench.runner import run_matrix


@pytest.fixture
def gpu_machine(monkeypatch):
    """This process believes it has one CUDA device (no CUDA call is ever made)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200 (simulated)")
    probe = gpu_libs.problem  # tests may patch it; the cache belongs to the real one
    probe.cache_clear()
    yield
    probe.cache_clear()


@pytest.fixture
def xformers_importable(monkeypatch, gpu_machine):
    """xformers reported as installed and working (as on a GPU box with the extra)."""
    monkeypatch.setattr(gpu_libs, "installed", lambda lib: True)
    monkeypatch.setattr(gpu_libs, "problem", lambda lib: "")


def test_cpu_target_on_gpu_machine_never_selects_cuda_only(xformers_importable):
    assert availability_for(XFormersAttention, "cuda").available  # the machine could
    cpu = availability_for(XFormersAttention, "cpu")
    assert not cpu.available and "target device is cpu" in cpu.reason
    with pytest.raises(PluginUnavailableError, match="needs a CUDA device"):
        ATTENTION.get("xformers", "cpu")
    assert ATTENTION.get("xformers", "cuda") is XFormersAttention
    assert availability_for(HybridAttention, "cpu").implementation == \
        "pytorch (chunk-parallel forward, recurrent step)"
    assert availability_for(MambaMixer, "cpu").implementation == "pytorch selective scan (CPU)"
    assert default_device() == "cuda"


def test_cuda_target_without_a_gpu_is_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    avail = availability_for(HybridAttention, "cuda:0")
    assert not avail.available and "no CUDA device" in avail.reason


def test_cpu_cell_on_gpu_machine_is_skipped_not_run(xformers_importable, tmp_path):
    base = {"data": {"name": "digits"}, "train": {"steps": 1}}
    spec = RunSpec.model_validate({**base, "attention": {"name": "xformers"}})
    cpu = resolve(spec, RuntimeOptions(results_dir=tmp_path, device="cpu"))
    assert cpu.unavailable and "target device is cpu" in cpu.unavailable
    cuda = resolve(spec, RuntimeOptions(results_dir=tmp_path, device="cuda"))
    assert cuda.unavailable is None and cuda.run_id == cpu.run_id  # device is not hashed
    matrix = Matrix(name="t", base=base, axes={"attention.name": ["xformers"]},
                    on_unavailable="skip")
    lines: list[str] = []
    counts = run_matrix(matrix, RuntimeOptions(results_dir=tmp_path, device="cpu"),
                        echo=lines.append, warn=lines.append)
    assert counts == {"ok": 0, "failed": 0, "cached": 0, "skipped": 1}
    assert any("skipped (unavailable here" in line for line in lines)


def test_cpu_bench_on_gpu_machine_drops_cuda_only_backends(xformers_importable, tmp_path,
                                                           capsys):
    rows = run_attention_bench(["softmax", "xformers"], S_values=(1,), N_values=(4,), dim=16,
                               heads=2, repeats=1, warmup=0, results_dir=tmp_path,
                               progress=False, modes=("forward",))
    assert [r["backend"] for r in rows] == ["softmax"]
    assert "skip backend 'xformers'" in capsys.readouterr().out


def test_ls_shows_the_import_failure_of_a_broken_extension(gpu_machine, monkeypatch, tmp_path):
    """A compiled module built against another torch is found by find_spec, then fails to
    import: the library is unavailable with that reason, and the import is tried once."""
    pkg = tmp_path / "xformers"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ops" / "__init__.py").write_text(
        "import builtins\nbuiltins.XF_TRIES = getattr(builtins, 'XF_TRIES', 0) + 1\n"
        "raise ImportError('_C.so: undefined symbol: _ZN3c10')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("xformers", "xformers.ops"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import builtins

    monkeypatch.setattr(builtins, "XF_TRIES", 0, raising=False)
    monkeypatch.setattr(fla_gla, "load_kernel", lambda: (None, "not imported in this test"))
    rows = {r.name: r for r in all_info("cuda") if r.kind == "attention"}
    assert not rows["xformers"].available
    assert "xformers.ops failed to import" in rows["xformers"].reason
    assert "undefined symbol" in rows["xformers"].reason
    all_info("cuda")
    assert builtins.XF_TRIES == 1  # cached: one import try per process


def test_mamba_routes_conv_widths_causal_conv1d_cannot_take(monkeypatch):
    monkeypatch.setattr(gpu_libs, "problem", lambda lib: "")  # mamba-ssm and causal-conv1d load
    from arflowbench.attention import mamba

    assert mamba.cuda_implementation(4) == "mamba-ssm CUDA + causal-conv1d"
    for width in (1, 5):
        impl = mamba.cuda_implementation(width)
        assert impl.startswith("pytorch selective scan (CUDA; mamba-ssm not used: d_conv")
    monkeypatch.setattr(gpu_libs, "problem", lambda lib: "absent" if lib == "causal-conv1d"
                        else "")
    assert mamba.cuda_implementation(5) == "mamba-ssm CUDA"  # nn.Conv1d takes any width


def _fake_mamba_ssm(monkeypatch, d_inner_cap: int | None = None):
    """A `mamba_ssm` module whose Mamba has our parameter layout and a plain forward."""

    class Mamba(torch.nn.Module):
        def __init__(self, d_model, d_state, d_conv, expand, dt_rank, conv_bias, bias,
                     device=None):
            super().__init__()
            e = min(expand * d_model, d_inner_cap or 10**9)
            kw = {"device": device}
            self.in_proj = torch.nn.Linear(d_model, 2 * e, bias=bias, **kw)
            self.conv1d = torch.nn.Conv1d(e, e, d_conv, groups=e, bias=conv_bias, **kw)
            self.x_proj = torch.nn.Linear(e, dt_rank + 2 * d_state, bias=False, **kw)
            self.dt_proj = torch.nn.Linear(dt_rank, e, **kw)
            self.A_log = torch.nn.Parameter(torch.zeros(e, d_state, **kw))
            self.D = torch.nn.Parameter(torch.ones(e, **kw))
            self.out_proj = torch.nn.Linear(e, d_model, bias=bias, **kw)

        def forward(self, x):
            return self.out_proj(self.in_proj(x)[..., : self.out_proj.in_features])

    monkeypatch.setitem(sys.modules, "mamba_ssm", types.SimpleNamespace(Mamba=Mamba))


def test_mamba_ssm_twin_is_built_on_meta_and_runs_our_weights(monkeypatch):
    _fake_mamba_ssm(monkeypatch)
    m = MambaMixer(16, 2, 4)
    twin = m._mamba_ssm()
    assert {p.device.type for p in twin.parameters()} == {"meta"}  # no CPU copy per block
    assert m._mamba_ssm() is twin and "_ssm_module" not in dict(m.named_modules())
    x = torch.randn(2, 8, 16)
    y = torch.func.functional_call(twin, dict(m.named_parameters()), (x,))
    expected = m.out_proj(m.in_proj(x)[..., : m.d_inner])
    assert torch.equal(y, expected)


def test_mamba_ssm_with_other_shapes_is_refused(monkeypatch):
    _fake_mamba_ssm(monkeypatch, d_inner_cap=8)
    with pytest.raises(RuntimeError, match="does not match"):
        MambaMixer(16, 2, 4)._mamba_ssm()
