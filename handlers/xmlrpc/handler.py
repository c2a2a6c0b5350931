"""XML-RPC endpoints: Python functions named in YAML, marshalled by the standard library.

How this works::

    POST body ─read (max_body)→ gunzip if Content-Encoding: gzip (bounded by max_body too)
      → parse (xmlrpc_call): plain scalar calls by one regex, anything else by
        expat → xmlrpc.client.Unmarshaller (DTDs refused, root must be <methodCall>)
      → Dispatcher._dispatch: registered functions first, then the instance's public methods
      → xmlrpc.client.dumps → gzip when the client accepts it and the answer is big enough
      → 200 text/xml

Marshalling is entirely ``xmlrpc.client``'s and method bookkeeping (registration,
introspection, multicall) is ``xmlrpc.server.SimpleXMLRPCDispatcher``'s; this module adds what a
server on the open network needs around them: size limits before and after decompression,
DTD refusal (no entity expansion), argument checks, fault codes from the XML-RPC fault code
interoperability spec for protocol errors, and tracebacks in the error log instead of the
response.  Every failure of a *call* is answered with a fault (HTTP 200), as XML-RPC clients
expect; only HTTP-level problems (method, media type, content coding, size) get an HTTP status.

The dispatcher holds no per-request state, so one instance serves all threads; the functions
it calls must be thread-safe themselves.
"""

from __future__ import annotations

import codecs
import datetime
import gzip
import inspect
import logging
import pydoc
import sys
import traceback
import typing
import xmlrpc.client
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xmlrpc.client import (
    INTERNAL_ERROR,
    INVALID_METHOD_PARAMS,
    INVALID_XMLRPC,
    METHOD_NOT_FOUND,
    Fault,
)
from xmlrpc.server import SimpleXMLRPCDispatcher, resolve_dotted_attribute

from porch.config.settings import positive, setting
from porch.handlers.base import Handler, HandlerContext, OptionError
from porch.handlers.user_code import extend_pythonpath, load_object, refuse_shadowing
from porch.handlers.xmlrpc.call import parse_call
from porch.http.errors import BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge, UnsupportedMediaType
from porch.http.grammar import CODING_ALIASES, GZIP_LEVEL, accepts_coding
from porch.http.messages import Headers, Request, Response, escape

if TYPE_CHECKING:
    from porch.config.settings import Mount

logger = logging.getLogger(__name__)

APPLICATION_FAULT = 1  # what SimpleXMLRPCServer answers for an exception in a function
READ_CHUNK_BYTES = 65536
XML_MEDIA_TYPES = frozenset({"text/xml", "application/xml"})
RESERVED_PREFIX = "system."

# Python types → XML-RPC type names for system.methodSignature (spec: "sysmethodsig").
SIGNATURE_TYPES: dict[Any, str] = {
    int: "int",
    bool: "boolean",
    str: "string",
    float: "double",
    list: "array",
    tuple: "array",
    dict: "struct",
    datetime.datetime: "dateTime.iso8601",
    xmlrpc.client.DateTime: "dateTime.iso8601",
    bytes: "base64",
    bytearray: "base64",
    xmlrpc.client.Binary: "base64",
    type(None): "nil",
}
UNKNOWN_SIGNATURE = "undef"  # the customary non-array answer when no signature is known
XMLRPC_TYPES = frozenset({*SIGNATURE_TYPES.values(), "nil"})  # the names a signature may use


def _check_gzip_threshold(value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"must be 0 or more (or null to never compress), got {value}")


def _check_encoding(value: str) -> None:
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown encoding {value!r}") from None


# ---------------------------------------------------------------------------------------------
# Introspection helpers


def _type_name(annotation: Any) -> str | None:
    origin = typing.get_origin(annotation) or annotation
    return SIGNATURE_TYPES.get(origin)


