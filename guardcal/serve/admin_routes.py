"""``POST /admin/reload-bundle`` (``internal`` scope): swap in the configured calibration bundle anew.

The same as sending the server SIGHUP. The bundle file named by ``--bundle`` is read again (write the new
one next to it and rename it over, as ``guardcal calibrate --output`` does); it is swapped in only when it
fits the running model, adapter, prompt, labels, mode and dtype (the start-up check), otherwise 409 and the
running policy stays. Requests in flight finish on the policy they began with.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from guardcal.serve.deps import CallerDep, ServiceDep, require_scope
from guardcal.serve.errors import BundleRefusedError
from guardcal.serve.handlers import ApiError
from guardcal.serve.protocol import ErrorResponse

admin_router = APIRouter()
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 403, 409, 413, 503)}


class ReloadResponse(BaseModel):
    previous_policy_version: str
    policy_version: str
    changed: bool


@admin_router.post("/admin/reload-bundle", response_model=ReloadResponse, responses=_ERRORS)
async def reload_bundle(request: Request, caller: CallerDep, service: ServiceDep) -> ReloadResponse:
    """Read the configured bundle again and swap it in if it fits the running model."""
    require_scope(request, caller)
    try:
        old, new = await service.reload_bundle()
    except BundleRefusedError as exc:
        raise ApiError(409, str(exc)) from None
    return ReloadResponse(previous_policy_version=old, policy_version=new, changed=old != new)
