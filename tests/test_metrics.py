"""MetricsWriter: the same names and steps in metrics.jsonl and TensorBoard, episodes.csv,
and every metric name documented in the README."""
import re
from pathlib import Path

import numpy as np
import pytest

from qfleet.common.metrics import EPISODE_RECORDS_PER_CALL, EPISODES_HEADER, METRICS, Episode, MetricsWriter, read_jsonl
from qfleet.common.plotting import moving_average

ROOT = Path(__file__).resolve().parents[1]


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_writer_fans_out_the_same_names_and_steps(tmp_path):
    writer = MetricsWriter(run_dir=tmp_path, started_wall=1000.0)
    writer.episodes([Episode(0.5, 40, 0, 21.0, 21), Episode(0.6, 90, 1, 50.0, 50)])
    writer.write({"learner/loss": 0.25, "replay/size": None, "eval/solved": True, "learner/loss_nan": float("nan")},
                 step=120, elapsed_s=1.25)
    writer.close()

    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert records[0] == {"step": 40, "time/elapsed_s": 0.5, "train/episode_return": 21.0, "train/episode_length": 21}
    assert records[2] == {"step": 120, "time/elapsed_s": 1.25, "learner/loss": 0.25, "replay/size": None,
                          "eval/solved": True, "learner/loss_nan": None}
    lines = (tmp_path / "episodes.csv").read_text().splitlines()
    assert lines == [EPISODES_HEADER, "0.500,40,0,21,21", "0.600,90,1,50,50"]

    tb = tensorboard_scalars(tmp_path)
    # None and NaN are not numbers to plot: JSON says null, TensorBoard leaves them out.
    assert set(tb) == {"train/episode_return", "train/episode_length", "learner/loss", "eval/solved"}
    assert tb["train/episode_return"] == [(40, 21.0), (90, 50.0)]
    assert tb["learner/loss"] == [(120, 0.25)] and tb["eval/solved"] == [(120, 1.0)]


def test_appending_to_a_run_keeps_one_csv_header(tmp_path):
    for i in range(2):
        writer = MetricsWriter(run_dir=tmp_path, tensorboard=False)
        writer.episodes([Episode(1.0, 10 * i, 0, 1.0, 1)])
        writer.close()
    assert (tmp_path / "episodes.csv").read_text().count("elapsed_s") == 1


def test_every_metric_name_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `([a-z_]+(?:/[a-z0-9_]+)?)` \|", readme, re.M))
    assert set(METRICS) <= table, sorted(set(METRICS) - table)


@pytest.mark.parametrize("n", [1, 5, 99, 100, 101, 350])
def test_moving_average_is_the_trailing_mean_of_up_to_100(n):
    values = np.random.default_rng(n).normal(size=n)
    expected = [values[max(0, i - 99):i + 1].mean() for i in range(n)]
    np.testing.assert_allclose(moving_average(values), expected)


def test_many_episodes_in_one_tick_all_reach_the_csv_and_an_even_subset_gets_records(tmp_path):
    w = MetricsWriter(run_dir=tmp_path, tensorboard=False)
    n = 3 * EPISODE_RECORDS_PER_CALL + 7
    w.episodes(Episode(1.0, 10 * i, i % 4, float(i), 10) for i in range(n))
    w.close()
    assert len((tmp_path / "episodes.csv").read_text().splitlines()) == n + 1
    returns = [r["train/episode_return"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert len(returns) == EPISODE_RECORDS_PER_CALL and returns[0] == 0 and returns[-1] == n - 1
    gaps = np.diff(returns)
    assert gaps.min() >= 3 and gaps.max() <= 4  # evenly spaced over the whole tick


def test_a_resumed_learners_first_count_is_not_a_rate():
    """A resumed learner's first report carries its checkpoint's update count; the status
    tick before it saw none, and the rate starts from that count, not from zero."""
    from qfleet.common.messages import Report
    from qfleet.deploy.progress import Progress

    progress = Progress(1, resumed={"env_steps": 50_000, "episodes": 40})
    assert progress.snapshot()["learner/updates_per_s"] == 0.0
    progress.take(Report("learner", 0, {"updates": 18_664, "version": 300}))
    first = progress.snapshot()
    assert (first["learner/updates"], first["learner/updates_per_s"]) == (18_664, 0.0)
    progress.take(Report("learner", 0, {"updates": 18_700, "version": 301}))
    assert 0 < progress.snapshot()["learner/updates_per_s"]


def test_a_resumed_runs_records_go_on_from_its_earlier_sessions_seconds():
    """Episodes, evaluations and policy lags of a resumed run are stamped with the run's
    seconds (earlier sessions included), and the checkpoint's run state carries them on;
    the session's own clock (what run.max_seconds budgets) starts from zero."""
    from qfleet.common.messages import Report
    from qfleet.deploy.progress import Progress

    fresh = Progress(1)
    progress = Progress(1, resumed={"env_steps": 50_000, "episodes": 40, "elapsed_s": 600.0})
    assert fresh.run_s < 60 and progress.elapsed < 60
    assert 600.0 <= progress.run_s < 660
    progress.take(Report("actor", 0, {"env_steps": 100, "weights_version": 3},
                         episode_returns=np.array([12.0]), episode_lengths=np.array([12]),
                         lag_ms=np.array([4.0])))
    progress.take(Report("learner", 0, {"event": "eval", "eval_mean": 9.0, "solved": True}))
    (episode,) = progress.take_episodes()
    assert 600.0 <= episode.elapsed_s < 660 and episode.env_steps == 50_100
    assert [row[0] >= 600.0 for row in progress.take_lags()] == [True]
    assert 600.0 <= progress.best_eval["elapsed_s"] < 660 and 600.0 <= progress.solved_after_s < 660
    state = progress.run_state()
    assert 600.0 <= state["elapsed_s"] < 660 and state["env_steps"] == 50_100 and state["episodes"] == 41
    assert fresh.run_state()["elapsed_s"] < 60
