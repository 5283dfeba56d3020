"""Which service's secrets a job's build gets (``uploader/submit.py``): only a preview
``<parent>--…`` may name its parent in ``secrets_of``, only for a submitter that may
deploy that parent; a job that ``buildq doctor --recover`` brings back keeps it."""

from __future__ import annotations

import pytest

from shared.core.errors import ValidationError
from tests.unit.test_recover import World, accept, storage, w  # noqa: F401  (fixtures)
from tests.unit.test_submit import limited, services  # noqa: F401  (fixtures)
from uploader.auth import Identity, Role
from uploader.state import Services
from uploader.submit import Forbidden, Submission, submit

pytestmark = pytest.mark.anyio

REPO = "https://github.com/team/web.git"
HOOK = Identity("github-webhook", Role.DEPLOYER, ("docs-web", "docs-web--*"))
ADMIN = Identity("root", Role.ADMIN)


async def test_a_preview_records_its_parent(services: Services) -> None:  # noqa: F811
    granted = await submit(
        services, HOOK, Submission(REPO, "docs-web--feature", secrets_of="docs-web")
    )
    own = await submit(services, HOOK, Submission(REPO, "docs-web--other"))

    first = await services.store.get(granted.job_id)
    second = await services.store.get(own.job_id)
    assert first is not None
    assert second is not None
    assert first.secrets_of == "docs-web"
    assert second.secrets_of is None


@pytest.mark.parametrize(
    ("service", "secrets_of", "error"),
    [
        ("docs-web", "docs-web", "is not a preview of docs-web"),
        ("docs-webx", "docs-web", "is not a preview of docs-web"),
        ("docs-web--x", "Not A Name", "invalid service name"),
    ],
)
async def test_only_a_preview_may_name_its_parent(
    services: Services,  # noqa: F811
    service: str,
    secrets_of: str | None,
    error: str,
) -> None:
    submission = Submission(REPO, service, secrets_of=secrets_of)
    with pytest.raises(ValidationError, match=error):
        await submit(services, ADMIN, submission)
    assert await services.store.recent(limit=5) == []


async def test_naming_a_parent_one_may_not_deploy_is_forbidden(services: Services) -> None:  # noqa: F811
    previews_only = Identity("dana", Role.DEPLOYER, ("web--*",))
    with pytest.raises(Forbidden):
        await submit(services, previews_only, Submission(REPO, "web--feature", secrets_of="web"))
    assert await services.store.recent(limit=5) == []


async def test_a_recovered_preview_keeps_whose_secrets_it_builds_with(w: World) -> None:  # noqa: F811
    job_id, _ = await accept(w.store, w.storage, "web--pr-9", secrets_of="web")
    await w.redis.flushall()

    done = await w.recoverer().run()

    assert done.jobs_requeued == [job_id]
    restored = await w.store.get(job_id)
    assert restored is not None
    assert restored.secrets_of == "web"
