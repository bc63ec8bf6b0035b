"""The plugin registry: lazy built-ins, unknown names, collisions, broken and invalid plugins,
option validation, and entry-point discovery through real (on-disk) distributions."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from arflowbench import plugins
from arflowbench.errors import ConfigError, PluginUnavailableError, UnknownPluginError
from arflowbench.plugins import BUILTIN, PluginBase, Registry

BASE_REF = "arflowbench.plugins:PluginBase"

PLUGIN_SOURCE = """
from pydantic import BaseModel
from arflowbench.plugins import Availability, PluginBase


class {cls}(PluginBase):
    name = {name!r}
    version = 3

    class Config(BaseModel):
        model_config = {{"extra": "forbid", "frozen": True}}
        width: int = 7
        mode: str = "fast"


class Unavailable(PluginBase):
    name = "unavailable"
    version = 1

    @classmethod
    def availability(cls):
        return Availability(False, "", "needs a flux capacitor")
"""


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """Write an importable module defining plugin class `Widget` named "widget" (and
    `Unavailable`); return its module name. The module is dropped from sys.modules afterwards."""
    mod = _unique("abt_plugmod")
    (tmp_path / f"{mod}.py").write_text(PLUGIN_SOURCE.format(cls="Widget", name="widget"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield mod
    sys.modules.pop(mod, None)


def _registry() -> Registry:
    # a fresh group name: no installed distribution can register into it
    return Registry("widget", BASE_REF, _unique("arflowbench.test-group"))


# ---------------------------------------------------------------------------------- lazy loading
def test_lazy_entry_is_not_imported_until_loaded(plugin_module):
    reg = _registry()
    reg.register_lazy("widget", f"{plugin_module}:Widget")
    # listing and asking for the origin must not import the module
    assert reg.names() == ["widget"]
    assert reg.origin("widget") == BUILTIN
    assert plugin_module not in sys.modules
    cls = reg.load("widget")
    assert plugin_module in sys.modules
    assert cls is sys.modules[plugin_module].Widget
    assert reg.get("widget") is cls  # cached, available


def test_register_decorator_and_version(plugin_module):
    reg = _registry()

    @reg.register
    class Gadget(PluginBase):
        name = "gadget"
        version = 2

    assert reg.load("gadget") is Gadget
    assert reg.info()[0].version == 2


def test_unregister_undoes_register():
    reg = _registry()

    class Gadget(PluginBase):
        name = "gadget"
        version = 1

    reg.register(Gadget)
    assert reg.load("gadget") is Gadget
    reg.unregister("gadget")
    assert reg.names() == []
    with pytest.raises(UnknownPluginError):
        reg.load("gadget")  # the resolved class is forgotten too
    reg.register(Gadget)  # the name is free again: no collision
    assert reg.load("gadget") is Gadget
    with pytest.raises(UnknownPluginError, match="unknown widget 'gizmo'"):
        reg.unregister("gizmo")


# ---------------------------------------------------------------------------------- unknown names
def test_unknown_name_suggests_near_miss_and_lists_known(plugin_module):
    reg = _registry()
    for name in ("softmax", "hybrid", "linear"):
        reg.register_lazy(name, f"{plugin_module}:Widget")
    with pytest.raises(UnknownPluginError) as exc:
        reg.get("sofmax")
    msg = str(exc.value)
    assert "did you mean 'softmax'" in msg
    assert "known: hybrid, linear, softmax" in msg
    assert "\n" not in msg
    assert isinstance(exc.value, ConfigError)  # the CLI reports it like any config error


def test_unknown_name_without_near_miss_has_no_suggestion(plugin_module):
    reg = _registry()
    reg.register_lazy("softmax", f"{plugin_module}:Widget")
    with pytest.raises(UnknownPluginError) as exc:
        reg.load("zzzzzz")
    assert "did you mean" not in str(exc.value)
    assert "known: softmax" in str(exc.value)


def test_name_collision_is_an_error(plugin_module):
    reg = _registry()
    reg.register_lazy("widget", f"{plugin_module}:Widget")
    with pytest.raises(ConfigError, match="collision.*'widget'"):
        reg.register_lazy("widget", f"{plugin_module}:Widget", origin="someone-else 1.0")


# ---------------------------------------------------------------------------------- broken plugins
def test_plugin_failing_to_import_is_listed_unavailable(tmp_path, monkeypatch):
    mod = _unique("abt_broken")
    (tmp_path / f"{mod}.py").write_text("import abt_missing_optional_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = _registry()
    reg.register_lazy("broken", f"{mod}:Thing")
    (row,) = reg.info()
    assert (row.name, row.available, row.version) == ("broken", False, None)
    assert "ModuleNotFoundError" in row.reason
    assert "abt_missing_optional_dependency_xyz" in row.reason
    with pytest.raises(PluginUnavailableError, match="abt_missing_optional_dependency_xyz"):
        reg.get("broken")
    sys.modules.pop(mod, None)


def test_missing_attribute_is_unavailable(plugin_module):
    reg = _registry()
    reg.register_lazy("widget", f"{plugin_module}:NoSuchClass")
    with pytest.raises(PluginUnavailableError, match="NoSuchClass"):
        reg.load("widget")


def test_class_not_subclass_of_base_is_rejected():
    reg = _registry()

    class NotAPlugin:  # has the attributes but not the base class
        name = "stranger"
        version = 1

    reg.register(NotAPlugin)
    with pytest.raises(PluginUnavailableError, match="not a subclass of PluginBase"):
        reg.load("stranger")
    (row,) = reg.info()
    assert not row.available and "not a subclass" in row.reason


def test_name_mismatch_is_rejected(plugin_module):
    reg = _registry()
    reg.register_lazy("gizmo", f"{plugin_module}:Widget")  # the class says "widget"
    with pytest.raises(PluginUnavailableError, match="declares name 'widget', registered as 'gizmo'"):
        reg.load("gizmo")


def test_non_integer_version_is_rejected():
    reg = _registry()

    class Floaty(PluginBase):
        name = "floaty"
        version = "1.0"

    reg.register(Floaty)
    with pytest.raises(PluginUnavailableError, match="integer `version`"):
        reg.load("floaty")


def test_unavailable_plugin_loads_but_get_raises_with_reason(plugin_module):
    reg = _registry()
    reg.register_lazy("unavailable", f"{plugin_module}:Unavailable")
    assert reg.load("unavailable").name == "unavailable"
    with pytest.raises(PluginUnavailableError, match="flux capacitor"):
        reg.get("unavailable")
    (row,) = reg.info()
    assert (row.available, row.version, row.reason) == (False, 1, "needs a flux capacitor")


# ---------------------------------------------------------------------------------- options
def test_validate_options_fills_defaults(plugin_module):
    reg = _registry()
    reg.register_lazy("widget", f"{plugin_module}:Widget")
    assert reg.validate_options("widget", {}) == {"width": 7, "mode": "fast"}
    assert reg.validate_options("widget", {"width": 9}) == {"width": 9, "mode": "fast"}


def test_validate_options_rejects_unknown_and_bad_values_in_one_line(plugin_module):
    reg = _registry()
    reg.register_lazy("widget", f"{plugin_module}:Widget")
    with pytest.raises(ConfigError) as exc:
        reg.validate_options("widget", {"widht": 9})
    msg = str(exc.value)
    assert "\n" not in msg
    assert "'widget'" in msg and "widht: unknown key" in msg
    with pytest.raises(ConfigError, match="width"):
        reg.validate_options("widget", {"width": "wide"})


# ---------------------------------------------------------------------------------- entry points
def _write_distribution(root: Path, dist: str, group: str, entries: dict[str, str]) -> None:
    """A minimal installed distribution: `<dist>-0.1.dist-info/` with METADATA and entry points."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}\n")


