"""HTTP grammar rules that more than one part of porch applies, each written once.

Content-coding negotiation (RFC 9110 12.5.3) lives here; the static handler and the XML-RPC
handler both ask ``accepts_coding`` whether they may send gzip.
"""

from __future__ import annotations

import re

# RFC 9110 12.4.2: weight = OWS ";" OWS "q=" qvalue, and
# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ).  Spaces around "=" are tolerated.
QVALUE = re.compile(r"[qQ][ \t]*=[ \t]*(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
# RFC 9110 8.4.1.3: a recipient SHOULD consider "x-gzip" to be equivalent to "gzip".
CODING_ALIASES = {"x-gzip": "gzip"}


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
    for element in accept_encoding.split(","):
        name, _, parameters = element.partition(";")
        name = name.strip(" \t").lower()
        name = CODING_ALIASES.get(name, name)
        if name != wanted and name != "*":
            continue
        weight = 1.0
        for parameter in parameters.split(";") if parameters else ():
            parameter = parameter.strip(" \t")
            if parameter[:1] in ("q", "Q"):
                match = QVALUE.fullmatch(parameter)
                weight = float(match.group(1)) if match else 0.0
        if name == "*":
            star = weight if star is None else min(star, weight)
        else:
            listed = weight if listed is None else min(listed, weight)
    if listed is not None:
        return listed > 0
    return star is not None and star > 0
