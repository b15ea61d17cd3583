"""ClassifierBackend contract and the FakeBackend test double."""

from __future__ import annotations

import pytest

from guardcal.backends.base import IDENTITY_KEYS, ClassifierBackend, FakeBackend, check_identity, fake_identity
from guardcal.core.prompt import PromptTemplate
from guardcal.errors import BackendError

pytestmark = pytest.mark.anyio


async def test_fake_backend_sync_and_async_handlers(kit):
    async def async_handler(texts):
        return kit.scores(*([0.3] * len(texts)))

    for backend in (FakeBackend(kit.table_handler()), FakeBackend(async_handler)):
        assert not backend.ready
        with pytest.raises(BackendError, match="before start"):
            await backend.score(["x"])
        await backend.start()
        assert backend.ready
        out = await backend.score(["hello there", "other"])
        assert len(out) == 2 and backend.calls[-1] == ["hello there", "other"]
        await backend.aclose()
        assert not backend.ready


async def test_fake_backend_handler_errors_propagate(kit):
    def broken(texts):
        raise RuntimeError("boom")

    backend = FakeBackend(broken)
    await backend.start()
    with pytest.raises(RuntimeError, match="boom"):
        await backend.score(["x"])


def test_identity_matches_the_bundle_check_keys():
    ident = FakeBackend(lambda texts: None).identity()  # type: ignore[arg-type,return-value]
    assert tuple(ident) == IDENTITY_KEYS
    assert ident["prompt_fingerprint"] == PromptTemplate("direct").fingerprint()
    assert fake_identity("reasoning")["prompt_fingerprint"] == PromptTemplate("reasoning").fingerprint()
    with pytest.raises(BackendError, match="missing"):
        check_identity({"model_id": "x"})
    with pytest.raises(BackendError, match="unknown"):
        check_identity({**ident, "extra": 1})


def test_backend_is_abstract():
    with pytest.raises(TypeError):
        ClassifierBackend()  # type: ignore[abstract]
