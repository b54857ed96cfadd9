"""The FastAPI application: routes and wiring."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.openapi.utils import get_openapi
from starlette.responses import Response

from . import metrics, usage
from .auth import KeyStore
from .config import Settings
from .drain import Drain
from .errors import error_response, install_handlers
from .limits import Limiter
from .logs import lean_records
from .middleware import INFO_KEY, WrapperMiddleware
from .proxy import ProxyResponse, Upstream, UpstreamUnavailable
from .requestinfo import RequestInfo
from .routing import (
    SINGLE_INSTANCE,
    ModelsResponse,
    RoutedProxyResponse,
    Router,
    SearchProxyResponse,
    _names,
    instance_not_found,
    not_served_here,
)
from .schemas import (
    PASSTHROUGH_BODIES,
    RESPONSE_ID_PATTERN,
    ChatRequest,
    ErrorResponse,
    Status,
    passthrough_openapi,
)

log = logging.getLogger("vllm_wrapper")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "Invalid request body"),
        (401, "Missing or invalid API key"),
        (413, "Request body too large"),
        (503, "Upstream unavailable or wrapper draining"),
        (504, "Upstream timeout"),
    )
}
_SECURED = {"security": [{"bearer": []}]}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = Settings.from_env() if settings is None else settings
    keys = KeyStore(settings)
    drain = Drain(settings.drain_timeout)
    upstream = Upstream(settings)
    # VLLM_UPSTREAMS: routed by model; otherwise the single upstream as before.
    router = Router(settings) if settings.upstreams else None
    backend = upstream if router is None else router
    limiter = (None if settings.limits_store is None else
               Limiter(settings.limits_store, settings.limits_store_password_file, settings.limits_lease))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        drain.install()
        # Per-request overhead, set here so that only a serving process changes:
        # lean log records, and everything alive now (modules, the app, its
        # routes and models), which lives until shutdown, moved out of the
        # cyclic collector's sight so that collections stay short (p99).
        lean_records()
        gc.collect()
        gc.freeze()
        if keys.enabled:
            log.info("API key auth enabled", extra={"fields": {"keys": keys.names}})
        else:
            log.warning("no API keys configured (VLLM_WRAPPER_API_KEY, VLLM_WRAPPER_API_KEYS, "
                        "VLLM_WRAPPER_API_KEYS_FILE): the wrapper is OPEN to anyone who can reach it")
        log.info("vllm-wrapper started", extra={"fields": {
            "upstream": settings.upstream_url if router is None else
            {u.name: u.base for u in router.upstreams}}})
        try:
            yield
        finally:
            await backend.close()
            if limiter is not None:
                await limiter.close()

    app = FastAPI(
        title="vllm-wrapper",
        version="1.0.0",
        description="OpenAI-compatible gateway in front of vLLM.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.keys = keys
    app.state.drain = drain
    app.state.upstream = upstream
    app.state.router = router
    install_handlers(app)
    # Filled below; the middleware dispatches these exact routes itself.
    fast_routes: dict[tuple[str, str], Callable[[RequestInfo], Response]] = {}
    app.add_middleware(WrapperMiddleware, settings=settings, keys=keys, drain=drain,
                       fast_routes=fast_routes, limiter=limiter)

    def unknown_instance(instance: str) -> Response | None:
        """The 404 answer for an instance name this host does not have, else None."""
        if router is None:
            if instance == SINGLE_INSTANCE:
                return None
            return instance_not_found(instance, (SINGLE_INSTANCE,))
        if instance in router.by_name:
            return None
        return instance_not_found(instance, router.by_name)

    @app.get("/health", response_model=Status, tags=["ops"])
    async def health() -> Response:
        """Liveness of the wrapper itself."""
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/ready", response_model=Status, tags=["ops"],
             responses={503: _ERRORS[503]})
    async def ready(
        request: Request,
        instance: str | None = Query(
            default=None, max_length=256,
            description="With VLLM_UPSTREAMS: answer for this vLLM instance alone."),
    ) -> Response:
        """Readiness: vLLM (every instance, or the one named) answers its /health.
        X-Gpufleet-Instance names the instance as ?instance= does."""
        pinned: str | None = request.scope[INFO_KEY].instance
        if pinned is not None:
            unknown = unknown_instance(pinned)
            if unknown is not None:
                return unknown
            instance = pinned
        if drain.draining:
            reason = "vllm-wrapper is shutting down"
        elif router is not None:
            if instance is not None and instance not in router.by_name:
                return error_response(404, f"no vLLM instance named {instance!r}; instances: "
                                      f"{', '.join(router.by_name)}", code="instance_not_found",
                                      param="instance")
            reason = await router.check_health(instance)
        else:
            reason = await upstream.check_health()
        if reason is None:
            return Response(b'{"status":"ready"}', media_type="application/json")
        return error_response(503, reason, code="not_ready",
                              headers={"Retry-After": str(settings.retry_after)})

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics of the wrapper."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/chat", tags=["chat"], responses=_ERRORS, openapi_extra=_SECURED)
    async def chat(request: Request, payload: ChatRequest) -> Response:
        """Simple chat: OpenAI chat-completion answer (SSE when stream is true)."""
        info: RequestInfo = request.scope[INFO_KEY]
        target: Upstream | Response = upstream
        if router is not None and info.instance is not None:
            target = router.pick(payload.model, info.instance)
            if isinstance(target, Response):
                return target
            model = payload.model or router.models_of[info.instance][0]
        elif router is not None:
            # No model: VLLM_SERVED_MODEL when set (the wrapper role sets the first instance's).
            target = router.pick(payload.model or settings.served_model)
            if isinstance(target, Response):
                return target
            model = payload.model or settings.served_model or router.models[0]
        else:
            unknown = None if info.instance is None else unknown_instance(info.instance)
            if unknown is not None:
                return unknown
            try:
                model = payload.model or await upstream.served_model(info.request_id)
            except UpstreamUnavailable as exc:
                return error_response(503, str(exc), code="upstream_unavailable",
                                      headers={"Retry-After": str(settings.retry_after)})
        refused = scope_refusal(info, model)
        if refused is not None:
            return refused
        body = {
            "model": model,
            "messages": [m.model_dump() for m in payload.messages],
            "max_tokens": payload.max_tokens or settings.default_max_tokens,
            "temperature": (settings.default_temperature if payload.temperature is None
                            else payload.temperature),
            "stream": payload.stream,
        }
        usage.prepare(info, "/v1/chat/completions", body)  # adds include_usage to a stream in place
        try:
            encoded = orjson.dumps(body)
        except orjson.JSONEncodeError as exc:
            return error_response(400, f"request cannot be encoded as JSON: {exc}",
                                  code="invalid_value", param="body")
        if router is not None:
            return RoutedProxyResponse(target, "POST", "/v1/chat/completions", encoded, info)
        return ProxyResponse(upstream, "POST", "/v1/chat/completions", encoded, info)

    def passthrough_post(path: str) -> None:
        def handle_single(info: RequestInfo) -> Response:
            parsed = _json_object(info.body)
            if isinstance(parsed, Response):
                return parsed
            if info.instance is not None and info.instance != SINGLE_INSTANCE:
                return instance_not_found(info.instance, (SINGLE_INSTANCE,))
            model = parsed.get("model")
            refused = scope_refusal(info, model if model is not None else settings.served_model)
            if refused is not None:
                return refused
            if (info.instance is not None and settings.fleet_models and settings.served_model
                    and isinstance(model, str) and model != settings.served_model):
                return not_served_here(model, (settings.served_model,), settings)
            return ProxyResponse(upstream, "POST", path, usage.prepare(info, path, parsed), info)

        def handle_routed(info: RequestInfo) -> Response:
            parsed = _json_object(info.body)
            if isinstance(parsed, Response):
                return parsed
            assert router is not None
            model = parsed.get("model")
            if model is None and info.key_models is not None:
                served = router.models if info.instance is None else router.models_of.get(info.instance, ())
                model = served[0] if len(served) == 1 else None
            refused = scope_refusal(info, model)
            if refused is not None:
                return refused
            return router.proxy(parsed.get("model"), "POST", path, usage.prepare(info, path, parsed), info)

        handle = handle_single if router is None else handle_routed

        async def endpoint(request: Request) -> Response:
            return handle(request.scope[INFO_KEY])

        fast_routes["POST", path] = handle
        endpoint.__name__ = "proxy_" + path.strip("/").replace("/", "_")
        endpoint.__doc__ = f"Passthrough to vLLM {path}; body and answer unchanged."
        app.add_api_route(path, endpoint, methods=["POST"], tags=["openai"], responses=_ERRORS,
                          openapi_extra={**passthrough_openapi(path), **_SECURED})

    for path in PASSTHROUGH_BODIES:
        passthrough_post(path)

    def handle_models(info: RequestInfo) -> Response:
        if info.fleet_scope and settings.fleet_models:
            return fleet_models_response(info)
        if info.instance is not None:
            unknown = unknown_instance(info.instance)
            if unknown is not None:
                return unknown
        if router is not None:
            targets = router.upstreams if info.instance is None else [router.by_name[info.instance]]
            return ModelsResponse(targets, settings, info)
        if info.key_models is not None:
            return ModelsResponse([upstream], settings, info)
        return ProxyResponse(upstream, "GET", "/v1/models", None, info)

    fast_routes["GET", "/v1/models"] = handle_models

    def fleet_models_response(info: RequestInfo) -> Response:
        created = int(time.time())
        return Response(orjson.dumps({"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "gpufleet"}
            for name in settings.fleet_models if info.key_models is None or name in info.key_models]}),
            media_type="application/json")

    @app.get("/v1/models", tags=["openai"], responses=_ERRORS, openapi_extra=_SECURED)
    async def models(request: Request) -> Response:
        """Passthrough to vLLM /v1/models (with VLLM_UPSTREAMS: every instance's models)."""
        return handle_models(request.scope[INFO_KEY])

    # A stored Responses API answer, by id (one path segment, so it cannot climb
    # to another vLLM route); only these two forms, both through FastAPI.
    response_id = Path(pattern=RESPONSE_ID_PATTERN, max_length=256,
                       description="The id vLLM gave the response (resp_...).")

    @app.get("/v1/responses/{response_id}", tags=["openai"], responses=_ERRORS,
             openapi_extra=_SECURED)
    async def retrieve_response(
        request: Request,
        response_id: str = response_id,
        stream: bool = False,
        starting_after: int | None = Query(default=None, ge=0, le=2**31 - 1),
    ) -> Response:
        """Passthrough to vLLM GET /v1/responses/{id} (a stored or background response)."""
        query = "?stream=true" if stream else ""
        if starting_after is not None:
            query += ("&" if query else "?") + f"starting_after={starting_after}"
        return by_id("GET", f"/v1/responses/{response_id}{query}", request.scope[INFO_KEY])

    @app.post("/v1/responses/{response_id}/cancel", tags=["openai"], responses=_ERRORS,
              openapi_extra=_SECURED)
    async def cancel_response(request: Request, response_id: str = response_id) -> Response:
        """Passthrough to vLLM POST /v1/responses/{id}/cancel (a background response)."""
        return by_id("POST", f"/v1/responses/{response_id}/cancel", request.scope[INFO_KEY])

    def by_id(method: str, path: str, info: RequestInfo) -> Response:
        if info.instance is not None:
            unknown = unknown_instance(info.instance)
            if unknown is not None:
                return unknown
        if router is not None:  # the id lives on one instance: ask each in turn
            targets = (router.upstreams if info.instance is None
                       else [router.by_name[info.instance]])
            return SearchProxyResponse(targets, method, path, info)
        return ProxyResponse(upstream, method, path, None, info)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def scope_refusal(info: RequestInfo, model: object) -> Response | None:
    """The answer to a request whose key may not use its model (None: it may). A model that is
    not a string is left to the usual checks, which refuse it."""
    allowed = info.key_models
    if allowed is None or not isinstance(model, (str, type(None))) or model in allowed:
        return None
    names = _names(sorted(allowed)) or "none"
    if model is None:
        return error_response(400, f"API key {info.key_name!r} may use only some models; name one in "
                              f"'model': {names}", code="model_required", param="model")
    return error_response(403, f"API key {info.key_name!r} may not use model {model!r}; its models: {names}",
                          code="model_not_allowed", param="model", type_="permission_error")


def _json_object(body: bytes) -> dict[str, Any] | Response:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return error_response(400, f"request body is not valid JSON: {exc}", code="invalid_json",
                              param="body")
    if not isinstance(parsed, dict):
        return error_response(400, "request body must be a JSON object", code="invalid_json",
                              param="body")
    return parsed
