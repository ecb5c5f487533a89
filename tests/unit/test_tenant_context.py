"""tenant_context and the current ids: validation, nesting, and isolation per thread and task."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from pgcelery import (
    InvalidTenantId,
    TenantRequired,
    current_correlation_id,
    current_tenant_id,
    tenant_context,
)

A = "6f1f3c39-8a4e-4a65-9a2b-0d7a0e6f3b11"
B = "c0a1e2d3-4b5c-4d6e-8f70-8192a3b4c5d6"


def test_ids_are_set_inside_and_reset_after_the_block() -> None:
    assert current_tenant_id() is None
    with tenant_context(A, correlation_id="req-1") as scope:
        assert (current_tenant_id(), current_correlation_id()) == (A, "req-1")
        assert (scope.tenant_id, scope.correlation_id) == (A, "req-1")
    assert (current_tenant_id(), current_correlation_id()) == (None, None)


def test_blocks_nest_and_inherit_the_correlation_id() -> None:
    with tenant_context(uuid.UUID(A)) as outer:
        assert uuid.UUID(outer.correlation_id or "")
        with tenant_context(B.upper()):
            assert current_tenant_id() == B  # canonical lower-case form
            assert current_correlation_id() == outer.correlation_id
        assert current_tenant_id() == A


def test_ids_are_reset_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), tenant_context(A):
        raise RuntimeError("boom")
    assert current_tenant_id() is None


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, TenantRequired),
        ("", TenantRequired),
        ("tenant-a", InvalidTenantId),
        (7, InvalidTenantId),
    ],
)
def test_a_missing_or_invalid_tenant_is_refused(value: object, error: type[Exception]) -> None:
    with pytest.raises(error) as caught, tenant_context(value):  # type: ignore[arg-type]
        pass
    assert "tenant-a" not in str(caught.value)
    assert current_tenant_id() is None


def test_an_unusable_correlation_id_is_refused() -> None:
    with pytest.raises(ValueError, match="correlation_id"), tenant_context(A, "x" * 500):
        pass


def test_each_thread_has_its_own_ids() -> None:
    barrier = threading.Barrier(2)
    seen: dict[str, object] = {}

    def run(name: str, tenant: str) -> None:
        seen[f"{name}-start"] = current_tenant_id()
        with tenant_context(tenant):
            barrier.wait(timeout=10)  # both threads are inside their blocks now
            seen[name] = current_tenant_id()
            barrier.wait(timeout=10)

    with tenant_context(A):
        threads = [
            threading.Thread(target=run, args=("a", A)),
            threading.Thread(target=run, args=("b", B)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert current_tenant_id() == A
    assert seen == {"a-start": None, "b-start": None, "a": A, "b": B}


def test_each_asyncio_task_has_its_own_ids() -> None:
    async def work(tenant: str) -> list[str | None]:
        seen = []
        with tenant_context(tenant):
            for _ in range(3):
                await asyncio.sleep(0)  # let the other task run inside its own block
                seen.append(current_tenant_id())
        return seen

    async def main() -> list[list[str | None]]:
        return list(await asyncio.gather(work(A), work(B)))

    assert asyncio.run(main()) == [[A, A, A], [B, B, B]]
    assert current_tenant_id() is None