def method_signatures(func: Any) -> list[list[str]] | str:
    """One signature per accepted arity, return type first, from the type annotations.

    "undef" when any parameter or the return type is unannotated or has no XML-RPC type.
    """
    try:
        signature = inspect.signature(func)
        hints = typing.get_type_hints(func)
    except Exception:  # builtins without signatures, unresolvable string annotations
        return UNKNOWN_SIGNATURE
    types: list[str] = []
    required = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD or (
            parameter.kind is parameter.KEYWORD_ONLY and parameter.default is not parameter.empty
        ):
            continue
        if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            return UNKNOWN_SIGNATURE  # *args or a required keyword-only parameter
        name = _type_name(hints.get(parameter.name, parameter.empty))
        if name is None:
            return UNKNOWN_SIGNATURE
        types.append(name)
        if parameter.default is parameter.empty:
            required = len(types)
    result = _type_name(hints.get("return", inspect.Signature.empty))
    if result is None:
        return UNKNOWN_SIGNATURE
    return [[result, *types[:count]] for count in range(required, len(types) + 1)]


def checked_signatures(value: Any, where: str) -> list[list[str]] | str:
    """A signature list a service gave -- ``[[return type, parameter types...], ...]`` of XML-RPC
    type names -- or "undef"; ValueError saying what is wrong otherwise."""
    if value == UNKNOWN_SIGNATURE:
        return UNKNOWN_SIGNATURE
    if not isinstance(value, list | tuple) or not all(
        isinstance(signature, list | tuple) and signature and all(name in XMLRPC_TYPES for name in signature)
        for signature in value
    ):
        raise ValueError(
            f"{where}: expected a list of signatures like [['int', 'int', 'int']] (return type first) made of "
            f"{', '.join(sorted(XMLRPC_TYPES))}, got {value!r}"
        )
    return [list(signature) for signature in value]


