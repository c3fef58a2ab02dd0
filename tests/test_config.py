"""The config loader: defaults, every rule, messages that name the key, and fuzzing."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.config import (
    AccountConfig,
    Config,
    GraphConfig,
    LogConfig,
    ManifestConfig,
    MetricsConfig,
    SyncConfig,
    config_path_from,
    load_config,
    parse_config,
)
from syncd.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "syncd.example.toml"
ACCOUNT = {"id": "123", "folder": "/srv/a"}


def minimal(**sections: Any) -> dict[str, Any]:
    """The smallest valid config, with `sections` merged in."""
    data: dict[str, Any] = {"accounts": [dict(ACCOUNT)]}
    data.update(sections)
    return data


def error_of(data: dict[str, Any], source: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config error: ")
    return message


def write(tmp_path: Path, text: str, name: str = "syncd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ defaults and example


def test_minimal_config_has_documented_defaults() -> None:
    config = parse_config(minimal())
    assert config.graph == GraphConfig()
    assert config.graph.base_url == "https://graph.facebook.com"
    assert config.manifest.path == Path("/var/lib/syncd/manifest.sqlite3")
    assert config.sync == SyncConfig()
    assert config.sync.workers == 4
    assert config.metrics.listen is None
    assert config.log == LogConfig(level="info", format="auto")
    assert config.accounts == (AccountConfig(id="123", folder=Path("/srv/a")),)
    assert config.accounts[0].rate_per_second == 2.0
    assert config.accounts[0].burst == 5
    assert config.accounts[0].act_id == "act_123"
    assert config.source is None


def test_example_file_loads_with_every_default() -> None:
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE
    assert config.graph == GraphConfig()
    assert config.manifest == ManifestConfig()
    assert config.sync == SyncConfig()
    assert config.metrics == MetricsConfig()
    assert config.log == LogConfig()
    first, second = config.accounts
    assert (first.id, first.folder) == ("1234567890", Path("/srv/share/ads/acme"))
    assert second.act_id == "act_9876543210"
    assert second.folder == EXAMPLE.parent / "ads" / "globex"


def test_example_file_names_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for cls in (GraphConfig, ManifestConfig, SyncConfig, MetricsConfig, LogConfig, AccountConfig):
        for f in dataclasses.fields(cls):
            assert re.search(rf"^#? ?{f.name} = ", text, re.MULTILINE), f.name


def test_example_loads_from_a_copy_anywhere(tmp_path: Path) -> None:
    copy = write(tmp_path, EXAMPLE.read_text(encoding="utf-8"))
    config = load_config(copy)
    assert config.accounts[1].folder == tmp_path / "ads" / "globex"


def test_full_config_round_trip(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [graph]
        base_url = "http://127.0.0.1:8999/"
        api_version = "v19.0"
        access_token_file = "secrets/token"
        app_secret_file = "/etc/syncd/app_secret"
        timeout_seconds = 5
        [manifest]
        path = "state/manifest.sqlite3"
        [sync]
        workers = 8
        settle_seconds = 0
        delete_grace_seconds = 0
        rescan_interval_seconds = 60
        observer = "Polling"
        max_delete_fraction = 1
        poll_interval_seconds = 0.5
        drain_seconds = 0
        max_attempts = 1
        [metrics]
        listen = "[::1]:9464"
        [log]
        level = "debug"
        format = "json"
        [[accounts]]
        id = 1234567890
        folder = "acme/"
        rate_per_second = 10
        burst = 3
        """,
    )
    config = load_config(path)
    assert config.graph == GraphConfig(
        base_url="http://127.0.0.1:8999",
        api_version="v19.0",
        access_token_file=tmp_path / "secrets" / "token",
        app_secret_file=Path("/etc/syncd/app_secret"),
        timeout_seconds=5.0,
    )
    assert isinstance(config.graph.timeout_seconds, float)
    assert config.manifest.path == tmp_path / "state" / "manifest.sqlite3"
    assert config.sync == SyncConfig(8, 0.0, 0.0, 60.0, "polling", 1.0, 0.5, 0.0, 1)
    assert config.metrics.listen == "[::1]:9464"
    assert config.log == LogConfig(level="debug", format="json")
    assert config.accounts == (AccountConfig("1234567890", tmp_path / "acme", 10.0, 3),)


def test_config_is_frozen() -> None:
    config = parse_config(minimal())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sync.workers = 9  # type: ignore[misc]


# ------------------------------------------------------------------ messages from the brief


