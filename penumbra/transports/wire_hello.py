"""What a hello is, and how one is checked: bounded, and without I/O.

The first frame in each direction is a small JSON object (see "Handshake"
in :mod:`penumbra.transports.wire`, which runs the exchange).  It is the
only thing a listener reads from a peer that has not authenticated, so
everything here is written for hostile input: :func:`_validate_hello` and
:func:`_parse_hello` never raise, whatever the bytes; ``json.loads`` never
sees a body with more than :data:`MAX_HELLO_BRACKETS` ``[``/``{`` bytes;
nesting deeper than :data:`MAX_HELLO_DEPTH` is refused; the token is
compared in constant time, as bytes (``surrogatepass``), so any string is
just a right or wrong token; role and name must be encodable text.

``wire`` imports these by name and calls them through its own globals
(tests replace ``wire._validate_hello`` to inject a bug in the handshake).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from .wire_frames import encode_frame

#: Version of this wire protocol, sent in every hello.  2: frames are
#: msgpack (``wire_codec``); 1 pickled them.
PROTOCOL_VERSION = 2
#: Largest hello frame (the first frame, before authentication).
MAX_HELLO_SIZE = 64 * 1024
#: Deepest JSON nesting accepted in a hello (a real one is a flat object).
MAX_HELLO_DEPTH = 8
#: A hello with more ``[``/``{`` bytes than this is refused without parsing.
MAX_HELLO_BRACKETS = 64


def _hello_frame(obj: dict[str, Any]) -> bytes:
    return encode_frame(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def _check_token(token: str) -> bytes:
    if not isinstance(token, str) or not token:
        raise ValueError("token must be a non-empty string (see new_token())")
    return token.encode("utf-8")


def _depth(value: Any) -> int:
    """How deep lists and dicts nest in a parsed JSON value (iteratively)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _parse_hello(body: bytes) -> Any:
    """The JSON value in a hello frame, or None if it is not one (never raises).

    ``json.loads`` recurses once per nesting level (60,000 ``[`` raise
    ``RecursionError``), so it never sees a body with more than
    MAX_HELLO_BRACKETS ``[``/``{`` (counting them is a cheap byte scan and
    bounds the depth far below the recursion limit); a value nesting deeper
    than MAX_HELLO_DEPTH is refused after parsing.  A real hello is one flat
    object.
    """
    if body.count(b"[") + body.count(b"{") > MAX_HELLO_BRACKETS:
        return None
    try:
        value = json.loads(body.decode("utf-8"))
    except Exception:  # bad UTF-8, bad JSON, a number too long to convert ...
        return None
    return value if _depth(value) <= MAX_HELLO_DEPTH else None


def _is_text(value: Any) -> bool:
    """A str that encodes to UTF-8 (JSON can carry lone surrogates, which do not)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _schema_mismatch(theirs: Any, ours: str) -> str | None:
    """Why a peer's message schema (its ``"schema"`` in the hello) cannot
    talk to ours, or None when they agree.  The schema is a fingerprint of
    every wire class's name and fields (``wire_codec.schema_fingerprint``):
    two builds of penumbra that differ there would misread each other's
    frames, so they are told at the hello instead."""
    if theirs == ours:
        return None
    shown = theirs[:40] if _is_text(theirs) else "none"
    return (
        f"message schema {shown} differs from this side's {ours}: the two processes run different "
        "builds of penumbra (different message classes or fields); run the same penumbra version everywhere"
    )


def _validate_hello(body: bytes, token: bytes, schema: str = "") -> tuple[str | None, dict[str, Any]]:
    """(reason to refuse or None, hello).  Never raises, whatever ``body`` holds.

    ``schema``: this side's message schema (see ``_schema_mismatch``)."""
    hello = _parse_hello(body)
    if hello is None:
        return "first frame is not a JSON hello; is the peer speaking the penumbra protocol?", {}
    if not isinstance(hello, dict) or "penumbra" not in hello:
        return "first frame is not a penumbra hello", {}
    given = hello.get("token")
    # surrogatepass: a lone surrogate is just a wrong token, not an error
    if not isinstance(given, str) or not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token):
        return "authentication failed: wrong cluster token (check the token the cluster was started with)", {}
    if hello.get("penumbra") != PROTOCOL_VERSION:
        version = hello.get("penumbra")
        shown = repr(version)[:40] if isinstance(version, (int, float, str)) and _is_text(repr(version)) else "?"
        reason = (
            f"protocol version {shown} is not supported (server speaks "
            f"{PROTOCOL_VERSION}); run the same penumbra version everywhere"
        )
        return reason, {}
    if not _is_text(hello.get("role", "")) or not _is_text(hello.get("name", "")):
        return "malformed hello: role and name must be strings", {}
    mismatch = _schema_mismatch(hello.get("schema"), schema) if schema else None
    if mismatch is not None:
        return mismatch, {}
    return None, hello
