"""HTTP grammar rules that more than one part of porch applies, each written once.

The request parser (``porch.http.head``, ``porch.http.body``), the response writer
(``porch.http.response``) and the handlers that read or check fields themselves (WSGI, CGI,
static, XML-RPC) all take from here: the token, the field line, list elements, the characters a
field may not hold, which fields are hop-by-hop, which statuses have no content, and
content-coding negotiation (RFC 9110 12.5.3: ``accepts_coding``).
"""

from __future__ import annotations

import re

from porch.http.errors import ProtocolError

# RFC 9110 5.6.2: token = 1*tchar, tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" /
# "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA.  A method, a field name and a chunk extension
# name are tokens.
TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
TOKEN = re.compile(f"[{TCHAR}]+")
TOKEN_BYTES = re.compile(TOKEN.pattern.encode())  # the same over bytes: chunk extensions, CGI output

# RFC 9110 8.6: Content-Length = 1*DIGIT (ASCII digits only); more than 20 digits is an attack,
# not a length (2**64 has 20).
MAX_CONTENT_LENGTH_DIGITS = 20
CONTENT_LENGTH = re.compile(f"[0-9]{{1,{MAX_CONTENT_LENGTH_DIGITS}}}")

# RFC 9110 5.5: a field value is VCHAR, obs-text, SP and HTAB: no other control character (CTL).
# RFC 9112 4: a reason-phrase is made of the same characters.
_CTL_BUT_HTAB = r"[\x00-\x08\x0a-\x1f\x7f]"
TEXT_FORBIDDEN = re.compile(_CTL_BUT_HTAB)  # in a reason phrase
FIELD_FORBIDDEN = re.compile(_CTL_BUT_HTAB.encode())  # in one field line of bytes (a trailer, CGI)
# In a whole request head CR and LF end the lines, so they are checked apart (RFC 9112 2.2).
HEAD_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A handler's response field values are checked only for what would split the head.
VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")

# Fields that describe one connection, not the message: a handler may not send them, because
# porch owns the framing and the connection (the connection drops them; WSGI refuses them).
HOP_BY_HOP = frozenset(
    {
        # RFC 9110 7.6.1: Connection, and the fields known to be removed before forwarding.
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        # PEP 3333 "Other HTTP Features" forbids applications RFC 2616 13.5.1's list, which adds
        # these (and spells Trailer "Trailers", as wsgiref.util.is_hop_by_hop does).
        "proxy-authenticate",
        "proxy-authorization",
        "trailers",
        # RFC 9110 6.6.2: Trailer announces trailer fields, and porch sends no trailers.
        "trailer",
    }
)
# RFC 9110 6.4.1: a 1xx (15.2), 204 (15.3.5) or 304 (15.4.5) response never has content.
BODILESS_STATUSES = frozenset({*range(100, 200), 204, 304})

# Values already found valid against a rule (field names, Host values, WSGI statuses) are
# remembered so that the rule runs once per distinct value; at most this many per table, so a
# client or an application that makes values up cannot grow one without end.
MAX_REMEMBERED_NAMES = 1024
# A request field's lower-case name -> its HTTP_* variable, as ``http_variable`` made it: a hot
# path looks here first (``HTTP_VARIABLES.get(lower) or http_variable(lower)``), saving a call.
HTTP_VARIABLES: dict[str, str] = {}


def http_variable(lower: str) -> str:
    """The CGI and WSGI variable of a request field (RFC 3875 section 4.1.18), from its lower-case
    name: "user-agent" -> "HTTP_USER_AGENT"; remembered while there is room (clients name fields)."""
    variable = HTTP_VARIABLES.get(lower)
    if variable is None:
        variable = "HTTP_" + lower.upper().replace("-", "_")
        if len(HTTP_VARIABLES) < MAX_REMEMBERED_NAMES:
            HTTP_VARIABLES[lower] = variable
    return variable


# RFC 9110 12.4.2: weight = OWS ";" OWS "q=" qvalue, and
# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ).  Spaces around "=" are tolerated.
QVALUE = re.compile(r"[qQ][ \t]*=[ \t]*(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
# RFC 9110 8.4.1.3: a recipient SHOULD consider "x-gzip" to be equivalent to "gzip".
CODING_ALIASES = {"x-gzip": "gzip"}


def parse_field_line(line: str) -> tuple[str, str]:
    """field-name ":" OWS field-value OWS (RFC 9112 5), for header and trailer lines alike.

    The caller has already refused CTLs (RFC 9110 5.5) in the line.
    """
    colon = line.find(":")
    if colon <= 0 or not TOKEN.fullmatch(line, 0, colon):
        if line[:1] in (" ", "\t"):  # RFC 9112 5.2: obs-fold is rejected, never unfolded
            raise ProtocolError("obsolete line folding in header")
        if colon > 0 and line[colon - 1] in " \t":  # RFC 9112 5.1: no whitespace before the colon
            raise ProtocolError("whitespace between header field name and colon")
        raise ProtocolError("invalid header field line")
    return line[:colon], line[colon + 1 :].strip(" \t")  # RFC 9112 5.1: OWS is not part of the value


def list_elements(values: list[str]) -> list[str]:
    """The elements of a comma-separated list field (RFC 9110 5.6.1), empty ones ignored."""
    return [element for value in values for part in value.split(",") if (element := part.strip(" \t"))]


def weighted_elements(value: str) -> list[tuple[str, float]]:
    """(element, weight) of a list field whose elements carry a ``q`` weight (Accept,
    Accept-Encoding: RFC 9110 12.4.2), elements lower-cased; an invalid weight counts as 0."""
    found = []
    for element in list_elements([value]):
        name, _, parameters = element.partition(";")
        weight = 1.0
        for parameter in parameters.split(";") if parameters else ():
            parameter = parameter.strip(" \t")
            if parameter[:1] in ("q", "Q"):
                match = QVALUE.fullmatch(parameter)
                weight = float(match.group(1)) if match else 0.0
        found.append((name.strip(" \t").lower(), weight))
    return found


def accept_weight(accept: list[tuple[str, float]], media_type: str) -> float | None:
    """The weight an Accept field (``weighted_elements``) gives ``media_type``: that of its most
    specific range (RFC 9110 12.5.1), None if no range covers it."""
    main = media_type.partition("/")[0]
    found = dict(accept)
    for candidate in (media_type, f"{main}/*", "*/*"):
        if candidate in found:
            return found[candidate]
    return None


def accepts_coding(accept_encoding: str | None, coding: str) -> bool:
    """Whether an Accept-Encoding field value (RFC 9110 12.5.3) lets a response use ``coding``.

    The coding is acceptable when it is listed with a weight above 0, or, not listed, when "*"
    is.  Two rules where the RFC is silent, both choosing identity (always acceptable unless
    refused) over a coding the client may not want: a weight that is not a valid qvalue
    (``q=2``, ``q=0.0001``, ``q=high``) makes its element a refusal, and a coding listed more
    than once is refused if any listing refuses it.  No field at all: False (porch compresses
    only when asked).
    """
    if not accept_encoding:
        return False
    wanted = coding.lower()
    listed: float | None = None
    star: float | None = None
    for name, weight in weighted_elements(accept_encoding):
        name = CODING_ALIASES.get(name, name)
        if name == "*":
            star = weight if star is None else min(star, weight)
        elif name == wanted:
            listed = weight if listed is None else min(listed, weight)
    if listed is not None:
        return listed > 0
    return star is not None and star > 0


# The compression level of responses made per request (XML-RPC answers, metrics): zlib's default,
# most of the gain of level 9 for a fraction of its time.
GZIP_LEVEL = 6
