"""uploader/auth.py: token entries, constant-time matching, role decisions, chat users."""

from __future__ import annotations

import hmac

import pytest

from shared.core.errors import ConfigError
from uploader import auth
from uploader.auth import (
    Action,
    Authenticator,
    ChatDirectory,
    Identity,
    Role,
    check_local_bind,
    decide,
    is_loopback,
    parse_chat_users,
    parse_tokens,
)


def test_entries_name_an_identity_a_role_and_optional_service_globs() -> None:
    entries = parse_tokens(" ada:admin=t1 , web-dev:deployer:web|docs-*=t2,vera:VIEWER=t=3 ")

    assert [e.identity for e in entries] == [
        Identity("ada", Role.ADMIN),
        Identity("web-dev", Role.DEPLOYER, ("web", "docs-*")),
        Identity("vera", Role.VIEWER),
    ]
    assert all(len(e.digest) == 32 for e in entries)  # SHA-256, never the token itself
    assert Authenticator(entries).match(b"t=3") == Identity("vera", Role.VIEWER)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("SECRETbare", "is a bare token: each token now names an identity and a role"),
        ("a,b", "entry 1 is a bare token"),
        ("ada:admin=", "not in the form name:role=token"),
        ("ada=SECRET", "not in the form"),
        ("ada:root=SECRET", "unknown role 'root'"),
        ("a:b:c:d=SECRET", "not in the form"),
        ("al ice:admin=SECRET", "invalid name"),
        ("a:b:admin=SECRET", "unknown role"),
        ("ada:deployer:=SECRET", "invalid service list"),
        ("ada:deployer:Web=SECRET", "invalid service list"),
        ("ada:admin=SECRET1,ada:viewer=SECRET2", "only once"),
        ("ada:admin=SECRET,bob:viewer=SECRET", "share one token"),
    ],
)
def test_malformed_entries_fail_start_up_without_showing_a_token(raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_tokens(raw)

    assert message in str(caught.value)
    assert "SECRET" not in str(caught.value)


def test_no_tokens_is_local_mode() -> None:
    assert Authenticator(parse_tokens(None)).local_mode
    assert Authenticator(parse_tokens(" , ")).local_mode
    assert not Authenticator(parse_tokens("a:admin=x")).local_mode


def test_matching_compares_every_entry_without_an_early_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entries = parse_tokens("a:admin=ta,b:viewer=tb,c:deployer=tc")
    compared: list[bytes] = []
    original = hmac.compare_digest

    def counting(x: bytes, y: bytes) -> bool:
        compared.append(y)
        return original(x, y)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    authenticator = Authenticator(entries)

    for token, name in ((b"ta", "a"), (b"tc", "c"), (b"nope", None), (b"", None)):
        compared.clear()
        found = authenticator.match(token)
        assert (found.name if found else None) == name
        assert compared == [e.digest for e in entries]  # all three, every time


def test_matching_is_exact_bytes() -> None:
    authenticator = Authenticator(parse_tokens("a:admin=s3cret-\u00e9"))

    assert authenticator.match("s3cret-\u00e9".encode()) is not None
    for near in (b"s3cret-e", b"s3cret-", "s3cret-\u00e9x".encode(), b" s3cret"):
        assert authenticator.match(near) is None


VIEWER = Identity("vera", Role.VIEWER)
WEB = Identity("web-dev", Role.DEPLOYER, ("web", "docs-*"))
ANY = Identity("dev", Role.DEPLOYER)
ADMIN = Identity("ada", Role.ADMIN)


@pytest.mark.parametrize(
    ("who", "action", "service", "allowed"),
    [
        (VIEWER, Action.READ, None, True),
        (VIEWER, Action.DEPLOY, "web", False),
        (VIEWER, Action.CLAIM, None, False),
        (WEB, Action.DEPLOY, "web", True),
        (WEB, Action.DEPLOY, "docs-api", True),
        (WEB, Action.DEPLOY, "docs", False),  # the glob needs the dash
        (WEB, Action.OPERATE, "shop", False),
        (WEB, Action.LOCK, "docs-x", True),
        (WEB, Action.LOCK, "webshop", False),
        (WEB, Action.CLAIM, None, True),
        (WEB, Action.FORCE, None, False),
        (WEB, Action.FLEET, None, False),
        (ANY, Action.DEPLOY, "anything", True),
        (ANY, Action.FORCE, None, False),
        (ADMIN, Action.FLEET, None, True),
        (ADMIN, Action.FORCE, None, True),
        (ADMIN, Action.OPERATE, "any-service", True),
    ],
)
def test_role_decisions(who: Identity, action: Action, service: str | None, allowed: bool) -> None:
    reason = decide(who, action, service)

    assert (reason is None) is allowed
    if reason is not None:
        assert who.name in reason


def test_refusals_say_what_is_missing() -> None:
    assert decide(VIEWER, Action.DEPLOY, "web") == (
        "vera (viewer) may not deploy: that needs the deployer role"
    )
    assert decide(WEB, Action.DEPLOY, "shop") == "web-dev may deploy only web|docs-*, not shop"
    assert (
        decide(WEB, Action.FLEET) == "web-dev (deployer) may not fleet: that needs the admin role"
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("buildq.example", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_bind_needs_tokens() -> None:
    check_local_bind("127.0.0.1", ())
    check_local_bind("0.0.0.0", parse_tokens("a:admin=x"))
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without API tokens"):
        check_local_bind("0.0.0.0", ())


def test_chat_users_map_workspace_and_user_to_identities() -> None:
    users = parse_chat_users("T1:U1=alice, T1:U2=ada ,T2:U9=bob")
    directory = ChatDirectory(users, {"ada": ADMIN, "web-dev": WEB})

    assert directory.teams == {"T1", "T2"}
    assert directory.identity("T1", "U1") == Identity("alice", Role.DEPLOYER)  # not in tokens
    assert directory.identity("T1", "U2") == ADMIN  # role from the token entry
    assert directory.identity("T2", "U1") is None  # the same user id in another workspace
    assert directory.identity("T1", "U3") is None


@pytest.mark.parametrize("raw", ["T1=alice", "T1:U1", "T1:U1=al ice", ":U1=a", "T 1:U1=a"])
def test_malformed_chat_users_fail_start_up(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"BUILDQ_CHAT_USERS entry 1"):
        parse_chat_users(raw)


def test_the_local_identity_is_an_admin_named_after_the_os_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth.getpass, "getuser", lambda: "jo")
    assert auth.local_identity() == Identity("jo", Role.ADMIN)
    monkeypatch.setattr(auth.getpass, "getuser", lambda: "odd name")
    assert auth.local_identity() == Identity("local", Role.ADMIN)


def test_a_session_fingerprint_names_one_token_without_revealing_it() -> None:
    entries = parse_tokens("ada:admin=t1,bob:viewer=t2")
    authenticator = Authenticator(entries)
    mark = authenticator.fingerprint("ada")

    assert mark is not None
    assert mark != authenticator.fingerprint("bob")
    assert entries[0].digest.hex() not in mark
    assert authenticator.by_fingerprint("ada", mark) == Identity("ada", Role.ADMIN)
    assert authenticator.by_fingerprint("bob", mark) is None
    assert authenticator.by_fingerprint("ada", mark[:-1]) is None
    assert authenticator.fingerprint("nobody") is None
    assert Authenticator(parse_tokens("ada:admin=t3")).by_fingerprint("ada", mark) is None
