"""`trainers.registry.Registry`: entries found by listing a package, one module per name, unknown names refused."""

from __future__ import annotations

import sys

import pytest

from trainers.registry import Registry


def test_a_registry_lists_its_package_and_refuses_what_it_does_not_hold(tmp_path, monkeypatch):
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "beta.py").write_text("from registry_under_test import REG\nREG.add('beta', 2, __name__)\n")
    (package / "alpha.py").write_text("from registry_under_test import REG\nREG.add('alpha', 1, __name__)\n")
    (package / "_private.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    holder = type(sys)("registry_under_test")
    holder.REG = Registry("plugins", [str(package)], "plugin", first="beta")
    monkeypatch.setitem(sys.modules, "registry_under_test", holder)
    reg = holder.REG
    assert reg.names() == ("beta", "alpha") and reg.get("alpha") == 1  # the first one listed first, then by name
    with pytest.raises(ValueError, match="plugin 'gamma' is not known; valid plugins: beta, alpha"):
        reg.get("gamma")
    with pytest.raises(ValueError, match="plugin 'alpha' is registered twice"):
        reg.add("alpha", 3, "plugins.other")
    reg.add("alpha", 4, "plugins.alpha")  # its own module again (a reload) replaces it
    assert reg.get("alpha") == 4
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "delta.py").write_text("from registry_under_test import REG\nREG.add('delta', 5, __name__)\n")
    holder.REG = reg.copy([str(package), str(extra)])
    monkeypatch.setattr(sys.modules["plugins"], "__path__", [str(package), str(extra)])
    assert holder.REG.names() == ("beta", "alpha", "delta") and reg.names() == ("beta", "alpha")
    for name in ("plugins", "plugins.alpha", "plugins.beta", "plugins.delta"):
        sys.modules.pop(name, None)
