"""Secrets: where the token comes from, that it never shows itself, and redaction."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import os
import pickle
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.config import GraphConfig
from syncd.errors import ConfigError
from syncd.secrets import Redactor, Secrets, Token, appsecret_proof, load_secrets

TOKEN = "EAAB-secret-token-123"
APP_SECRET = "app-secret-456"


def secret_file(tmp_path: Path, name: str, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def config_error(graph: GraphConfig, environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_secrets(graph, environ)
    message = str(info.value)
    assert message.startswith("config error: ")
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ Token


def test_token_hides_itself() -> None:
    token = Token(TOKEN)
    assert token.reveal() == TOKEN
    for shown in (
        repr(token),
        str(token),
        f"{token}",
        f"{token!r}",
        repr([token]),
        repr(Secrets(token)),
    ):
        assert TOKEN not in shown
    assert str(token) == repr(token) == "Token(***)"


def test_token_equality_and_hash() -> None:
    assert Token(TOKEN) == Token(TOKEN)
    assert Token(TOKEN) != Token("other")
    assert Token(TOKEN) != TOKEN
    assert len({Token(TOKEN), Token(TOKEN), Token("other")}) == 2


def test_token_cannot_be_pickled() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Token(TOKEN))
    with pytest.raises(TypeError):
        pickle.dumps(Secrets(Token(TOKEN)))


def test_token_copies_are_itself() -> None:
    token = Token(TOKEN)
    assert copy.copy(token) is token
    assert copy.deepcopy(token) is token
    assert dataclasses.asdict(Secrets(token))["token"] is token


def test_token_has_no_dict_to_peek_into() -> None:
    assert not hasattr(Token(TOKEN), "__dict__")


def test_token_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        Token(b"bytes")  # type: ignore[arg-type]


# ------------------------------------------------------------------ appsecret_proof


def test_appsecret_proof_is_hmac_sha256_of_token_keyed_by_secret() -> None:
    expected = hmac.new(APP_SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
    assert appsecret_proof(Token(TOKEN), Token(APP_SECRET)) == expected
    # A fixed vector from `printf token | openssl dgst -sha256 -hmac secret`, so swapping
    # key and message cannot pass by the symmetry of the line above.
    assert appsecret_proof(Token("token"), Token("secret")) == (
        "e941110e3d2bfe82621f0e3e1434730d7305d106c5f68c87165d0b27a4611a4a"
    )
    assert appsecret_proof(Token("token"), Token("secret")) != appsecret_proof(
        Token("secret"), Token("token")
    )
    assert len(expected) == 64


def test_secrets_proof_and_redactor() -> None:
    secrets = Secrets(Token(TOKEN), Token(APP_SECRET))
    proof = secrets.proof()
    assert proof == appsecret_proof(Token(TOKEN), Token(APP_SECRET))
    assert Secrets(Token(TOKEN)).proof() is None
    text = f"{TOKEN} {APP_SECRET} {proof}"
    assert secrets.redactor().redact(text) == "*** *** ***"


# ------------------------------------------------------------------ load_secrets sources


def test_environment_wins(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    secret_file(creds, "access_token", "from-credentials")
    graph = GraphConfig(access_token_file=secret_file(tmp_path, "token", "from-file"))
    environ = {"SYNCD_ACCESS_TOKEN": TOKEN, "CREDENTIALS_DIRECTORY": str(creds)}
    secrets = load_secrets(graph, environ)
    assert secrets.token == Token(TOKEN)
    assert secrets.app_secret is None
    assert secrets.warnings == ()


def test_credentials_directory_wins_over_file(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    secret_file(creds, "access_token", f"{TOKEN}\n", mode=0o444)
    graph = GraphConfig(access_token_file=secret_file(tmp_path, "token", "from-file"))
    secrets = load_secrets(graph, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert secrets.token.reveal() == TOKEN
    # systemd owns the credentials directory's modes: no warning for them.
    assert secrets.warnings == ()


def test_credentials_directory_without_the_credential_falls_through(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    graph = GraphConfig(access_token_file=secret_file(tmp_path, "token", f"  {TOKEN}\r\n"))
    secrets = load_secrets(graph, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert secrets.token.reveal() == TOKEN


def test_no_token_anywhere() -> None:
    message = config_error(GraphConfig(), {})
    assert message == (
        "config error: no access token: set SYNCD_ACCESS_TOKEN, use LoadCredential=access_token,"
        " or set graph.access_token_file"
    )


def test_app_secret_from_every_source(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    secret_file(creds, "app_secret", "from-credentials")
    file = secret_file(tmp_path, "app_secret", "from-file")
    env = {"SYNCD_ACCESS_TOKEN": TOKEN}
    graph = GraphConfig(app_secret_file=file)
    both = {**env, "CREDENTIALS_DIRECTORY": str(creds)}
    assert load_secrets(graph, {**both, "SYNCD_APP_SECRET": APP_SECRET}).app_secret == Token(
        APP_SECRET
    )
    assert load_secrets(graph, both).app_secret == Token("from-credentials")
    assert load_secrets(graph, env).app_secret == Token("from-file")
    assert load_secrets(GraphConfig(), env).app_secret is None


# ------------------------------------------------------------------ file problems


def test_missing_configured_file_names_key_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "token"
    message = config_error(GraphConfig(access_token_file=missing), {})
    assert message == (
        f"config error: graph.access_token_file: cannot read {missing}: No such file or directory"
    )


def test_directory_is_not_a_token_file(tmp_path: Path) -> None:
    message = config_error(GraphConfig(access_token_file=tmp_path), {})
    assert message.startswith("config error: graph.access_token_file: ")
    assert str(tmp_path) in message


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    message = config_error(GraphConfig(access_token_file=fifo), {})
    assert message.endswith("is not a regular file")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = secret_file(tmp_path, "token", TOKEN)

    def denied(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    # Tests may run as root, who can read a mode-000 file: simulate the refusal instead.
    monkeypatch.setattr(os, "open", denied)
    message = config_error(GraphConfig(access_token_file=path), {})
    assert (
        message == f"config error: graph.access_token_file: cannot read {path}: Permission denied"
    )


def test_huge_file_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "token", "A" * (70 * 1024))
    message = config_error(GraphConfig(access_token_file=path), {})
    assert "larger than 64 KiB" in message
    assert "AAAA" not in message


def test_non_utf8_file_is_refused_without_content(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"EAAB\xff\xfesecret")
    path.chmod(0o600)
    message = config_error(GraphConfig(access_token_file=path), {})
    assert message.endswith("is not UTF-8 text")
    assert "secret" not in message.replace("secret file", "")


@pytest.mark.parametrize("text", ["", "   \n", "\n\n"])
def test_empty_token_is_refused(tmp_path: Path, text: str) -> None:
    path = secret_file(tmp_path, "token", text)
    message = config_error(GraphConfig(access_token_file=path), {})
    assert message == f"config error: graph.access_token_file ({path}): the secret is empty"


def test_empty_environment_variable_is_refused() -> None:
    message = config_error(GraphConfig(), {"SYNCD_ACCESS_TOKEN": ""})
    assert message == "config error: SYNCD_ACCESS_TOKEN: the secret is empty"


@pytest.mark.parametrize(
    "bad",
    ["EAAB secret", "EAAB\tsecret", "EAAB\nsecret", "EAAB\r\nX-Evil: 1", "EAAB\x00secret", "EAABé"],
)
def test_token_with_inner_whitespace_or_control_is_refused(tmp_path: Path, bad: str) -> None:
    for graph, environ in [
        (GraphConfig(), {"SYNCD_ACCESS_TOKEN": bad}),
        (GraphConfig(access_token_file=secret_file(tmp_path, "token", bad)), {}),
    ]:
        message = config_error(graph, environ)
        assert "whitespace, control or non-ASCII" in message
        assert "EAAB" not in message


def test_group_readable_token_file_warns(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "token", TOKEN, mode=0o640)
    secrets = load_secrets(GraphConfig(access_token_file=path), {})
    (warning,) = secrets.warnings
    assert warning.startswith(f"graph.access_token_file: {path} is readable by other users")
    assert "0640" in warning
    assert TOKEN not in warning


def test_private_token_file_does_not_warn(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "token", TOKEN, mode=0o400)
    assert load_secrets(GraphConfig(access_token_file=path), {}).warnings == ()


def test_world_readable_app_secret_warns(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "app_secret", APP_SECRET, mode=0o604)
    graph = GraphConfig(app_secret_file=path)
    (warning,) = load_secrets(graph, {"SYNCD_ACCESS_TOKEN": TOKEN}).warnings
    assert warning.startswith("graph.app_secret_file: ")


# ------------------------------------------------------------------ Redactor


def test_redactor_replaces_every_form() -> None:
    redactor = Redactor(TOKEN)
    assert redactor.redact(f"Bearer {TOKEN}, again {TOKEN}") == "Bearer ***, again ***"
    assert redactor.redact("nothing here") == "nothing here"
    quoted = Redactor("a/b+c=")
    assert quoted.redact("token=a%2Fb%2Bc%3D&x=a/b+c=") == "token=***&x=***"


def test_redactor_add_later_and_proofs() -> None:
    redactor = Redactor()
    assert redactor.redact(TOKEN) == TOKEN
    redactor.add(Token(TOKEN))
    redactor.add(APP_SECRET)
    redactor.add(APP_SECRET)
    redactor.add("")
    proof = appsecret_proof(Token(TOKEN), Token(APP_SECRET))
    assert redactor.redact(f"proof={proof}&t={TOKEN}&s={APP_SECRET}") == "proof=***&t=***&s=***"
    assert TOKEN not in repr(redactor)


def test_redactor_prefers_the_longest_secret() -> None:
    redactor = Redactor("abcd", "abcdefgh")
    assert redactor.redact("xabcdefghx") == "x***x"


@given(
    secret=st.text(alphabet="ab01-_", min_size=4, max_size=12),
    pieces=st.lists(st.text(alphabet="ab01-_ ", max_size=6), max_size=6),
)
def test_redacted_text_never_holds_the_secret(secret: str, pieces: list[str]) -> None:
    text = secret.join(pieces) + secret
    assert secret not in Redactor(secret).redact(text)
