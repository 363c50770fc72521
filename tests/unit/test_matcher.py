"""The matcher: condition semantics, ranking, explanations, and the index's equivalence."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.base.errors import InputError
from bot.intake.alert import Alert
from bot.playbook.matcher import Matcher, explanation_to_json
from bot.playbook.schema import Playbook

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"


def pb(
    pid: str,
    *,
    any: list[dict] | None = None,
    all: list[dict] | None = None,
    severity: str = "high",
    cls: str = "runaway_cost",
) -> Playbook:
    return Playbook.model_validate(
        {
            "id": pid,
            "title": pid.replace("-", " ").title(),
            "class": cls,
            "severity": severity,
            "match": {"any": any or [], "all": all or []},
            "steps": [{"id": "s1", "title": "step", "action": "cap_output_length"}],
        }
    )


def alert(**labels: str) -> Alert:
    return Alert(
        source="generic",
        fingerprint="f",
        status="firing",
        labels=labels,
        starts_at=datetime(2026, 11, 29, tzinfo=UTC),
    )


def ids(results: list[Any]) -> list[str]:
    return [r.playbook.id for r in results]


# --- condition forms ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "labels", "held", "why"),
    [
        ({"alertname": "A"}, {"alertname": "A"}, True, "alertname = A"),
        ({"alertname": "A"}, {"alertname": "B"}, False, "label alertname is 'B', wanted 'A'"),
        ({"alertname": "A"}, {"route": "chat"}, False, "label alertname missing"),
        ({"label": "route", "equals": "chat"}, {"route": "chat"}, True, "route = chat"),
        (
            {"label": "route", "equals": "chat"},
            {"route": "embed"},
            False,
            "label route is 'embed', wanted 'chat'",
        ),
        ({"label": "route", "equals": "chat"}, {}, False, "label route missing"),
        (
            {"label": "route", "in": ["chat", "chat-small"]},
            {"route": "chat-small"},
            True,
            "route in [chat, chat-small] ('chat-small')",
        ),
        (
            {"label": "route", "in": ["chat", "chat-small"]},
            {"route": "embed"},
            False,
            "label route is 'embed', wanted one of [chat, chat-small]",
        ),
        ({"label": "route", "in": ["chat"]}, {}, False, "label route missing"),
        (
            {"label": "route", "regex": "chat(-.*)?"},
            {"route": "chat-large"},
            True,
            "route =~ /chat(-.*)?/ ('chat-large')",
        ),
        # Full match: a prefix or a substring is not enough.
        (
            {"label": "route", "regex": "chat"},
            {"route": "chat-large"},
            False,
            "label route is 'chat-large', does not match /chat/",
        ),
        (
            {"label": "route", "regex": "chat"},
            {"route": "mychat"},
            False,
            "label route is 'mychat', does not match /chat/",
        ),
        (
            {"label": "route", "regex": "a|b"},
            {"route": "ab"},
            False,
            "label route is 'ab', does not match /a|b/",
        ),
        ({"label": "route", "regex": ".*"}, {}, False, "label route missing"),
        ({"label": "route", "absent": True}, {}, True, "label route is absent"),
        (
            {"label": "route", "absent": True},
            {"route": "chat"},
            False,
            "label route is present ('chat'), wanted absent",
        ),
        (
            {"label": "route", "absent": False},
            {"route": "chat"},
            True,
            "label route is present ('chat')",
        ),
        ({"label": "route", "absent": False}, {}, False, "label route is absent, wanted present"),
    ],
)
def test_condition_forms(condition: dict, labels: dict, held: bool, why: str) -> None:
    labels = {"alertname": "Other", **labels} if "alertname" not in condition else labels
    playbook = pb("p", all=[condition])
    matches, near = Matcher([playbook]).explain(alert(**labels))
    if held:
        assert ids(matches) == ["p"]
        assert [r.why for r in matches[0].matched] == [why]
    else:
        assert matches == []
        assert [r.why for r in near[0].failed] == [why]
        assert all(not r.held for r in near[0].failed)
    assert ids(Matcher([playbook]).match(alert(**labels))) == (["p"] if held else [])


def test_long_values_are_shortened_in_reasons() -> None:
    m = Matcher([pb("p", all=[{"label": "route", "equals": "chat"}])])
    _, [near] = m.explain(alert(alertname="A", route="x" * 5000))
    assert len(near.failed[0].why) < 200 and "…" in near.failed[0].why


# --- any / all semantics ------------------------------------------------------------------


def test_any_needs_one_and_all_needs_every() -> None:
    p = pb(
        "p",
        any=[{"alertname": "A"}, {"label": "incident_class", "equals": "runaway_cost"}],
        all=[{"label": "env", "equals": "prod"}],
    )
    m = Matcher([p])
    assert ids(m.match(alert(alertname="A", env="prod"))) == ["p"]
    assert ids(m.match(alert(alertname="Z", incident_class="runaway_cost", env="prod"))) == ["p"]
    assert m.match(alert(alertname="A", env="staging")) == []
    assert m.match(alert(alertname="Z", env="prod")) == []


def test_match_lists_every_condition_that_held() -> None:
    p = pb("p", any=[{"alertname": "A"}, {"label": "incident_class", "equals": "runaway_cost"}])
    [result] = Matcher([p]).match(alert(alertname="A", incident_class="runaway_cost"))
    assert [r.why for r in result.matched] == ["alertname = A", "incident_class = runaway_cost"]


# --- ranking -------------------------------------------------------------------------------


def test_specific_playbook_outranks_generic_one() -> None:
    specific = pb(
        "cost-burn",
        any=[
            {"alertname": "LLMCostBurnRateHigh"},
            {"label": "incident_class", "equals": "runaway_cost"},
        ],
    )
    generic = pb(
        "any-cost", any=[{"label": "incident_class", "equals": "runaway_cost"}], severity="critical"
    )
    regex = pb("cost-ish", any=[{"label": "alertname", "regex": "LLMCost.*"}], severity="critical")
    m = Matcher([generic, regex, specific])
    results = m.match(alert(alertname="LLMCostBurnRateHigh", incident_class="runaway_cost"))
    assert ids(results) == ["cost-burn", "any-cost", "cost-ish"]
    assert results[0].score > results[1].score > results[2].score


def test_equality_outweighs_regex_and_in() -> None:
    eq = pb("eq", all=[{"label": "route", "equals": "chat"}], severity="info")
    rx = pb("rx", all=[{"label": "route", "regex": "chat"}], severity="critical")
    inn = pb("inn", all=[{"label": "route", "in": ["chat", "embed"]}], severity="critical")
    results = Matcher([rx, inn, eq]).match(alert(alertname="A", route="chat"))
    assert ids(results)[0] == "eq"


def test_all_conditions_add_specificity() -> None:
    one = pb("one", any=[{"alertname": "A"}])
    two = pb("two", any=[{"alertname": "A"}], all=[{"label": "env", "equals": "prod"}])
    assert ids(Matcher([one, two]).match(alert(alertname="A", env="prod"))) == ["two", "one"]


def test_ties_broken_by_severity_then_id() -> None:
    a_warn = pb("a-warn", any=[{"alertname": "A"}], severity="warning")
    b_crit = pb("b-crit", any=[{"alertname": "A"}], severity="critical")
    c_crit = pb("c-crit", any=[{"alertname": "A"}], severity="critical")
    a_info = pb("a-info", any=[{"alertname": "A"}], severity="info")
    results = Matcher([a_info, c_crit, a_warn, b_crit]).match(alert(alertname="A"))
    assert ids(results) == ["b-crit", "c-crit", "a-warn", "a-info"]
    # The severity bonus never outweighs a condition.
    assert results[0].score - results[-1].score < 0.5


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(InputError, match="duplicate playbook id 'p'"):
        Matcher([pb("p", any=[{"alertname": "A"}]), pb("p", any=[{"alertname": "B"}])])


def test_shipped_playbooks_rank_their_own_alert_first() -> None:
    books = [
        Playbook.model_validate(yaml.safe_load(p.read_text()))
        for p in sorted(PLAYBOOKS.glob("*.yaml"))
    ]
    m = Matcher(books)
    results = m.match(alert(alertname="LLMCostBurnRateHigh", incident_class="runaway_cost"))
    assert ids(results)[:1] == ["runaway-cost"]
    assert m.match(alert(alertname="SomethingElse")) == []


# --- explain -------------------------------------------------------------------------------


def test_explain_near_misses_with_reasons() -> None:
    chat = pb(
        "chat-cost",
        any=[{"alertname": "LLMCostBurnRateHigh"}],
        all=[{"label": "route", "equals": "chat"}],
    )
    embed = pb(
        "embed-latency",
        all=[{"alertname": "LLMRequestLatencyHigh"}, {"label": "route", "equals": "embed"}],
    )
    unrelated = pb("unrelated", any=[{"alertname": "Nope"}, {"label": "x", "in": ["1"]}])
    m = Matcher([chat, embed, unrelated])
    matches, near = m.explain(alert(alertname="LLMCostBurnRateHigh", route="embed"))
    assert matches == []
    assert ids(near) == ["chat-cost", "embed-latency"]  # both had a condition hold
    assert [r.why for r in near[0].matched] == ["alertname = LLMCostBurnRateHigh"]
    assert [r.why for r in near[0].failed] == ["label route is 'embed', wanted 'chat'"]
    assert [r.why for r in near[1].failed] == [
        "label alertname is 'LLMCostBurnRateHigh', wanted 'LLMRequestLatencyHigh'"
    ]


def test_explain_falls_back_to_closest_when_nothing_held() -> None:
    small = pb("small", any=[{"alertname": "A"}])
    big = pb("big", all=[{"alertname": "B"}, {"label": "route", "equals": "chat"}])
    matches, near = Matcher([big, small]).explain(alert(alertname="Z"), limit=1)
    assert matches == [] and ids(near) == ["small"]
    assert [r.why for r in near[0].failed] == ["label alertname is 'Z', wanted 'A'"]


def test_explain_limit_and_matches_with_json() -> None:
    books = [
        pb(f"p{i}", any=[{"alertname": "A"}], all=[{"label": "n", "equals": str(i)}])
        for i in range(10)
    ]
    m = Matcher(books)
    matches, near = m.explain(alert(alertname="A", n="3"), limit=4)
    assert ids(matches) == ["p3"] and len(near) == 4
    assert m.explain(alert(alertname="A", n="3"), limit=0)[1] == []
    data = m.to_json(alert(alertname="A", n="3"), limit=2)
    assert data == explanation_to_json(matches, near[:2])
    assert data["matches"][0]["playbook"] == "p3"
    assert data["matches"][0]["matched"][0] == {
        "condition": {"alertname": "A"},
        "describe": "alertname = A",
        "held": True,
        "why": "alertname = A",
    }
    assert data["near_misses"][0]["failed"][0]["condition"] == {"label": "n", "equals": "0"}


# --- index ---------------------------------------------------------------------------------


def test_index_files_playbooks_as_documented() -> None:
    m = Matcher(
        [
            pb("any-keyed", any=[{"alertname": "A"}, {"label": "r", "in": ["x", "y"]}]),
            pb(
                "any-regex",
                any=[{"alertname": "A"}, {"label": "r", "regex": "x.*"}],
                all=[{"label": "env", "equals": "prod"}],
            ),
            pb("all-regex", all=[{"label": "r", "regex": "x.*"}]),
            pb("absent-only", all=[{"label": "r", "absent": True}]),
        ]
    )
    assert m.always_checked == ["all-regex", "absent-only"]
    # any-regex is filed under its `all` key env=prod and still found through it.
    assert ids(m.match(alert(alertname="A", env="prod"))) == [
        "any-regex",
        "any-keyed",
        "absent-only",
    ]
    assert ids(m.match(alert(alertname="Q", r="y"))) == ["any-keyed"]


LABELS = {
    "alertname": ["A", "B", "C", "D"],
    "route": ["chat", "embed", "chat-small"],
    "env": ["prod", "staging"],
    "incident_class": ["runaway_cost", "latency_spike"],
}


def random_condition(rng: random.Random) -> dict:
    label = rng.choice(list(LABELS))
    values = LABELS[label]
    form = rng.choice(["alertname", "equals", "in", "regex", "absent"])
    if form == "alertname":
        return {"alertname": rng.choice(LABELS["alertname"])}
    if form == "equals":
        return {"label": label, "equals": rng.choice(values)}
    if form == "in":
        return {"label": label, "in": rng.sample(values, rng.randint(1, len(values)))}
    if form == "regex":
        return {"label": label, "regex": rng.choice(["chat.*", "A|B", "prod", ".*", "[a-z]+"])}
    return {"label": label, "absent": rng.choice([True, False])}


def test_index_equals_linear_evaluation_on_random_sets() -> None:
    rng = random.Random(20261129)
    severities = ["critical", "high", "warning", "info"]
    for _ in range(30):
        books = []
        for i in range(40):
            n_any = rng.randint(0, 3)
            books.append(
                pb(
                    f"p{i}",
                    any=[random_condition(rng) for _ in range(n_any)],
                    all=[random_condition(rng) for _ in range(rng.randint(0 if n_any else 1, 2))],
                    severity=rng.choice(severities),
                )
            )
        m = Matcher(books)
        for _ in range(40):
            labels = {k: rng.choice(v) for k, v in LABELS.items() if rng.random() < 0.7}
            a = alert(**labels)
            fast, slow = m.match(a), m.match_linear(a)
            assert [(r.playbook.id, r.score) for r in fast] == [
                (r.playbook.id, r.score) for r in slow
            ]
            assert ids(fast) == ids(m.explain(a)[0])
