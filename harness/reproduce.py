"""`harness grid` and `harness reproduce`: list a grid's state; run what is missing, evaluate it, render.

reproduce, in order (each stage skips what exists, so a killed reproduce reruns to completion):
0. build and validate every configuration of the grid (nothing starts if one is invalid);
1. `prepare` the preset's proxy reward model when a run needs it (`prepared:P`);
2. train: one command per unfinished run (`harness train --config RUN/grid-config.json --out RUN --resume`)
   through the executor (local processes, Ray or SLURM: on a cluster each job asks for its run's GPUs,
   `grid.job_resources`); partial runs resume from their last checkpoint, failures are retried, then marked
   FAILED with the tail of their log;
3. evaluate: one job per missing (run, checkpoint, evaluator) record, the SFT baseline included: a file holding the
   evaluation's request, run by `python -m harness.eval_job FILE`; efficiency records, run manifests and
   training curves (`harness.curves`) are read from the run folders here;
4. the paper's own numbers as records of source "paper"; 5. render `report/`.
A live status line (runs done / running / failed, current step, ETA) prints while jobs run. `--dry-run` prints
the jobs it would start (for SLURM, each job's `sbatch` request) and starts nothing.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import threading
import time
from pathlib import Path

from evals.config import EvalConfig
from harness import decoding_choice
from harness import grid as G
from harness.cluster_jobs import EVAL_JOB, HARNESS, ClusterJobs, dry_run
from harness.curves import has_curves, make_curves, put_curves
from harness.errors import UserError
from harness.eval_job import write_job
from harness.eval_request import EvalRequest, expected_identity
from harness.reproduce_config import ReproduceConfig
from harness.results import ResultsStore, make_record
from trainers.io import repository_path
from trainers.run_config import RunConfig
from trainers.runfolder import RunFolder



# ---- what exists -------------------------------------------------------------------------------------------
def existing(store: ResultsStore, preset: str, wanted: dict[str, dict] | None = None) -> set[tuple]:
    """(run_id, step, evaluator) of the harness records present for `preset`. With `wanted` ({evaluator: {field:
    value}}, `eval_request.expected_identity`), only records whose judge, eval set and settings are the ones asked
    for: a record of another judge, eval set or generation setting does not stand in for the grid's."""
    return {(r["run_id"], r["step"], r["evaluator"]) for r in store.records()
            if r["source"] == "harness" and r["preset"] == preset
            and all(r.get(k) == v for k, v in (wanted or {}).get(r["evaluator"], {}).items())}


def grid_records(store: ResultsStore, g: G.Grid) -> set[tuple]:
    """`existing` records of the grid's own evaluations; the judge is asked for its identity only when the store
    holds records of this preset to tell apart (planning a fresh grid needs no judge)."""
    return existing(store, g.preset, grid_identity(g)) if existing(store, g.preset) else set()


def eval_config(g: G.Grid, evaluator: str = "winrate") -> EvalConfig:
    """The settings of the grid's evaluations by `evaluator` (factuality decodes at its own temperature)."""
    spec = g.spec
    # every evaluation, the SFT policy's included, scored by the reward model the grid's runs optimise
    proxy = next((r.config.reward for r in g.runs if not r.config.reward_is_rule), None)
    if evaluator == "factuality":
        temperature, samples = spec.factuality_temperature, 1
    else:
        temperature, samples = spec.eval_temperature, spec.eval_samples
    return EvalConfig(judge=spec.judge, limit=spec.eval_limit or None, max_new_tokens=spec.eval_max_new_tokens,
                      temperature=temperature, samples=samples, factuality_limit=spec.factuality_limit or None,
                      proxy_reward=proxy, decoding=g.execution.decoding)


def grid_identity(g: G.Grid) -> dict[str, dict]:
    """The judge, eval set and settings of the records this grid's evaluations write."""
    def identity(evaluator: str) -> dict[str, dict]:
        return expected_identity(EvalRequest(target="", config=eval_config(g, evaluator), eval_set=g.spec.eval_set,
                                             preset=g.preset))
    return {**identity("winrate"), "factuality": identity("factuality")["factuality"]}


