"""The application factory :func:`create_app` and :func:`serve` (uvicorn).

Nothing is built at import time. The lifespan loads and validates the calibration bundle,
starts the backend, checks the bundle against the backend's identity (refusing to start on a
mismatch), opens the outbox, starts its delivery worker and warms the backend up. Under :func:`serve`,
SIGHUP reads the bundle file again and swaps it in if it fits (``GuardService.reload_bundle``; also
``POST /admin/reload-bundle``). On shutdown
(SIGTERM under uvicorn: in-flight requests finish first, up to ``drain_timeout_s``) it stops
taking requests, lets the outbox worker finish its batch, and closes hooks and backend; pending
escalations stay in the outbox file for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from guardcal import __version__
from guardcal.backends.base import ClassifierBackend
from guardcal.serve.admin_routes import admin_router
from guardcal.serve.deps import AuthMiddleware, KeyRing, require_metrics
from guardcal.serve.errors import BundleRefusedError
from guardcal.serve.handlers import BodyLimitMiddleware, install_error_handlers
from guardcal.serve.hooks import EscalationHook, load_hooks
from guardcal.serve.metrics import ServeMetrics, attach_metrics
from guardcal.serve.review_routes import review_router
from guardcal.serve.reviews import ReviewHook, ReviewStore
from guardcal.serve.routes import router
from guardcal.serve.service import GuardService, load_bundle
from guardcal.serve.settings import ServeSettings

_log = logging.getLogger("guardcal.serve")
#: JSON overhead allowed per input character (escapes such as \\u00e9 take 6 bytes) plus fixed slack.
BODY_BYTES_PER_CHAR = 6
BODY_SLACK_BYTES = 64 * 1024


def max_body_bytes(settings: ServeSettings) -> int:
    """The largest request body a valid request can need."""
    return BODY_BYTES_PER_CHAR * settings.max_input_chars * settings.max_request_batch + BODY_SLACK_BYTES


def document_limits(schema: dict[str, Any], settings: ServeSettings) -> dict[str, Any]:
    """Write this server's input limits into its OpenAPI schema, so clients (and fuzzers) see them."""
    fields = schema.get("components", {}).get("schemas", {}).get("ClassifyRequest", {}).get("properties", {})
    if "input" in fields:
        fields["input"]["maxLength"] = settings.max_input_chars
    if "inputs" in fields:
        fields["inputs"]["maxItems"] = settings.max_request_batch
        fields["inputs"]["items"] = {"type": "string", "maxLength": settings.max_input_chars}
    message = schema.get("components", {}).get("schemas", {}).get("Message", {}).get("properties", {})
    if "content" in message:  # all turns together are limited too (413): a sum JSON schema cannot state
        message["content"]["maxLength"] = settings.max_input_chars
    return schema


def create_app(
    settings: ServeSettings,
    backend: ClassifierBackend,
    *,
    hooks: Sequence[EscalationHook] | None = None,
    metrics: ServeMetrics | None = None,
    reload_on_sighup: bool = False,
) -> FastAPI:
    """The guardcal HTTP app for ``backend``; ``hooks`` replaces the configured hooks (tests);
    ``reload_on_sighup`` swaps the bundle in anew on SIGHUP (the process's main thread only)."""
    metrics = metrics if metrics is not None else ServeMetrics()
    docs = settings.dev
    app = FastAPI(
        title="guardcal",
        version=__version__,
        lifespan=make_lifespan(settings, backend, hooks, metrics, reload_on_sighup),
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_limits(FastAPI.openapi(app), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.keyring = KeyRing.from_entries(settings.key_entries())
    app.state.service = None
    install_error_handlers(app, metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes(settings))
    # added last, so it runs first: a caller without a valid key is refused before the body is read
    app.add_middleware(AuthMiddleware, keyring=app.state.keyring, settings=settings, metrics=metrics)
    app.include_router(router)
    app.include_router(review_router)
    app.include_router(admin_router)
    attach_metrics(app, metrics, dependencies=[Depends(require_metrics)])
    return app


def make_lifespan(
    settings: ServeSettings,
    backend: ClassifierBackend,
    hooks: Sequence[EscalationHook] | None,
    metrics: ServeMetrics,
    reload_on_sighup: bool,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: build and start the service (hooks, review store, bundle), serve, then drain."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        chosen = list(hooks) if hooks is not None else load_hooks(settings)
        store = ReviewStore(settings.review_path()) if settings.reviews else None
        if store is not None and "review" not in {h.name for h in chosen}:
            chosen.append(ReviewHook(store))
        service = GuardService(backend, load_bundle(settings), settings, chosen, metrics, reviews=store)
        app.state.service = service
        try:
            await service.start()
        except BaseException:
            app.state.service = None
            await service.aclose()
            raise
        if reload_on_sighup:
            watch_sighup(service)
        if settings.dev:
            _log.info("API docs at /docs and /openapi.json (--dev)")
        else:
            _log.info("API docs at /docs: start with --dev")
        try:
            yield
        finally:
            if reload_on_sighup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            _log.info("guardcal shutting down; pending escalations stay in %s", settings.outbox)
            await service.aclose()

    return lifespan


def watch_sighup(service: GuardService) -> None:
    """On SIGHUP, reload the bundle (a refusal is logged, and the running policy stays)."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[tuple[str, str]]] = set()

    async def reload() -> tuple[str, str]:
        try:
            return await service.reload_bundle()
        except BundleRefusedError:
            return service.policy_version, service.policy_version  # logged by the service

    def on_hup() -> None:
        task = loop.create_task(reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)


def serve(settings: ServeSettings, backend: ClassifierBackend) -> None:
    """Run the app with uvicorn until SIGINT/SIGTERM (graceful: in-flight requests finish)."""
    import uvicorn

    app = create_app(settings, backend, reload_on_sighup=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        # a client that reuses a connection the server is closing gets a transport error, not an
        # answer; idle clients (httpx: 5 s) and load balancers (often 60 s) must close first
        timeout_keep_alive=settings.keep_alive_s,
        # connections + requests at once; past it uvicorn answers 503 without parsing (the queue's 429 comes first)
        limit_concurrency=settings.limit_concurrency,
        lifespan="on",
        server_header=False,
    )
    uvicorn.Server(config).run()
