"""The last lines of `qfleet train`: what stopped the run, and whether it solved."""
from qfleet.deploy.training import final_message

BASE = {"env": "CartPole-v1", "elapsed_s": 9.5, "best_eval": None, "env_steps": 100, "updates": 10,
        "episodes": 3, "actor_restarts": 0, "run_dir": "/nonexistent/run"}


def test_a_run_that_stopped_on_solving_says_solved():
    head = final_message({**BASE, "solved": True, "solved_after_s": 2.3, "reason": "solved"}).splitlines()[0]
    assert head.startswith("qfleet: solved CartPole-v1 in 2.3 s: no evaluation finished")


def test_a_solved_run_that_ran_on_to_a_budget_names_the_budget_and_the_solve():
    """run.stop_when_solved=false: the reason the run ended is the budget, not the solve."""
    head = final_message({**BASE, "solved": True, "solved_after_s": 2.3,
                          "reason": "env-step budget reached"}).splitlines()[0]
    assert head.startswith("qfleet: stopped (env-step budget reached) after 9.5 s, having solved CartPole-v1 at 2.3 s")


def test_an_unsolved_run_names_its_reason():
    head = final_message({**BASE, "solved": False, "solved_after_s": None,
                          "reason": "time budget reached"}).splitlines()[0]
    assert head.startswith("qfleet: stopped (time budget reached) after 9.5 s: no evaluation finished")


def test_a_resumed_run_says_its_session_and_its_whole_training_time():
    """elapsed_s is this session's (the one run.max_seconds budgets); run_elapsed_s and
    solved_after_s count the earlier sessions of a resumed run too."""
    head = final_message({**BASE, "run_elapsed_s": 609.5, "solved": True, "solved_after_s": 605.0,
                          "reason": "time budget reached"}).splitlines()[0]
    assert head.startswith("qfleet: stopped (time budget reached) after 9.5 s (609.5 s with the earlier "
                           "sessions), having solved CartPole-v1 at 605.0 s of training (earlier sessions included)")
    solved = final_message({**BASE, "run_elapsed_s": 609.5, "solved": True, "solved_after_s": 605.0,
                            "reason": "solved"}).splitlines()[0]
    assert solved.startswith("qfleet: solved CartPole-v1 in 605.0 s of training (earlier sessions included)")