def cell_request(g: G.Grid, runs_root: str | Path, rid: str, run: G.Run | None, step: int, evaluator: str, *,
                 force: bool = False) -> EvalRequest:
    """The evaluation of one cell of `eval_plan`: a run's checkpoint, or the SFT policy (`run` None)."""
    config = eval_config(g, evaluator)
    if run is not None:  # a collapsed policy (every answer empty) is a result of the grid, not an error
        config = dataclasses.replace(config, allow_empty=True)
    target = g.sft_policy if run is None else str(G.run_dir(runs_root, g.preset, rid))
    return EvalRequest(target=target, config=config, eval_set=g.spec.eval_set, step=None if run is None else step,
                       evaluators=(evaluator,), preset=g.preset, run_id=rid, force=force)


def eval_plan(g: G.Grid) -> list[tuple[str, str | None, int, str]]:
    """(run_id, run or None for the SFT policy, step, evaluator) of every record the grid needs."""
    items = []
    sft_id = f"sft:{g.sft_policy}"
    for ev in g.sft_evaluators:
        items.append((sft_id, None, 0, ev))
    for run in g.runs:
        if "winrate" in run.evaluators:
            items += [(run.run_id, run, s, "winrate") for s in run.eval_steps]
        if "factuality" in run.evaluators:
            items.append((run.run_id, run, run.last_step, "factuality"))
        if "efficiency" in run.evaluators:
            items.append((run.run_id, run, run.last_step, "efficiency"))
    return items


def sft_decoding_cells(g: G.Grid, store: ResultsStore) -> tuple[list[tuple[str, EvalRequest]], EvalRequest | None]:
    """The baseline "SFT at its best decoding" (`harness.decoding_choice`): the validation evaluations still missing
    [(run id, request)], and, once all are in the store, the evaluation at the chosen decoding (None while it is
    not known, when its record exists, or when the grid has no such row)."""
    if not g.spec.sft_decodings or "winrate" not in g.sft_evaluators:
        return [], None
    sft_id, config = f"sft:{g.sft_policy}", eval_config(g)
    candidates = decoding_choice.validation_requests(config, g.sft_policy, g.spec.validation_set, g.preset,
                                                     g.spec.sft_decodings)
    records = [r for r in store.records() if r["source"] == "harness" and r["preset"] == g.preset]
    missing = [(sft_id, req) for req in candidates if decoding_choice.find(records, req, sft_id) is None]
    chosen = None if missing else decoding_choice.choose(records, candidates, sft_id)
    if chosen is None:
        return missing, None
    best = decoding_choice.best_request(config, g.sft_policy, g.spec.eval_set, g.preset, chosen[0])
    return missing, None if decoding_choice.find(records, best, best.run_id) else best


def ids_after_prepare(g: G.Grid) -> G.Grid:
    """The grid with its ids derived again when they name a prepared reward model (they changed if it was just
    made or remade); `g` itself when no id did."""
    if not any(r.config.reward.startswith("prepared:") for r in g.runs):
        return g
    fresh = g.rebuilt()
    return g if [r.run_id for r in fresh.runs] == [r.run_id for r in g.runs] else fresh


def reused_runs(g: G.Grid, have: set[tuple], recompute: tuple[str, ...] = ()) -> list[G.Run]:
    """Runs whose every record the grid needs is already in the store: nothing to train or evaluate."""
    plan = eval_plan(g)
    return [run for run in g.runs if run.run_id not in recompute
            and all((rid, s, ev) in have for rid, _, s, ev in plan if rid == run.run_id)]


