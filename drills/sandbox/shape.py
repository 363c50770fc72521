"""What the sandbox serves: routes, the models behind them, and each model's token shape.

A *route* is what callers ask for (LiteLLM's ``model_name``); a *model* is the
deployment that answers. Each model has a token shape (output length
distribution, time to first token, per-token latency, prices, context window)
so the metrics look like a real gateway's: long answers cost more and take
longer, big prompts overflow small windows.

The default routes and models live in ``config.yaml`` next to this module.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bot.base.errors import InputError

DEFAULT_CONFIG_PATH = Path(__file__).with_name("config.yaml")

# OpenAI-style tokenisers average roughly four characters of English per token;
# the sandbox only needs counts of the right order of magnitude.
CHARS_PER_TOKEN = 4

# z-score of the 95th percentile of a standard normal distribution.
_Z95 = 1.6448536269514722


class OutputLength(BaseModel):
    """A lognormal output length given by its median and 95th percentile (tokens)."""

    model_config = ConfigDict(extra="forbid")

    p50: int = Field(gt=0)
    p95: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> OutputLength:
        if self.p95 < self.p50:
            raise ValueError(f"p95 ({self.p95}) must be >= p50 ({self.p50})")
        return self

    def sample(self, rng: random.Random) -> int:
        mu = math.log(self.p50)
        sigma = (math.log(self.p95) - mu) / _Z95
        return max(1, round(rng.lognormvariate(mu, sigma)))


class ModelShape(BaseModel):
    model_config = ConfigDict(extra="forbid")

    context_window: int = Field(default=8192, gt=0)
    input_price_per_1k: float = Field(default=0.001, ge=0)
    output_price_per_1k: float = Field(default=0.002, ge=0)
    output_tokens: OutputLength = OutputLength(p50=200, p95=600)
    ttft_s: float = Field(default=0.3, ge=0)
    per_token_s: float = Field(default=0.01, ge=0)
    # Sequences the engine runs at once; the KV-cache gauge is in-flight / this.
    max_num_seqs: int = Field(default=32, gt=0)
    # The model's baseline quality score (0..1) before any quality_drop fault.
    quality: float = Field(default=0.9, ge=0, le=1)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (
            input_tokens * self.input_price_per_1k + output_tokens * self.output_price_per_1k
        ) / 1000


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Default split across models when the policy gives no ``traffic``.
    traffic: dict[str, float] = Field(min_length=1)
    # The prompt version in force when the policy leaves ``prompt_version`` null.
    prompt_version: str = "current"


class SandboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Multiplies every simulated delay: 1.0 = real time, 0 = answer at once (tests).
    time_scale: float = Field(default=1.0, ge=0)
    # Quality-score series not updated for this long (seconds) stop being exported,
    # so a rolled-back prompt version does not linger in averages.
    quality_ttl_s: float = Field(default=300.0, gt=0)
    models: dict[str, ModelShape] = Field(min_length=1)
    routes: dict[str, RouteConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _routes_name_known_models(self) -> SandboxConfig:
        for name, route in self.routes.items():
            for model in route.traffic:
                if model not in self.models:
                    raise ValueError(
                        f"route '{name}' sends traffic to unknown model '{model}' "
                        f"(known: {', '.join(sorted(self.models))})"
                    )
            if abs(sum(route.traffic.values()) - 1.0) > 1e-6 or min(route.traffic.values()) < 0:
                raise ValueError(f"route '{name}': traffic weights must be >= 0 and sum to 1.0")
        return self


def load_config(path: Path | None = None, **overrides: Any) -> SandboxConfig:
    """Read a sandbox config file (default: the packaged one); ``overrides`` win."""
    source = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise InputError(
            f"sandbox config {source} could not be read: {exc.strerror or exc}",
            hint="pass --config with an existing YAML file, or omit it for the defaults",
        ) from None
    except yaml.YAMLError as exc:
        raise InputError(f"sandbox config {source}: corrupt YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"sandbox config {source}: expected a mapping at the top level")
    data.update(overrides)
    try:
        return SandboxConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "<document>"
        raise InputError(
            f"sandbox config {source}: {where}: {err['msg']}",
            hint="see drills/sandbox/config.yaml for the format",
        ) from None


def count_tokens(messages: list[dict[str, Any]]) -> int:
    """A rough token count of chat messages (~4 characters a token, a few per message)."""
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):  # OpenAI content parts
            text = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        else:
            text = "" if content is None else str(content)
        # Every message carries a few tokens of role and framing overhead.
        total += 4 + math.ceil(len(text) / CHARS_PER_TOKEN)
    return total


_WORDS = (
    "the", "route", "serves", "answers", "within", "budget", "while", "gateway", "records",
    "tokens", "latency", "cost", "and", "quality", "for", "every", "request", "so", "that",
    "alerts", "drills", "see", "same", "signals",
)  # fmt: skip


def synthetic_text(tokens: int, rng: random.Random) -> str:
    """About ``tokens`` tokens of filler text (one short word is roughly one token)."""
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, tokens)))


def pick_weighted(weights: dict[str, float], rng: random.Random) -> str:
    """One key chosen with probability proportional to its weight."""
    names = [n for n, w in weights.items() if w > 0]
    if not names:
        raise ValueError("no model has a positive traffic weight")
    return rng.choices(names, weights=[weights[n] for n in names], k=1)[0]
