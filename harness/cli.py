"""The `harness` command line (argparse: no dependency, and `--help` generated from the config's field docs).

  harness train --preset smoke --out runs/smoke [--config FILE] [--set FIELD=VALUE ...] [--resume]
  harness config --preset tiny [--set ...]          print the resolved configuration, its run id and derived sizes
  harness presets                                   list the presets
  harness models recover --raw DIR --diff DIR --out DIR   rebuild AlpacaFarm weights from their diffs
  harness prepare --preset tiny                     preference pairs + proxy reward model (a head on the SFT backbone)
  harness eval RUN|CHECKPOINT|MODEL [--judge simulated|openai|reward-model] [--eval-set NAME|PATH] [--step N]
  harness evaluators                                list the evaluators: what makes them, settings, metrics
  harness judges                                    list the judges, their options, the configs of --judge openai
  harness judge-check --annotations FILE [--judge NAME]   a judge against a reference judge's annotations
  harness fit-judge --annotations FILE              fit the learned offline judge (k-fold by model)
  harness grid --table 2 --preset tiny              list a table's runs and their state, run nothing
  harness reproduce --table 2 [--preset P] [--executor local|ray|slurm]   run what is missing, evaluate, render
  harness report                                    render report/ from results/ alone
  harness runs [--preset P] [--table N] [--json]    list run folders: state, steps, reward, true KL, win rate
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap
from pathlib import Path

from harness import presets
from harness.errors import check_config_file, finite_float, float_in, int_in, preset_name, redact_urls, run_guarded
from evals.evaluators import DEFAULT as DEFAULT_EVALUATOR, evaluator_spec, runnable_names
from harness.option_flags import add_judge_arguments, add_own_flags, judge_from_args
from trainers import config as train_config, execution as execution_config
from trainers.config import MAX_COUNT, MAX_SIZE as MAX_TOKENS


def _fields_epilog() -> str:
    lines = ["settings (--set FIELD=VALUE, or keys of a --config YAML/JSON file):"]
    for title, part in (("what the run computes (its run id)", train_config),
                        ("how it executes (never its run id; a --config file may hold them in an 'execution' "
                         "section)", execution_config)):
        lines.append(f" {title}:")
        types_ = part.field_types()
        for name, text in part.field_help().items():
            tp = str(types_[name]).replace("typing.", "")
            lines.append(f"  {name} [{tp}]")
            lines.extend(textwrap.wrap(text, 96, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(presets.PRESETS), help="base configuration (default: smoke, "
                   "or the config file's 'preset')")
    p.add_argument("--config", help="YAML or JSON file of settings, applied over the preset")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override one setting")


def _add_report_to(p: argparse.ArgumentParser) -> None:
    from trainers.tracker_backends import tracker_names

    names = tracker_names()
    p.add_argument("--report-to", default=None, metavar="TRACKERS",
                   help=f"experiment trackers, comma-separated: {names[0]} (default: event files in RUN/tensorboard/), "
                        f"{', '.join(names[1:])}, or none; each needs its extra, e.g. pip install "
                        "'harness-lora-rlhf[wandb]' (sets report_to; not part of the run id)")


def _report_to_overrides(args: argparse.Namespace) -> list[str]:
    """--report-to as a `report_to` override, its trackers' libraries checked before any work starts."""
    if args.report_to is None:
        return []
    from trainers import trackers

    names = tuple(n.strip() for n in args.report_to.split(",") if n.strip()) or (trackers.NONE,)
    errors = trackers.names_errors(names)
    if errors:
        raise ValueError(errors[0].replace("report_to=", "--report-to ", 1))
    trackers.check_installed(names)
    return [f"report_to={','.join(names)}"]


