"""shared/cli/childenv.py: what each child of ``buildq up`` sees of the user's environment."""

from __future__ import annotations

from shared.cli.childenv import service_env

USER_ENV = {
    "PATH": "/usr/bin",
    "HOME": "/home/me",
    "SSL_CERT_FILE": "/etc/ssl/certs/ca.pem",
    "AWS_SECRET_ACCESS_KEY": "real-cloud-secret",
    "GITHUB_TOKEN": "ghp_other_tool",
    "DATABASE_URL": "postgres://me:pw@db/x",
    "BUILDQ_REDIS_URL": "redis://127.0.0.1:1/0",
    "BUILDQ_API_TOKENS": "alice:admin=secret-token",
    "BUILDQ_SLACK_SIGNING_SECRET": "slack-secret",
    "BUILDQ_GIT_TOKENS": "example.com=git-token",
}
EMBEDDED = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def test_unrelated_user_variables_reach_no_service() -> None:
    for service in ("uploader", "deployer"):
        env = service_env(USER_ENV, service, embedded_aws=EMBEDDED)
        assert "GITHUB_TOKEN" not in env
        assert "DATABASE_URL" not in env
        assert env["PATH"] == "/usr/bin"
        assert env["SSL_CERT_FILE"] == "/etc/ssl/certs/ca.pem"


def test_embedded_s3_replaces_the_users_cloud_credentials() -> None:
    env = service_env(USER_ENV, "deployer", embedded_aws=EMBEDDED)

    assert env["AWS_SECRET_ACCESS_KEY"] == "testing"


def test_the_users_own_s3_gets_the_users_credentials() -> None:
    env = service_env(USER_ENV, "uploader", embedded_aws=None)

    assert env["AWS_SECRET_ACCESS_KEY"] == "real-cloud-secret"


def test_deployers_never_get_api_chat_or_git_secrets() -> None:
    uploader = service_env(USER_ENV, "uploader", embedded_aws=EMBEDDED)
    deployer = service_env(USER_ENV, "deployer", embedded_aws=EMBEDDED)

    secrets = ("BUILDQ_API_TOKENS", "BUILDQ_SLACK_SIGNING_SECRET", "BUILDQ_GIT_TOKENS")
    assert all(name in uploader for name in secrets)
    assert not any(name in deployer for name in secrets)
    assert deployer["BUILDQ_REDIS_URL"] == uploader["BUILDQ_REDIS_URL"]
