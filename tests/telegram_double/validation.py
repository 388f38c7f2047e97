"""Strict checking of Bot API calls against the project's copy of the API data.

Real Telegram silently ignores parameters it does not know, so a misspelled
parameter would "work" against it and do nothing. The double is stricter on
purpose: an unknown method, an unknown parameter (also inside JSON objects such
as `reply_parameters`), a missing required one or a value of the wrong type is a
`ParamError`, which the double answers with a 400 `Bad Request: ...` (404 for an
unknown method) and records as a violation that fails the test.

Coercion mirrors the real server, which receives every top-level value as a
string: "42" is a fine Integer, "true"/"1" a Boolean, and arrays or objects may
arrive JSON-serialized in a string (form, query and multipart encodings).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

API_JSON = Path(__file__).resolve().parent.parent / "data" / "telegram" / "api.json"

_INTEGER = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")
_ARRAY_PREFIX = "Array of "


class ParamError(Exception):
    """A call the double refuses; `description` is the Bot API error text."""

    def __init__(self, description: str, *, status: int = 400) -> None:
        super().__init__(description)
        self.description = description
        self.status = status


@dataclass(frozen=True)
class FilePart:
    """An uploaded file from a multipart request (an InputFile)."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class FieldSpec:
    name: str
    types: tuple[str, ...]
    required: bool


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fields: dict[str, FieldSpec]


def _fields(raw: list[dict[str, Any]] | None) -> dict[str, FieldSpec]:
    return {
        f["name"]: FieldSpec(f["name"], tuple(f["types"]), bool(f["required"])) for f in raw or []
    }


class ApiSpec:
    """Methods (case-insensitive) and types of the Bot API, with value checks."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.version: str = data.get("version", "")
        self._methods = {
            name.lower(): MethodSpec(name, _fields(m.get("fields")))
            for name, m in data["methods"].items()
        }
        self._types: dict[str, dict[str, Any]] = data["types"]
        self._type_fields = {name: _fields(t.get("fields")) for name, t in self._types.items()}

    def method(self, name: str) -> MethodSpec | None:
        """The method spec for `name` in any letter case, or None."""
        return self._methods.get(name.lower())

    def type_fields(self, type_name: str) -> dict[str, FieldSpec]:
        return self._type_fields[type_name]

    def check_params(self, method: MethodSpec, params: dict[str, Any]) -> dict[str, Any]:
        """Return `params` coerced to native values, or raise ParamError."""
        for name in params:
            if name not in method.fields:
                raise ParamError(
                    f'Bad Request: unknown parameter "{name}" for method {method.name}'
                )
        coerced: dict[str, Any] = {}
        for spec in method.fields.values():
            if spec.name not in params:
                if spec.required:
                    raise ParamError(f'Bad Request: parameter "{spec.name}" is required')
                continue
            coerced[spec.name] = self._coerce_any(
                spec.name, spec.types, params[spec.name], top=True
            )
        return coerced

    def object_problems(self, type_name: str, value: object) -> list[str]:
        """Why `value` is not a valid `type_name` object ([] when it is)."""
        try:
            self._coerce_object(type_name, type_name, value, top=False)
        except ParamError as exc:
            return [exc.description]
        return []

    def _coerce_any(self, where: str, types: tuple[str, ...], value: Any, *, top: bool) -> Any:
        last: ParamError | None = None
        for type_name in types:
            try:
                return self._coerce_one(where, type_name, value, top=top)
            except ParamError as exc:
                last = exc
        if len(types) == 1 and last is not None:
            raise last
        raise ParamError(f'Bad Request: parameter "{where}" must be of type {" or ".join(types)}')

    def _coerce_one(self, where: str, type_name: str, value: Any, *, top: bool) -> Any:
        if type_name.startswith(_ARRAY_PREFIX):
            items = _decode_json(value, where) if top else value
            if not isinstance(items, list):
                raise _type_error(where, type_name)
            inner = type_name[len(_ARRAY_PREFIX) :]
            return [
                self._coerce_one(f"{where}[{i}]", inner, item, top=False)
                for i, item in enumerate(items)
            ]
        scalar = _SCALARS.get(type_name)
        if scalar is not None:
            return scalar(where, value)
        return self._coerce_object(where, type_name, value, top=top)

    def _coerce_object(self, where: str, type_name: str, value: Any, *, top: bool) -> Any:
        obj = _decode_json(value, where) if top else value
        if not isinstance(obj, dict):
            raise _type_error(where, type_name)
        spec = self._types.get(type_name, {})
        subtypes: list[str] = spec.get("subtypes", [])
        if subtypes:
            return self._coerce_any(where, tuple(subtypes), obj, top=False)
        fields = self._type_fields.get(type_name)
        if not fields:
            # Types without documented fields (InputFile, empty service objects)
            # cannot be checked further.
            return obj
        for key in obj:
            if key not in fields:
                raise ParamError(f'Bad Request: unknown field "{where}.{key}" in {type_name}')
        for field in fields.values():
            if field.name not in obj:
                if field.required:
                    raise ParamError(f'Bad Request: field "{where}.{field.name}" is required')
                continue
            self._coerce_any(f"{where}.{field.name}", field.types, obj[field.name], top=False)
        return obj


def _type_error(where: str, type_name: str) -> ParamError:
    return ParamError(f'Bad Request: parameter "{where}" must be of type {type_name}')


def _decode_json(value: Any, where: str) -> Any:
    # Form, query and multipart values arrive as JSON-serialized strings.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise ParamError(f'Bad Request: can\'t parse "{where}" JSON object') from None
    return value


def _integer(where: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    raise _type_error(where, "Integer")


def _float(where: str, value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    raise _type_error(where, "Float")


def _boolean(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise _type_error(where, "Boolean")


def _string(where: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    # The real server stringifies JSON numbers given for String parameters.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _type_error(where, "String")


def _input_file(where: str, value: Any) -> FilePart | str:
    # An upload, or a file_id / HTTP URL as a string.
    if isinstance(value, FilePart | str):
        return value
    raise _type_error(where, "InputFile")


_SCALARS = {
    "Integer": _integer,
    "Float": _float,
    "Boolean": _boolean,
    "String": _string,
    "InputFile": _input_file,
}


@lru_cache(maxsize=1)
def load_spec(path: Path = API_JSON) -> ApiSpec:
    """The project's API data, parsed once per process."""
    return ApiSpec(json.loads(path.read_text(encoding="utf-8")))
