"""The `longer` baseline judge, one module (`evals/judges/longer.py`): its answers, and that registering it is all
it takes for `--judge longer`, `harness judges` and `harness judge-check` to know it."""

from evals.judges import judge_names, judge_spec, make_judge
from evals.judges.longer import LongerJudge
from evals.judging import Pair, annotate
from harness.cli import main


def test_the_longer_output_wins_and_equal_lengths_tie():
    judge = make_judge("longer")
    assert isinstance(judge, LongerJudge)
    pairs = [Pair("q", "", "short", "much longer"), Pair("q", "", "much longer", "short"), Pair("q", "", "ab", "cd")]
    assert annotate(judge, pairs, order="fixed") == [2.0, 1.0, 1.5]
    assert annotate(judge, pairs, order="both") == [2.0, 1.0, 1.5]  # symmetric: both orders agree
    assert judge.identity() == {"name": "longer", "model": "the longer output wins", "version": "chars-1"}


def test_it_is_registered_offline_and_listed(capsys):
    assert "longer" in judge_names()
    spec = judge_spec("longer")
    assert spec.offline and spec.cheap
    assert main(["judges"]) == 0
    assert "longer" in capsys.readouterr().out