def print_grid(g: G.Grid, runs_root: str, store: ResultsStore) -> dict[str, str]:
    have = grid_records(store, g)
    states = {}
    only = f", only {','.join(g.only)}" if g.only else ""
    only += f", on the validation instructions ({g.spec.eval_set})" if g.validation else ""
    print(f"grid {'+'.join(g.targets)} at preset {g.preset}{only}: {len(g.runs)} runs + the SFT baseline "
          f"({g.spec.note})")
    if g.provisional:
        print("  (run ids are provisional: they name the reward model by content, and it is not prepared yet)")
    print(f"  {'run':34s} {'state':8s} {'steps':>9s}  records")
    for run in g.runs:
        folder = G.run_dir(runs_root, g.preset, run.run_id)
        state = G.run_state(folder, run)
        states[run.run_id] = state
        need = [(rid, s, ev) for rid, r, s, ev in eval_plan(g) if rid == run.run_id]
        done = sum((rid, s, ev) in have for rid, s, ev in need)
        print(f"  {run.run_id:34s} {state:8s} {G.completed_steps(folder):>4d}/{run.last_step:<4d}  {done}/{len(need)}")
    sft = [(rid, s, ev) for rid, r, s, ev in eval_plan(g) if r is None]
    if sft:
        print(f"  {'sft:' + g.sft_policy:34s} {'-':8s} {'-':>9s}  {sum(x in have for x in sft)}/{len(sft)}")
    if g.spec.sft_decodings and "winrate" in g.sft_evaluators:
        missing, best = sft_decoding_cells(g, store)
        n = len(g.spec.sft_decodings) + 1  # the candidates on the validation instructions, then the chosen one
        done = n - len(missing) - (1 if missing or best is not None else 0)
        print(f"  {decoding_choice.BASELINE + ':' + g.sft_policy:34s} {'-':8s} {'-':>9s}  {done}/{n}")
    return states


# ---- records read from run folders ---------------------------------------------------------------------------
def _metrics(folder: Path) -> list[dict]:
    return RunFolder(folder).read_metrics()


def efficiency_record(g: G.Grid, run: G.Run, folder: Path) -> dict:
    facts = RunFolder(folder).read_facts()
    rows = _metrics(folder)
    needed = ("memory/peak_bytes", "time/step", "time/tokens_per_s")
    lacking = next(((r["step"], k) for r in rows for k in needed if not isinstance(r.get(k), (int, float))), None)
    if not rows or lacking:
        raise UserError(f"{RunFolder(folder).metrics_path}: " + (f"step {lacking[0]} lacks a number for {lacking[1]!r}"
                        if lacking else "no steps") + "; the run's efficiency cannot be measured")
    timed = rows[1:] or rows  # the first step carries start-up costs
    counts = facts["parameters"]
    metrics = {
        "gpus": int(facts.get("world_size", 1)) if str(facts.get("device", "cpu")).startswith("cuda") else 0,
        "processes": int(facts.get("world_size", 1)),
        "trainable_params": counts["trainable"], "total_params": counts["total"],
        "trainable_pct": 100.0 * counts["policy_trainable"] / counts["policy_total"],
        "peak_memory_gib": max(r["memory/peak_bytes"] for r in rows) / 2**30,
        "seconds_per_step": statistics.median(r["time/step"] for r in timed),
        "tokens_per_s": statistics.median(r["time/tokens_per_s"] for r in timed),
        "steps": len(rows),
    }
    details = {"device": facts.get("device"), "frozen_dtype": facts.get("frozen_dtype"),
               "memory_kind": rows[-1].get("memory/kind"), "run_id": facts.get("run_id")}
    return make_record(preset=g.preset, run_id=run.run_id, label=run.label, step=run.last_step,
                       evaluator="efficiency", metrics=metrics, details=details)


