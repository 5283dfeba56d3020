"""Property-based API fuzzing of the real uploader against its own OpenAPI spec.

The stack (uploader and a deployer as real processes, valkey, moto) runs with API
tokens; schemathesis generates valid and invalid requests for every operation of
``/openapi.json`` and every answer must be free of server errors. Bounded: a few
examples per operation and mode, derandomized, no shrinking. (Hypothesis is driven
directly: schemathesis's own pytest integration does not support pytest 9 yet.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.integration.helpers import Stack
from tests.integration.test_hostile_http import TOKEN, module_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES_PER_MODE = 30


@pytest.fixture(scope="module")
def fuzz_stack(
    valkey_url: str, s3_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    yield from module_stack(
        valkey_url, s3_url, tmp_path_factory, {"BUILDQ_API_TOKENS": f"schema:admin={TOKEN}"}
    )


def test_no_generated_request_is_a_server_error(fuzz_stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_stack.url}/openapi.json")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    failures: list[str] = []
    calls = 0
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/events":
            # An endless event stream: a fuzzed read would only end at the test's
            # timeout. Its inputs (Last-Event-ID, ?after=) have unit tests.
            continue
        labels.append(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def run(case: schemathesis.Case) -> None:
                nonlocal calls
                calls += 1
                response = case.call(base_url=fuzz_stack.url, headers=headers, timeout=30)
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: "
                        f"{response.text[:200]}"
                    )

            try:
                run()
            except Unsatisfiable:
                # An operation without parameters or body has no invalid variant.
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert "POST /deployments" in labels
    assert calls > 10 * len(labels)
    print(f"schemathesis: {calls} requests over {len(labels)} operations")
    assert failures == [], "\n".join(failures[:20])
