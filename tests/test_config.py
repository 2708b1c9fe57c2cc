"""Typed config: defaults, files, --set overrides, and errors that name field, value and range."""
import pytest

from qfleet.common.config import QfleetConfig
from qfleet.common.config_loader import config_to_dict, load_config, save_config
from qfleet.common.errors import ConfigError


def test_defaults():
    assert load_config() == QfleetConfig()


def test_overrides_are_typed():
    cfg = load_config(None, ["learner.lr=3e-4", "learner.hidden=[64, 32]", "replay.prioritized=false",
                             "run.env=Acrobot-v1", "learner.solved_threshold=null", "actor.envs_per_actor=8"])
    assert cfg.learner.lr == 3e-4 and cfg.learner.hidden == (64, 32)
    assert cfg.replay.prioritized is False and cfg.run.env == "Acrobot-v1"
    assert cfg.learner.solved_threshold is None and cfg.actor.envs_per_actor == 8


@pytest.mark.parametrize("suffix,text", [
    (".yaml", "learner:\n  lr: 0.002\nactor:\n  n_step: 5\n"),
    (".toml", "[learner]\nlr = 0.002\n[actor]\nn_step = 5\n"),
])
def test_files_then_overrides(tmp_path, suffix, text):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    cfg = load_config(path, ["actor.n_step=7"])
    assert cfg.learner.lr == 0.002 and cfg.actor.n_step == 7


def test_saved_config_loads_back(tmp_path):
    cfg = load_config(None, ["learner.hidden=[16]", "run.seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert config_to_dict(cfg)["learner"]["hidden"] == [16]


@pytest.mark.parametrize("override,message", [
    ("learner.lr=-1", r"learner.lr = -1.0 is not allowed; expected > 0 and <= 1"),
    ("learner.lr=abc", r"learner.lr = 'abc' must be a number"),
    ("actor.epsilon=greedy", r"actor.epsilon = 'greedy' is not allowed; expected one of apex"),
    ("replay.alpha=1.5", r"replay.alpha = 1.5 is not allowed; expected >= 0 and <= 1"),
    ("learner.hidden=[0]", r"learner.hidden = \(0,\) is not allowed"),
    ("actor.n_step=2.5", r"actor.n_step = 2.5 must be an integer"),
    ("replay.prioritized=1", r"must be true or false"),
    ("learner.lrr=1", r"unknown field 'learner.lrr' \(did you mean 'lr'\?\)"),
    ("lerner.lr=1", r"unknown section 'lerner'"),
    ("learner.lr", r"expected section.field=value"),
    ("learner.lr=.nan", r"not a finite number"),
])
def test_errors_name_field_value_and_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("learnr:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(wrong)
    ext = tmp_path / "c.json"
    ext.write_text("{}")
    with pytest.raises(ConfigError, match=".yaml, .yml or .toml"):
        load_config(ext)
