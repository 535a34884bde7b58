"""The config file: loading, defaults, resolved paths, and one-line errors with file:line key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from siesta.config import ConfigError, config_json_schema, load_config, parse_config
from siesta.core.duration import format_duration, parse_duration

GOOD = """\
gateway:
  listen: "[::1]:9000"
  wake_timeout: 2m
store: state/siesta.db
templates:
  web:
    command: ["python3", "-m", "http.server", "{port}"]
    ready: {http: /healthz}
    cwd: app
  plain:
    command: [sleep, "100"]
sessions:
  alice: {template: web}
  bob: {template: plain, labels: {tier: gold}}
"""


def write(tmp_path: Path, text: str) -> Path:
    """Write `text` (dedented) to siesta.yaml in `tmp_path`."""
    path = tmp_path / "siesta.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    """The problem lines of loading `text`, which must fail."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return [problem.removeprefix(f"{path}:") for problem in caught.value.problems]


def test_good_config_loads_with_defaults_and_resolved_paths(tmp_path: Path) -> None:
    """A good file loads; unset keys get their defaults; paths start at the file's folder."""
    config = load_config(write(tmp_path, GOOD))

    assert config.path == tmp_path / "siesta.yaml"
    assert (config.gateway.host, config.gateway.port) == ("::1", 9000)
    assert config.gateway.wake_timeout == 120.0
    assert config.gateway.routing == "path"
    assert config.gateway.keepalive_timeout == 75.0
    assert config.store_path == tmp_path.resolve() / "state" / "siesta.db"
    assert config.state_dir == tmp_path.resolve() / "state"
    assert config.log_dir == tmp_path.resolve() / "state" / "logs"
    web, plain = config.templates["web"], config.templates["plain"]
    assert web.ready.http == "/healthz"
    assert web.cwd == tmp_path.resolve() / "app"
    assert plain.ready.tcp
    assert plain.cwd is None
    assert plain.idle_timeout == 900.0
    assert plain.failure_backoff == 30.0
    assert config.sessions["bob"].labels == {"tier": "gold"}
    assert config.sessions["alice"].labels == {}


def test_minimal_config_defaults_everything_but_templates(tmp_path: Path) -> None:
    """Only `templates` is required; the store defaults to .siesta/state.db beside the file."""
    config = parse_config("templates: {web: {command: [x]}}\n", base_dir=tmp_path)

    assert config.sessions == {}
    assert config.path is None
    assert config.gateway.listen == "127.0.0.1:8080"
    assert config.gateway.port == 8080
    assert config.store_path == tmp_path.resolve() / ".siesta" / "state.db"


def test_config_is_frozen(tmp_path: Path) -> None:
    """A loaded config cannot be changed by accident."""
    config = parse_config("templates: {}\n", base_dir=tmp_path)

    with pytest.raises(ValidationError):
        config.store = Path("elsewhere")


def test_command_of_the_wrong_type_names_its_line(tmp_path: Path) -> None:
    """A command written as one string is refused at its own line, in plain words."""
    found = problems(
        tmp_path,
        """\
        templates:
          web:
            idle_timeout: 5m
            command: python3 -m http.server
        """,
    )

    assert found == ["4 templates.web.command: must be a list of strings"]


def test_list_items_are_located_by_index(tmp_path: Path) -> None:
    """A bad list item is reported with its index and line, with a hint to quote numbers."""
    found = problems(
        tmp_path,
        """\
        templates:
          web:
            command:
              - python3
              - 8000
        """,
    )

    assert found == ['5 templates.web.command[1]: must be a string: quote it, e.g. "8000"']


def test_unknown_key_lists_the_known_ones(tmp_path: Path) -> None:
    """A typo is refused at its line, and the message lists the keys that exist."""
    found = problems(
        tmp_path,
        """\
        templates:
          web:
            command: [x]
            idle_timout: 5m
        """,
    )

    assert len(found) == 1
    assert found[0].startswith("4 templates.web.idle_timout: unknown key (known: command, ready,")
    assert "idle_timeout" in found[0]


def test_unknown_template_is_reported_on_the_session(tmp_path: Path) -> None:
    """A session naming a missing template points at its `template` key, listing the known."""
    found = problems(
        tmp_path,
        """\
        templates:
          web: {command: [x]}
          api: {command: [y]}
        sessions:
          alice: {template: web}
          bob:
            template: wbe
        """,
    )

    assert found == ["7 sessions.bob.template: unknown template 'wbe' (known: web, api)"]