def binding_error(func: Any, params: tuple[Any, ...]) -> str | None:
    """Why ``params`` cannot be bound to ``func``'s parameters; None if they can (or if the
    signature cannot be known)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*params)
    except TypeError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------------------------
# The dispatcher


class Dispatcher(SimpleXMLRPCDispatcher):
    """``SimpleXMLRPCDispatcher`` with precise faults, logged tracebacks and safe multicall."""

    def __init__(
        self,
        *,
        allow_none: bool,
        encoding: str,
        use_builtin_types: bool,
        debug: bool,
        count_fault: Callable[[int], None],
    ) -> None:
        super().__init__(allow_none=allow_none, encoding=encoding, use_builtin_types=use_builtin_types)
        self.debug = debug
        self.count_fault = count_fault  # every fault answered, by code, for the metrics
        self.signatures: dict[str, list[list[str]]] = {}  # the service's own table, before annotations

    def dispatch_body(self, data: bytes) -> bytes:
        """The methodResponse document answering the methodCall ``data``; never raises Fault."""
        try:
            params, method = parse_call(data, self.use_builtin_types)
        except Fault as fault:
            logger.info("rejected XML-RPC request: %s", escape(fault.faultString))
            return self.marshal_fault(fault)
        try:
            result = self._dispatch(method, params)
        except Fault as fault:
            return self.marshal_fault(fault)
        try:
            text = xmlrpc.client.dumps(
                (result,), methodresponse=True, allow_none=self.allow_none, encoding=self.encoding
            )
        except Exception as exc:  # a result XML-RPC cannot carry (None, a set, a huge int ...)
            logger.exception("cannot marshal the result of XML-RPC method %s", escape(method))
            return self.marshal_fault(self.fault_for(INTERNAL_ERROR, exc))
        return text.encode(self.encoding, "xmlcharrefreplace")

    def marshal_fault(self, fault: Fault) -> bytes:
        """A fault response; a Fault a function built badly (non-int code ...) becomes -32603."""
        try:
            text = xmlrpc.client.dumps(fault, allow_none=self.allow_none, encoding=self.encoding)
            code = fault.faultCode if type(fault.faultCode) is int else INTERNAL_ERROR  # a label must be a code
        except Exception as exc:
            logger.exception("cannot marshal a fault")
            text = xmlrpc.client.dumps(self.fault_for(INTERNAL_ERROR, exc), encoding=self.encoding)
            code = INTERNAL_ERROR
        self.count_fault(code)
        return text.encode(self.encoding, "xmlcharrefreplace")

    def fault_for(self, code: int, exc: BaseException) -> Fault:
        """The stdlib's "<class 'T'>:message" fault string; the traceback only when debugging."""
        text = f"{type(exc)}:{exc}"
        if self.debug:
            text += "\n" + "".join(traceback.format_exception(exc))
        return Fault(code, text)

    def find(self, method: str) -> Any:
        """The callable for ``method``; None when the instance dispatches by itself.

        Instance lookup never follows dots and never reaches names starting with "_".
        """
        func = self.funcs.get(method)
        if func is not None:
            return func
        if self.instance is not None:
            if hasattr(self.instance, "_dispatch"):
                return None
            if "." not in method:
                try:
                    func = resolve_dotted_attribute(self.instance, method, False)
                except AttributeError:
                    func = None
                if callable(func):
                    return func
        raise Fault(METHOD_NOT_FOUND, f'method "{method}" is not supported')

    def _dispatch(self, method: str, params: Iterable[Any]) -> Any:
        """Call ``method``; every failure leaves as a Fault, unexpected ones logged in full."""
        func = self.find(method)
        args = tuple(params)
        instance: Any = self.instance
        try:
            if func is None:
                return instance._dispatch(method, args)
            try:
                return func(*args)
            except TypeError:
                # Python checks the arguments before the body runs, so a call that cannot bind
                # ran nothing: the caller's mistake (-32602), told apart from a bug in the
                # function only now, at no cost to the calls that succeed.
                if (problem := binding_error(func, args)) is not None:
                    raise Fault(INVALID_METHOD_PARAMS, f"{method}: {problem}") from None
                raise
        except Fault as fault:
            logger.debug("XML-RPC method %s answered fault %s", escape(method), fault.faultCode)
            raise
        except (Exception, SystemExit) as exc:  # SystemExit too: a function must not end a worker
            logger.exception("XML-RPC method %s raised", escape(method))
            raise self.fault_for(APPLICATION_FAULT, exc) from None

    def system_methodHelp(self, method_name: str) -> str:
        """system.methodHelp('add') => 'Add two integers.': the method's documentation."""
        instance: Any = self.instance
        if method_name not in self.funcs and hasattr(instance, "_methodHelp"):
            return str(instance._methodHelp(method_name))
        func = self.find(method_name)
        return "" if func is None else pydoc.getdoc(func)

    def system_methodSignature(  # type: ignore[override]  # the stub says str; arrays are the norm
        self, method_name: str
    ) -> list[list[str]] | str:
        """system.methodSignature('add') => [['int', 'int', 'int']]: return type, then parameters.

        From the service's table (the mount's ``signatures``, or an instance's
        ``_methodSignature(name)``, as ``_methodHelp``), else from the function's type
        annotations; "undef" when none says.
        """
        if method_name in self.signatures:
            return self.signatures[method_name]
        instance: Any = self.instance
        if method_name not in self.funcs and hasattr(instance, "_methodSignature"):
            return checked_signatures(instance._methodSignature(method_name), method_name)
        func = self.find(method_name)
        return UNKNOWN_SIGNATURE if func is None else method_signatures(func)

    def system_multicall(self, call_list: list[Any]) -> list[Any]:
        """system.multicall([{'methodName': 'add', 'params': [2, 2]}, ...]) => [[4], ...]

        Runs the calls in order; each answers [result] or a fault struct, so one failing call
        (or one unmarshallable result) does not spoil the others.  Nesting is refused.
        """
        if not isinstance(call_list, list):
            raise Fault(INVALID_METHOD_PARAMS, "system.multicall expects an array of structs")
        results: list[Any] = []
        for call in call_list:
            try:
                results.append([self._multicall_one(call)])
            except Fault as fault:
                results.append({"faultCode": fault.faultCode, "faultString": fault.faultString})
        return results

    def _multicall_one(self, call: Any) -> Any:
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("methodName"), str)
            or not isinstance(call.get("params", []), list)
        ):
            raise Fault(INVALID_XMLRPC, "each call must be a struct with methodName and params")
        method = call["methodName"]
        if method == "system.multicall":
            raise Fault(INVALID_XMLRPC, "recursive system.multicall is forbidden")
        result = self._dispatch(method, tuple(call.get("params", [])))
        try:
            xmlrpc.client.dumps((result,), allow_none=self.allow_none)
        except Exception as exc:
            logger.exception("cannot marshal the result of XML-RPC method %s", escape(method))
            raise self.fault_for(INTERNAL_ERROR, exc) from None
        return result


