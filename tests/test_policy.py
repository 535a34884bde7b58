"""Policies: compile errors at load (with line and column), signals as CEL sees them,
the decision and its reason, min_awake, max_lifetime, keep_awake_when, prediction."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from siesta.config import ConfigError, parse_config
from siesta.core.model import Session, State
from siesta.core.policy import (
    STRICT_MARGIN,
    EvaluationError,
    Policy,
    PolicyError,
    Signals,
    compile_rule,
)
from siesta.signals import RateWindow, Window, read_signals

MINUTE = 60.0
TEMPLATE = "templates:\n  web: {command: [app], policy: default}\n"


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="siesta.yaml", base_dir=tmp_path)
    return caught.value.problems


def policy(sleep_when: str, **settings: object) -> Policy:
    keep = settings.pop("keep_awake_when", None)
    return Policy(
        "default",
        compile_rule("sleep_when", sleep_when),
        keep_awake_when=None if keep is None else compile_rule("keep_awake_when", str(keep)),
        **settings,  # type: ignore[arg-type]
    )


# Compile errors, through the config file -------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "'idel_for > duration(\"15m\")'",
            "unknown variable 'idel_for' (column 1): did you mean 'idle_for'?",
        ),
        (
            "'idle_for > duration(\"15m\") &&'",
            "syntax error: mismatched input '<EOF>' (column 30)",
        ),
        ("'connections + 1'", "must give true or false, but gives int (2) (column 1)"),
        ("'cpu_percent'", "must give true or false, but gives double (2.5) (column 1)"),
        ("'connections == 0 && fooo(1)'", "unknown function 'fooo' (column 21)"),
        (
            '\'connections == 0 && in_window("Mon-Fry 08:00-18:00", "UTC")\'',
            "in_window: 'Fry' in 'Mon-Fry 08:00-18:00' is not a day: use Mon, Tue, Wed, Thu, "
            "Fri, Sat or Sun (column 21)",
        ),
        (
            "'idle_for > 5'",
            'the types do not match (CEL does not convert: compare durations with duration("15m"), '
            "doubles with 5.0)",
        ),
    ],
)
def test_rule_errors_name_policy_key_line_and_column(
    tmp_path: Path, rule: str, message: str
) -> None:
    """Each kind of mistake is refused at load, on the line of the key, with the column."""
    text = f"{TEMPLATE}policies:\n  default:\n    min_awake: 2m\n    sleep_when: {rule}\n"
    assert problems(tmp_path, text) == [f"siesta.yaml:6 policies.default.sleep_when: {message}"]


def test_the_example_error_of_the_issue(tmp_path: Path) -> None:
    """siesta.yaml:7 policies.default.sleep_when: unknown variable 'idel_for' (column 1)."""
    text = (
        "templates:\n  web:\n    command: [app]\n    policy: default\n"
        "policies:\n  default:\n    sleep_when: 'idel_for > duration(\"15m\")'\n"
    )
    assert problems(tmp_path, text)[0].startswith(
        "siesta.yaml:7 policies.default.sleep_when: unknown variable 'idel_for' (column 1)"
    )


def test_a_multi_line_rule_reports_line_and_column_in_the_rule(tmp_path: Path) -> None:
    """In a block scalar the position is given as line and column inside the expression."""
    text = (
        f"{TEMPLATE}policies:\n  default:\n    keep_awake_when: |\n"
        "      connections > 0 ||\n      inflght > 0\n    sleep_when: 'true'\n"
    )
    assert problems(tmp_path, text) == [
        "siesta.yaml:5 policies.default.keep_awake_when: unknown variable 'inflght' "
        "(line 2, column 1): did you mean 'inflight'?"
    ]


def test_template_policy_errors(tmp_path: Path) -> None:
    """An unknown policy name, policy with idle_timeout, warn without warn_before."""
    text = (
        "templates:\n"
        "  web: {command: [app], policy: defualt}\n"
        "  api: {command: [app], policy: default, idle_timeout: 5m}\n"
        "policies:\n"
        "  default:\n"
        "    sleep_when: 'idle_for > duration(\"1m\")'\n"
        "    warn: {webhook: 'http://127.0.0.1:9/hook'}\n"
    )
    assert problems(tmp_path, text) == [
        "siesta.yaml:5 policies.default.warn_before: is required when the other of warn, "
        "warn_before is set"
    ]
    text = text.replace("    warn: {webhook: 'http://127.0.0.1:9/hook'}\n", "")
    assert problems(tmp_path, text) == [
        "siesta.yaml:2 templates.web.policy: unknown policy 'defualt' (known: default)",
        "siesta.yaml:3 templates.api.idle_timeout: set either policy or idle_timeout: the "
        "policy decides when it sleeps",
    ]


def test_warn_takes_a_webhook_url_or_a_command(tmp_path: Path) -> None:
    """Both or neither is refused; a webhook must be an http(s) URL."""
    base = f"{TEMPLATE}policies:\n  default:\n    sleep_when: 'true'\n    warn_before: 1m\n"
    assert problems(tmp_path, base + "    warn: {}\n") == [
        "siesta.yaml:7 policies.default.warn: "
        "set exactly one of webhook (a URL) or command (a list)"
    ]
    assert problems(tmp_path, base + "    warn: {webhook: 'ftp://x'}\n") == [
        "siesta.yaml:7 policies.default.warn.webhook: must be an http:// or https:// URL, "
        "e.g. http://127.0.0.1:9000/hook"
    ]


def test_a_full_policy_loads_and_templates_get_theirs(tmp_path: Path) -> None:
    """The issue's example loads; a template without a policy gets the idle_timeout rule."""
    text = (
        "templates:\n"
        "  web: {command: [app], policy: default}\n"
        "  plain: {command: [app], idle_timeout: 10m}\n"
        "policies:\n"
        "  default:\n"
        "    sleep_when: 'idle_for > duration(\"15m\") && connections == 0 && inflight == 0'\n"
        "    keep_awake_when: >-\n"
        '      in_window("Mon-Fri 08:00-18:00", "Europe/Paris") && labels.tier == "gold"\n'
        "    min_awake: 2m\n"
        "    max_lifetime: 12h\n"
        "    warn_before: 5m\n"
        "    warn: {webhook: 'http://127.0.0.1:9000/hook'}\n"
        "  notebooks:\n"
        "    sleep_when: >-\n"
        '      idle_for > duration("30m") && app.busy_kernels == 0 && cpu_percent < 5.0\n'
    )
    config = parse_config(text, source="siesta.yaml", base_dir=tmp_path)
    web = config.policy_for("web")
    assert web.name == "default"
    assert (web.min_awake, web.max_lifetime) == (120.0, 43200.0)
    assert web.warn is not None
    assert (web.warn.before, web.warn.webhook) == (300.0, "http://127.0.0.1:9000/hook")
    assert web.keep_awake_when is not None
    assert web.keep_awake_when.windows == (("Mon-Fri 08:00-18:00", "Europe/Paris"),)
    plain = config.policy_for("plain")
    assert plain.name == "idle_timeout"
    assert plain.sleep_when.source == 'idle_for >= duration("10m") && inflight == 0'
    assert set(config.template_policies()) == {"web", "plain"}


