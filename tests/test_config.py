"""Settings (`nagare/config.py`): flag > environment > nagare.yaml > default, from one table."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from nagare.config import (
    OPTIONS,
    SETTINGS_PATH,
    Config,
    load_config,
    options_markdown,
    parse_listen,
    settings_module_source,
)
from nagare.errors import ConfigError


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    return tmp_path / "nagare.yaml"


def load(
    settings_file: Path,
    yaml_text: str | None = None,
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    if yaml_text is not None:
        settings_file.write_text(yaml_text)
    return load_config({"config": str(settings_file), **(flags or {})}, environ=environ or {})


def load_error(
    settings_file: Path,
    yaml_text: str | None = None,
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> str:
    with pytest.raises(ConfigError) as info:
        load(settings_file, yaml_text, flags, environ)
    return str(info.value)


# ---------------------------------------------------------------- defaults and precedence


def test_defaults_without_a_settings_file(settings_file: Path) -> None:
    config = load(settings_file)
    assert config.port == ":8080"
    assert config.listen == ("0.0.0.0", 8080)
    assert config.db == "nagare.db"
    assert config.dags == "dags"
    assert config.api_key == ""
    assert config.worker_pools == {"default": 4}
    assert config.max_map_items == 10_000
    assert config.max_catchup_runs == 1000
    assert config.misfire_grace_seconds == 60.0
    assert config.log_level == "info"
    assert config.worker is False
    assert config.config == str(settings_file)


def test_every_option_default_is_loaded(settings_file: Path) -> None:
    config = load(settings_file)
    for option in OPTIONS:
        if option.name not in ("config", "worker_pools"):
            assert getattr(config, option.name) == option.default, option.name


@pytest.mark.parametrize(
    ("use_yaml", "use_env", "use_flag", "expected"),
    [
        (False, False, False, "info"),
        (True, False, False, "warning"),
        (True, True, False, "error"),
        (False, True, False, "error"),
        (True, True, True, "debug"),
        (False, False, True, "debug"),
        (True, False, True, "debug"),
    ],
)
def test_precedence_flag_over_env_over_yaml_over_default(
    settings_file: Path, use_yaml: bool, use_env: bool, use_flag: bool, expected: str
) -> None:
    config = load(
        settings_file,
        "log_level: warning\n" if use_yaml else "",
        {"log_level": "debug"} if use_flag else {},
        {"NAGARE_LOG_LEVEL": "error"} if use_env else {},
    )
    assert config.log_level == expected


def test_precedence_for_an_option_without_a_flag(settings_file: Path) -> None:
    assert load(settings_file, "max_catchup_runs: 11\n").max_catchup_runs == 11
    env = {"NAGARE_MAX_CATCHUP_RUNS": "22"}
    assert load(settings_file, "max_catchup_runs: 11\n", environ=env).max_catchup_runs == 22


def test_precedence_for_a_string_option_with_a_flag(settings_file: Path) -> None:
    yaml_only = load(settings_file, "port: 9000\n")
    assert yaml_only.listen == ("0.0.0.0", 9000)
    env = load(settings_file, "port: 9000\n", environ={"NAGARE_PORT": "127.0.0.1:9001"})
    assert env.listen == ("127.0.0.1", 9001)
    flag = load(
        settings_file,
        "port: 9000\n",
        {"port": ":9002"},
        {"NAGARE_PORT": "127.0.0.1:9001"},
    )
    assert flag.listen == ("0.0.0.0", 9002)


def test_a_flag_that_was_not_given_does_not_override(settings_file: Path) -> None:
    config = load(settings_file, "log_level: debug\n", {"log_level": None, "db": None})
    assert (config.log_level, config.db) == ("debug", "nagare.db")


def test_the_settings_file_comes_from_the_flag_then_the_environment(tmp_path: Path) -> None:
    from_env = tmp_path / "env.yaml"
    from_env.write_text("log_level: warning\n")
    from_flag = tmp_path / "flag.yaml"
    from_flag.write_text("log_level: error\n")
    config = load_config({}, environ={"NAGARE_CONFIG": str(from_env)})
    assert (config.config, config.log_level) == (str(from_env), "warning")
    config = load_config({"config": str(from_flag)}, environ={"NAGARE_CONFIG": str(from_env)})
    assert (config.config, config.log_level) == (str(from_flag), "error")


def test_unrelated_environment_variables_are_ignored(settings_file: Path) -> None:
    config = load(settings_file, environ={"NAGARE_NOT_AN_OPTION": "x", "PORT": "1"})
    assert config.port == ":8080"


def test_with_values_returns_a_changed_copy(settings_file: Path) -> None:
    config = load(settings_file)
    changed = config.with_values(max_map_items=5)
    assert (config.max_map_items, changed.max_map_items) == (10_000, 5)
    with pytest.raises(AttributeError):
        _ = config.no_such_option


def test_with_values_rejects_an_unknown_setting(settings_file: Path) -> None:
    with pytest.raises(TypeError, match=r"unknown setting\(s\) max_map_item \(known: port, "):
        load(settings_file).with_values(max_map_item=5)


# ---------------------------------------------------------------- worker_pools


@pytest.mark.parametrize(
    ("yaml_text", "pools"),
    [
        ("worker_pools: {gpu: 0}\n", {"default": 4, "gpu": 0}),
        ("worker_pools: {default: 2}\n", {"default": 2}),
        ("worker_pools: {default: 0, io: 16}\n", {"default": 0, "io": 16}),
        ("worker_pools: {}\n", {"default": 4}),
    ],
)
def test_worker_pools_keep_the_default_pool(
    settings_file: Path, yaml_text: str, pools: dict[str, int]
) -> None:
    assert load(settings_file, yaml_text).worker_pools == pools


@pytest.mark.parametrize(
    ("value", "found"),
    [("-1", "'-1'"), ("two", "'two'"), ("1.5", "'1.5'"), ("true", "'True'"), ("'3'", "'3'")],
)
def test_worker_pool_sizes_must_be_whole_numbers(
    settings_file: Path, value: str, found: str
) -> None:
    message = load_error(settings_file, f"worker_pools: {{default: 2, gpu: {value}}}\n")
    assert f"{settings_file}: worker_pools.gpu: expected a whole number >= 0, found {found}" == (
        message
    )


@pytest.mark.parametrize("value", ["[a, b]", "4", "gpu"])
def test_worker_pools_must_be_a_mapping(settings_file: Path, value: str) -> None:
    message = load_error(settings_file, f"worker_pools: {value}\n")
    assert message.startswith(f"{settings_file}: worker_pools: expected a mapping")
    assert "{default: 4, gpu: 0}" in message


# ---------------------------------------------------------------- settings file


def test_unknown_setting_is_rejected_with_the_known_keys(settings_file: Path) -> None:
    message = load_error(settings_file, "max_map_item: 5\n")
    assert message.startswith(f"{settings_file}: unknown setting 'max_map_item' (known: ")
    for option in OPTIONS:
        if option.yaml_key:
            assert option.yaml_key in message
    assert "known: port, db, dags" in message


@pytest.mark.parametrize("key", ["config", "worker", "join", "pools"])
def test_command_line_only_options_are_not_settings_file_keys(
    settings_file: Path, key: str
) -> None:
    assert f"unknown setting '{key}'" in load_error(settings_file, f"{key}: x\n")


@pytest.mark.parametrize("key", ["autoscaler"])
def test_keys_owned_by_later_features_are_accepted(settings_file: Path, key: str) -> None:
    load(settings_file, f"{key}: 1\n")


def test_cors_allowed_origins_is_a_nested_setting(settings_file: Path) -> None:
    text = "cors:\n  allowed_origins: [https://ui.example.com, 'http://localhost:3000/']\n"
    assert load(settings_file, text).cors_allowed_origins == (
        "https://ui.example.com",
        "http://localhost:3000",
    )
    assert "cors: expected a mapping" in load_error(settings_file, "cors: 1\n")
    assert "expected origins like" in load_error(
        settings_file, "cors: {allowed_origins: [ui.example.com]}\n"
    )


@pytest.mark.parametrize("text", ["", "# nothing\n", "~\n"])
def test_an_empty_settings_file_means_defaults(settings_file: Path, text: str) -> None:
    assert load(settings_file, text).max_map_items == 10_000


def test_invalid_yaml_is_rejected_with_the_path(settings_file: Path) -> None:
    message = load_error(settings_file, "port: [\n")
    assert message.startswith(f"{settings_file}: invalid YAML")


@pytest.mark.parametrize(("text", "found"), [("- a\n", "list"), ("just text\n", "str")])
def test_a_settings_file_must_be_a_mapping(settings_file: Path, text: str, found: str) -> None:
    message = load_error(settings_file, text)
    assert message == f"{settings_file}: expected a mapping of settings, found {found}"


def test_a_settings_path_that_is_a_folder_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config({"config": str(tmp_path)}, environ={})


# ---------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("where", "yaml_text", "environ", "message"),
    [
        ("yaml", "max_map_items: abc\n", {}, "max_map_items: expected a whole number, found 'abc'"),
        ("yaml", "max_map_items: 0\n", {}, "max_map_items: expected at least 1, found 0"),
        (
            "yaml",
            "max_map_items: true\n",
            {},
            "max_map_items: expected a whole number, found 'True'",
        ),
        (
            "yaml",
            "misfire_grace_seconds: -1\n",
            {},
            "misfire_grace_seconds: expected at least 0, found -1.0",
        ),
        (
            "yaml",
            "max_log_line_bytes: 100\n",
            {},
            "max_log_line_bytes: expected at least 256, found 100",
        ),
        (
            "yaml",
            "sse_ping_seconds: soon\n",
            {},
            "sse_ping_seconds: expected a number, found 'soon'",
        ),
        (
            "env",
            "",
            {"NAGARE_MAX_CATCHUP_RUNS": "1.5"},
            "NAGARE_MAX_CATCHUP_RUNS: expected a whole number, found '1.5'",
        ),
        (
            "env",
            "",
            {"NAGARE_MAX_BODY_BYTES": ""},
            "NAGARE_MAX_BODY_BYTES: expected a whole number, found ''",
        ),
        (
            "env",
            "",
            {"NAGARE_SHUTDOWN_GRACE_SECONDS": "-2"},
            "NAGARE_SHUTDOWN_GRACE_SECONDS: expected at least 0, found -2.0",
        ),
    ],
)
def test_bad_numbers_are_rejected_naming_where_and_what(
    settings_file: Path, where: str, yaml_text: str, environ: dict[str, str], message: str
) -> None:
    error = load_error(settings_file, yaml_text, environ=environ)
    expected = f"{settings_file}: {message}" if where == "yaml" else message
    assert error == expected


def test_bad_flag_values_name_the_flag(settings_file: Path) -> None:
    assert load_error(settings_file, flags={"worker": "maybe"}) == (
        "--worker: expected true or false, found 'maybe'"
    )
    assert load_error(settings_file, flags={"log_level": "loud"}) == (
        "--log-level: expected one of debug, info, warning, error, found 'loud'"
    )


def test_numbers_from_text_are_converted(settings_file: Path) -> None:
    config = load(
        settings_file,
        "max_map_items: '50'\n",
        environ={"NAGARE_MISFIRE_GRACE_SECONDS": "2.5", "NAGARE_MAX_CATCHUP_RUNS": " 7 "},
    )
    assert (config.max_map_items, config.misfire_grace_seconds, config.max_catchup_runs) == (
        50,
        2.5,
        7,
    )


def test_a_fractional_yaml_number_for_a_whole_number_option_is_rejected(
    settings_file: Path,
) -> None:
    message = load_error(settings_file, "max_map_items: 1.5\n")
    assert "max_map_items: expected a whole number" in message


@pytest.mark.parametrize(
    ("source", "value"),
    [("env", "nan"), ("env", "inf"), ("yaml", ".nan"), ("yaml", ".inf")],
)
def test_non_finite_numbers_are_rejected(settings_file: Path, source: str, value: str) -> None:
    if source == "env":
        message = load_error(settings_file, environ={"NAGARE_MISFIRE_GRACE_SECONDS": value})
    else:
        message = load_error(settings_file, f"misfire_grace_seconds: {value}\n")
    assert "misfire_grace_seconds" in message.lower()


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "on", " True "])
def test_true_booleans(settings_file: Path, text: str) -> None:
    assert load(settings_file, environ={"NAGARE_WORKER": text}).worker is True


@pytest.mark.parametrize("text", ["0", "false", "no", "off", ""])
def test_false_booleans(settings_file: Path, text: str) -> None:
    assert load(settings_file, environ={"NAGARE_WORKER": text}).worker is False


def test_a_boolean_flag_can_be_a_python_bool(settings_file: Path) -> None:
    assert load(settings_file, flags={"worker": True}).worker is True


@pytest.mark.parametrize("text", ["maybe", "2", "y e s"])
def test_bad_booleans_are_rejected(settings_file: Path, text: str) -> None:
    message = load_error(settings_file, environ={"NAGARE_WORKER": text})
    assert message == f"NAGARE_WORKER: expected true or false, found '{text}'"


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_choices_accept_the_listed_values(settings_file: Path, level: str) -> None:
    assert load(settings_file, f"log_level: {level}\n").log_level == level


@pytest.mark.parametrize("level", ["verbose", "INFO", ""])
def test_choices_reject_other_values(settings_file: Path, level: str) -> None:
    message = load_error(settings_file, f"log_level: '{level}'\n")
    assert message == (
        f"{settings_file}: log_level: expected one of debug, info, warning, error, found '{level}'"
    )


def test_scalar_string_settings_keep_their_text(settings_file: Path) -> None:
    assert load(settings_file, "api_key: 12345\n").api_key == "12345"


def test_a_bad_listen_address_is_rejected_at_load(settings_file: Path) -> None:
    message = load_error(settings_file, environ={"NAGARE_PORT": "eighty"})
    assert message == "port: expected PORT, :PORT or HOST:PORT, found 'eighty'"


def test_logs_dir_defaults_next_to_the_database(settings_file: Path, tmp_path: Path) -> None:
    config = load(settings_file, flags={"db": str(tmp_path / "state" / "n.db")})
    assert config.resolved_logs_dir == str(tmp_path / "state" / "logs")
    config = load(settings_file, flags={"logs_dir": str(tmp_path / "elsewhere")})
    assert config.resolved_logs_dir == str(tmp_path / "elsewhere")


# ---------------------------------------------------------------- parse_listen


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("8080", ("0.0.0.0", 8080)),
        (":8080", ("0.0.0.0", 8080)),
        ("127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:8080", ("::1", 8080)),
        ("0", ("0.0.0.0", 0)),
        ("65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_listen_forms(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "port: expected PORT, :PORT or HOST:PORT, found ''"),
        ("http", "port: expected PORT, :PORT or HOST:PORT, found 'http'"),
        ("host:", "port: expected PORT, :PORT or HOST:PORT, found 'host:'"),
        ("127.0.0.1:port", "port: expected PORT, :PORT or HOST:PORT, found '127.0.0.1:port'"),
        ("65536", "port: expected a port between 0 and 65535, found 65536"),
        ("-1", "port: expected a port between 0 and 65535, found -1"),
        (":99999", "port: expected a port between 0 and 65535, found 99999"),
    ],
)
def test_parse_listen_rejects_bad_addresses(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_listen(text)
    assert str(info.value) == message


def test_parse_listen_rejects_a_host_with_a_stray_colon() -> None:
    with pytest.raises(ConfigError, match="expected PORT, :PORT or HOST:PORT"):
        parse_listen("1.2.3.4:80:90")


# ---------------------------------------------------------------- one option table


def test_the_option_table_derives_flags_env_and_yaml_keys() -> None:
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
    for option in OPTIONS:
        if option.flag:
            assert option.flag == "--" + option.name.replace("_", "-")
        if option.env:
            assert option.env == "NAGARE_" + option.name.upper()
        if option.yaml_key:
            assert option.yaml_key == option.name
        assert option.help.endswith(".")
        if option.choices:
            assert option.default in option.choices


def test_options_markdown_has_one_row_per_option() -> None:
    table = options_markdown().splitlines()
    assert table[0].startswith("| Setting | Flag | Environment | nagare.yaml | Default |")
    rows = table[2:]
    assert [row.split("|")[1].strip() for row in rows] == [o.name for o in OPTIONS]
    port = rows[0]
    assert "`--port`" in port and "`NAGARE_PORT`" in port and "`:8080`" in port
    pools = next(row for row in rows if row.startswith("| worker_pools "))
    assert "`{default: 4}`" in pools
    assert "`--join`" in next(row for row in rows if row.startswith("| join "))


def test_api_key_precedence_flag_then_environment_then_file(settings_file: Path) -> None:
    yaml_text = "api_key: from-file\n"
    assert load(settings_file, yaml_text).api_key == "from-file"
    env = {"NAGARE_API_KEY": "from-env"}
    assert load(settings_file, yaml_text, environ=env).api_key == "from-env"
    flags = {"api_key": "from-flag"}
    assert load(settings_file, yaml_text, flags=flags, environ=env).api_key == "from-flag"


def test_the_generated_settings_module_is_current() -> None:
    committed = (ROOT / SETTINGS_PATH).read_text(encoding="utf-8")
    expected = settings_module_source()
    if committed != expected:
        diff = difflib.unified_diff(
            committed.splitlines(), expected.splitlines(), "committed", "generated", lineterm=""
        )
        pytest.fail(
            "nagare/settings.py is stale: run python3 tests/generate_settings.py\n"
            + "\n".join(list(diff)[:40])
        )