# ---------------------------------------------------------------------------------------------
# HTTP around it


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress a gzip body (every member) to at most ``limit`` bytes: 413 beyond, 400 if corrupt.

    The bound is applied while inflating, so a small zip bomb never becomes a big buffer.
    """
    parts: list[bytes] = []
    size = 0
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(data, limit + 1 - size)
        except zlib.error:
            raise BadRequest("the gzip request body is corrupt") from None
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"the decompressed request body exceeds {limit} bytes")
        if not inflater.eof:
            raise BadRequest("the gzip request body is truncated")
        parts.append(part)
        data = inflater.unused_data
    return b"".join(parts)


class XMLRPCHandler(Handler):
    """Serves XML-RPC calls (POST only) to the functions and instance named in the mount."""

    @dataclass(frozen=True)
    class Options:
        functions: dict[str, str] = setting(
            default_factory=dict, doc='method name → "module:callable" (or "module:factory()")'
        )
        register: str | None = setting(
            None,
            doc='"module:function" called once with the dispatcher, as SimpleXMLRPCServer code calls '
            "register(server): it may call register_function, register_instance and the like",
        )
        signatures: str | None = setting(
            None,
            doc='"module:name" of a mapping method name → signatures ([["int", "int", "int"]], return type '
            "first) that system.methodSignature answers from before looking at annotations",
        )
        instance: str | None = setting(
            None, doc='"module:object" or "module:factory()" whose public methods are exposed'
        )
        pythonpath: tuple[Path, ...] = setting(
            default_factory=tuple, doc="directories put in front of sys.path before importing"
        )
        introspection: bool = setting(
            True, doc="offer system.listMethods, system.methodHelp and system.methodSignature"
        )
        multicall: bool = setting(True, doc="offer system.multicall")
        allow_none: bool = setting(False, doc="marshal None as <nil/> (an extension to the spec)")
        use_builtin_types: bool = setting(
            False, doc="pass dateTime/base64 as datetime/bytes instead of DateTime/Binary"
        )
        encoding: str = setting("utf-8", doc="character encoding of responses", check=_check_encoding)
        max_body: int = setting(
            1048576, doc="largest request body in bytes, after gzip decoding (larger: 413)", check=positive
        )
        gzip_threshold: int | None = setting(
            1400,
            doc="gzip responses of at least this many bytes if the client accepts it; null never compresses",
            check=_check_gzip_threshold,
        )
        debug: bool = setting(False, doc="put tracebacks into fault strings (never in production)")

    def __init__(self, mount: Mount, context: HandlerContext) -> None:
        super().__init__(mount, context)
        options = self.options
        extend_pythonpath(options.pythonpath)
        try:
            _check_encoding(options.encoding)
        except ValueError as exc:
            raise OptionError("encoding", str(exc)) from None
        self.dispatcher = Dispatcher(
            allow_none=options.allow_none,
            encoding=options.encoding,
            use_builtin_types=options.use_builtin_types,
            debug=options.debug,
            count_fault=lambda code: context.metrics.xmlrpc_fault(mount.path, code),
        )
        if not options.functions and options.instance is None and options.register is None:
            raise OptionError("functions", "an xmlrpc mount needs functions, an instance or register")
        for name, spec in options.functions.items():
            key = f"functions.{name}"
            if not name or name.startswith(RESERVED_PREFIX):
                raise OptionError(key, f"names starting with '{RESERVED_PREFIX}' are reserved")
            func = _load(spec, key, options.pythonpath)
            if not callable(func):
                raise OptionError(key, f"{spec!r} is not callable")
            self.dispatcher.register_function(func, name)
        if options.instance is not None:
            instance = _load(options.instance, "instance", options.pythonpath)
            self.dispatcher.register_instance(instance, allow_dotted_names=False)
        if options.register is not None:
            self.call_register(_load(options.register, "register", options.pythonpath))
        if options.signatures is not None:
            self.dispatcher.signatures = signature_table(_load(options.signatures, "signatures", options.pythonpath))
        if options.introspection:
            self.dispatcher.register_introspection_functions()
        if options.multicall:
            self.dispatcher.register_multicall_functions()
        self.content_type = f"text/xml; charset={options.encoding}"

    def call_register(self, register: Any) -> None:
        """Let existing service code register itself, as it does with SimpleXMLRPCServer."""
        if not callable(register):
            raise OptionError("register", f"{self.options.register!r} is not callable")
        try:
            register(self.dispatcher)
        except (Exception, SystemExit) as exc:
            raise OptionError("register", f"{self.options.register!r} raised {type(exc).__name__}: {exc}") from exc
        if not self.dispatcher.funcs and self.dispatcher.instance is None:
            raise OptionError("register", f"{self.options.register!r} registered no function and no instance")

    def handle(self, request: Request) -> Response:
        """Answer one POSTed methodCall with a methodResponse (a fault for any call failure)."""
        if request.method != "POST":
            raise MethodNotAllowed(("POST",))  # RFC 9110 section 15.5.6: with Allow
        if self.path_info(request) not in ("", "/"):
            raise NotFound()
        _check_media_type(request.headers)
        compressed = _request_coding(request.headers)
        data = self._read_body(request)
        if compressed:
            data = gunzip(data, self.options.max_body)
        payload = self.dispatcher.dispatch_body(data)
        headers = Headers([("Content-Type", self.content_type)])
        threshold = self.options.gzip_threshold
        if threshold is not None:
            headers.add("Vary", "Accept-Encoding")  # RFC 9110 section 12.5.5
            if len(payload) >= threshold and accepts_coding(request.headers.joined("accept-encoding"), "gzip"):
                payload = gzip.compress(payload, compresslevel=GZIP_LEVEL, mtime=0)
                headers.add("Content-Encoding", "gzip")
        return Response(HTTPStatus.OK, headers, payload)

    def _read_body(self, request: Request) -> bytes:
        """The whole body, refusing (413) anything over ``max_body`` before reading it if we can."""
        limit = self.options.max_body
        declared = request.body.length
        if declared is not None and declared > limit:
            raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while chunk := request.body.read(min(READ_CHUNK_BYTES, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
        return b"".join(chunks)


def signature_table(table: Any) -> dict[str, list[list[str]]]:
    """The ``signatures`` option's mapping, checked; OptionError saying which entry is wrong."""
    if not isinstance(table, Mapping):
        raise OptionError("signatures", f"expected a mapping of method name → signatures, got {type(table).__name__}")
    checked: dict[str, list[list[str]]] = {}
    for name, value in table.items():
        try:
            signatures = checked_signatures(value, str(name))
        except ValueError as exc:
            raise OptionError("signatures", str(exc)) from None
        if isinstance(signatures, list):
            checked[str(name)] = signatures
    return checked