# Signals as CEL sees them ----------------------------------------------------------------


SIGNALS = Signals(
    idle_for=962.0,
    awake_for=3600.0,
    age=86400.0,
    connections=2,
    inflight=1,
    requests_1m=30,
    bytes_1m=4096,
    cpu_percent=12.5,
    memory_bytes=300_000_000,
    app={"busy_kernels": 1, "ok": True},
    now=datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
    labels={"tier": "gold"},
    at=5000.0,
)


@pytest.mark.parametrize(
    "rule",
    [
        'type(idle_for) == type(duration("1s")) && idle_for == duration("16m2s")',
        'type(awake_for) == type(duration("1s")) && awake_for == duration("1h")',
        'type(age) == type(duration("1s")) && age == duration("24h")',
        "type(connections) == int && connections == 2",
        "type(inflight) == int && inflight == 1",
        "type(requests_1m) == int && requests_1m == 30",
        "type(bytes_1m) == int && bytes_1m == 4096",
        "type(cpu_percent) == double && cpu_percent == 12.5",
        "type(memory_bytes) == int && memory_bytes == 300000000",
        "type(app) == map && app.busy_kernels == 1 && app.ok",
        'type(now) == type(timestamp("2020-01-01T00:00:00Z"))'
        ' && now == timestamp("2026-03-02T09:30:00Z")',
        'type(labels) == map && labels.tier == "gold"',
        'in_window("Mon 10:00-11:00", "Europe/Paris") && !in_window("Mon 10:00-11:00")',
    ],
)
def test_every_signal_reaches_cel_with_its_type(rule: str) -> None:
    """Durations are durations, counts ints, cpu a double, maps maps, now a timestamp."""
    assert compile_rule("sleep_when", rule).holds(SIGNALS)


