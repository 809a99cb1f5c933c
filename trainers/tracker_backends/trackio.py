"""Registers `trackio`: project $TRACKIO_PROJECT (default "harness"), group = the run's group (releases without
groups: the group is the project)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainers.options import option
from trainers.tracker_backends import register_tracker


@dataclass(frozen=True, slots=True)
class TrackioOptions:
    project: str | None = option(None, "the trackio project ($TRACKIO_PROJECT; default \"harness\", or the run's "
                                 "group on releases without groups)", env="TRACKIO_PROJECT")


class Trackio:
    name = "trackio"

    def __init__(self, run_dir: Path, run_name: str, group: str, config: dict, state: dict,
                 purge_step: int | None, options: TrackioOptions) -> None:
        import inspect

        import trackio

        self.trackio = trackio
        grouping = {"group": group} if "group" in inspect.signature(trackio.init).parameters else {}
        project = options.project or ("harness" if grouping else group)  # older releases: a project per grid
        trackio.init(project=project, name=run_name, config=config, resume="allow", **grouping)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.trackio.log(metrics, step=step)

    log_eval = log

    def state(self) -> dict:
        return {}

    def close(self, finished: bool) -> None:
        self.trackio.finish()


register_tracker("trackio", library="trackio", description="trackio: a local, Hugging Face-hosted tracker",
                 options=TrackioOptions, backend=Trackio)