def test_wrong_type_names_the_key() -> None:
    message = error_of(minimal(sync={"workers": "four"}))
    assert message == 'config error: sync.workers: expected an integer from 1 to 256, got "four"'


def test_unknown_key_is_named_with_a_hint() -> None:
    message = error_of(minimal(sync={"wokers": 4}))
    assert message == "config error: unknown key sync.wokers (did you mean sync.workers?)"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"grpah": {}}, "grpah"),
        ({"graph": {"token": "x"}}, "graph.token"),
        ({"accounts": [{**ACCOUNT, "folders": "/x"}]}, "accounts[0].folders"),
        ({"log": {"a.b": 1}}, 'log."a.b"'),
    ],
)
def test_unknown_keys_at_every_level(data: dict[str, Any], key: str) -> None:
    message = error_of({"accounts": [dict(ACCOUNT)], **data})
    assert message.startswith(f"config error: unknown key {key}")


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[sync]\nworkers = 4\nsettle_seconds 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"config error: {path}: not valid TOML: ")
    assert "line 3" in message


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"config error: {missing}: cannot read: No such file or directory"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[log]\nlevel = "d\xe9bug"\n')
    with pytest.raises(ConfigError, match="not valid TOML: 'utf-8' codec can't decode"):
        load_config(path)


@pytest.mark.parametrize("text", ["a = " + "9" * 5000, "a = " + "[" * 5000 + "]" * 5000])
def test_absurd_toml_is_invalid_not_a_crash(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, text))


# ------------------------------------------------------------------ types and ranges


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("sync", "workers", True),
        ("sync", "workers", 0),
        ("sync", "workers", 257),
        ("sync", "workers", 2.0),
        ("sync", "settle_seconds", -0.1),
        ("sync", "settle_seconds", "2"),
        ("sync", "settle_seconds", False),
        ("sync", "delete_grace_seconds", -1),
        ("sync", "rescan_interval_seconds", 0),
        ("sync", "rescan_interval_seconds", float("inf")),
        ("sync", "max_delete_fraction", 0),
        ("sync", "max_delete_fraction", 1.01),
        ("sync", "max_delete_fraction", float("nan")),
        ("sync", "poll_interval_seconds", 0.0),
        ("sync", "drain_seconds", -5),
        ("sync", "max_attempts", 0),
        ("sync", "observer", "inotify"),
        ("sync", "observer", 1),
        ("graph", "timeout_seconds", 0),
        ("graph", "timeout_seconds", 10**400),
        ("graph", "api_version", "21.0"),
        ("graph", "api_version", "v21"),
        ("graph", "access_token_file", ""),
        ("graph", "access_token_file", 5),
        ("manifest", "path", "/var/lib/\nsyncd"),
        ("metrics", "listen", "9464"),
        ("metrics", "listen", ":9464"),
        ("metrics", "listen", "127.0.0.1:0"),
        ("metrics", "listen", "127.0.0.1:65536"),
        ("metrics", "listen", "::1:9464"),
        ("metrics", "listen", "[nothost]:9464"),
        ("metrics", "listen", "host name:80"),
        ("metrics", "listen", ""),
        ("log", "level", "verbose"),
        ("log", "format", "xml"),
    ],
)
def test_bad_values_name_their_key(section: str, key: str, value: object) -> None:
    message = error_of(minimal(**{section: {key: value}}))
    assert message.startswith(f"config error: {section}.{key}: ")


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("sync", "settle_seconds", 3, 3.0),
        ("sync", "delete_grace_seconds", 0, 0.0),
        ("sync", "observer", "NATIVE", "native"),
        ("log", "level", "WARNING", "warning"),
        ("metrics", "listen", "0.0.0.0:1", "0.0.0.0:1"),
        ("metrics", "listen", "localhost:65535", "localhost:65535"),
        ("graph", "base_url", "https://Graph.Example.com:8443/", "https://graph.example.com:8443"),
        ("graph", "base_url", "http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_good_values_are_normalised(
    section: str, key: str, value: object, expected: object
) -> None:
    config = parse_config(minimal(**{section: {key: value}}))
    assert getattr(getattr(config, section), key) == expected


def test_section_must_be_a_table() -> None:
    assert error_of(minimal(sync=5)) == "config error: sync: expected a table, got 5"


# ------------------------------------------------------------------ base_url


