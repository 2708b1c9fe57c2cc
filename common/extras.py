"""Optional dependencies: qfleet's core runs the default CPU job (numpy learner, vector
observations); torch, Ray, plotting and the game environments are pip extras. `require`
imports one, or raises MissingExtraError with the one line that installs it."""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from qfleet.common.errors import MissingExtraError

# importable module -> the qfleet extra that installs it
EXTRA_OF = {
    "torch": "torch",
    "ray": "ray",
    "matplotlib": "plots",
    "tensorboard": "plots",
    "Box2D": "box2d",
    "ale_py": "atari",
    "minatar": "minatar",
}


def require(module: str, purpose: str) -> ModuleType:
    """`module`, imported; `purpose` says what needs it ("a CNN Q-network", ...)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRA_OF.get(module.split(".")[0])
        install = f"pip install 'qfleet[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise MissingExtraError(f"{purpose} needs {module.split('.')[0]}, which is not installed: {install}") from exc


def available(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False
