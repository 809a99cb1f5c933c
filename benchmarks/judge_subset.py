"""One judge_check record's figures on the pairs of another: judges scored on different samples, compared on the same
pairs (e.g. the held-out learned judge on the pairs the rubric was checked on).

    python -m benchmarks.judge_subset RECORD_ID ON_RECORD_ID [--annotations FILE] [--results results]

The annotation file (default: the one named in ON_RECORD's details) gives the lengths; its hash must match both
records'. Prints one table row per record, over the pairs the two records share.
"""

from __future__ import annotations

import argparse

from evals import judge_check as jc
from evals.annotations import file_hash, judged_pairs, load_annotations
from harness.judge_check import COLUMNS, row
from harness.results import ResultsStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("record")
    ap.add_argument("on")
    ap.add_argument("--annotations", default=None)
    ap.add_argument("--results", default="results")
    args = ap.parse_args()
    store = ResultsStore(args.results)
    recs = [store.get(args.record), store.get(args.on)]
    if None in recs:
        raise SystemExit(f"no record {args.record if recs[0] is None else args.on} in {args.results}/records")
    path = args.annotations or recs[1]["details"]["annotations"]
    if {r["eval_set"]["hash"] for r in recs} != {file_hash(path)}:
        raise SystemExit(f"{path}: not the annotation file both records were checked on")
    rows = {r.id: r for r in judged_pairs(load_annotations(path))}
    shared = sorted({i["id"] for i in recs[0]["per_item"]} & {i["id"] for i in recs[1]["per_item"]})
    print(f"{len(shared)} shared pairs of {path}")
    print("| " + " | ".join(COLUMNS[:10]) + " |\n|" + "---|" * 10)
    for rec in recs:
        items = {i["id"]: i for i in rec["per_item"]}
        ids = [k for k in shared if items[k]["preference"] is not None]
        a = [rows[k] for k in ids]
        metrics, _ = jc.check_metrics([r.model for r in a], [r.index for r in a], [items[k]["preference"] for k in ids],
                                      [r.preference for r in a], [len(r.reference) for r in a],
                                      [len(r.output) for r in a])
        base = jc.agreement_scores([2.0 if len(r.output) > len(r.reference) else 1.0 if len(r.output) < len(r.reference)
                                    else 1.5 for r in a], [r.preference for r in a])
        metrics["longer_agreement"], metrics["longer_agreement_se"], _ = jc.percent(base)
        print("| " + " | ".join(row({**rec, "metrics": metrics})[:10]) + " |")


if __name__ == "__main__":
    main()