@pytest.mark.parametrize(
    "url",
    [
        "https://EAABsecret@graph.facebook.com",
        "https://me:EAABsecret@graph.facebook.com/",
        "https://graph.facebook.com/?access_token=EAABsecret",
        "https://graph.facebook.com/v21.0/EAABsecret",
        "ftp://graph.facebook.com",
        "graph.facebook.com",
        "https://",
        "https://graph.facebook.com:0",
        "https://graph.facebook.com:99999",
        "https://graph.facebook.com#EAABsecret",
        "https://graph.face\tbook.com",
        "https://[EAABsecret",
    ],
)
def test_base_url_refused_without_echoing_it(url: str) -> None:
    message = error_of(minimal(graph={"base_url": url}))
    assert message.startswith("config error: graph.base_url: ")
    assert "EAABsecret" not in message
    assert "me:" not in message


def test_base_url_credentials_message() -> None:
    message = error_of(minimal(graph={"base_url": "https://u:p@h"}))
    assert "credentials" in message


# ------------------------------------------------------------------ accounts


@pytest.mark.parametrize(
    ("value", "expected"),
    [("123", "123"), ("act_123", "123"), (1234567890, "1234567890"), ("act_9", "9")],
)
def test_account_id_forms(value: object, expected: str) -> None:
    config = parse_config({"accounts": [{"id": value, "folder": "/a"}]})
    assert config.accounts[0].id == expected
    assert config.accounts[0].act_id == f"act_{expected}"


@pytest.mark.parametrize(
    "value", ["", "act_", "ACT_123", "12a", " 123", "123\n", "0", "0123", "١٢٣", 0, -5, True, 1.0]
)
def test_bad_account_ids(value: object) -> None:
    message = error_of({"accounts": [{"id": value, "folder": "/a"}]})
    assert message.startswith("config error: accounts[0].id: ")


@pytest.mark.parametrize(
    ("accounts", "message"),
    [
        (None, "config error: accounts: expected one or more [[accounts]] tables, got nothing"),
        ([], "config error: accounts: expected one or more [[accounts]] tables, got an array"),
        (ACCOUNT, "config error: accounts: expected one or more [[accounts]] tables, got a table"),
        ([1], "config error: accounts[0]: expected a table, got 1"),
        ([{"folder": "/a"}], "config error: accounts[0].id: required key is missing"),
        ([{"id": "1"}], "config error: accounts[0].folder: required key is missing"),
    ],
)
def test_accounts_shape(accounts: object, message: str) -> None:
    data = {} if accounts is None else {"accounts": accounts}
    assert error_of(data) == message


def test_burst_below_three_is_refused() -> None:
    message = error_of({"accounts": [{**ACCOUNT, "burst": 2}]})
    assert message == "config error: accounts[0].burst: expected an integer >= 3, got 2"


@pytest.mark.parametrize("rate", [0, -1, "fast", True])
def test_rate_must_be_positive_number(rate: object) -> None:
    message = error_of({"accounts": [{**ACCOUNT, "rate_per_second": rate}]})
    assert message.startswith("config error: accounts[0].rate_per_second: expected a number > 0")


def test_duplicate_ids_even_when_spelled_differently() -> None:
    accounts = [{"id": "act_123", "folder": "/a"}, {"id": 123, "folder": "/b"}]
    message = error_of({"accounts": accounts})
    assert message == "config error: accounts[1].id: duplicate of accounts[0].id (123)"


@pytest.mark.parametrize("second", ["/srv/a", "/srv/a/", "/srv/b/../a", "/srv//a/."])
def test_two_accounts_on_one_folder(second: str) -> None:
    accounts = [{"id": "1", "folder": "/srv/a"}, {"id": "2", "folder": second}]
    message = error_of({"accounts": accounts})
    assert message == "config error: accounts[1].folder: same folder as accounts[0] (/srv/a)"


def test_same_folder_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    accounts = [{"id": "1", "folder": "real"}, {"id": "2", "folder": str(tmp_path / "link")}]
    message = error_of({"accounts": accounts}, source=tmp_path / "syncd.toml")
    assert message.startswith("config error: accounts[1].folder: same folder as accounts[0]")


@pytest.mark.parametrize(
    ("first", "second", "relation"),
    [("/srv/a", "/srv/a/b", "inside"), ("/srv/a/b", "/srv/a", "contains")],
)
def test_nested_folders_are_refused(first: str, second: str, relation: str) -> None:
    message = error_of({"accounts": [{"id": "1", "folder": first}, {"id": "2", "folder": second}]})
    assert message.startswith(f"config error: accounts[1].folder: {relation} accounts[0].folder")


