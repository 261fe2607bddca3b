"""OpenAPI 3 building blocks for `edgecnn serve` (served at /openapi.json).

Each route in `edgecnn.serve.server` carries its own operation, built with `get` / `post` here, beside its
handler; `document` puts them together with the shared schemas. Adding an endpoint is one entry in
serve's route table, its description included.
"""

from __future__ import annotations

from edgecnn import __version__


def ref(schema: str) -> dict:
    return {"$ref": f"#/components/schemas/{schema}"}


def reply(description: str, schema=None, media: str = "application/json") -> dict:
    return {"description": description, **({"content": {media: {"schema": schema}}} if schema else {})}


def obj(required, **props) -> dict:
    return {"type": "object", "required": list(required), "properties": props}


TEXT, NUMBER, ANY = {"type": "string"}, {"type": "number"}, {}
BINARY = {"type": "string", "format": "binary"}
_SHAPE = {"type": "array", "items": {"type": "integer"}}
_PARAMS = {"type": "object", "additionalProperties": True}
ERRORS = {
    code: reply(why, ref("Error"))
    for code, why in (
        ("400", "malformed request: wrong input name, shape or datatype; undecodable image; Host not allowed"),
        ("404", "unknown model or version"),
        ("408", "headers or body slower than --header-timeout / --body-timeout"),
        (
            "413",
            "body, tensor, rows or image over --max-body-bytes, --max-request-rows, --max-pixels or --max-inflight-bytes",
        ),
        ("415", "Content-Type or Content-Encoding not accepted"),
        ("431", "headers over --max-header-bytes"),
        ("500", "the model run failed, or it answered NaN for this input"),
        ("503", "queue or byte budget full (see Retry-After), too many connections, or shutting down"),
    )
}


def get(summary: str, ok: dict) -> dict:
    """A GET operation answering `ok` (200), or 404 for an unknown model."""
    return {"summary": summary, "responses": {"200": ok, "404": reply("unknown model", ref("Error"))}}


def post(summary: str, content: dict, ok: dict, parameters: tuple = ()) -> dict:
    """A POST operation taking `content` (media type -> schema) and answering `ok` or an error."""
    op = {"summary": summary, "requestBody": {"required": True, "content": content}, "responses": {"200": ok, **ERRORS}}
    if parameters:
        op["parameters"] = list(parameters)
    return op


def _schemas() -> dict:
    tensor = obj(  # a tensor with its data, in requests and responses alike
        ("name", "shape", "datatype"),
        name=TEXT,
        shape=_SHAPE,
        datatype=TEXT,
        parameters=_PARAMS,
        data={"type": "array", "items": ANY},
    )
    tensor_meta = obj(("name", "datatype", "shape"), name=TEXT, datatype=TEXT, shape=_SHAPE)
    prediction = obj(("label", "index", "probability"), label=TEXT, index={"type": "integer"}, probability=NUMBER)
    return {
        "Error": obj(("error",), error=TEXT),
        "ServerMetadata": obj(
            ("name", "version", "extensions"), name=TEXT, version=TEXT, extensions={"type": "array", "items": TEXT}
        ),
        "ModelMetadata": obj(
            ("name", "platform", "inputs", "outputs"),
            name=TEXT,
            platform=TEXT,
            versions={"type": "array", "items": TEXT},
            parameters=_PARAMS,
            inputs={"type": "array", "items": tensor_meta},
            outputs={"type": "array", "items": tensor_meta},
        ),
        "InferenceRequest": obj(
            ("inputs",),
            id=TEXT,
            parameters=_PARAMS,
            inputs={"type": "array", "minItems": 1, "items": tensor},
            outputs={"type": "array", "items": obj(("name",), name=TEXT, parameters=_PARAMS)},
        ),
        "InferenceResponse": obj(
            ("model_name", "outputs"),
            model_name=TEXT,
            model_version=TEXT,
            id=TEXT,
            outputs={"type": "array", "items": tensor},
        ),
        "Classification": obj(
            ("model_name", "predictions"),
            model_name=TEXT,
            model_version=TEXT,
            predictions={"type": "array", "items": prediction},
        ),
    }


def document(name: str, paths: dict) -> dict:
    """The OpenAPI 3 document for the models `name` names; `paths`: path -> {method: operation}."""
    model = "/v2/models/NAME"
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"edgecnn serve: {name}",
            "version": __version__,
            "description": "KServe v2 / Open Inference Protocol with Triton's binary_tensor_data extension. "
            f"Every {model}/... path also answers under {model}/versions/V/..., V being the version "
            "answering now (model_version in every answer; it goes up by one when a verified update is swapped in).",
        },
        "paths": paths,
        "components": {"schemas": _schemas()},
    }
