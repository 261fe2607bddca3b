"""OpenAPI 3 description of `edgecnn serve`'s JSON endpoints (served at /openapi.json)."""

from __future__ import annotations

from edgecnn import __version__
from edgecnn.metrics import VERSION


def openapi_document(name: str) -> dict:
    """OpenAPI 3 description of the JSON endpoints for model `name`."""

    def ref(schema):
        return {"$ref": f"#/components/schemas/{schema}"}

    def reply(description, schema=None, media="application/json"):
        return {"description": description, **({"content": {media: {"schema": schema}}} if schema else {})}

    def obj(required, **props):
        return {"type": "object", "required": list(required), "properties": props}

    def get(summary, ok):
        return {"get": {"summary": summary, "responses": {"200": ok, "404": reply("unknown model", ref("Error"))}}}

    text, number, anything = {"type": "string"}, {"type": "number"}, {}
    shape = {"type": "array", "items": {"type": "integer"}}
    errors = {
        code: reply(why, ref("Error"))
        for code, why in (
            ("400", "malformed request: wrong input name, shape or datatype; undecodable image; Host not allowed"),
            ("404", "unknown model or version"),
            ("408", "headers or body slower than --header-timeout / --body-timeout"),
            (
                "413",
                "body, tensor, rows or image over --max-body-bytes, --max-request-rows, --max-pixels or "
                "--max-inflight-bytes",
            ),
            ("415", "Content-Type or Content-Encoding not accepted"),
            ("431", "headers over --max-header-bytes"),
            ("500", "the model run failed"),
            ("503", "queue or byte budget full (see Retry-After), too many connections, or shutting down"),
        )
    }
    binary = {"type": "string", "format": "binary"}
    model = f"/v2/models/{name}"
    params = {"type": "object", "additionalProperties": True}
    tensor = obj(  # a tensor with its data, in requests and responses alike
        ("name", "shape", "datatype"),
        name=text,
        shape=shape,
        datatype=text,
        parameters=params,
        data={"type": "array", "items": anything},
    )
    tensor_meta = obj(("name", "datatype", "shape"), name=text, datatype=text, shape=shape)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"edgecnn serve: {name}",
            "version": __version__,
            "description": "KServe v2 / Open Inference Protocol with Triton's binary_tensor_data extension. "
            f"Every {model}/... path also answers under {model}/versions/{VERSION}/....",
        },
        "paths": {
            "/v2": get("Server metadata", reply("name, version, extensions", ref("ServerMetadata"))),
            "/v2/health/live": get("Liveness", reply("alive")),
            "/v2/health/ready": get("Readiness", reply("ready")),
            model: get("Model metadata", reply("inputs and outputs (-1: any batch size)", ref("ModelMetadata"))),
            f"{model}/ready": get("Model readiness", reply("ready")),
            f"{model}/infer": {
                "post": {
                    "summary": "Inference on v2 tensors (JSON; binary data per Triton's extension)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("InferenceRequest")}},
                    },
                    "responses": {"200": reply("outputs", ref("InferenceResponse")), **errors},
                }
            },
            f"{model}/classify": {
                "post": {
                    "summary": "Top-k labels for one encoded image (JPEG, PNG, ...); /predict is an alias",
                    "parameters": [
                        {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 5}}
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "image/*": {"schema": binary},
                            "multipart/form-data": {"schema": {"type": "object", "properties": {"image": binary}}},
                        },
                    },
                    "responses": {"200": reply("best classes first", ref("Classification")), **errors},
                }
            },
            "/metrics": get("Prometheus metrics", reply("text format 0.0.4", text, "text/plain")),
        },
        "components": {
            "schemas": {
                "Error": obj(("error",), error=text),
                "ServerMetadata": obj(
                    ("name", "version", "extensions"),
                    name=text,
                    version=text,
                    extensions={"type": "array", "items": text},
                ),
                "ModelMetadata": obj(
                    ("name", "platform", "inputs", "outputs"),
                    name=text,
                    platform=text,
                    versions={"type": "array", "items": text},
                    parameters=params,
                    inputs={"type": "array", "items": tensor_meta},
                    outputs={"type": "array", "items": tensor_meta},
                ),
                "InferenceRequest": obj(
                    ("inputs",),
                    id=text,
                    parameters=params,
                    inputs={
                        "type": "array",
                        "minItems": 1,
                        "items": tensor,
                    },
                    outputs={"type": "array", "items": obj(("name",), name=text, parameters=params)},
                ),
                "InferenceResponse": obj(
                    ("model_name", "outputs"),
                    model_name=text,
                    model_version=text,
                    id=text,
                    outputs={
                        "type": "array",
                        "items": tensor,
                    },
                ),
                "Classification": obj(
                    ("model_name", "predictions"),
                    model_name=text,
                    model_version=text,
                    predictions={
                        "type": "array",
                        "items": obj(
                            ("label", "index", "probability"), label=text, index={"type": "integer"}, probability=number
                        ),
                    },
                ),
            }
        },
    }