def test_bad_duration(tmp_path: Path) -> None:
    """A duration without a known unit is refused with an example of good ones."""
    found = problems(
        tmp_path,
        """\
        gateway:
          wake_timeout: 15x
        templates: {}
        """,
    )

    assert found == [
        "2 gateway.wake_timeout: '15x' is not a duration: "
        "use a number with a unit, e.g. 500ms, 10s, 15m, 2h"
    ]


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("localhost", "'localhost' is not host:port"),
        ("::1:8080", "'::1:8080' is not host:port"),
        ("127.0.0.1:http", "'127.0.0.1:http' is not host:port"),
        ("127.0.0.1:0", "port 0 is out of range: use 1 to 65535"),
        ("127.0.0.1:65536", "port 65536 is out of range: use 1 to 65535"),
    ],
)
def test_bad_listen_address(tmp_path: Path, listen: str, message: str) -> None:
    """`listen` must be host:port with a port from 1 to 65535."""
    found = problems(tmp_path, f"templates: {{}}\ngateway:\n  listen: '{listen}'\n")

    assert len(found) == 1
    assert found[0].startswith(f"3 gateway.listen: {message}")


@pytest.mark.parametrize("name", ["bad id", "-leading-dash", "a" * 64, "dots.no"])
def test_bad_session_id(tmp_path: Path, name: str) -> None:
    """Session ids are refused unless they fit in a URL path and a host name label."""
    text = f"templates: {{web: {{command: [x]}}}}\nsessions:\n  '{name}': {{template: web}}\n"
    found = problems(tmp_path, text)

    assert found == [
        f"3 sessions.{name}: must be 1 to 63 letters, digits, '_' or '-', "
        "starting with a letter or digit"
    ]


def test_bad_template_name(tmp_path: Path) -> None:
    """Template names follow the same rule as session ids."""
    found = problems(tmp_path, "templates:\n  web/v2: {command: [x]}\n")

    assert len(found) == 1
    assert found[0].startswith("2 templates.web/v2: must be 1 to 63 letters")


def test_missing_required_key(tmp_path: Path) -> None:
    """A missing required key is named, at the line of the mapping that lacks it."""
    found = problems(tmp_path, "templates:\n  web:\n    idle_timeout: 1m\n")

    assert found == ["2 templates.web.command: is required"]


