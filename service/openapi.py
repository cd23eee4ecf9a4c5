"""The OpenAPI 3.0 document served at /docs.json (and so the Swagger UI at /docs), derived from the route table.

Every generation route appears as POST (a JSON body of its request model) and GET (the same fields in the query
string), with the media types it answers and every error it can give; beside them /info, the probes, /metrics
and the Open Inference Protocol's infer.
"""

from __future__ import annotations

from functools import cache

from service.routes import ROUTE_LIST, Route
from service.settings import ServiceSettings

REF = "#/components/schemas/{model}"
ERROR = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "one line: the first problem found"},
        "errors": {
            "type": "array",
            "items": {"type": "object", "properties": {"field": {"type": "string"}, "rule": {"type": "string"}}},
        },
    },
    "required": ["error", "errors"],
}
REFUSALS = {
    "401": "DCGAN_API_KEY is set and the request does not carry it",
    "408": "the body did not arrive within DCGAN_BODY_TIMEOUT_S",
    "413": "the body is too large",
    "415": "the body is not application/json",
    "429": "DCGAN_MAX_INFLIGHT requests already in progress; retry after Retry-After",
    "503": "overloaded, past the deadline, or shutting down; retry after Retry-After",
}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def _success(route: Route) -> dict:
    schema = {"$ref": REF.format(model=route.response_model.__name__)} if route.response_model else {"type": "string", "format": "binary"}
    return {
        "description": route.returns,
        "headers": {"ETag": {"schema": {"type": "string"}}, "Cache-Control": {"schema": {"type": "string"}}},
        "content": {media_type: {"schema": schema} for media_type in route.media_types},
    }


def _operations(route: Route, schemas: dict) -> dict:
    schema = route.request.model_json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[route.request.__name__] = schema
    if route.response_model is not None:
        response_schema = route.response_model.model_json_schema(ref_template=REF)
        schemas.update(response_schema.pop("$defs", {}))
        schemas[route.response_model.__name__] = response_schema
    responses = {
        "200": _success(route),
        "400": _error("the body is not JSON"),
        "404": _error("the model named is not loaded (the error names the loaded ones)"),
        "422": _error("a field breaks its rule: each one is named with its rule"),
        **{code: _error(why) for code, why in REFUSALS.items()},
    }
    required = set(schema.get("required", []))
    parameters = [
        {"name": name, "in": "query", "required": name in required, "schema": field_schema}
        for name, field_schema in schema["properties"].items()
    ]
    tag = route.path.split("/")[1]
    return {
        "post": {
            "summary": route.summary,
            "operationId": "post_" + route.path.strip("/").replace("/", "_"),
            "tags": [tag],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": REF.format(model=route.request.__name__)}}},
            },
            "responses": {**responses, "412": _error("If-None-Match matches this response's ETag")},
        },
        "get": {
            "summary": route.summary + " (fields in the query string)",
            "operationId": "get_" + route.path.strip("/").replace("/", "_"),
            "tags": [tag],
            "parameters": parameters,
            "responses": {**responses, "304": {"description": "If-None-Match matches this response's ETag"}},
        },
    }


@cache
def _document(max_n: int) -> dict:
    schemas: dict = {"Error": ERROR_SCHEMA}
    paths = {route.path: _operations(route, schemas) for route in ROUTE_LIST}
    paths["/info"] = {
        "get": {"summary": "the model's manifest, provider, batching, limits and settings", "responses": {"200": {"description": "JSON"}}}
    }
    paths["/readyz"] = {
        "get": {"summary": "ready once the model loaded and passed its golden check", "responses": {"200": {"description": "ready"}}}
    }
    paths["/livez"] = {"get": {"summary": "alive", "responses": {"200": {"description": "alive"}}}}
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "description": "a served model (/info)"}
    paths["/v2/models/{name}/infer"] = {
        "post": {
            "summary": "Open Inference Protocol (KServe v2): seed (+ n) or latents z -> UINT8 images [B, H, W, C]",
            "parameters": [name],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {
                "200": {"description": "the inference response"},
                "400": _error("not an inference request this model serves"),
                "404": _error("the model is not loaded"),
            },
        }
    }
    paths["/v2/repository/index"] = {
        "post": {"summary": "the loaded models: name, version, state", "responses": {"200": {"description": "JSON list"}}}
    }
    paths["/v2/repository/models/{name}/load"] = {
        "post": {
            "summary": 'swap a model to its newest stored version, or to {"parameters": {"version": V}}; needs the API key',
            "parameters": [name],
            "responses": {
                "200": {"description": "the new version serves: name, tag, previous, seconds"},
                "401": _error("no or wrong API key"),
                "403": _error("model control is off: no API key is set"),
                "404": _error("not a served name, or no such version in the store"),
                "409": _error("the version failed its checks or the limits; the old one keeps serving"),
            },
        }
    }
    return {
        "openapi": "3.0.2",
        "info": {"title": "dcgan", "version": "1", "description": f"DCGAN image generation; at most {max_n} images per request."},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def openapi_document(settings: ServiceSettings) -> dict:
    return _document(settings.max_n)