def test_sibling_folders_with_common_prefix_are_fine() -> None:
    accounts = [{"id": "1", "folder": "/srv/a"}, {"id": "2", "folder": "/srv/ab"}]
    assert len(parse_config({"accounts": accounts}).accounts) == 2


def test_folders_need_not_exist(tmp_path: Path) -> None:
    config = parse_config({"accounts": [{"id": "1", "folder": str(tmp_path / "later")}]})
    assert not config.accounts[0].folder.exists()


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    path = write(tmp_path, '[[accounts]]\nid = "1"\nfolder = "../shared/./ads"\n')
    assert load_config(path).accounts[0].folder == tmp_path.parent / "shared" / "ads"


def test_relative_paths_without_source_use_cwd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_config({"accounts": [{"id": "1", "folder": "ads"}]}).accounts[0].folder == (
        tmp_path / "ads"
    )


def test_tilde_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = parse_config(minimal(manifest={"path": "~/m.sqlite3"}))
    assert config.manifest.path == tmp_path / "m.sqlite3"


# ------------------------------------------------------------------ config_path_from


def test_config_path_precedence(tmp_path: Path) -> None:
    environ = {"SYNCD_CONFIG": "/etc/syncd/env.toml"}
    assert config_path_from("/etc/syncd/arg.toml", environ) == Path("/etc/syncd/arg.toml")
    assert config_path_from(None, environ) == Path("/etc/syncd/env.toml")
    assert config_path_from(None, {}) is None
    assert config_path_from(None, {"SYNCD_CONFIG": ""}) is None


def test_config_path_empty_flag() -> None:
    with pytest.raises(ConfigError, match=r"^config error: --config: "):
        config_path_from("", {})


# ------------------------------------------------------------------ fuzzing

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.datetimes()
    | st.dates()
    | st.times()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
SECTION_KEYS = [
    (cls_name, f.name)
    for cls_name, cls in [
        ("graph", GraphConfig),
        ("manifest", ManifestConfig),
        ("sync", SyncConfig),
        ("metrics", MetricsConfig),
        ("log", LogConfig),
    ]
    for f in dataclasses.fields(cls)
]
ACCOUNT_KEYS = [f.name for f in dataclasses.fields(AccountConfig)]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SECTION_KEYS), VALUES)
def test_fuzz_section_values(where: tuple[str, str], value: object) -> None:
    section, key = where
    try:
        config = parse_config(minimal(**{section: {key: value}}))
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        assert message.startswith(f"config error: {section}.{key}: ")
    else:
        assert isinstance(config, Config)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ACCOUNT_KEYS), VALUES)
def test_fuzz_account_values(key: str, value: object) -> None:
    try:
        config = parse_config({"accounts": [{**ACCOUNT, key: value}]})
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        assert message.startswith(f"config error: accounts[0].{key}: ")
    else:
        assert isinstance(config, Config)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["graph", "manifest", "sync", "metrics", "log", "accounts"]), VALUES)
def test_fuzz_whole_sections(section: str, value: object) -> None:
    try:
        parse_config({"accounts": [dict(ACCOUNT)], section: value})
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        assert message.startswith(
            (f"config error: {section}", f"config error: unknown key {section}")
        )


FRAGMENTS = st.sampled_from(
    [
        "[graph]\n",
        "[sync]\n",
        "[log]\n",
        "[metrics]\n",
        "[[accounts]]\n",
        "[accounts]\n",
        'id = "123"\n',
        'folder = "/srv/a"\n',
        'folder = "b"\n',
        "workers = ",
        "burst = ",
        'base_url = "',
        'listen = "',
        "level = ",
        "= ",
        '"',
        "'",
        "\n",
        "[",
        "]",
        "{",
        "}",
        ",",
        "4",
        "2.5",
        "true",
        "inf",
        "1979-05-27T07:32:00Z",
        "act_",
        "#",
        ".",
        "x",
    ]
)
TOMLISH = st.lists(FRAGMENTS | st.text(max_size=8), max_size=40).map("".join)
SECTION_PREFIX = re.compile(r"config error: (graph|manifest|sync|metrics|log|accounts)\b")


@settings(max_examples=400, deadline=None)
@given(text=TOMLISH)
def test_fuzz_tomlish_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config = load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        assert (
            message.startswith(f"config error: {path}: not valid TOML: ")
            or message.startswith("config error: unknown key ")
            or SECTION_PREFIX.match(message)
        ), message
    else:
        assert config.accounts
