"""`ReproduceConfig`: what `harness grid` and `harness reproduce` are asked to do, frozen and validated on
construction (before any preparation, training or evaluation starts).

The command line builds it in one place (`harness.cli`); `harness.reproduce` reads only this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness import grid as G
from harness.slurm import SlurmSettings

EXECUTORS = ("local", "ray", "slurm")


def targets(all_: bool = False, table: int | None = None, figure: int | None = None) -> tuple[str, ...]:
    """The grid targets of `--all`, `--table N` or `--figure N`."""
    if all_:
        return G.TARGETS
    if table:
        return (f"table{table}",)
    return (f"figure{figure}",)


def parse_only(text: str | None) -> tuple[str, ...]:
    names = tuple(name.strip() for name in (text or "").split(",") if name.strip())
    if text is not None and not names:
        raise ValueError(f"--only={text!r}: expected comma-separated runs, e.g. kl or kl,full")
    return names


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"--seeds={text!r}: expected comma-separated integers, e.g. 1,2,3") from None
    if any(not 0 <= s < 2**32 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds={text!r}: seeds must be distinct integers in 0..{2**32 - 1}")
    return seeds


@dataclass(frozen=True, slots=True)
class ReproduceConfig:
    """One `harness grid` / `harness reproduce` invocation."""

    targets: tuple[str, ...]  # tables and figures (`harness.grid.TARGETS`)
    preset: str = "tiny"  # grid size
    seeds: tuple[int, ...] | None = None  # None: the preset grid's
    only: tuple[str, ...] = ()  # runs to keep: regularisers of the LoRA runs, "full" for the full fine-tune
    overrides: tuple[str, ...] = ()  # FIELD=VALUE settings of every run
    validation: bool = False  # evaluate on the preset's validation instructions (choosing settings), not its test set
    runs: str = "runs"  # root of the run folders
    results: str = "results"  # results store
    executor: Literal["local", "ray", "slurm"] = "local"
    workers: int = 1  # local executor: runs in parallel
    address: str | None = None  # ray: a running cluster's address (None: start a local Ray)
    slurm: SlurmSettings | None = None  # the request of every SLURM job (executor slurm only)
    dry_run: bool = False  # print the jobs it would start; start nothing
    retries: int = 1  # retries of a failed run before it is reported
    report: str | None = "report"  # where to render the report (None: no report)
    recompute: tuple[str, ...] = ()  # run ids to evaluate again ("all": every run of the grid)
    command_line: str | None = None  # what a run's manifest and the reproduction's entry say made them

    def __post_init__(self) -> None:
        unknown = [t for t in self.targets if t not in G.TARGETS]
        if not self.targets or unknown:
            raise ValueError(f"targets={self.targets!r}: allowed: {', '.join(G.TARGETS)}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"--executor={self.executor!r} is not known; allowed: {', '.join(EXECUTORS)}")
        if self.workers < 1 or self.retries < 0:
            raise ValueError(f"--workers={self.workers} must be >= 1 and --retries={self.retries} >= 0")
        if (self.slurm is not None) != (self.executor == "slurm"):
            raise ValueError("SLURM settings go with --executor slurm, and only with it")

    def build_grid(self) -> G.Grid:
        """The grid's runs, every configuration built and validated."""
        return G.build_grid(self.targets, self.preset, seeds=self.seeds, overrides=self.overrides, only=self.only,
                            validation=self.validation)

    @property
    def tracker_group(self) -> str:
        """The group the grid's runs report to in the experiment trackers, named after the grid."""
        return f"{self.preset}-{'+'.join(self.targets)}"
