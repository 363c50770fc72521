"""The mapping between serving-policy fields and a LiteLLM proxy config (pure, no I/O).

Which policy field lives where in LiteLLM's ``config.yaml``:

- ``max_concurrency`` -> ``max_parallel_requests`` of every deployment
  (``model_list[].litellm_params``) whose ``model_name`` is the route; the
  router answers 429 to a request past it. Several deployments with different
  values read back as the smallest one.
- ``enabled: false`` -> the route's ``model_list`` entries are removed and kept
  in a sidecar *stash*, with their positions, so enabling puts them back exactly.
- ``fallback`` -> ``router_settings.fallbacks`` (``[{route: [fallback, ...]}]``);
  the first element reads back as the route's fallback.

A change the bot makes is usually reverted later. To make revert restore the
operator's config *exactly* (several deployments with different limits, a
fallback chain of several models), the first change to a route's concurrency
or fallbacks stashes the original values; writing back the value the original
reads as restores the stashed original verbatim and drops it from the stash.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from actions.drivers.policy_file import yaml_problem
from bot.base.errors import DriverError

Config = dict[str, Any]
Stash = dict[str, Any]


def empty_stash() -> Stash:
    return {"version": 1, "models": {}, "concurrency": {}, "fallbacks": {}}


def parse_yaml_mapping(raw: bytes, *, source: str, what: str) -> dict[str, Any]:
    """A YAML document that must be a mapping; errors name the file and line."""
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DriverError(f"{source}: {what} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        where, problem = yaml_problem(exc, source)
        raise DriverError(
            f"{where}: {what} is not valid YAML: {problem}",
            hint="fix the file (or restore its .prev copy); nothing was changed",
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DriverError(
            f"{source}: {what} must be a mapping, got {type(data).__name__}",
            hint="nothing was changed",
        )
    return data


def check_config(config: Config, *, source: str) -> Config:
    """Refuse a config whose parts we would edit are not the shapes LiteLLM uses."""
    models = config.get("model_list", [])
    if not isinstance(models, list):
        raise DriverError(f"{source}: model_list must be a list", hint="nothing was changed")
    for i, entry in enumerate(models):
        if not isinstance(entry, dict) or not isinstance(entry.get("model_name"), str):
            raise DriverError(
                f"{source}: model_list[{i}] needs a string model_name", hint="nothing was changed"
            )
        if not isinstance(entry.get("litellm_params", {}), dict):
            raise DriverError(
                f"{source}: model_list[{i}].litellm_params must be a mapping",
                hint="nothing was changed",
            )
    rs = config.get("router_settings")
    if rs is not None and not isinstance(rs, dict):
        raise DriverError(f"{source}: router_settings must be a mapping", hint="nothing changed")
    fallbacks = (rs or {}).get("fallbacks") or []
    if not isinstance(fallbacks, list) or not all(
        isinstance(f, dict) and all(isinstance(v, list) for v in f.values()) for f in fallbacks
    ):
        raise DriverError(
            f"{source}: router_settings.fallbacks must be a list of {{route: [models]}}",
            hint="nothing was changed",
        )
    return config


def dump_yaml(data: dict[str, Any]) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).encode()


# -- reading ----------------------------------------------------------------------------


def _live(config: Config, route: str) -> list[dict[str, Any]]:
    return [e for e in config.get("model_list") or [] if e.get("model_name") == route]


def _entries(config: Config, stash: Stash, route: str) -> list[dict[str, Any]]:
    """The route's deployments: live ones, or the stashed ones while it is disabled."""
    return _live(config, route) or [s["entry"] for s in stash["models"].get(route, [])]


def _concurrency_of(values: list[Any]) -> int | None:
    limits = [v for v in values if isinstance(v, int) and v > 0]
    return min(limits) if limits else None


def _fallback_of(chain: list[Any] | None) -> str | None:
    return str(chain[0]) if chain else None


def _fallbacks(config: Config) -> list[dict[str, list[Any]]]:
    return list((config.get("router_settings") or {}).get("fallbacks") or [])


def _chain(config: Config, route: str) -> list[Any] | None:
    for item in _fallbacks(config):
        if route in item:
            return list(item[route])
    return None


def routes_in(config: Config, stash: Stash) -> list[str]:
    names = [e["model_name"] for e in config.get("model_list") or []]
    names += list(stash["models"]) + [r for f in _fallbacks(config) for r in f]
    return list(dict.fromkeys(names))