def manifest(run: G.Run, folder: Path, command: str | None = None) -> dict:
    facts = RunFolder(folder).read_facts_if_any()
    rows = _metrics(folder)
    from harness.results import harness_identity

    config = dict(run.config.to_dict(), prompts=repository_path(run.config.prompts))
    # how it ran (threads as its job had them), beside what it computed
    execution = RunFolder(folder).read_execution() if RunFolder(folder).has_config() else run.execution.to_dict()
    return {"run_id": run.run_id, "label": run.label, "config": config, "execution": execution,
            "facts": facts,
            "host": {"node": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
                     "cpus": os.cpu_count()},
            "harness": harness_identity(), "steps": len(rows), "command": command,
            "seconds": round(sum(r.get("time/step", 0.0) for r in rows), 1),
            "peak_memory_bytes": max((r.get("memory/peak_bytes", 0) for r in rows), default=0)}


# ---- live view ----------------------------------------------------------------------------------------------
class LiveView:
    """A status line every `every` seconds and on each job event: done / running / failed, step, ETA."""

    def __init__(self, g: G.Grid, runs_root: str, stage: str, total: int, every: float = 20.0, out=print) -> None:
        self.g, self.runs_root, self.stage, self.total, self.every, self.out = g, runs_root, stage, total, every, out
        self.running: dict[str, float] = {}
        self.done = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)

    def event(self, kind: str, job_id: str, info=None) -> None:
        with self._lock:
            if kind == "start":
                self.running[job_id] = time.time()
            elif kind in ("done", "failed"):
                self.running.pop(job_id, None)
                self.done += kind == "done"
                self.failed += kind == "failed"
        tail = "" if kind != "failed" else f"\n{(info or {}).get('log_tail', '') if isinstance(info, dict) else ''}"
        self.out(f"[{self.stage}] {kind} {job_id}{tail}")
        self.status()

    def _run_progress(self, job_id: str) -> str:
        run = next((r for r in self.g.runs if r.run_id == job_id), None)
        if run is None:
            return f"{job_id} ({time.time() - self.running.get(job_id, time.time()):.0f} s)"
        try:
            rows = _metrics(G.run_dir(self.runs_root, self.g.preset, job_id))
        except UserError as e:  # the run itself stops on it; the status line must go on
            return f"{job_id} ({e})"
        if not rows:
            return f"{job_id} starting"
        per = statistics.median(r["time/step"] for r in rows[-5:])
        left = run.last_step - rows[-1]["step"]
        return f"{job_id} step {rows[-1]['step']}/{run.last_step} ({per:.0f} s/step, ETA {left * per / 60:.1f} min)"

    def status(self) -> None:
        with self._lock:
            running = list(self.running)
            done, failed = self.done, self.failed
        parts = ", ".join(self._run_progress(j) for j in running) or "-"
        waiting = self.total - done - failed - len(running)
        self.out(f"[{self.stage}] {done} done, {len(running)} running, {waiting} waiting, {failed} failed | {parts}")

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.status()


# ---- the command ---------------------------------------------------------------------------------------------
def list_grid(config: ReproduceConfig) -> int:
    """`harness grid`: the grid's runs and their state; runs nothing."""
    print_grid(config.build_grid(), config.runs, ResultsStore(config.results))
    return 0


def run(config: ReproduceConfig) -> int:
    """`harness reproduce`: the grid built and validated, then `reproduce`."""
    g = config.build_grid()
    return reproduce(g, config, ResultsStore(config.results))


