"""What each child of ``buildq up`` may see of the user's environment.

The user's shell holds things no service needs (cloud credentials, tokens of other
tools). Each child gets an allowlist of the host's variables, the settings it reads,
and, with the embedded S3, only the embedded server's dummy credentials. Deployers
never see API tokens, chat secrets or git credentials: builds run beside them.
"""

from __future__ import annotations

from collections.abc import Mapping

HOST_VARS = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE",
        "PIP_CERT", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    }
)  # fmt: skip
# Settings only the uploader (API, ingest, chat) needs; a deployer never gets them.
UPLOADER_ONLY = frozenset(
    {
        "BUILDQ_API_TOKENS", "BUILDQ_API_TOKEN", "BUILDQ_SLACK_SIGNING_SECRET",
        "BUILDQ_MATTERMOST_TOKEN", "BUILDQ_GIT_TOKENS", "BUILDQ_CHAT_USERS",
    }
)  # fmt: skip


def service_env(
    environ: Mapping[str, str], service: str, *, embedded_aws: Mapping[str, str] | None
) -> dict[str, str]:
    """The environment of one ``python -m <service>`` child (uploader or deployer).

    ``embedded_aws``: the embedded S3's credentials, used instead of any ``AWS_*``
    of the user's; None when S3 is the user's own (their ``AWS_*`` pass through).
    """
    env = {k: v for k, v in environ.items() if k in HOST_VARS}
    env.update(
        (k, v)
        for k, v in environ.items()
        if k.startswith("BUILDQ_") and (service == "uploader" or k not in UPLOADER_ONLY)
    )
    if embedded_aws is None:
        env.update((k, v) for k, v in environ.items() if k.startswith("AWS_"))
    else:
        env.update(embedded_aws)
    return env