def view(config: Config, stash: Stash, route: str) -> dict[str, Any]:
    """What the config says about one route, in policy terms."""
    entries = _entries(config, stash, route)
    return {
        "enabled": bool(_live(config, route)) or not stash["models"].get(route),
        "max_concurrency": _concurrency_of(
            [(e.get("litellm_params") or {}).get("max_parallel_requests") for e in entries]
        ),
        "fallback": _fallback_of(_chain(config, route)),
    }


# -- writing ----------------------------------------------------------------------------


def apply_updates(
    config: Config, stash: Stash, updates: dict[str, dict[str, Any]]
) -> tuple[Config, Stash]:
    """New (config, stash) with the config-mapped fields of ``updates`` set; inputs untouched."""
    config, stash = copy.deepcopy(config), copy.deepcopy(stash)
    for route, fields in updates.items():
        # Enable first, so a concurrency change in the same update reaches live entries.
        if fields.get("enabled") is True:
            _enable(config, stash, route)
        if "max_concurrency" in fields:
            _set_concurrency(config, stash, route, fields["max_concurrency"])
        if "fallback" in fields:
            _set_fallback(config, stash, route, fields["fallback"])
        if fields.get("enabled") is False:
            _disable(config, stash, route)
    return config, stash


def _disable(config: Config, stash: Stash, route: str) -> None:
    models = config.get("model_list") or []
    removed = [{"index": i, "entry": e} for i, e in enumerate(models) if e["model_name"] == route]
    if not removed:
        return  # nothing live (already disabled, or a route only the policy file knows)
    stash["models"][route] = removed
    config["model_list"] = [e for e in models if e["model_name"] != route]


def _enable(config: Config, stash: Stash, route: str) -> None:
    stashed = stash["models"].pop(route, None)
    if not stashed or _live(config, route):
        return
    models = list(config.get("model_list") or [])
    for item in sorted(stashed, key=lambda s: s["index"]):
        models.insert(min(item["index"], len(models)), item["entry"])
    config["model_list"] = models


def _set_concurrency(config: Config, stash: Stash, route: str, value: int | None) -> None:
    entries = _entries(config, stash, route)
    if not entries:
        return
    original = stash["concurrency"].get(route)
    if original is not None and len(original) == len(entries) and value == _concurrency_of(
        original
    ):
        for entry, old in zip(entries, original, strict=True):
            _set_param(entry, "max_parallel_requests", old)
        del stash["concurrency"][route]
        return
    if original is None:
        stash["concurrency"][route] = [
            (e.get("litellm_params") or {}).get("max_parallel_requests") for e in entries
        ]
    for entry in entries:
        _set_param(entry, "max_parallel_requests", value)


def _set_param(entry: dict[str, Any], key: str, value: Any) -> None:
    params = entry.setdefault("litellm_params", {})
    if value is None:
        params.pop(key, None)
    else:
        params[key] = value


def _set_fallback(config: Config, stash: Stash, route: str, value: str | None) -> None:
    current = _chain(config, route)
    if route in stash["fallbacks"]:
        original = stash["fallbacks"][route]
        if value == _fallback_of(original):
            _put_chain(config, route, original)
            del stash["fallbacks"][route]
            return
    elif _fallback_of(current) == value:
        return
    else:
        stash["fallbacks"][route] = current
    _put_chain(config, route, [value] if value is not None else None)


def _put_chain(config: Config, route: str, chain: list[Any] | None) -> None:
    items = _fallbacks(config)
    kept = [f for f in items if route not in f]
    if chain:
        pos = next((i for i, f in enumerate(items) if route in f), len(kept))
        kept.insert(min(pos, len(kept)), {route: list(chain)})
    rs = config.setdefault("router_settings", {}) if (kept or "router_settings" in config) else None
    if rs is None:
        return
    if kept:
        rs["fallbacks"] = kept
    else:
        rs.pop("fallbacks", None)


def expected_deployments(config: Config) -> dict[str, list[int | None]]:
    """Per route, the ``max_parallel_requests`` of each deployment the proxy should report."""
    out: dict[str, list[int | None]] = {}
    for entry in config.get("model_list") or []:
        value = (entry.get("litellm_params") or {}).get("max_parallel_requests")
        out.setdefault(entry["model_name"], []).append(value)
    return out