def test_read_signals_takes_them_from_the_session() -> None:
    """Counters from Activity, durations from the clock, cpu/memory from the provider."""
    session = Session("alice", "web", labels={"tier": "gold"}, state=State.AWAKE)
    session.created = 1_700_000_000.0 - 7200
    session.awake_since = 100.0
    activity = session.activity
    activity.last_activity, activity.connections, activity.inflight = 400.0, 3, 1
    signals = read_signals(
        session,
        monotonic=1000.0,
        wall=1_700_000_000.0,
        rates=(7, 700),
        window=Window(cpu_percent=3.5, memory_bytes=1234),
        app={"ok": False},
    )
    assert signals == Signals(
        idle_for=600.0,
        awake_for=900.0,
        age=7200.0,
        connections=3,
        inflight=1,
        requests_1m=7,
        bytes_1m=700,
        cpu_percent=3.5,
        memory_bytes=1234,
        app={"ok": False},
        now=datetime.fromtimestamp(1_700_000_000.0, UTC),
        labels={"tier": "gold"},
        at=1000.0,
    )


def test_rates_over_the_last_minute() -> None:
    """Counts since the wake while young; since a minute ago after; scaled when sparse."""
    window = RateWindow(0.0, requests=100, nbytes=1000)
    assert window.sample(30.0, 110, 2000) == (10, 1000)
    assert window.sample(60.0, 130, 3000) == (30, 2000)
    assert window.sample(90.0, 131, 3100) == (21, 1100)  # since the sample at 30s
    assert window.sample(390.0, 161, 3100) == (6, 0)  # 30 in 300s: 6 a minute


# Decisions -------------------------------------------------------------------------------


def test_the_reason_names_the_rule_and_the_values() -> None:
    """Asleep with the rule and the values of the signals it reads."""
    rule = policy('idle_for > duration("15m") && connections == 0')
    decision = rule.evaluate(Signals(idle_for=962.0, awake_for=2000.0, at=5000.0))
    assert decision.sleep
    assert decision.reason == (
        'sleep_when: idle_for > duration("15m") && connections == 0 [idle_for=16m2s, connections=0]'
    )
    assert decision.sleep_at == 5000.0


def test_not_yet_predicts_when_and_checks_then() -> None:
    """Idle 5m of a 15m rule: next check and foreseen sleep 10m later (+1ms for '>')."""
    rule = policy('idle_for > duration("15m") && connections == 0')
    decision = rule.evaluate(Signals(idle_for=300.0, awake_for=300.0, at=5000.0))
    assert not decision.sleep
    assert decision.reason.startswith("not sleep_when: ")
    assert decision.sleep_at == decision.next_check == 5000.0 + 600.0 + STRICT_MARGIN
    inclusive = policy('idle_for >= duration("15m")')
    assert inclusive.evaluate(Signals(idle_for=300.0, at=0.0)).next_check == 600.0


def test_busy_now_means_watching_the_traffic_not_polling() -> None:
    """With a connection open the rule cannot become true by time alone: no timer, but
    the decision asks to be told when the connections fall (`watch`)."""
    rule = policy('idle_for > duration("15m") && connections == 0', check_every=45.0)
    decision = rule.evaluate(Signals(idle_for=3000.0, connections=1, at=10.0))
    assert (decision.sleep, decision.sleep_at, decision.next_check) == (False, None, math.inf)
    assert decision.watch
    assert not rule.evaluate(Signals(idle_for=3000.0, connections=0, at=10.0)).watch