def test_entry_point_discovery_from_a_real_distribution(tmp_path, monkeypatch):
    mod = _unique("abt_epmod")
    (tmp_path / f"{mod}.py").write_text(PLUGIN_SOURCE.format(cls="Doohickey", name="doohickey"))
    group = _unique("arflowbench.test-ep")
    dist = _unique("abt-dist").replace("_", "-")
    _write_distribution(tmp_path, dist, group, {"doohickey": f"{mod}:Doohickey"})
    monkeypatch.syspath_prepend(str(tmp_path))

    reg = Registry("widget", BASE_REF, group)
    reg.register_lazy("builtin-one", f"{mod}:Doohickey")
    reg.discover()
    assert reg.names() == ["builtin-one", "doohickey"]
    assert reg.origin("doohickey") == f"{dist} 0.1"
    assert mod not in sys.modules  # discovery is lazy too
    cls = reg.load("doohickey")
    assert cls is sys.modules[mod].Doohickey
    row = next(r for r in reg.info() if r.name == "doohickey")
    assert (row.origin, row.version, row.available) == (f"{dist} 0.1", 3, True)
    sys.modules.pop(mod, None)


def _two_distributions_claiming_one_name(tmp_path, monkeypatch) -> tuple[Registry, str, str]:
    """A registry whose entry-point group two installed distributions both fill with "doohickey"."""
    group = _unique("arflowbench.test-ep")
    first, second = _unique("abt-first").replace("_", "-"), _unique("abt-second").replace("_", "-")
    _write_distribution(tmp_path, first, group, {"doohickey": "abt_nowhere_a:X"})
    _write_distribution(tmp_path, second, group, {"doohickey": "abt_nowhere_b:X"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget", BASE_REF, group)
    return reg, first, second


def test_entry_point_colliding_with_another_distribution(tmp_path, monkeypatch):
    reg, first, second = _two_distributions_claiming_one_name(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="collision") as exc:
        reg.discover()
    assert first in str(exc.value) and second in str(exc.value)


def test_collision_is_reported_again_on_the_next_lookup(tmp_path, monkeypatch):
    reg, _, _ = _two_distributions_claiming_one_name(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="collision"):
        reg.names()
    with pytest.raises(ConfigError, match="collision"):
        reg.names()


def test_entry_point_colliding_with_a_builtin(tmp_path, monkeypatch):
    group = _unique("arflowbench.test-ep")
    dist = _unique("abt-dist").replace("_", "-")
    _write_distribution(tmp_path, dist, group, {"softmax": "abt_nowhere:X"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget", BASE_REF, group)
    reg.register_lazy("softmax", "abt_nowhere_builtin:X")
    with pytest.raises(ConfigError, match=f"'softmax' is registered by {BUILTIN} and again by {dist} 0.1"):
        reg.names()


# ---------------------------------------------------------------------------------- global registries
def test_all_info_lists_every_builtin():
    rows = plugins.all_info()
    by_key = {(r.kind, r.name): r for r in rows}
    for reg, table in plugins._BUILTINS.items():
        for name in table:
            row = by_key[(reg.kind, name)]
            assert row.origin == BUILTIN
            assert set(row.as_dict()) == {"kind", "name", "version", "origin", "available",
                                          "implementation", "reason"}
            if row.available:
                assert isinstance(row.version, int) and row.implementation
            else:
                assert row.reason, f"{reg.kind} {name} is unavailable without a reason"
    # the core plugins this suite relies on must be loadable here
    for kind, name in [("attention", "softmax"), ("formulation", "sit"), ("dataset", "digits")]:
        assert by_key[(kind, name)].available, by_key[(kind, name)].reason
