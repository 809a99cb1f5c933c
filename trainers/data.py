"""Instruction data for PPO: loading Alpaca-format records and formatting prompts.

Records are `{instruction, input}` (input may be empty). Sources: a local JSON list or JSONL file
(optionally filtered on a `split` field), or `hf:DATASET[:CONFIG]:SPLIT` through `datasets` (the paper:
`hf:tatsu-lab/alpaca_farm:alpaca_instructions:unlabeled`).
"""

from __future__ import annotations

import json
from pathlib import Path

from trainers.errors import UserError
from trainers.io import read_json_file

# The Alpaca template AlpacaFarm uses (its prompts/v0_inputs_noinputs.json).
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def format_prompt(record: dict, template: str, tokenizer=None) -> str:
    """The prompt text for one record under `template` ('alpaca', 'chat' or 'raw')."""
    instruction, extra = record["instruction"], (record.get("input") or "").strip()
    if template == "alpaca":
        if extra:
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=extra)
        return ALPACA_NO_INPUT.format(instruction=instruction)
    text = f"{instruction}\n\n{extra}" if extra else instruction
    if template == "raw":
        return text
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt_template='chat' needs a tokenizer with a chat template; use 'alpaca' or 'raw'")
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    raise ValueError(f"prompt_template={template!r} is not known; valid: alpaca, chat, raw")


def describe_source_error(source: str) -> str | None:
    """None if `source` can be loaded, else a message naming the value and the allowed forms."""
    if source.startswith("hf:"):
        parts = source[3:].split(":")
        if len(parts) in (2, 3) and all(parts):
            return None
        return f"prompts={source!r} is malformed; expected 'hf:DATASET[:CONFIG]:SPLIT'"
    path = Path(source).expanduser()
    if not path.is_file():
        return f"prompts={source!r}: no such file; expected a JSON/JSONL file of {{instruction, input}} or 'hf:DATASET[:CONFIG]:SPLIT'"
    return None


def load_records(source: str, split: str = "") -> list[dict]:
    """Records with `instruction` and `input` from a local file or a Hugging Face dataset."""
    if source.startswith("hf:"):
        import datasets

        parts = source[3:].split(":")
        name, config, hf_split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
        try:
            rows = list(datasets.load_dataset(name, config, split=hf_split))
        except Exception as first:  # noqa: BLE001 - retried below, then reported with both causes
            # tatsu-lab/alpaca_farm is a loading-script dataset, which datasets >= 4 refuses; the Hub's
            # automatic Parquet conversion of the same splits lives on this revision.
            try:
                rows = list(datasets.load_dataset(name, config, split=hf_split, revision="refs/convert/parquet"))
            except Exception as second:  # noqa: BLE001
                raise ValueError(f"prompts={source!r} could not be loaded ({first}); nor its Parquet conversion "
                                 f"({second}). Offline, pass a local JSON/JSONL file instead") from second
    else:
        rows = read_json_file(Path(source).expanduser(), f"prompts={source!r}",
                              "give a JSON/JSONL file of {instruction, input} or 'hf:DATASET[:CONFIG]:SPLIT'")
        if isinstance(rows, dict):  # {"split": [...]} layouts
            if not all(isinstance(v, list) for v in rows.values()):
                raise UserError(f"prompts={source!r} is an object whose values are not all lists of records")
            rows = [dict(r, split=k) if isinstance(r, dict) else r for k, v in rows.items() for r in v]
        elif not isinstance(rows, list):
            raise UserError(f"prompts={source!r} holds a {type(rows).__name__}; expected a list of records")
    if split:
        rows = [r for r in rows if r.get("split") == split]
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict) or not isinstance(r.get("instruction"), str)]
    if bad:
        raise ValueError(f"prompts={source!r}: record {bad[0]} has no string 'instruction' field")
    if not rows:
        raise ValueError(f"prompts={source!r} with prompt_split={split!r} holds no records")
    return [{"instruction": r["instruction"], "input": r.get("input") or ""} for r in rows]