def _load(spec: str, key: str, pythonpath: tuple[Path, ...]) -> Any:
    """Import ``module:name``, calling it when the spec ends in "()"; OptionError naming ``key``.

    A module of the same name already imported from somewhere else than this mount's
    ``pythonpath`` is refused: two mounts' ``api.py`` would otherwise silently be one.
    """
    factory = spec.endswith("()")
    name = spec[:-2] if factory else spec
    module_name = name.partition(":")[0].split(".")[0]
    before = sys.modules.get(module_name)
    try:
        target = load_object(name)
        if factory:
            target = target()  # type: ignore[operator]
    except (Exception, SystemExit) as exc:  # SystemExit: a module calling sys.exit() on import
        raise OptionError(key, f"cannot load {spec!r}: {type(exc).__name__}: {exc}") from exc
    refuse_shadowing(module_name, pythonpath, before, key)
    return target


def _check_media_type(headers: Headers) -> None:
    """Loose Content-Type check: absent, text/xml, application/xml or any "+xml" type pass."""
    value = headers.get("content-type")
    if not value:
        return
    media_type = value.split(";", 1)[0].strip().lower()
    if media_type not in XML_MEDIA_TYPES and not media_type.endswith("+xml"):
        raise UnsupportedMediaType(f"XML-RPC requests are text/xml, not {media_type}")


def _request_coding(headers: Headers) -> bool:
    """True for a gzip body, False for identity; 415 with Accept-Encoding otherwise (RFC 7694)."""
    value = headers.joined("content-encoding")
    if not value:
        return False
    codings = [c.strip().lower() for c in value.split(",")]
    codings = [c for c in codings if c not in ("", "identity")]
    if not codings:
        return False
    if len(codings) == 1 and CODING_ALIASES.get(codings[0], codings[0]) == "gzip":
        return True
    raise UnsupportedMediaType("only gzip request bodies are accepted", headers=[("Accept-Encoding", "gzip")])
