"""The `harness` command line (argparse: no dependency, and `--help` generated from the config's field docs).

  harness train --preset smoke --out runs/smoke [--config FILE] [--set FIELD=VALUE ...] [--resume]
  harness config --preset tiny [--set ...]          print the resolved configuration and its hash
  harness presets                                   list the presets
  harness models recover --raw DIR --diff DIR --out DIR   rebuild AlpacaFarm weights from their diffs
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from harness import presets
from trainers.config import field_help, field_types


def _fields_epilog() -> str:
    lines = ["settings (--set FIELD=VALUE, or keys of a --config YAML/JSON file):"]
    types_ = field_types()
    for name, text in field_help().items():
        tp = str(types_[name]).replace("typing.", "")
        lines.append(f"  {name} [{tp}]")
        lines.extend(textwrap.wrap(text, 96, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(presets.PRESETS), help="base configuration (default: smoke, "
                   "or the config file's 'preset')")
    p.add_argument("--config", help="YAML or JSON file of settings, applied over the preset")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override one setting")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="LoRA-RLHF experiment harness (PPO, regularisers, evaluation).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run PPO", epilog=_fields_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(train)
    train.add_argument("--out", required=True, help="run folder (config.json, metrics.jsonl, checkpoints/)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")

    config = sub.add_parser("config", help="print the resolved configuration", epilog=_fields_epilog(),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(config)

    sub.add_parser("presets", help="list the presets")

    models = sub.add_parser("models", help="model utilities")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    recover = models_sub.add_parser("recover", help="rebuild AlpacaFarm weights from a weight diff and LLaMA-7B")
    recover.add_argument("--raw", required=True, help="directory of the raw LLaMA-7B weights (Hugging Face format)")
    recover.add_argument("--diff", required=True, help="directory of the weight diff (e.g. alpaca-farm-sft10k-wdiff)")
    recover.add_argument("--out", required=True, help="output directory")
    recover.add_argument("--kind", choices=["auto", "causal_lm", "reward_model"], default="auto")
    recover.add_argument("--expected-sum", type=float, default=None, help="integrity check: expected sum of all weights")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "presets":
        for name, text in presets.PRESET_HELP.items():
            print(f"{name:6s} {text}")
        return 0
    if args.command == "config":
        cfg = presets.resolve(args.preset, args.config, args.set)
        print(json.dumps({"config_hash": cfg.config_hash(), **cfg.to_dict()}, indent=2))
        return 0
    if args.command == "train":
        cfg = presets.resolve(args.preset, args.config, args.set)
        from trainers.trainer import PPOTrainer  # heavy imports only when training

        PPOTrainer(cfg, args.out).train(resume=args.resume)
        return 0
    if args.command == "models" and args.models_command == "recover":
        from trainers import recover

        kind = args.kind
        if kind == "auto":
            config_file = Path(args.diff) / "config.json"
            kind = recover.detect_kind(json.loads(config_file.read_text()) if config_file.is_file() else {}, [])
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
    raise AssertionError(args)


if __name__ == "__main__":
    sys.exit(main())
