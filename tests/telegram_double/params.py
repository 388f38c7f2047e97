"""Decoding of Bot API request parameters in every encoding Telegram accepts.

Query string, `application/x-www-form-urlencoded`, `application/json` and
`multipart/form-data` are all accepted, and query parameters merge with body
parameters (body wins), as on the real server. Multipart is parsed with the
standard library's email parser because python-multipart is not a dependency.
"""

from __future__ import annotations

import json
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qsl

from tests.telegram_double.validation import FilePart, ParamError


def decode_params(content_type: str, query_string: str, body: bytes) -> tuple[dict[str, Any], str]:
    """Return (params, encoding); encoding is json, form, multipart, query or none.

    Raises ParamError when the body cannot be decoded.
    """
    params: dict[str, Any] = dict(parse_qsl(query_string, keep_blank_values=True))
    encoding = "query" if params else "none"
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not body.strip():
        return params, encoding
    if media_type == "application/json":
        params.update(_json_body(body))
        return params, "json"
    if media_type == "application/x-www-form-urlencoded":
        text = _utf8(body)
        params.update(parse_qsl(text, keep_blank_values=True))
        return params, "form"
    if media_type == "multipart/form-data":
        params.update(_multipart_body(content_type, body))
        return params, "multipart"
    raise ParamError(f"Bad Request: unsupported Content-Type {media_type!r}")


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ParamError("Bad Request: request body is not valid UTF-8") from None


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(_utf8(body))
    except ValueError:
        raise ParamError("Bad Request: can't parse JSON object") from None
    if not isinstance(value, dict):
        raise ParamError("Bad Request: JSON body must be an object")
    return value


def _multipart_body(content_type: str, body: bytes) -> dict[str, Any]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise ParamError("Bad Request: can't parse multipart body")
    params: dict[str, Any] = {}
    for part in message.iter_parts():
        if not isinstance(part, EmailMessage):
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise ParamError("Bad Request: multipart part without a name")
        data = part.get_payload(decode=True)
        raw = data if isinstance(data, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            params[name] = FilePart(filename, part.get_content_type(), raw)
        else:
            params[name] = _utf8(raw)
    return params
