"""A worker's evaluation: `python -m harness.eval_job JOB.json` runs the evaluation a job file describes (the
request and the results store, written by `harness reproduce`), behind the command line's error boundary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness.errors import run_guarded
from harness.eval_request import EvalRequest
from trainers.io import atomic_write_text, read_json_object


def write_job(path: str | Path, request: EvalRequest, results: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps({"results": str(results), "request": request.to_dict()}, indent=1,
                                       sort_keys=True))
    return path


def read_job(path: str | Path) -> tuple[EvalRequest, str]:
    job = read_json_object(Path(path))
    try:
        return EvalRequest.from_dict(job["request"]), job["results"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not an evaluation job ({e})") from None


def _run(path: str) -> int:
    from harness.evaluate import evaluate  # loads the models' code: after the job file is known to be readable

    request, results = read_job(path)
    return evaluate(request, results)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m harness.eval_job JOB.json", file=sys.stderr)
        return 2
    return run_guarded(lambda: _run(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
