"""Imports flow one way (docs in /ARCHITECTURE): common imports nothing else of qfleet;
replay_server imports common; actors and learner import common and the replay client;
deploy may import everything. Checked on the source with ast, function-level imports
included, so a lazy import cannot hide a crossing. No module uses the pre-package names
(`import common`, `from deploy.cli import ...`)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("common", "actors", "learner", "replay_server", "deploy")  # installed as qfleet.<name>
REPLAY_CLIENT = "qfleet.replay_server.client"  # what actors and the learner may use of the replay server
ALLOWED = {
    "common": ("qfleet.common",),
    "replay_server": ("qfleet.common", "qfleet.replay_server"),
    "actors": ("qfleet.common", REPLAY_CLIENT, "qfleet.actors"),
    "learner": ("qfleet.common", REPLAY_CLIENT, "qfleet.learner"),
    "deploy": ("qfleet",),
}


def sources(component: str) -> list[Path]:
    return sorted((ROOT / component).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["qfleet", *parts])


def is_module(name: str) -> bool:
    """Whether the qfleet module `name` is a file or package of this checkout."""
    parts = name.split(".")[1:]
    if not parts or parts[0] not in COMPONENTS:
        return False
    base = ROOT.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth. For
    `from package import name`, the module `package.name` when that is a module."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield node.lineno, full if is_module(full) else base


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("component", COMPONENTS)
def test_imports_cross_only_the_allowed_boundaries(component):
    assert sources(component), f"no sources under {component}/"
    crossings = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for path in sources(component) for line, name in imports(path)
                 if within(name, ("qfleet",)) and not within(name, ALLOWED[component])]
    assert not crossings, f"{component} may import only {ALLOWED[component]}:\n" + "\n".join(crossings)


@pytest.mark.parametrize("component", (*COMPONENTS, "qfleet", "tests"))
def test_nothing_imports_the_pre_package_names(component):
    old = [f"{path.relative_to(ROOT)}:{line} imports {name}"
           for path in sources(component) for line, name in imports(path)
           if name.split(".")[0] in COMPONENTS]
    assert not old, "use the qfleet. prefix:\n" + "\n".join(old)


def test_the_checker_sees_lazy_relative_and_from_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "actors").mkdir()
    (tmp_path / "replay_server").mkdir()
    (tmp_path / "replay_server" / "client.py").write_text("")
    source = tmp_path / "actors" / "probe.py"
    source.write_text("from qfleet.replay_server import client\n"
                      "def f():\n    from ..learner import learner\n    import qfleet.deploy.cli\n")
    assert [name for _, name in imports(source)] == [REPLAY_CLIENT, "qfleet.learner", "qfleet.deploy.cli"]
