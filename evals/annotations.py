"""Pairwise annotation files: a reference judge's preferences of model outputs against reference outputs.

Format (alpaca-eval's annotations, flattened; one JSON object per line, optionally gzipped):
`{"model": str, "index": int, "output": str, "preference": 1 | 2 | 1.5 | null, "reference": str}` where `index`
points into the instruction set the outputs answer (AlpacaFarm's 805 evaluation instructions), `preference` is the
reference judge's (1: the reference wins, 2: the model's output wins, 1.5: a draw) and `reference` is the text the
output was compared with. Rows with a null preference (a failed call) are skipped. Rows whose output equals the
reference are draws nobody judged (alpaca-eval sets them without asking): `judged_pairs` leaves them out.

Read and validated before any judge loads: a missing or malformed file fails with one line naming the file, the
line and the field.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("model", "index", "output", "preference", "reference")


class AnnotationError(ValueError):
    """An annotation or instruction file that cannot be read (names the file, the line and the field)."""


@dataclass(frozen=True, slots=True)
class Annotation:
    model: str
    index: int
    output: str
    reference: str
    preference: float  # the reference judge's: 1 reference wins, 2 the model's output wins, 1.5 a draw

    @property
    def id(self) -> str:
        return f"{self.model}/{self.index}"


def file_hash(path: str | Path) -> str:
    """sha256 of the file's bytes (16 hex digits): what a judge-check record is keyed on."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _open(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8")


def load_annotations(path: str | Path) -> list[Annotation]:
    """Every row with a preference, in file order (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"--annotations {str(path)!r}: no such file (a .jsonl or .jsonl.gz of {{"
                              f"{', '.join(FIELDS)}}})")
    rows: list[Annotation] = []
    seen: set[tuple[str, int]] = set()
    try:
        with _open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"--annotations {str(path)!r} line {n}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise AnnotationError(f"{where}: not JSON ({exc.msg}); one object per line") from None
                if not isinstance(obj, dict) or (missing := [k for k in FIELDS if k not in obj]):
                    raise AnnotationError(f"{where}: missing field(s) {missing if isinstance(obj, dict) else FIELDS}; "
                                          f"each row has {', '.join(FIELDS)}")
                pref, idx = obj["preference"], obj["index"]
                if not (isinstance(obj["model"], str) and obj["model"]):
                    raise AnnotationError(f"{where}: model={obj['model']!r} must be a non-empty string")
                if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
                    raise AnnotationError(f"{where}: index={idx!r} must be an integer >= 0")
                if not (isinstance(obj["output"], str) and isinstance(obj["reference"], str)):
                    raise AnnotationError(f"{where}: output and reference must be strings")
                if pref is None:
                    continue
                if isinstance(pref, bool) or not isinstance(pref, (int, float)) or not 1 <= pref <= 2:
                    raise AnnotationError(f"{where}: preference={pref!r}; allowed: 1 (reference wins), 2 (model "
                                          "wins), 1.5 (draw), a number in between, or null")
                if (obj["model"], idx) in seen:
                    raise AnnotationError(f"{where}: model {obj['model']!r} index {idx} appears twice")
                seen.add((obj["model"], idx))
                rows.append(Annotation(obj["model"], idx, obj["output"], obj["reference"], float(pref)))
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise AnnotationError(f"--annotations {str(path)!r}: cannot be read ({exc})") from None
    if not rows:
        raise AnnotationError(f"--annotations {str(path)!r}: no row with a preference")
    return rows


def judged_pairs(rows: list[Annotation]) -> list[Annotation]:
    """The rows the reference judge was actually asked about (output differs from its reference)."""
    return [r for r in rows if r.output != r.reference]


def load_instructions(path: str | Path) -> list[str]:
    """The prompts the annotated outputs answer, by index: AlpacaFarm's merge `instruction + "\\n\\n" + input`
    (input when non-empty) of a JSON list of `{instruction, input?}`."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"--instructions {str(path)!r}: no such file (a JSON list of {{instruction, input}}, "
                              "e.g. alpaca_farm_evaluation.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"--instructions {str(path)!r}: cannot be read as JSON ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) and isinstance(r.get("instruction"), str)
                                             for r in data):
        raise AnnotationError(f"--instructions {str(path)!r}: expected a JSON list of objects with an 'instruction'")
    return [f"{r['instruction']}\n\n{r['input']}" if r.get("input") else r["instruction"] for r in data]
