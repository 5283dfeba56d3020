"""Which variables a submitter may put in ``build.env``."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from shared.core.buildenv import MAX_ENTRIES, MAX_TOTAL_BYTES, validate_build_env
from shared.core.errors import ValidationError
from uploader.api import DeploymentRequest
from uploader.errors import install_error_handlers


@pytest.mark.parametrize(
    "name",
    [
        "LD_PRELOAD",
        "LD_AUDIT",
        "LD_LIBRARY_PATH",
        "ld_preload",
        "GCONV_PATH",
        "GETCONF_DIR",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "RES_OPTIONS",
        "NLSPATH",
        "MALLOC_CHECK_",
        "GLIBC_TUNABLES",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "NODE_OPTIONS",
        "BASH_ENV",
        "ENV",
        "IFS",
        "BUILDQ_JOB_ID",
        "BUILDQ_COMMAND",
    ],
)
def test_loader_interpreter_and_buildq_variables_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match=f"buildq.toml: {name} is"):
        validate_build_env({name: "/tmp/x.so"}, "buildq.toml")


def test_ordinary_variables_and_path_are_accepted() -> None:
    env = {"SITE_TITLE": "hello", "PATH": "/opt/tool/bin:/usr/bin", "NODE_ENV": "production"}
    assert validate_build_env(env, "request") == env


@pytest.mark.parametrize("name", ["1X", "A-B", "A B", "", "X" * 129])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="invalid environment variable name"):
        validate_build_env({name: "v"}, "request")


def test_nul_in_a_value_is_refused() -> None:
    with pytest.raises(ValidationError, match="must be a string"):
        validate_build_env({"A": "x\x00y"}, "request")


def test_at_most_64_entries_and_32_kib() -> None:
    validate_build_env({f"V{i}": "x" for i in range(MAX_ENTRIES)}, "request")
    with pytest.raises(ValidationError, match="more than 64 entries"):
        validate_build_env({f"V{i}": "x" for i in range(MAX_ENTRIES + 1)}, "request")
    with pytest.raises(ValidationError, match=f"larger than {MAX_TOTAL_BYTES} bytes"):
        validate_build_env({"A": "x" * 20_000, "B": "y" * 20_000}, "request")


# --- the API's request model: a refused variable is a 422 with the reason --------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LD_PRELOAD": "/w/job/src/x.so"}, "LD_PRELOAD is a loader"),
        ({"GCONV_PATH": "/w/x"}, "GCONV_PATH is a loader"),
        ({f"V{i}": "x" for i in range(MAX_ENTRIES + 1)}, "build.env"),
        ({"A": "x" * 40_000}, "larger than"),
    ],
)
@pytest.mark.anyio
async def test_a_request_asking_for_a_refused_variable_is_a_422(
    env: dict[str, str], message: str
) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/probe")
    async def probe(body: DeploymentRequest) -> dict[str, str]:
        return {"ok": "yes"}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://buildq.test") as client:
        bad = await client.post("/probe", json={"repo_url": "x", "build": {"env": env}})
        good = await client.post("/probe", json={"repo_url": "x", "build": {"env": {"A": "1"}}})
    assert bad.status_code == 422, bad.text
    assert message in bad.text
    assert good.status_code == 200
