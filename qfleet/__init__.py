"""qfleet: distributed actor-learner DQN (Ape-X family) over ZeroMQ, locally or on Ray.

The Python API, for notebooks and scripts (the `qfleet` command line does the same):

    import qfleet

    cfg = qfleet.load_config({"run": {"env": "CartPole-v1", "actors": 2}, "learner": {"lr": 2.5e-3}})
    summary = qfleet.train(cfg)                  # blocks until solved, a budget or Ctrl-C
    print(summary["solved"], summary["run_dir"])
    result = qfleet.evaluate(summary["run_dir"], episodes=20)
    print(result.mean, result.std)

Every function raises a `qfleet.QfleetError` (ConfigError, CheckpointError, ...) whose
message names the problem and what to do. Importing qfleet is light: each function imports
what it needs when called.

The subpackages are the repository's top-level folders (see pyproject.toml):
qfleet.common, qfleet.actors, qfleet.replay_server, qfleet.learner, qfleet.deploy.
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Union

from qfleet.common.errors import QfleetError

if TYPE_CHECKING:
    from qfleet.common.config import QfleetConfig
    from qfleet.learner.evaluation import EvalResult

__all__ = ["QfleetError", "evaluate", "load_config", "train"]

ConfigSource = Union[None, str, Path, Mapping[str, Mapping[str, Any]], "QfleetConfig"]


def load_config(source: ConfigSource = None, overrides: Iterable[str] = ()) -> QfleetConfig:
    """The checked config: the defaults, then `source` (a YAML/TOML path, a dict of sections
    such as {"learner": {"lr": 1e-3}}, or a config already loaded), then `overrides` in
    `--set` form ("replay.capacity=200000"). `qfleet config --docs` lists every field."""
    from qfleet.common.config import QfleetConfig
    from qfleet.common.config_loader import config_to_dict, load_config as load

    return load(config_to_dict(source) if isinstance(source, QfleetConfig) else source, list(overrides))


def train(config: ConfigSource = None, *, overrides: Iterable[str] = (), resume: Union[str, Path, None] = None,
          plot: bool = True, say: Callable[[str], None] = print) -> dict:
    """Train a DQN agent as `qfleet train` does (backend, budgets and run directory from the
    config, as `load_config(config, overrides)` reads it) and return the run's summary (what
    summary.json holds, plus "run_dir"). `resume` continues the run in that directory: its
    config.yaml is the base (`config` must be None), `overrides` still apply. `say` receives
    the status lines. Ctrl-C stops the run cleanly; the summary then says "interrupted"."""
    from qfleet.deploy.processes import StopFlag
    from qfleet.deploy.training import run_training

    if resume is not None:
        if config is not None:
            raise QfleetError("train(resume=...) continues a run with its own config.yaml; pass config=None")
        config = Path(resume) / "config.yaml"
        if not config.is_file():
            raise QfleetError(f"train(resume={str(resume)!r}): no config.yaml there; pass the directory of a qfleet run")
    cfg = load_config(config, overrides)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = run_training(cfg, resume=Path(resume) if resume is not None else None, say=say, stop=StopFlag())
    finally:  # give the caller (a notebook's kernel) its own Ctrl-C back
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    if plot and result.reason != "interrupted":
        from qfleet.deploy.cli.plot import plot_run_dir

        say("qfleet: " + plot_run_dir(result.run_dir))
    return {**result.summary, "run_dir": str(result.run_dir)}


def evaluate(run_dir: Union[str, Path], *, episodes: int = 100, seed: int = 0) -> EvalResult:
    """Play the best-evaluated policy of a run directory (or a checkpoint.npz) greedily on
    `episodes` episodes (episode i from seed+i), as `qfleet eval` does; returns the returns
    and their mean, std, min and max."""
    from qfleet.common.envs import describe_env
    from qfleet.common.errors import ConfigError
    from qfleet.learner.checkpoint import check_env_fits, load_policy
    from qfleet.learner.evaluation import evaluate as play, greedy_policy

    if episodes < 1:
        raise ConfigError(f"episodes = {episodes}: evaluate at least 1 episode")
    saved = load_policy(run_dir)
    env = describe_env(saved.env, pixels=saved.pixels, env_kwargs=saved.env_kwargs, preset=saved.env_preset)
    check_env_fits(saved.spec, env.obs_shape, run_dir)
    return play(greedy_policy(saved.spec, saved.params), env, episodes, seed)
