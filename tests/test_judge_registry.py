"""The judge registry: judges found by listing `evals/judges/`, their options dataclasses validated and turned into
`--judge-OPTION` flags, and a judge module dropped into the package known everywhere with no other file edited."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evals import judges
from harness.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]

ECHO = textwrap.dedent('''
    """A judge for the test: prefers the output that repeats `word`."""
    from dataclasses import dataclass

    from evals.judges import PREFIX, register_judge
    from evals.judging import Judge
    from trainers.options import check_options, option


    @dataclass(frozen=True, slots=True)
    class EchoOptions:
        word: str = option("echo", "the word an output must repeat")
        weight: float = option(1.0, "how much a repetition counts", low=0, high=10)

        def __post_init__(self):
            check_options(self, PREFIX)


    class EchoJudge(Judge):
        name, model, version = "echo", "repeats", "1"

        def __init__(self, options):
            self.word = options.word

        def _prefer(self, pairs):
            return [2.0 if p.output_2.count(self.word) > p.output_1.count(self.word) else 1.0 for p in pairs]


    register_judge("echo", description="prefers the output that repeats a word", options=EchoOptions,
                   build=lambda options, *, device, seed: EchoJudge(options), offline=True)
''')


@pytest.fixture
def echo_module(tmp_path, monkeypatch):
    """`echo.py` dropped into the judges package (a folder of the package's search path), found afresh."""
    folder = tmp_path / "more_judges"
    folder.mkdir()
    (folder / "echo.py").write_text(ECHO)
    judges.judge_names()  # the package's own judges registered before the registry is copied
    monkeypatch.setattr(judges, "__path__", [*judges.__path__, str(folder)])
    monkeypatch.setattr(judges, "_REGISTRY", judges._REGISTRY.copy(judges.__path__))
    yield
    sys.modules.pop("evals.judges.echo", None)


def _help(command: str) -> str:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[command].format_help()


def test_a_dropped_in_judge_is_listed_offered_and_built(echo_module, capsys):
    assert "echo" in judges.judge_names()
    assert main(["judges"]) == 0
    out = capsys.readouterr().out
    assert "prefers the output that repeats a word" in out and "--judge-word: the word an output must repeat" in out
    for command in ("eval", "judge-check"):
        text = " ".join(_help(command).split())
        assert "--judge-word WORD echo: the word an output must repeat" in text
        assert "--judge-weight WEIGHT echo: how much a repetition counts" in text
    from harness.option_flags import judge_from_args

    args = build_parser().parse_args(["eval", "m", "--judge", "echo", "--judge-word", "hi"])
    name, options = judge_from_args(args)
    judge = judges.make_judge(name, options)
    from evals.judging import Pair

    assert judge._prefer([Pair("q", "", "x", "hi hi")]) == [2.0]
    with pytest.raises(SystemExit):  # the range of a generated flag is the parser's
        build_parser().parse_args(["eval", "m", "--judge", "echo", "--judge-weight", "11"])
    assert "argument --judge-weight: 11 is out of range; allowed: [0, 10]" in capsys.readouterr().err


def test_a_flag_the_judge_does_not_take_and_an_unknown_judge_are_one_line(tmp_path, capsys):
    results = ["--results", str(tmp_path / "r")]
    assert main(["eval", "m", *results, "--judge-config", "x"]) == 2
    assert "--judge-config set for judge='learned'; these options apply to --judge openai only" in \
        capsys.readouterr().err
    assert main(["eval", "m", *results, "--judge", "longer", "--judge-model", "x"]) == 2
    assert "these options apply to --judge learned, openai, reward-model only" in capsys.readouterr().err
    with pytest.raises(ValueError, match="judge='oracle' is not known; valid judges: learned, longer, model-wins, "
                                         "openai, reward-model, simulated"):
        judges.judge_options("oracle")
    assert not (tmp_path / "r").exists()


def test_options_are_frozen_dataclasses_that_validate_on_construction():
    options = judges.judge_options("openai", timeout=5.0, max_retries=2)
    with pytest.raises(AttributeError):
        options.timeout = 1.0  # frozen
    with pytest.raises(ValueError, match=r"--judge-timeout=-1\.0: seconds per request.*allowed: \(0, 86400\]"):
        judges.judge_options("openai", timeout=-1.0)
    with pytest.raises(ValueError, match=r"--judge-max-retries=101: .*allowed: 0\.\.100"):
        judges.judge_options("openai", max_retries=101)
    with pytest.raises(ValueError, match="needs --judge-model DIR"):
        judges.judge_options("reward-model")
    with pytest.raises(ValueError, match="takes OpenAIOptions options, not LongerOptions"):
        judges.make_judge("openai", judges.judge_options("longer"))


def test_every_registered_judge_builds_with_checked_defaults_and_documents_its_options():
    import dataclasses

    for name in judges.judge_names():
        spec = judges.judge_spec(name)
        params = spec.options.__dataclass_params__
        assert params.frozen and "__slots__" in vars(spec.options), name
        assert spec.description and "\n" not in spec.description
        assert all(f.metadata.get("help") for f in dataclasses.fields(spec.options)), name


def test_discovering_the_judges_loads_no_torch():
    code = ("import sys; from evals import judges; judges.judge_names(); from harness.cli import build_parser; "
            "build_parser(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_an_unnamed_judge_is_the_presets_grid_judge_else_the_learned_one():
    from harness.option_flags import judge_from_args

    def judge_of(*argv):
        return judge_from_args(build_parser().parse_args(list(argv)))[0]

    assert judges.DEFAULT == "learned"
    assert judge_of("eval", "m") == "learned"  # preset "custom": no grid
    assert judge_of("eval", "m", "--preset", "tiny") == "simulated"
    assert judge_of("eval", "m", "--preset", "miniature") == "learned"
    assert judge_of("eval", "m", "--preset", "tiny", "--judge", "longer") == "longer"
    assert judge_of("judge-check", "--annotations", "a.jsonl") == "learned"
    assert "(default: the --preset's grid judge, else learned)" in " ".join(_help("eval").split())