class OneLineParser(argparse.ArgumentParser):
    """argparse whose refusals are one line, like every other error of the command line (the usage is one
    `--help` away); subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="harness", description="LoRA-RLHF experiment harness (PPO, regularisers, evaluation).")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run PPO", epilog=_fields_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(train)
    train.add_argument("--out", required=True, help="run folder (config.json, metrics.jsonl, checkpoints/)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    _add_report_to(train)

    config = sub.add_parser("config", help="print the resolved configuration", epilog=_fields_epilog(),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(config)

    sub.add_parser("presets", help="list the presets")
    sub.add_parser("evaluators", help="list the evaluators: what each measures, the command that makes its "
                   "records, its settings and its metrics (unit, range, direction)")
    sub.add_parser("judges", help="list the judges: what each is, offline or not, its options (and the annotator "
                   "configs --judge openai can use)")

    plan = sub.add_parser("plan", help="predict per-device memory of a PPO run and the smallest layout that fits")
    _add_config_args(plan)
    plan.add_argument("--gpus", type=int_in(0, 1024), default=1, help="GPUs (0: this CPU process)")
    plan.add_argument("--gpu-memory", type=float_in(0, 1e6, low_open=True), default=80.0,
                      help="GiB per GPU (default 80, an A100-80GB)")
    mode = plan.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="lora", action="store_true", default=None, help="LoRA (the config's choice by default)")
    mode.add_argument("--full", dest="lora", action="store_false", help="full fine-tune (FSDP-sharded over --gpus)")
    plan.add_argument("--frozen-dtype", choices=["float32", "bfloat16", "float16"], default=None,
                      help="dtype of frozen weights (default: bf16 on GPUs, fp32 on this CPU)")
    plan.add_argument("--arch", choices=["llama-7b", "smollm2-135m"], default=None,
                      help="plan for this architecture instead of reading the models' config.json")
    plan.add_argument("--query-tokens", type=int_in(1, MAX_TOKENS), default=None,
                      help="prompt tokens per sequence after padding (default: query_len, the worst case)")

    models = sub.add_parser("models", help="model utilities")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    recover = models_sub.add_parser("recover", help="rebuild AlpacaFarm weights from a weight diff and LLaMA-7B")
    recover.add_argument("--raw", required=True, help="directory of the raw LLaMA-7B weights (Hugging Face format)")
    recover.add_argument("--diff", required=True, help="directory of the weight diff (e.g. alpaca-farm-sft10k-wdiff)")
    recover.add_argument("--out", required=True, help="output directory")
    recover.add_argument("--kind", choices=["auto", "causal_lm", "reward_model"], default="auto")
    recover.add_argument("--expected-sum", type=finite_float, default=None,
                         help="integrity check: expected sum of all weights")

    prepare = sub.add_parser("prepare", help="sample preference pairs, label them, train the proxy reward model")
    _add_config_args(prepare)
    prepare.add_argument("--force", action="store_true", help="retrain the reward model even if it exists")
    prepare.add_argument("--limit", type=int_in(1, MAX_COUNT), default=None,
                         help="use only the first N preference instructions")
    prepare.add_argument("--epochs", type=float_in(0, 1e6, low_open=True), default=1.0,
                         help="--method trl: training epochs (default 1)")
    prepare.add_argument("--samples", type=int_in(2, 10_000), default=8,
                         help="responses sampled per preference instruction; every pair of them is labelled (default 8)")
    prepare.add_argument("--method", choices=["head", "trl"], default="head",
                         help="head: a Bradley-Terry linear head on the frozen SFT backbone (default); trl: TRL's "
                         "RewardTrainer with LoRA")
    prepare.add_argument("--l2", type=float_in(0, 1e12), default=1.0,
                         help="--method head: L2 penalty on standardised features")
    prepare.add_argument("--read", choices=("response_mean", "eos"), default="response_mean",
                         help="--method head: the hidden states the head reads: their mean over the response and "
                              "its EOS (default), or the EOS state alone")
    prepare.add_argument("--results", default="results", help="results store for the proxy_rm record (default results/)")
    prepare.add_argument("--ship", action="store_true", help="also copy the fitted head and its prepare.json into the "
                         "package (harness/data/prepared/PRESET), where a fresh install finds it")

    ev = sub.add_parser("eval", help="win rate (and factuality) of a run, checkpoint or model")
    ev.add_argument("target", help="a run folder, a checkpoint folder (RUN/checkpoints/step-N) or a model spec")
    ev.add_argument("--step", type=int_in(0, MAX_COUNT), default=None,
                    help="checkpoint step of a run (default: latest; 0 = base policy)")
    add_judge_arguments(ev, by_preset=True)
    ev.add_argument("--proxy-reward", default=None, metavar="SPEC",
                    help="reward model whose mean score of the outputs the record keeps as proxy_reward (default: "
                         "the evaluated run's own; e.g. prepared:tiny for the SFT policy)")
    ev.add_argument("--judge-max-unparsed", type=float_in(0, 1), default=0.5,
                    help="stop with an error, recording nothing, "
                    "when more than this share of the judge's answers cannot be parsed (default 0.5; 1: never)")
    ev.add_argument("--eval-set", default="bundled", help="bundled (offline, 177 instructions), bundled-val (offline, the 66 "
                    "validation instructions, for choosing settings), alpaca_farm (Hub), "
                    "hf:DATASET[:CONFIG]:SPLIT, or a local JSON/JSONL file of {instruction, input, output?}")
    ev.add_argument("--limit", type=int_in(1, MAX_COUNT), default=None,
                    help="evaluate on the first N instructions only")
    ev.add_argument("--temperature", type=float_in(0, 100), default=0.0,
                    help="sampling temperature (default 0: greedy)")
    ev.add_argument("--top-p", type=float_in(0, 1, low_open=True), default=1.0)
    ev.add_argument("--samples", type=int_in(1, 10_000), default=1,
                    help="answers sampled per instruction (needs --temperature > 0); the win rate averages each "
                         "instruction's preferences")
    ev.add_argument("--max-new-tokens", type=int_in(1, MAX_TOKENS), default=None,
                    help="default: the run's response_len, else 300")
    ev.add_argument("--batch-size", type=int_in(1, MAX_TOKENS), default=16)
    ev.add_argument("--order", default="both", help="both (judge each pair in both orders), random, fixed")
    ev.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0)
    ev.add_argument("--evaluators", default=None, metavar="NAMES", help="comma-separated evaluators to run, in "
                    f"order: {', '.join(runnable_names())} (default {DEFAULT_EVALUATOR}; `harness evaluators` "
                    "describes them)")
    ev.add_argument("--factuality", action="store_true", help="also FActScore on 'Tell me a bio of <entity>.' "
                    f"(--evaluators {DEFAULT_EVALUATOR},factuality)")
    ev.add_argument("--factuality-only", action="store_true", help="only factuality, no win rate "
                    "(--evaluators factuality)")
    ev.add_argument("--factuality-limit", type=int_in(1, MAX_COUNT), default=None,
                    help="number of bio entities (default: all)")
    ev.add_argument("--verifier", default="auto", help="factuality verifier: auto (llm with --judge openai, else "
                    "consistency), consistency (MiniLM similarity plus consistency checks), lexical (word overlap), "
                    "smollm2 (FActScore-style True/False logits; weak), llm (needs --judge-model)")
    ev.add_argument("--knowledge", default=None, help="factuality knowledge source: a FActScore-format SQLite "
                    "Wikipedia (table documents(title, text)); default: the bundled people documents")
    ev.add_argument("--allow-empty", action="store_true", help="judge the outputs even if every one is empty (a "
                    "policy collapsed to immediate EOS); by default that is an error")
    ev.add_argument("--results", default="results", help="results store (default: results/)")
    ev.add_argument("--preset", type=preset_name, default="custom", help="preset name recorded with the result "
                    "(letters, digits, '_', '-', '.'); without --judge, a preset with a grid also names the judge "
                    "(tiny: simulated, miniature: learned)")
    ev.add_argument("--force", action="store_true", help="replace a record of the same evaluation whose results differ")
    ev.add_argument("--refresh-judge-cache", action="store_true",
                    help="ask the judge again instead of reusing its cached answers (and cache the new ones)")
    ev.add_argument("--run-id", default=None, help="run id recorded with the result (default: from the run's config)")

    for name, text in (("grid", "list the runs of a table or figure and their state; runs nothing"),
                       ("reproduce", "run what is missing of a table or figure, evaluate it, render the report")):
        g = sub.add_parser(name, help=text)
        what = g.add_mutually_exclusive_group(required=True)
        what.add_argument("--table", type=int, choices=[1, 2, 3])
        what.add_argument("--figure", type=int, choices=[1, 2])
        what.add_argument("--all", action="store_true", help="every table and figure")
        g.add_argument("--preset", default="tiny", choices=sorted(presets.PRESETS),
                       help="grid size (default tiny: the embedded offline default, SmolLM2 on a CPU; smoke: "
                       "minutes of plumbing; paper: GPUs)")
        g.add_argument("--seeds", default=None, help="comma-separated seeds (default: the preset grid's)")
        g.add_argument("--only", default=None, metavar="RUNS",
                       help="comma-separated runs to keep: regularisers of the LoRA runs, and 'full' for the full "
                            "fine-tune baseline (e.g. --seeds 2,3 --only kl); the SFT policy is always evaluated")
        g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override one setting of every run")
        g.add_argument("--validation", action="store_true",
                       help="evaluate on the preset's validation instructions instead of its evaluation set: where "
                            "learning rates, steps and coefficients are chosen (with --set); win-rate targets only")
        g.add_argument("--runs", default="runs", help="root of the run folders (default runs/)")
        g.add_argument("--results", default="results", help="results store (default results/)")
        if name == "reproduce":
            g.add_argument("--executor", default="local", help="local, ray or slurm")
            g.add_argument("--workers", type=int_in(1, 1024), default=1, help="local executor: runs in parallel")
            g.add_argument("--ray-address", "--address", dest="address", default=None,
                           help="ray: a running cluster's address, e.g. HEAD:6379 (default: start a local Ray)")
            g.add_argument("--dry-run", action="store_true",
                           help="print the jobs it would start (SLURM: each job's sbatch request); start nothing")
            from harness.slurm import add_arguments as add_slurm_arguments

            add_slurm_arguments(g)
            g.add_argument("--retries", type=int_in(0, 100), default=1,
                           help="retries of a failed run before it is reported")
            g.add_argument("--report", default="report", help="where to render (default report/)")
            _add_report_to(g)
            g.add_argument("--no-report", action="store_true")
            g.add_argument("--recompute", action="append", default=[], metavar="RUN_ID",
                           help="evaluate this run again even where its records exist, training it first if "
                           "its folder is not here (differing results replace the records); 'all' for every run")

    runs = sub.add_parser("runs", help="list run folders: state, steps, last reward and true KL, latest win rate")
    runs.add_argument("--runs", default="runs", help="root of the run folders (default runs/)")
    runs.add_argument("--results", default="results", help="results store of the win rates (default results/)")
    runs.add_argument("--preset", type=preset_name, default=None, help="only RUNS/PRESET (a grid's preset)")
    grid_of = runs.add_mutually_exclusive_group()
    grid_of.add_argument("--table", type=int, choices=[1, 2, 3], help="only this table's runs (at --preset, "
                         "default tiny)")
    grid_of.add_argument("--figure", type=int, choices=[1, 2], help="only this figure's runs")
    runs.add_argument("--json", action="store_true", help="one JSON list of objects, for scripts")

    jc = sub.add_parser("judge-check", help="score a judge against a reference judge's pairwise annotations "
                        "(e.g. GPT-4's AlpacaEval judgements) and store the record")
    jc.add_argument("--annotations", required=True, metavar="FILE", help="JSON lines (optionally gzipped) of "
                    "{model, index, output, preference, reference}")
    jc.add_argument("--instructions", default=None, metavar="FILE", help="the instructions the indices point to "
                    "(a JSON list of {instruction, input}; default: alpaca_farm_evaluation.json beside --annotations)")
    add_judge_arguments(jc)
    add_own_flags(jc, evaluator_spec("judge_check").options)
    jc.add_argument("--results", default="results", help="results store (default results/)")
    jc.add_argument("--force", action="store_true", help="replace a record of the same check whose results differ")

    fj = sub.add_parser("fit-judge", help="fit the learned offline judge on pairwise annotations, k-fold by model")
    fj.add_argument("--annotations", required=True, metavar="FILE", help="as judge-check's")
    fj.add_argument("--instructions", default=None, metavar="FILE", help="as judge-check's")
    fj.add_argument("--folds", type=int_in(2, 1000), default=5, help="folds over the models for the held-out figures (default 5)")
    fj.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0, help="how the models are dealt into folds")
    fj.add_argument("--l2", type=float_in(0, 1e6), default=1e-5, help="L2 penalty per pair (default 1e-5)")
    fj.add_argument("--min-df", type=int_in(0, 10**9), default=20, help="word features: words in at least this many of the fit's "
                    "texts (default 20; 0: surface features only)")
    fj.add_argument("--content", default="minilm", choices=["minilm", "none"], help="content features: MiniLM "
                    "embeddings of each output and its relevance to the prompt (default), or none")
    fj.add_argument("--content-weight", type=float_in(0, 1e6, low_open=True), default=1.0,
                    help="the content block's scale against the L2 penalty (default 1: standardised like the rest)")
    fj.add_argument("--word-weight", type=float_in(0, 1e6, low_open=True), default=1.0,
                    help="the word block's scale against the L2 penalty (default 1; above 1: a weaker penalty on it)")
    fj.add_argument("--prompt-components", type=int_in(0, 384), default=32, help="the pair block: principal "
                    "components of the prompt's embedding among the modulators of every surface difference (default "
                    "32; 0: no pair block; needs --content minilm)")
    fj.add_argument("--shorter-weight", type=float_in(0, 1e6, low_open=True), default=2.0, help="weight in the loss "
                    "of the pairs whose shorter output the reference judge preferred (default 2)")
    fj.add_argument("--decision", default="hard", choices=["hard", "soft"], help="the judge's preference: 1 or 2 "
                    "(hard, default) or 1 + sigmoid of its logit (soft)")
    fj.add_argument("--out", default=None, metavar="FILE", help="weights file (default: the shipped "
                    "evals/data/learned_judge.json; its fit record is written beside it)")
    fj.add_argument("--results", default="results", help="where the held-out judge_check record goes")
    fj.add_argument("--force", action="store_true", help="replace a held-out record whose results differ")

    rep = sub.add_parser("report", help="render tables and figures from results/ alone")
    rep.add_argument("--results", default="results")
    rep.add_argument("--out", default="report")
    rep.add_argument("--preset", type=preset_name, default=None,
                     help="the preset whose records to render (default: every preset found)")
    rep.add_argument("--metric", default="win_rate", choices=["win_rate", "lc_win_rate"],
                     help="what Figure 1 plots for our runs: the raw or the length-controlled win rate")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # accepted after the subcommand too
        argv = ["--debug", *(a for a in argv if a != "--debug")]
    args = build_parser().parse_args(argv)
    args.command_line = redact_urls(" ".join(["harness", *argv]))  # what a run's manifest says made it
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress reaches log files and pipes as it happens
    # one line for what the user can fix; a traceback only for bugs (or --debug)
    return run_guarded(lambda: _dispatch(args), args.debug)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command != "presets":
        check_config_file(getattr(args, "config", None))  # named before any work starts
    return HANDLERS[args.command](args)


def _presets(args: argparse.Namespace) -> int:
    for name, text in presets.PRESET_HELP.items():
        print(f"{name:6s} {text}")
    return 0


def _config(args: argparse.Namespace) -> int:
    from trainers import identity

    run = presets.resolve(args.preset, args.config, args.set)
    print(json.dumps({"run_id": identity.run_id(run.train), **run.to_dict(), "derived": run.train.derived()},
                     indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    run = presets.resolve(args.preset, args.config, [*args.set, *_report_to_overrides(args)])
    from trainers.runfolder import check_out

    if os.environ.get("RANK", "0") == "0":  # before any model loads; one rank checks (and briefly locks) the folder
        check_out(args.out)
    from trainers.process_settings import configure_training_process  # heavy imports only when training
    from trainers.trainer import PPOTrainer

    configure_training_process(run.execution)
    records = PPOTrainer(run.train, args.out, execution=run.execution).train(resume=args.resume)
    last = records[-1] if records else {}
    if os.environ.get("RANK", "0") != "0":
        return 0  # rank 0 reports for a multi-process run
    print(f"done: {len(records)} steps in {args.out} (metrics.jsonl, checkpoints/); last step: score "
          f"{last.get('objective/scores', float('nan')):+.3f}, true KL {last.get('objective/true_kl', float('nan')):.4f}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from harness.prepare import prepare
    from trainers.io import check_output_folder

    check_output_folder(args.results, "--results")
    name = args.preset or "tiny"
    run = presets.resolve(name, args.config, args.set)
    prepare(name, run, force=args.force, limit=args.limit, epochs=args.epochs, samples=args.samples,
            method=args.method, l2=args.l2, read=args.read, results=args.results, ship=args.ship)
    return 0


def reproduce_config(args: argparse.Namespace):
    """The one place `harness grid` / `harness reproduce` flags become a `ReproduceConfig` (validated there)."""
    from harness.reproduce_config import ReproduceConfig, parse_only, parse_seeds, targets

    what = targets(args.all, args.table, args.figure)
    overrides = tuple(args.set)
    if args.command == "grid":
        return ReproduceConfig(targets=what, preset=args.preset, seeds=parse_seeds(args.seeds),
                               only=parse_only(args.only), overrides=overrides, validation=args.validation,
                               runs=args.runs, results=args.results)
    slurm = None
    if args.executor == "slurm":
        from harness.slurm import settings_from_args

        slurm = settings_from_args(args)
    config = ReproduceConfig(
        targets=what, preset=args.preset, seeds=parse_seeds(args.seeds), only=parse_only(args.only),
        overrides=overrides, validation=args.validation, runs=args.runs, results=args.results, executor=args.executor, workers=args.workers,
        address=args.address, slurm=slurm, dry_run=args.dry_run, retries=args.retries,
        report=None if args.no_report else args.report, recompute=tuple(args.recompute),
        command_line=args.command_line)
    # the grid's runs report to one group, named after the grid
    return dataclasses.replace(config, overrides=(*overrides, *_report_to_overrides(args),
                                                  f"tracker_group={config.tracker_group}"))


def _reproduce(args: argparse.Namespace) -> int:
    from harness import reproduce
    from trainers.io import check_output_folder

    config = reproduce_config(args)
    if args.command == "grid":
        return reproduce.list_grid(config)
    check_output_folder(config.runs, "--runs")  # the folders it writes, checked before any run starts
    check_output_folder(config.results, "--results")
    if config.report is not None:
        check_output_folder(config.report, "--report")
    from trainers import trackers

    # trackers checked before any run
    trackers.check_installed(presets.execution_config(presets.parse_overrides(list(config.overrides))).report_to)
    return reproduce.run(config)


def _runs(args: argparse.Namespace) -> int:
    from harness import runs_table
    from harness.errors import UserError

    ids = None
    if args.table or args.figure:  # one grid's runs: at its preset's folder
        from harness import grid
        from harness.reproduce_config import targets

        args.preset = args.preset or "tiny"
        ids = {r.run_id for r in grid.build_grid(targets(False, args.table, args.figure), args.preset).runs}
    root = Path(args.runs) / args.preset if args.preset else Path(args.runs)
    if not root.is_dir():
        raise UserError(f"--runs {args.runs!r}{f' --preset {args.preset}' if args.preset else ''}: no folder "
                        f"{root}; give the root `harness train --out` / `harness reproduce --runs` wrote under")
    rows = runs_table.table_rows(root, args.results, ids)
    print(runs_table.to_json(rows) if args.json else runs_table.format_table(rows))
    return 0


def _report(args: argparse.Namespace) -> int:
    from harness.report import check_results_root, render_report
    from trainers.io import check_output_folder

    check_output_folder(args.out)
    check_results_root(args.results)  # a mistyped --results must not replace the report with a paper-only one
    paths = render_report(args.results, args.out, args.preset, metric=args.metric)
    print(f"report: {len(paths)} files in {args.out}/")
    return 0


def _judge_check(args: argparse.Namespace) -> int:
    from harness.judge_check import run

    run(args, *judge_from_args(args))
    return 0


def _fit_judge(args: argparse.Namespace) -> int:
    from evals.learned_judge import WEIGHTS_FILE
    from harness.fit_judge import run

    args.out = args.out or str(WEIGHTS_FILE)
    run(args)
    return 0


def _models(args: argparse.Namespace) -> int:
    from trainers import recover
    from trainers.io import check_output_folder, read_json_object

    check_output_folder(args.out)
    kind = args.kind
    if kind == "auto":
        config_file = Path(args.diff) / recover.MODEL_CONFIG
        kind = recover.detect_kind(read_json_object(config_file) if config_file.is_file() else {}, [])
    if kind == "reward_model":  # rebuild, then rewrite in the layout our reward loader reads
        import tempfile

        from trainers import heads

        with tempfile.TemporaryDirectory(dir=Path(args.out).parent) as tmp:
            raw_out = recover.recover(args.raw, args.diff, Path(tmp) / "alpacafarm", kind=kind,
                                      expected_sum=args.expected_sum)
            out = heads.from_alpacafarm_layout(raw_out, args.raw, Path(tmp) / "harness")
            Path(out).rename(args.out)
        out = Path(args.out)
    else:
        out = recover.recover(args.raw, args.diff, args.out, kind=kind, expected_sum=args.expected_sum)
    print(f"recovered {kind} written to {out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from evals.config import EvalConfig
    from harness.eval_request import EvalRequest
    from harness.evaluate import evaluate
    from harness.results import check_run_id
    from trainers.io import check_output_folder

    check_output_folder(args.results, "--results")
    if args.run_id is not None:
        check_run_id(args.run_id)

    judge, options = judge_from_args(args)
    config = EvalConfig(
        judge=judge, judge_options=options, judge_max_unparsed=args.judge_max_unparsed, limit=args.limit,
        temperature=args.temperature, top_p=args.top_p, samples=args.samples, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, order=args.order, seed=args.seed, allow_empty=args.allow_empty,
        factuality_limit=args.factuality_limit, verifier=args.verifier, knowledge=args.knowledge,
        refresh_judge_cache=args.refresh_judge_cache,
        proxy_reward=args.proxy_reward)
    req = EvalRequest(target=args.target, config=config, eval_set=args.eval_set, step=args.step,
                      evaluators=_evaluators_asked(args), preset=args.preset, run_id=args.run_id, force=args.force)
    return evaluate(req, args.results)


def _evaluators_asked(args: argparse.Namespace) -> tuple[str, ...]:
    """--evaluators, or what --factuality / --factuality-only name (checked by `EvalRequest`)."""
    if args.evaluators is not None:
        if args.factuality or args.factuality_only:
            raise ValueError("--evaluators and --factuality/--factuality-only both name the evaluators; give one")
        return tuple(n.strip() for n in args.evaluators.split(",") if n.strip())
    if args.factuality_only:
        return ("factuality",)
    return (DEFAULT_EVALUATOR, "factuality") if args.factuality else (DEFAULT_EVALUATOR,)


def _evaluators(args: argparse.Namespace) -> int:
    from evals.evaluators import describe

    print("\n".join(describe()))
    return 0


def _judges(args: argparse.Namespace) -> int:
    from harness.option_flags import describe_judges

    print("\n".join(describe_judges()))
    return 0


def _paper_dims(role: str, spec: str):
    """The dimensions of the paper preset's `role` model: read without a download where they can be, else
    LLaMA-7B's, the paper's architecture (its models are seldom on disk where a plan is made), said in a line."""
    from trainers import heads, models
    from trainers import memory_plan as mp

    backbone = heads.reward_backbone_spec(spec)
    if models.is_random_llama(backbone) and (why := models.describe_spec_error(role, backbone)):
        raise ValueError(why)
    found = mp.dims_offline(spec)
    if found is None:
        print(f"({role} {spec!r} is not on disk: planned as LLaMA-7B, the paper's architecture)")
    return found or mp.Dims.from_config(mp.KNOWN["llama-7b"])


def _plan(args: argparse.Namespace) -> int:
    from trainers import heads
    from trainers import memory_plan as mp

    overrides = list(args.set)
    if args.lora is not None:
        overrides += ["lora=true"] if args.lora else ["lora=false", "reference=copy"]
    cfg = presets.resolve(args.preset, args.config, overrides).train
    policy_dims = reward_dims = mp.Dims.from_config(mp.KNOWN[args.arch]) if args.arch else None
    if args.arch is None and (args.preset or "") == "paper":
        policy_dims = _paper_dims("policy", cfg.policy)
        reward_read_alone = not (cfg.reward_is_rule or cfg.reward.startswith(heads.PREPARED)
                                 or (cfg.lora and cfg.reference == "one_base"))  # else planned on the policy's
        reward_dims = _paper_dims("reward", cfg.reward) if reward_read_alone else None
    kw = dict(frozen_dtype=args.frozen_dtype, policy_dims=policy_dims, reward_dims=reward_dims,
              query_tokens=args.query_tokens)
    device = int(args.gpu_memory * mp.GIB) if args.gpus else None
    result = mp.plan(cfg, gpus=args.gpus, device_bytes=device, **kw)
    where = f"{args.gpus} GPU(s) of {args.gpu_memory:g} GiB" if args.gpus else "this CPU process"
    print(f"{'LoRA' if cfg.lora else 'full fine-tune'}, reference={cfg.reference}, value_model={cfg.value_model}, "
          f"on {where}: busiest device")
    for name, size in result.components.items():
        print(f"  {name:32s} {size / mp.GIB:8.2f} GiB")
    print(f"  {'total':32s} {result.total / mp.GIB:8.2f} GiB" + ("" if result.fits is None else
          f"  -> {'fits' if result.fits else 'does NOT fit'}"))
    if args.gpus:
        best = mp.smallest_fitting(cfg, device, **kw)
        print(f"smallest fitting layout: {best} GPU(s)" if best else "no layout up to 64 GPUs fits")
    if args.gpus == 1:
        gpu, padded = mp.smallest_single_gpu(result.total), result.total * (1 + mp.PLAN_ERROR) / mp.GIB
        print(f"on one GPU: {result.total / mp.GIB:.1f} GiB predicted, {padded:.1f} GiB with the planner's "
              f"{100 * mp.PLAN_ERROR:.0f}% error margin (the CUDA context not counted): " + (
                  f"the smallest listed GPU that holds it is {gpu} ({mp.GPU_BYTES[gpu] / mp.GIB:g} GiB)" if gpu else
                  f"more than any listed GPU ({', '.join(mp.GPU_BYTES)})"))
    if cfg.lora and cfg.reference == "one_base":
        from trainers import one_base

        why = one_base.obstacle(cfg)
        print("one_base is planned with ONE frozen backbone, the reward model taken to be a head (or a LoRA adapter "
              "and a head) on the policy's base" + (f"; an assumption for these settings: {why}; `harness train` "
                                                     "with them falls back to reference='shared'" if why else ""))
    return 0


# one handler per subcommand; `main` is the one error boundary around them
HANDLERS = {"presets": _presets, "config": _config, "plan": _plan, "judges": _judges, "evaluators": _evaluators,
            "train": _train,
            "prepare": _prepare, "eval": _eval, "grid": _reproduce, "reproduce": _reproduce, "report": _report,
            "runs": _runs,
            "models": _models, "judge-check": _judge_check,
            "fit-judge": _fit_judge}


if __name__ == "__main__":
    sys.exit(main())
