"""Several vLLM instances behind one wrapper (VLLM_UPSTREAMS): each request goes
to an instance serving its `model`; /v1/models, /ready and the Responses API's
by-id routes ask every instance. A request with X-Gpufleet-Instance (the fleet
edge's) goes to that instance alone. Without VLLM_UPSTREAMS the Router is not
used; the one vLLM is then instance SINGLE_INSTANCE."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import aiohttp
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from . import metrics
from .config import Settings
from .errors import error_response
from .proxy import ProxyResponse, Upstream
from .requestinfo import RequestInfo

log = logging.getLogger("vllm_wrapper.routing")

SINGLE_INSTANCE = "server"


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def instance_not_found(instance: str, instances: Iterable[str]) -> Response:
    return error_response(
        404, f"no vLLM instance named {instance!r} on this host; instances: {_names(instances)}",
        code="instance_not_found", type_="invalid_request_error")


def not_served_here(model: str, served: Iterable[str], settings: Settings) -> Response:
    """A pinned request (the fleet edge's) for a model its instance does not serve. The edge's
    router sends a model with no worker left to another model's worker: a model of the fleet
    answers 503 (its hosts are out now), any other 404 naming the fleet's models."""
    fleet = settings.fleet_models
    if model in fleet:
        return error_response(
            503, f"no healthy backend serves model {model!r} right now; retry",
            code="model_unavailable", type_="service_unavailable",
            headers={"Retry-After": str(settings.retry_after)})
    return error_response(
        404, f"The model {model!r} does not exist; available models: {_names(fleet or served)}",
        code="model_not_found", param="model", type_="invalid_request_error")


class Router:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.upstreams = [Upstream(settings, spec.url, spec.name) for spec in settings.upstreams]
        self.by_name = {u.name: u for u in self.upstreams}
        self.by_model: dict[str, list[Upstream]] = {}
        self.models_of = {spec.name: spec.models for spec in settings.upstreams}
        for upstream, spec in zip(self.upstreams, settings.upstreams, strict=True):
            for model in spec.models:
                self.by_model.setdefault(model, []).append(upstream)
        self.models = tuple(self.by_model)
        self._turns = dict.fromkeys(self.models, 0)

    async def start(self) -> None:
        for upstream in self.upstreams:
            await upstream.start()

    async def close(self) -> None:
        for upstream in self.upstreams:
            await upstream.close()

    def served(self) -> str:
        return _names(self.models)

    def pinned(self, instance: str) -> Upstream | Response:
        """The instance named by X-Gpufleet-Instance, or the 404 answer."""
        upstream = self.by_name.get(instance)
        if upstream is None:
            return instance_not_found(instance, self.by_name)
        return upstream

    def pick(self, model: object, instance: str | None = None) -> Upstream | Response:
        """The instance for a request's `model` (None: the only served name), or the
        OpenAI-shaped error answer. `instance` (X-Gpufleet-Instance) pins the
        request to that instance, which must serve the model."""
        if instance is not None:
            return self._pick_pinned(model, instance)
        if model is None:
            if len(self.models) != 1:
                return error_response(
                    400, f"this server serves several models, name one in 'model': {self.served()}",
                    code="model_required", param="model")
            model = self.models[0]
        candidates = self.by_model.get(model) if isinstance(model, str) else None
        if candidates is None:
            return error_response(
                404, f"The model {model!r} does not exist here; served models: {self.served()}",
                code="model_not_found", param="model", type_="invalid_request_error")
        if len(candidates) == 1:
            return candidates[0]
        # The least busy replica (in this worker); ties take turns.
        low = min(u.in_flight for u in candidates)
        tied = [u for u in candidates if u.in_flight == low]
        turn = self._turns[model]
        self._turns[model] = turn + 1
        return tied[turn % len(tied)]

    def _pick_pinned(self, model: object, instance: str) -> Upstream | Response:
        upstream = self.pinned(instance)
        if isinstance(upstream, Response):
            return upstream
        served = self.models_of[instance]
        if model is None:
            if len(served) == 1:
                return upstream
            return error_response(
                400, f"vLLM instance {instance!r} serves several models, name one in 'model': "
                f"{_names(served)}", code="model_required", param="model")
        if model not in served and self.settings.fleet_models and isinstance(model, str):
            return not_served_here(model, served, self.settings)
        if model not in served:
            return error_response(
                404, f"The model {model!r} is not served by vLLM instance {instance!r} here; "
                f"its models: {_names(served)}",
                code="model_not_found", param="model", type_="invalid_request_error")
        return upstream

    def proxy(self, model: object, method: str, path: str, body: bytes,
              info: RequestInfo) -> Response:
        picked = self.pick(model, info.instance)
        if isinstance(picked, Response):
            return picked
        return RoutedProxyResponse(picked, method, path, body, info)

    async def check_health(self, instance: str | None = None) -> str | None:
        """None when the instances (or the one named) answer /health, else why not."""
        if instance is not None:
            upstream = self.by_name.get(instance)
            if upstream is None:
                return f"no instance named {instance!r}; instances: {', '.join(self.by_name)}"
            targets = [upstream]
        else:
            targets = self.upstreams
        reasons = await asyncio.gather(*(u.check_health() for u in targets))
        failed = [f"instance {u.name!r}: {reason}"
                  for u, reason in zip(targets, reasons, strict=True) if reason is not None]
        return "not ready: " + "; ".join(failed) if failed else None


async def models_body(upstreams: list[Upstream], settings: Settings, request_id: str,
                      allowed: frozenset[str] | None = None) -> bytes | None:
    """The union of the instances' /v1/models `data` (first seen wins), as vLLM's JSON, less
    the models outside `allowed` (the request's key scope); None when no instance answered."""
    answers = await asyncio.gather(*(_models_of(u, settings, request_id) for u in upstreams))
    seen: dict[str, Any] = {}
    for data in answers:
        for entry in data or ():
            if isinstance(entry, dict) and entry.get("id") not in seen:
                seen[entry.get("id")] = entry
    if all(data is None for data in answers):
        return None
    listed = [entry for name, entry in seen.items() if allowed is None or name in allowed]
    return orjson.dumps({"object": "list", "data": listed})


async def _models_of(upstream: Upstream, settings: Settings, request_id: str) -> list[Any] | None:
    assert upstream.session is not None
    timeout = aiohttp.ClientTimeout(total=settings.ready_timeout)
    try:
        async with upstream.session.get(f"{upstream.base}/v1/models", timeout=timeout,
                                        headers=upstream.headers(request_id)) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            data = (await resp.json(content_type=None))["data"]
            if not isinstance(data, list):
                raise TypeError("data is not a list")
            return data
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
        metrics.UPSTREAM_ERRORS.labels(
            "timeout" if isinstance(exc, TimeoutError) else "connect").inc()
        log.warning("models of %s left out: %s: %s", upstream.label,
                    type(exc).__name__, exc,
                    extra={"fields": {"request_id": request_id, "instance": upstream.name}})
        return None


class RoutedProxyResponse(ProxyResponse):
    """A proxied request counted in its instance's in-flight number while it lasts."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upstream = self.upstream
        upstream.in_flight += 1
        try:
            await super().__call__(scope, receive, send)
        finally:
            upstream.in_flight -= 1


class SearchProxyResponse(ProxyResponse):
    """A Responses API call by id (retrieve, cancel): the id lives on one instance,
    so each is asked in turn and the first answer that is not 404 is relayed.
    When every reachable one says 404 but some could not be asked, the answer is
    503 naming those (the id may be theirs)."""

    def __init__(self, upstreams: list[Upstream], method: str, path: str,
                 info: RequestInfo) -> None:
        super().__init__(upstreams[0], method, path, None, info)
        self.upstreams = upstreams

    async def _relay(self, send: Send) -> None:
        unreachable: list[Upstream] = []
        last = self.upstreams[-1]
        for upstream in self.upstreams:
            self.upstream = upstream
            try:
                resp = await self._request(upstream)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._upstream_failed("timeout" if isinstance(exc, TimeoutError) else "connect")
                log.warning("instance %s not asked for %s: %s: %s", upstream.name, self.path,
                            type(exc).__name__, exc,
                            extra={"fields": {"request_id": self.info.request_id,
                                              "instance": upstream.name}})
                unreachable.append(upstream)
                continue
            if resp.status == 404 and (upstream is not last or unreachable):
                resp.close()
                continue
            await self._relay_and_release(resp, send)
            return
        names = ", ".join(repr(u.name) for u in unreachable)
        await self._send_error(
            send, 503, f"upstream (vLLM instance(s) {names}) is unavailable and may hold "
            "this response", "upstream_unavailable", retry_after=True)


class ModelsResponse(Response):
    """GET /v1/models answered with the union of the instances' lists (or the
    list of the one instance the request is pinned to), limited to the models the
    request's key may use."""

    def __init__(self, upstreams: list[Upstream], settings: Settings,
                 info: RequestInfo) -> None:  # sends itself
        self.upstreams = upstreams
        self.settings = settings
        self.info = info
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await models_body(self.upstreams, self.settings, self.info.request_id,
                                 self.info.key_models)
        if body is None:
            self.info.upstream_error = "connect"
            subject = ("every vLLM instance" if len(self.upstreams) > 1
                       else self.upstreams[0].label)
            answer = error_response(
                503, f"upstream ({subject}) is unavailable", code="upstream_unavailable",
                headers={"Retry-After": str(self.settings.retry_after)})
        else:
            self.info.upstream_status = 200
            answer = Response(body, media_type="application/json")
        await answer(scope, receive, send)