def reproduce(g: G.Grid, config: ReproduceConfig, store: ResultsStore) -> int:
    from harness.executors import Job, make_executor

    started = time.time()
    executor_kw = {"retries": config.retries}
    executor = lambda **kw: make_executor(config.executor, **kw)  # noqa: E731
    if config.executor == "local":
        executor_kw["workers"] = config.workers
    elif config.executor == "ray":
        executor_kw["address"] = config.address
    else:
        from harness.slurm import SlurmExecutor

        executor_kw["settings"], executor = config.slurm, SlurmExecutor
    print_grid(g, config.runs, store)
    # parallel jobs share the cores: oversubscribed OpenMP threads spin against each other and run many times slower
    workers = config.workers if config.executor == "local" else 1
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    job_env = (("OMP_NUM_THREADS", str(threads)), ("MKL_NUM_THREADS", str(threads)))
    cluster = ClusterJobs(g, config.slurm, threads) if config.executor != "local" else None
    if config.dry_run:
        have = grid_records(store, g)
        runs = [r for r in g.runs if r not in reused_runs(g, have)
                and G.run_state(G.run_dir(config.runs, g.preset, r.run_id), r) != "done"]
        cells = [c for c in eval_plan(g) if c[3] != "efficiency" and (c[0], c[2], c[3]) not in have]
        return dry_run(g, config, runs, cells, cluster, threads, store.root)
    # 1. the proxy reward model
    needs = {r.config.reward.removeprefix("prepared:") for r in g.runs if r.config.reward.startswith("prepared:")}
    for name in sorted(needs):
        from harness.prepare import prepare

        from harness import presets

        prepare(name, dataclasses.replace(presets.resolve(name), execution=g.execution), results=store.root)
    fresh = ids_after_prepare(g)
    if fresh is not g:
        g = fresh
        print("run ids now that the reward model exists:")
        print_grid(g, config.runs, store)
    # 2. train, except runs whose every record is already in the store (made elsewhere: same id, same inputs)
    recompute = tuple(config.recompute) if "all" not in config.recompute else tuple(r.run_id for r in g.runs)
    unknown = sorted(set(recompute) - {r.run_id for r in g.runs})
    if unknown:
        raise ValueError(f"--recompute {', '.join(unknown)}: not a run of this grid; its runs: "
                         f"{', '.join(r.run_id for r in g.runs)}")
    have = existing(store, g.preset, grid_identity(g))
    reused = reused_runs(g, have, recompute)
    for run in reused:
        print(f"reusing the records of {run.run_id} already in {store.root} (not trained here); to recompute them, "
              f"rerun with --recompute {run.run_id} or remove them")
    jobs = []
    for run in g.runs:
        folder = G.run_dir(config.runs, g.preset, run.run_id)
        if G.run_state(folder, run) == "done" or run in reused:
            continue
        job_threads = threads if workers > 1 else run.execution.threads
        if cluster is not None:
            job_threads = cluster.threads(run) or run.execution.threads
        execution = dataclasses.replace(run.execution, threads=job_threads)
        cfg_path = RunFolder(folder).write_grid_config(RunConfig(run.config, execution).to_dict())
        job = Job(run_id=run.run_id, argv=(*HARNESS, "train", "--config", str(cfg_path), "--out", str(folder),
                                           "--resume"), log_path=str(RunFolder(folder).train_log_path), cpus=threads,
                  env=job_env if workers > 1 else ())
        jobs.append(job if cluster is None else cluster.job(job, run))
    failed_runs = set()
    if jobs:
        with LiveView(g, config.runs, "train", len(jobs)) as view:
            outcomes = executor(on_event=view.event, **executor_kw).run(jobs)
        for rid, outcome in outcomes.items():
            folder = RunFolder(G.run_dir(config.runs, g.preset, rid))
            if outcome.status == "failed":
                failed_runs.add(rid)
                folder.mark_failed(outcome.log_tail)
            else:
                folder.clear_failed()
    # 3. evaluate
    have = existing(store, g.preset, grid_identity(g))
    eval_jobs, refused = [], []
    log_dir = Path(config.runs) / g.preset / "eval-logs"
    Path(store.root).mkdir(parents=True, exist_ok=True)  # a cluster node checks that it sees the store

    def eval_job(job_id: str, name: str, request: EvalRequest, rid: str, run: G.Run | None):
        name = name.replace(":", "_").replace("/", "_")
        job_file = write_job(log_dir / f"{name}.json", request, store.root)
        job = Job(run_id=job_id, argv=(*EVAL_JOB, str(job_file)), log_path=str(log_dir / f"{name}.log"),
                  cpus=threads, env=job_env if workers > 1 else ())
        return job if cluster is None else cluster.job(job, None, shared=(str(store.root), *(
            [str(G.run_dir(config.runs, g.preset, rid))] if run is not None else [])))

    # 3a. the SFT policy at its candidate decodings on the validation instructions, then at the best one
    choice_jobs, best = sft_decoding_cells(g, store)
    if choice_jobs:
        with LiveView(g, config.runs, "eval", len(choice_jobs)) as view:
            outcomes = executor(on_event=view.event, **executor_kw).run(
                [eval_job(f"eval:{rid}:validation:t{req.config.temperature:g}",
                          f"{rid}-validation-t{req.config.temperature:g}", req, rid, None) for rid, req in choice_jobs])
        refused += [k for k, o in outcomes.items() if o.status == "failed"]
        _, best = sft_decoding_cells(g, store)
    if best is not None:
        eval_jobs.append(eval_job(f"eval:{best.run_id}:0:winrate", f"{best.run_id}-0-winrate", best, best.run_id, None))
    for rid, run, step, ev in eval_plan(g):
        if ((rid, step, ev) in have and rid not in recompute) or rid in failed_runs:
            continue
        if ev == "efficiency":
            folder = G.run_dir(config.runs, g.preset, rid)
            store.put(efficiency_record(g, run, folder), force=rid in recompute)
            continue
        job_id = f"eval:{rid}:{step}:{ev}"
        try:
            request = cell_request(g, config.runs, rid, run, step, ev, force=rid in recompute)
        except ValueError as e:  # an evaluation that cannot run fails alone; the others go on
            print(f"[eval] failed {job_id}: {e}")
            refused.append(job_id)
            continue
        eval_jobs.append(eval_job(job_id, f"{rid}-{step}-{ev}", request, rid, run))
    failed_evals = refused
    if eval_jobs:
        with LiveView(g, config.runs, "eval", len(eval_jobs)) as view:
            outcomes = executor(on_event=view.event, **executor_kw).run(eval_jobs)
        failed_evals += [k for k, o in outcomes.items() if o.status == "failed"]
    trained_here = {job.run_id for job in jobs}
    for run in g.runs:
        folder = G.run_dir(config.runs, g.preset, run.run_id)
        # a run's manifest names the command and commit that trained it: a later reproduce that only reads the
        # finished run (another table, a re-evaluation) leaves it as it is
        if G.run_state(folder, run) == "done" and (run.run_id in trained_here or store.manifest(run.run_id) is None):
            store.put_manifest(run.run_id, manifest(run, folder, config.command_line))
        fresh = run.run_id in trained_here or not has_curves(store.root, run.run_id)
        if G.run_state(folder, run) == "done" and fresh:  # the training curves the report draws
            put_curves(store.root, make_curves(run.run_id, g.preset, run.label, _metrics(folder)))
    # 4. the paper's numbers, 5. the report
    from harness.paper_numbers import store_paper_records

    store_paper_records(store)
    minutes = (time.time() - started) / 60
    if jobs or eval_jobs:  # a run that did work says how long it took, and where (the report shows the latest)
        from harness.machine import describe

        store.add_reproduction(g.preset, {
            "command": config.command_line, "targets": list(g.targets),
            "seeds": list(g.seeds or g.spec.seeds), "only": list(g.only),
            "minutes": round(minutes, 1), "runs_trained": len(jobs), "evaluations": len(eval_jobs),
            "failed": sorted(failed_runs) + list(failed_evals), "machine": describe(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if config.report is not None:
        from harness.report import render_report

        paths = render_report(str(store.root), config.report, g.preset)
        print(f"report: {len(paths)} files in {config.report}/")
    if failed_runs or failed_evals:
        print(f"reproduce: finished in {minutes:.1f} min with failures: runs {sorted(failed_runs) or '-'}, "
              f"evaluations {failed_evals or '-'}; rerun the same command to retry them")
        return 1
    print(f"reproduce: {'+'.join(g.targets)} at preset {g.preset} complete in {minutes:.1f} min")
    return 0
