"""Reading a methodCall document: ``parse_call(data) -> (params, method_name)`` or a Fault.

Two readers, one answer.  The general one is expat feeding ``xmlrpc.client.Unmarshaller``
with document type declarations refused (no entity can be declared, let alone expanded:
billion laughs, external entities).  It costs ~9 µs for add(2, 3), most of it in the Python
callbacks expat makes per element -- more than the rest of the handler.

Most calls are far simpler than XML: a declaration, a method name and a few scalars, written
the way ``xmlrpc.client`` (and most other clients) write them.  ``read_plain_call`` reads
exactly that shape with one regular expression and converts the values as the Unmarshaller
would (~2 µs).  It accepts a strict subset of what the general reader accepts -- ASCII only,
no entities, comments, CDATA, attributes, CR or empty-element tags, and only ``int``/``i4``/
``i8``/``boolean``/``double``/``string`` and bare values -- and anything outside it goes to
expat, so every error, fault and unusual document is handled by the one general reader.  The
tests check that both readers agree wherever the plain one answers.
"""

from __future__ import annotations

import re
import xmlrpc.client
from collections.abc import Callable
from typing import Any
from xml.parsers import expat
from xmlrpc.client import INVALID_XMLRPC, NOT_WELLFORMED_ERROR, Fault

_SPACE = rb"[ \t\r\n]*"  # XML's S between elements; in markup a CR is harmless
_DECLARATION = (
    rb"<\?xml version=(?:'1\.0'|\"1\.0\")"
    rb"(?: encoding=(?:'(?i:utf-8|us-ascii|iso-8859-1)'|\"(?i:utf-8|us-ascii|iso-8859-1)\"))?"
    rb"\?>"
)
# Character data the plain reader can take as is: no markup, no entity, no CR (XML turns CRLF
# into LF), none of the control characters XML forbids; the body is checked to be ASCII first.
_TEXT = rb"[^<>&\x00-\x08\x0b-\x1f]*"
_INTEGER = rb"[+-]?[0-9]{1,30}"  # longer ones go to the general reader (and its error for huge ones)
_VALUE = (
    rb"<value>(?:<int>(?P<int>" + _INTEGER + rb")</int>|<i4>(?P<i4>" + _INTEGER + rb")</i4>"
    rb"|<i8>(?P<i8>" + _INTEGER + rb")</i8>|<boolean>(?P<boolean>[01])</boolean>"
    rb"|<double>(?P<double>[+-]?[0-9]{1,30}(?:\.[0-9]{1,30})?)</double>"
    rb"|<string>(?P<string>" + _TEXT + rb")</string>|(?P<text>" + _TEXT + rb"))</value>"
)
_PARAM = re.compile(rb"<param>" + _SPACE + _VALUE + _SPACE + rb"</param>" + _SPACE)
_PLAIN_CALL = re.compile(
    rb"(?:"
    + _DECLARATION
    + rb")?"
    + _SPACE
    + rb"<methodCall>"
    + _SPACE
    + rb"<methodName>(?P<method>[A-Za-z0-9_.:/]+)</methodName>"
    + _SPACE
    + rb"(?:<params>"
    + _SPACE
    + rb"(?P<params>(?:"
    + _PARAM.pattern
    + rb")*)</params>"
    + _SPACE
    + rb")?"
    + rb"</methodCall>"
    + _SPACE
)


def _ascii(data: bytes) -> str:
    return data.decode("ascii")


def _boolean(data: bytes) -> bool:
    return data == b"1"


_CONVERT: dict[str, Callable[[bytes], Any]] = {
    "int": int,
    "i4": int,
    "i8": int,
    "boolean": _boolean,
    "double": float,
    "string": _ascii,
    "text": _ascii,
}


def read_plain_call(data: bytes) -> tuple[tuple[Any, ...], str] | None:
    """``(params, method_name)`` of a plain methodCall (see the module docstring); None for any
    other document, which the general reader must judge."""
    if not data.isascii():
        return None
    call = _PLAIN_CALL.fullmatch(data)
    if call is None:
        return None
    params: list[Any] = []
    start, end = call.span("params")
    if start >= 0:
        for param in _PARAM.finditer(data, start, end):
            kind = param.lastgroup
            assert kind is not None  # every alternative of a value has exactly one group
            params.append(_CONVERT[kind](param[kind]))
    return tuple(params), call["method"].decode("ascii")


class DoctypeRefused(Exception):
    """A request carried a document type declaration; XML-RPC never needs one."""


def read_call(data: bytes, use_builtin_types: bool) -> tuple[tuple[Any, ...], str]:
    """``(params, method_name)`` of any methodCall document, by expat; a Fault says what is wrong.

    The stdlib's own parser glue (``xmlrpc.client.getparser``) is rebuilt here in a few lines
    only to refuse DTDs, whatever the expat version.
    """
    unmarshaller = xmlrpc.client.Unmarshaller(use_builtin_types=use_builtin_types)
    parser = expat.ParserCreate(None, None)
    tags: list[str] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        tags.append(tag)
        unmarshaller.start(tag, attrs)

    def refuse_doctype(*_: object) -> None:
        raise DoctypeRefused()

    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.StartElementHandler = start
    parser.EndElementHandler = unmarshaller.end
    parser.CharacterDataHandler = unmarshaller.data
    unmarshaller.xml(None, None)  # type: ignore[arg-type]  # as ExpatParser: expat gives str
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise Fault(NOT_WELLFORMED_ERROR, f"parse error: not well formed: {exc}") from None
    except DoctypeRefused:
        raise Fault(INVALID_XMLRPC, "document type declarations are not allowed") from None
    except Exception as exc:  # a value the unmarshaller cannot convert: <int>x</int>, bad base64
        raise Fault(INVALID_XMLRPC, f"invalid value: {type(exc).__name__}: {exc}") from None
    method = unmarshaller.getmethodname()
    if not tags or tags[0] != "methodCall" or not isinstance(method, str) or not method:
        raise Fault(INVALID_XMLRPC, "expected a <methodCall> with a <methodName>")
    if "fault" in tags or ("value" in tags and "params" not in tags):
        raise Fault(INVALID_XMLRPC, "a methodCall carries its values in <params>")
    try:
        params = unmarshaller.close()  # <params> may be left out when there are none
    except Exception as exc:
        raise Fault(INVALID_XMLRPC, f"invalid methodCall: {type(exc).__name__}") from None
    return tuple(params), method


def parse_call(data: bytes, use_builtin_types: bool) -> tuple[tuple[Any, ...], str]:
    """``(params, method_name)`` of a methodCall document; a Fault says what is wrong with it."""
    return read_plain_call(data) or read_call(data, use_builtin_types)
