"""Schemathesis hooks for fuzzing the REST edge (e2e/tests/openapi.rs sets
SCHEMATHESIS_HOOKS to this file): tus's PATCH body is
application/offset+octet-stream, raw bytes as application/octet-stream is,
which Schemathesis only knows under that other name."""

import schemathesis
from schemathesis.transport.serialization import serialize_binary


@schemathesis.serializer("application/offset+octet-stream")
def offset_stream(ctx, value):
    return {"data": serialize_binary(value)}
