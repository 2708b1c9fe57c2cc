"""The repository installs as one package, `qfleet`: every package folder is listed in
pyproject.toml under its qfleet. name, and nothing else lands at the top of site-packages."""
from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"tests", "build", "dist", "node_modules"}  # not shipped, or build output


def setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def package_folders() -> list[Path]:
    """Folders of this checkout with an __init__.py, outside tests/ and hidden or build folders."""
    return sorted(p.parent.relative_to(ROOT) for p in ROOT.rglob("__init__.py")
                  if not any(part in SKIP or part.startswith(".") or part.endswith(".egg-info")
                             for part in p.relative_to(ROOT).parts))


def qfleet_name(folder: Path, package_dir: dict[str, str]) -> str | None:
    """The installed name of a folder under the package-dir mapping, or None if unmapped."""
    for name, directory in sorted(package_dir.items(), key=lambda kv: -len(Path(kv[1]).parts)):
        base = Path(directory)
        if folder == base or base in folder.parents:
            return ".".join([name, *folder.relative_to(base).parts])
    return None


def test_every_package_folder_is_listed_under_its_qfleet_name():
    config = setuptools_config()
    listed, package_dir = set(config["packages"]), config["package-dir"]
    folders = package_folders()
    assert Path("common") in folders and Path("qfleet") in folders
    names = {str(folder): qfleet_name(folder, package_dir) for folder in folders}
    unmapped = sorted(folder for folder, name in names.items() if name is None)
    assert not unmapped, f"folders outside every [tool.setuptools.package-dir] entry: {unmapped}"
    missing = sorted(f"{folder} (as {name})" for folder, name in names.items() if name not in listed)
    assert not missing, f"package folders missing from [tool.setuptools] packages: {missing}"
    assert all(name == "qfleet" or name.startswith("qfleet.") for name in listed), sorted(listed)
    stale = sorted(listed - set(names.values()))
    assert not stale, f"listed packages without a folder: {stale}"


def installed_distribution() -> metadata.Distribution:
    """qfleet as installed in site-packages (not the egg-info a build leaves in this checkout)."""
    outside = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    found = [d for d in metadata.distributions(path=outside) if d.metadata["Name"] == "qfleet"]
    if not found:
        pytest.skip("qfleet is not installed (pip install -e .)")
    return found[0]


def test_the_installed_distribution_has_only_qfleet_at_the_top():
    dist = installed_distribution()
    files = [Path(str(f)) for f in dist.files or ()]
    finders = [f for f in files if f.name.startswith("__editable___qfleet") and f.name.endswith("_finder.py")]
    if finders:  # editable install: a finder maps top-level names to folders of the checkout
        tree = ast.parse(Path(dist.locate_file(finders[0])).read_text())
        mapping = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                       if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None
                       and "MAPPING" in [t.id for t in (node.targets if isinstance(node, ast.Assign)
                                                        else [node.target]) if isinstance(t, ast.Name)])
        assert mapping and all(k == "qfleet" or k.startswith("qfleet.") for k in mapping), sorted(mapping)
    else:  # a wheel: every installed module lives under qfleet/
        tops = {f.parts[0] for f in files if f.parts[0] != ".." and not f.parts[0].endswith(".dist-info")
                and f.parts[0] != "__pycache__"}
        assert tops == {"qfleet"}, sorted(tops)
    top_level = dist.read_text("top_level.txt")
    if top_level is not None:
        assert top_level.split() == ["qfleet"]
