"""docs/bench/draw_minatar.py redraws the MinAtar figures of docs/games.md from the committed
JSON: every run there has what the figures and tables read."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
BENCH = Path(__file__).resolve().parents[1] / "docs" / "bench"


def load_drawer():
    spec = importlib.util.spec_from_file_location("draw_minatar", BENCH / "draw_minatar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_seed_run_has_its_table_fields():
    data = json.loads((BENCH / "minatar-seeds.json").read_text())
    for settings in ("games", "plain_heads", "dueling_heads"):
        for game, seeds in data[settings].items():
            for seed, run in seeds.items():
                means = [e["eval_mean"] for e in run["evaluations"]]
                assert means and all(e["env_steps"] > 0 for e in run["evaluations"]), (settings, game, seed)
                assert run["best"] == max(means) and run["mean_last_5"] == pytest.approx(sum(means[-5:]) / 5)


def test_both_figures_are_drawn(tmp_path):
    drawer = load_drawer()
    seeds, paper = drawer.draw_seeds(tmp_path / "seeds.png"), drawer.draw_paper(tmp_path / "paper.png")
    for png in (seeds, paper):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