def test_ready_needs_exactly_one_check(tmp_path: Path) -> None:
    """`ready` with both checks, or a path without a leading slash, is refused."""
    found = problems(
        tmp_path,
        """\
        templates:
          a: {command: [x], ready: {http: /, tcp: true}}
          b: {command: [x], ready: {http: healthz}}
          c: {command: [x], ready: {http: "{base_url}api/{user}"}}
          d: {command: [x], ready: {http: "{base_url}api/status?s={session}&p={port}"}}
        """,
    )

    assert found == [
        "2 templates.a.ready: set exactly one of http (a path, e.g. /healthz) or tcp: true",
        "3 templates.b.ready.http: must be a path starting with '/' or {base_url}, e.g. /healthz",
        "4 templates.c.ready.http: unknown placeholder {user}: use {base_url}, {session}, {port}",
    ]


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    """All problems are reported at once, in file order, one line each."""
    found = problems(
        tmp_path,
        """\
        gateway:
          routing: dns
          max_held_total: 0
        templates:
          web: {command: [x], max_start_failures: many}
        """,
    )

    assert found == [
        "2 gateway.routing: must be 'path', 'host' or 'header'",
        "3 gateway.max_held_total: must be at least 1",
        "5 templates.web.max_start_failures: must be a whole number",
    ]


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    """A key written twice is an error rather than silently keeping the last value."""
    found = problems(tmp_path, "templates: {}\nsessions: {}\ntemplates: {}\n")

    assert found == ["3 templates: duplicate key (first at line 1)"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    """Broken YAML is reported with its line, before any validation."""
    found = problems(tmp_path, "templates:\n  web:\n    command: [x\n  other: 1\n")

    assert len(found) == 1
    assert found[0].startswith("4: YAML syntax error: ")


def test_missing_file(tmp_path: Path) -> None:
    """A file that does not exist is one clear line naming it."""
    path = tmp_path / "siesta.yaml"

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.problems == [f"{path}: no such file"]


def test_source_name_is_used_as_given(tmp_path: Path) -> None:
    """`parse_config` names problems after `source`; an empty document lacks `templates`."""
    with pytest.raises(ConfigError) as caught:
        parse_config("", source="siesta.yaml", base_dir=tmp_path)

    assert str(caught.value) == "siesta.yaml:1 templates: is required"


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    """A document that is not a mapping says so, listing the top-level keys."""
    with pytest.raises(ConfigError) as caught:
        parse_config("- 1\n", source="siesta.yaml", base_dir=tmp_path)

    assert caught.value.problems == [
        "siesta.yaml:1: must be a mapping with the keys: "
        "gateway, store, templates, sessions, policies, keda, savings, admin, instance"
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        ("45", 45.0),
        (30, 30.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    """Numbers are seconds; strings are numbers with units, largest first."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["15x", "", "10 s", "1e3s", "30m1h", "1h1h", "m", "-5s"])
def test_parse_duration_refuses_bad_strings(text: str) -> None:
    """Unknown units, spaces, units out of order and negatives are refused, naming the value."""
    with pytest.raises(ValueError, match=f"^'{text}' is not a duration: "):
        parse_duration(text)


@pytest.mark.parametrize("value", [-1, -0.5, float("inf"), float("nan")])
def test_parse_duration_refuses_bad_numbers(value: float) -> None:
    """Negative and non-finite numbers are not durations."""
    with pytest.raises(ValueError, match="is not a duration: it must"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (10, "10s"),
        (59.97, "1m"),
        (90, "1m30s"),
        (900, "15m"),
        (5400, "1h30m"),
        (93784, "1d2h3m4s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    """Durations print compactly, and `parse_duration` reads them back."""
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds, abs=0.05)


def test_json_schema_documents_the_file() -> None:
    """The schema has the top-level keys, and durations accept seconds or "15m"-like text."""
    schema = config_json_schema()

    assert isinstance(schema, dict)
    assert {"gateway", "store", "templates", "sessions"} <= set(schema["properties"])
    assert "path" not in schema["properties"]
    idle = schema["$defs"]["TemplateConf"]["properties"]["idle_timeout"]
    assert idle["default"] == "15m"
    assert {branch["type"] for branch in idle["anyOf"]} == {"number", "string"}
    assert "15m" in idle["description"]


def test_every_field_is_described() -> None:
    """Every field of every model has a description: the schema is the reference docs."""
    schema = config_json_schema()
    models = [schema, *schema["$defs"].values()]

    for model in models:
        assert all(field.get("description") for field in model["properties"].values())


def test_keda_provider_needs_a_keda_section(tmp_path: Path) -> None:
    """A `provider: keda` template without a `keda:` section is refused at its provider key."""
    found = problems(
        tmp_path,
        """\
        templates:
          web: {command: [x]}
          nb:
            address: "http://nb-{session}.sessions.svc:8888"
            provider: keda
        """,
    )

    assert found == [
        "5 templates.nb.provider: provider keda needs a keda: section "
        "(the External Scaler KEDA asks, e.g. keda: {listen: '0.0.0.0:9090'})"
    ]


def test_placeholder_typos_are_refused_with_a_guess(tmp_path: Path) -> None:
    """{prot} and {sesion} are errors at load, each with its line and the placeholder it
    probably meant; a keda address may only name {session}; other braces pass."""
    found = problems(
        tmp_path,
        "templates:\n"
        "  web:\n"
        '    command: ["serve", "{prot}", "--json={\\"a\\": 1}"]\n'
        '    env: {WHO: "{sesion}", OK: "{base_url}"}\n',
    )
    assert found == [
        "3 templates.web.command[1]: unknown placeholder {prot}: did you mean {port}? "
        "(known: {port}, {host}, {session}, {base_url})",
        "4 templates.web.env.WHO: unknown placeholder {sesion}: did you mean {session}? "
        "(known: {port}, {host}, {session}, {base_url})",
    ]


def test_every_problem_in_one_pass_and_one_line_per_duplicate(tmp_path: Path) -> None:
    """A structural error and a session naming an unknown template are reported together;
    a duplicated mapping is one line, not one per key inside it."""
    found = problems(
        tmp_path,
        "templates:\n  web: {command: 3}\nsessions:\n  alice: {template: wbe}\n",
    )
    assert found == [
        "2 templates.web.command: must be a list of strings",
        "4 sessions.alice.template: unknown template 'wbe' (known: web)",
    ]
    duplicated = problems(
        tmp_path, "templates:\n  web: {command: [a]}\n  web:\n    command: [b, c]\n"
    )
    assert duplicated == ["3 templates.web: duplicate key (first at line 2)"]


def test_cel_durations_read_the_config_grammar(tmp_path: Path) -> None:
    """duration("1d") works in a rule as 1d does in the config (CEL itself has no days);
    a literal neither reads is refused at load with its line and column."""
    good = (
        "templates:\n  web: {command: [x], policy: p}\n"
        "policies:\n  p:\n    sleep_when: 'idle_for > duration(\"1d12h\") && inflight == 0'\n"
    )
    config = load_config(write(tmp_path, good))
    rule = config.policy_for("web").sleep_when
    assert 'duration("129600s")' in rule.source
    found = problems(tmp_path, good.replace("1d12h", "1x"))
    assert len(found) == 1
    assert found[0].startswith('5 policies.p.sleep_when: duration("1x"): ')
    assert found[0].endswith("(column 22)")