@pytest.mark.parametrize(
    ("sleep_when", "keep_awake_when", "falls"),
    [
        ('idle_for > duration("1m") && connections == 0 && inflight == 0', None, True),
        ("inflight < 3", None, True),
        ("0 == connections", None, True),
        ("connections <= 1", "connections > 4", True),
        ("inflight == 0", "inflight != 0", True),
        ("connections > 9", None, False),  # true as they rise: polled
        ("connections == 2", None, False),
        ("inflight == 0", "connections < 2", False),
        ("!(connections != 0)", None, False),  # read some other way: polled
    ],
)
def test_which_traffic_comparisons_are_watched_rather_than_polled(
    sleep_when: str, keep_awake_when: str | None, falls: bool
) -> None:
    """Counts that can only make the policy sleep by falling are watched; any other use of
    connections or inflight keeps a check every check_every while they are nonzero."""
    rule = policy(sleep_when, check_every=45.0, keep_awake_when=keep_awake_when)
    assert rule.traffic_falls is falls
    decision = rule.evaluate(Signals(idle_for=5.0, connections=7, inflight=7, at=10.0))
    assert decision.watch
    assert decision.next_check == (math.inf if falls else 55.0)


@pytest.mark.parametrize(
    "source",
    [
        'idle_for > duration("15m") && connections == 0 && inflight == 0',
        'idle_for >= duration("1h30m") || (awake_for > duration("2s") && !(inflight > 0))',
        "cpu_percent < 5.0 && memory_bytes > 1000 && requests_1m <= 3",
        'in_window("Mon-Fri 08:00-18:00", "Europe/Paris") && age < duration("10m")',
        "true && connections != 1",
    ],
)
def test_simple_rules_run_as_python_and_agree_with_cel(source: str) -> None:
    """Rules of comparisons with literals get a plain-Python twin; it gives what CEL gives
    on readings across their thresholds, now and later (the offset predictions use)."""
    rule = compile_rule("sleep_when", source)
    assert rule.fast is not None
    for idle in (0.0, 1.9, 2.0, 2.1, 900.0, 5400.0, 5400.001, 86400.0):
        for count in (0, 1, 3):
            for cpu in (0.0, 4.99, 5.0, 60.0):
                signals = Signals(
                    idle_for=idle,
                    awake_for=idle / 2,
                    age=idle * 3,
                    connections=count,
                    inflight=count,
                    requests_1m=count,
                    cpu_percent=cpu,
                    memory_bytes=count * 1000,
                    now=datetime(2026, 3, 2, 17, 59, 59, tzinfo=UTC),
                )
                for offset in (0.0, 0.5, 1.0, 3600.0):
                    expected = rule.holds_by_cel(signals, offset)
                    assert rule.holds(signals, offset) is expected, (signals, offset)


@pytest.mark.parametrize(
    "source",
    [
        'labels.tier == "gold"',
        "connections == 0.0",
        "cpu_percent < 5",
        'now > timestamp("2026-01-01T00:00:00Z")',
        "connections + inflight == 0",
        "app.ok",
    ],
)
def test_other_rules_run_through_cel(source: str) -> None:
    """Maps, mixed number types, timestamps or arithmetic: no twin, CEL decides."""
    try:
        rule = compile_rule("sleep_when", source)
    except PolicyError:
        return  # refused at load (e.g. CEL does not compare int with double): fine too
    assert rule.fast is None


def test_volatile_signals_are_rechecked_even_when_foreseen() -> None:
    """A cpu rule can become true without traffic: checked every check_every regardless."""
    rule = policy('idle_for > duration("15m") || cpu_percent < 1.0', check_every=30.0)
    decision = rule.evaluate(Signals(idle_for=0.0, cpu_percent=50.0, at=0.0))
    assert decision.sleep_at == 900.0 + STRICT_MARGIN
    assert decision.next_check == 30.0


