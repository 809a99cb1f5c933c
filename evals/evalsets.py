"""Evaluation sets: the real AlpacaFarm evaluation set (Hub or a local copy) or any local JSON in its schema.

Schema (AlpacaFarm's `alpaca_farm_evaluation`): a list of `{instruction, input, output?, generator?, dataset?}`;
`output` is the reference (text-davinci-003 in the paper). A set either has references for every record or for
none (then `harness eval` samples offline references from the SFT model, see `evals.references`).

Sources: `hf:DATASET[:CONFIG]:SPLIT` (through `datasets`, online only), `alpaca_farm` (= the paper's
`hf:tatsu-lab/alpaca_farm:alpaca_farm_evaluation:eval`), or a local `.json` / `.jsonl` file, optionally filtered by
a `split` field (the bundled data).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from trainers.io import read_json_file

ALPACA_FARM = "hf:tatsu-lab/alpaca_farm:alpaca_farm_evaluation:eval"


class EvalSetError(ValueError):
    """An eval set that cannot be read or lacks the needed fields (names the source, record and field)."""


@dataclass(frozen=True)
class EvalSet:
    name: str
    records: tuple[dict, ...]  # {id, instruction, input, output|None, generator|None}

    @property
    def has_references(self) -> bool:
        return self.records[0]["output"] is not None

    @property
    def reference_generator(self) -> str | None:
        gens = {r.get("generator") for r in self.records}
        return ", ".join(sorted(g for g in gens if g)) or None

    @property
    def hash(self) -> str:
        blob = json.dumps([[r["instruction"], r["input"], r["output"]] for r in self.records], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def identity(self) -> dict:
        return {"name": self.name, "hash": self.hash, "n": len(self.records)}


def _read_rows(source: str, split: str) -> list:
    if source == "alpaca_farm":
        source = ALPACA_FARM
    if source.startswith("hf:"):
        parts = source[3:].split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise EvalSetError(f"eval set {source!r} is malformed; expected 'hf:DATASET[:CONFIG]:SPLIT'")
        name, config, hf_split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
        import datasets

        try:
            return list(datasets.load_dataset(name, config, split=hf_split, revision="refs/convert/parquet"))
        except Exception as exc:  # noqa: BLE001 - reported with the offline alternative
            raise EvalSetError(f"eval set {source!r} could not be loaded ({type(exc).__name__}: {exc}); offline, "
                               "pass a local JSON copy with --eval-set PATH") from exc
    try:
        rows = read_json_file(Path(source).expanduser(), f"eval set {source!r}", "expected a JSON/JSONL list of "
                              "{instruction, input, output?}, 'alpaca_farm', or 'hf:DATASET[:CONFIG]:SPLIT'",
                              EvalSetError)
    except EvalSetError:
        raise
    except ValueError as exc:  # the document's syntax, named by the parser
        raise EvalSetError(str(exc)) from None
    if isinstance(rows, dict):  # {split: [records]}, the bundled layout
        bad = [k for k, v in rows.items() if not isinstance(v, list)]
        if bad:
            raise EvalSetError(f"eval set {source!r} is an object whose key {bad[0]!r} does not hold a list of "
                               "records; expected a list of {instruction, input, output?} (or {split: [records]})")
        rows = [dict(r, split=k) if isinstance(r, dict) else r for k, v in rows.items() for r in v]
    elif not isinstance(rows, list):
        raise EvalSetError(f"eval set {source!r} holds a {type(rows).__name__}; expected a list of "
                           "{instruction, input, output?}")
    if split:
        rows = [r for r in rows if isinstance(r, dict) and r.get("split") == split]
    return rows


def load_eval_set(source: str, *, split: str = "", name: str | None = None, limit: int | None = None) -> EvalSet:
    rows = _read_rows(source, split)
    if not isinstance(rows, list) or not rows:
        raise EvalSetError(f"eval set {source!r}{f' (split {split!r})' if split else ''} holds no records")
    records = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
            raise EvalSetError(f"eval set {source!r}: record {i} has no non-empty string field 'instruction' "
                               f"(each record needs instruction, optionally input and output)")
        extra = r.get("input") or ""
        if not isinstance(extra, str):
            raise EvalSetError(f"eval set {source!r}: record {i} field 'input' is {type(extra).__name__}; expected a string")
        output = r.get("output")
        if output is not None and not isinstance(output, str):
            raise EvalSetError(f"eval set {source!r}: record {i} field 'output' is {type(output).__name__}; "
                               "expected a string (the reference output)")
        item_id = r.get("id", i)
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or (isinstance(item_id, str) and not (
                0 < len(item_id) <= 1000)) or (isinstance(item_id, int) and abs(item_id) >= 2**63):
            raise EvalSetError(f"eval set {source!r}: record {i} field 'id' is {item_id!r:.80}; expected a string of "
                               "1-1000 characters or an integer of at most 64 bits")
        records.append({"id": str(item_id), "instruction": r["instruction"], "input": extra,
                        "output": output, "generator": r.get("generator")})
    repeated = sorted(i for i, n in Counter(r["id"] for r in records).items() if n > 1)
    if repeated:
        raise EvalSetError(f"eval set {source!r}: the id(s) {repeated[:5]} occur more than once; paired statistics "
                           "match items by id, so every record needs its own")
    with_ref = sum(r["output"] is not None for r in records)
    if 0 < with_ref < len(records):
        raise EvalSetError(f"eval set {source!r}: {with_ref} of {len(records)} records have an 'output' reference; "
                           "either all records carry one or none does")
    if limit is not None:
        if limit < 1:
            raise EvalSetError(f"limit={limit} must be >= 1")
        records = records[:limit]
    label = name or (Path(source).stem if not source.startswith("hf:") and source != "alpaca_farm" else source)
    return EvalSet(name=label + (f":{split}" if split else "") + (f"[:{limit}]" if limit else ""),
                   records=tuple(records))
