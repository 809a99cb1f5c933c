"""Registers `openai`: alpaca-eval's annotator answered by a model on any OpenAI-compatible server
(`evals.openai_judge`)."""

from __future__ import annotations

from dataclasses import dataclass

from evals.judges import PREFIX, register_judge
from trainers.options import check_options, option

MAX_TOKENS = 10**6  # beyond it a length is a typo


@dataclass(frozen=True, slots=True)
class OpenAIOptions:
    model: str | None = option(None, "the judge model (default: gpt-4o-mini at api.openai.com, else the one model "
                               "the server lists)")
    base_url: str | None = option(None, "any OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (default: "
                                  "$OPENAI_BASE_URL, else api.openai.com)")
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the API key (default OPENAI_API_KEY; "
                              "not needed for a loopback server)")
    config: str | None = option(None, "alpaca-eval annotator config (default alpaca_farm_greedy_gpt4, 5 pairs per "
                                "prompt; alpaca_farm_greedy_gpt4_b1 asks one pair, for small local judges); "
                                "`harness judges` lists them", metavar="NAME|PATH")
    timeout: float | None = option(None, "seconds per request (default 120)", low=0, high=86_400, low_open=True)
    max_retries: int | None = option(None, "re-asks after a failed request (default 5, with exponential backoff)",
                                     low=0, high=100)
    max_tokens: int | None = option(None, "the answer's length in tokens (default: the config's)", low=1,
                                    high=MAX_TOKENS)

    def __post_init__(self) -> None:
        check_options(self, PREFIX)
        if self.config is not None:
            from evals.openai_judge import load_annotator_config

            load_annotator_config(self.config)  # unknown name, missing file or an unsupported config: one line now


def _build(options: OpenAIOptions, *, device: str, seed: int):
    from evals.openai_judge import OpenAIJudge

    kwargs = {"base_url": options.base_url, "api_key_env": options.api_key_env, "max_tokens": options.max_tokens}
    optional = {"model": options.model, "annotator": options.config, "timeout": options.timeout,
                "max_attempts": None if options.max_retries is None else options.max_retries + 1}
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return OpenAIJudge(**kwargs)


def _details() -> list[str]:
    """The annotator configs `--judge-config` can name, and those it cannot use."""
    from evals.openai_judge import DEFAULT_ANNOTATOR, describe_annotator_configs

    rows = describe_annotator_configs()
    lines = ["annotator configs of --judge openai (--judge-config NAME, or a path to a configs.yaml):"]
    width = max(len(r["name"]) for r in rows if r["usable"]) + len(" (default)")
    for r in (r for r in rows if r["usable"]):
        name = r["name"] + (" (default)" if r["name"] == DEFAULT_ANNOTATOR else "")
        lines.append(f"  {name:{width}s}  {r['source']:11s}  {r['pairs_per_prompt']} pair(s) per prompt")
    lines.append("not usable by --judge openai:")
    lines += [f"  {r['name']} ({r['source']}): {r['why']}" for r in rows if not r["usable"]]
    return lines


register_judge("openai", description="alpaca-eval's annotator (prompt, batching, parser) answered by a model on an "
               "OpenAI-compatible server", options=OpenAIOptions, build=_build, offline=False, details=_details)