def test_min_awake_holds_off_a_true_rule() -> None:
    """sleep_when true one minute after a wake, min_awake 2m: not before 2m."""
    rule = policy("connections == 0", min_awake=120.0)
    early = rule.evaluate(Signals(awake_for=60.0, at=60.0))
    assert not early.sleep
    assert early.reason == "min_awake: awake for 1m < 2m"
    assert early.next_check == early.sleep_at == 120.0
    assert rule.evaluate(Signals(awake_for=120.0, at=120.0)).sleep


def test_max_lifetime_wins_over_everything() -> None:
    """Busy and inside keep_awake_when: asleep anyway once awake for max_lifetime."""
    rule = policy("false", keep_awake_when="true", max_lifetime=3600.0)
    busy = Signals(awake_for=1800.0, connections=5, at=1800.0)
    assert rule.evaluate(busy).sleep_at == 3600.0
    decision = rule.evaluate(Signals(awake_for=3600.0, connections=5, at=3600.0))
    assert decision.sleep
    assert decision.reason == "max_lifetime: awake for 1h >= 1h"


def test_keep_awake_when_wins_over_sleep_when() -> None:
    """Gold sessions stay awake in office hours however idle; the reason says so."""
    rule = policy(
        'idle_for > duration("15m")',
        keep_awake_when='in_window("Mon-Fri 08:00-18:00", "Europe/Paris") && labels.tier == "gold"',
    )
    monday_9 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # 09:00 in Paris
    gold = Signals(idle_for=7200.0, now=monday_9, labels={"tier": "gold"}, at=0.0)
    decision = rule.evaluate(gold)
    assert not decision.sleep
    assert decision.reason == (
        'keep_awake_when: in_window("Mon-Fri 08:00-18:00", "Europe/Paris") && '
        'labels.tier == "gold" [labels={tier: gold}]'
    )
    assert decision.sleep_at == 9 * 3600.0  # 18:00 in Paris, when the window closes
    assert rule.evaluate(Signals(idle_for=7200.0, now=monday_9, labels={"tier": "x"})).sleep


def test_a_runtime_failure_is_an_evaluation_error() -> None:
    """A missing label is not a crash: EvaluationError, which the controller counts."""
    rule = policy('labels.tier == "gold"')
    with pytest.raises(EvaluationError, match="no key 'tier'"):
        rule.evaluate(Signals())


def test_idle_timeout_shorthand_is_a_policy() -> None:
    """The template's idle_timeout: idle that long and nothing in flight."""
    idle = Policy.idle(900.0)
    assert idle.evaluate(Signals(idle_for=900.0, at=1.0)).reason == (
        'idle_timeout: idle_for >= duration("15m") && inflight == 0 [idle_for=15m, inflight=0]'
    )
    busy = idle.evaluate(Signals(idle_for=1000.0, inflight=2, at=0.0))
    assert not busy.sleep
    assert busy.watch  # the gateway says when the requests in flight end
    assert busy.next_check == math.inf
    recent = idle.evaluate(Signals(idle_for=20.0, at=100.0))
    assert recent.next_check == 980.0


def test_policy_error_carries_key_and_position() -> None:
    """Callers other than the config (explain, replay) get the parts apart."""
    with pytest.raises(PolicyError) as caught:
        compile_rule("keep_awake_when", "connections > 0 && idel_for > duration('1m')")
    assert (caught.value.key, caught.value.line, caught.value.column) == ("keep_awake_when", 1, 20)


def test_open_connections_are_watched_beside_a_late_prediction() -> None:
    """With max_lifetime 12h and a connection open, the only foreseeable sleep is at 12h:
    that is the next check, and the decision asks to hear when the connection closes."""
    rule = policy('idle_for > duration("15m") && connections == 0', max_lifetime=12 * 3600.0)
    decision = rule.evaluate(Signals(idle_for=16 * 60.0, connections=1, awake_for=960.0, at=960.0))
    assert not decision.sleep
    assert decision.sleep_at == 12 * 3600.0
    assert decision.next_check == 12 * 3600.0
    assert decision.watch
