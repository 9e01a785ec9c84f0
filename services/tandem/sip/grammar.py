"""The pieces of the RFC 3261 section 25 grammar that tandem checks, as compiled regexes.

Validation runs on every parsed message, so each check is one C-level `fullmatch` over a
header value that has already been unfolded (every CRLF + WSP replaced by a space).
Escapes are not checked octet by octet ('%' is simply allowed where an escape may
stand): a character-class run is several times faster in `re` than an alternation per
character, and no RFC 4475 case turns on it.
"""

import re

_LWS = r"[ \t]*"
TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN = rf"[{TOKEN_CHARS}]+"
# quoted-pair allows any octet but CR and LF; qdtext is anything but '"' and '\'.
_QUOTED = r'"[^"\\]*(?:\\[\x00-\x09\x0b\x0c\x0e-\x7f][^"\\]*)*"'

_USER = r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+"
_PASSWORD = r"[A-Za-z0-9\-_.!~*'()&=+$,%]*"
# An addr-spec outside <> may not contain ',', ';' or '?' (RFC 3261 20.10).
_USER_BARE = r"[A-Za-z0-9\-_.!~*'()&=+$/%]+"
_PASSWORD_BARE = r"[A-Za-z0-9\-_.!~*'()&=+$%]*"
_DEC = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_DEC}(?:\.{_DEC}){{3}}"
_H16 = r"[0-9A-Fa-f]{1,4}"
_LS32 = rf"(?:{_IPV4}|{_H16}:{_H16})"
# RFC 3986's IPv6address: "2001:db8:::1" (RFC 5118 4.5) does not match.
_IPV6 = "|".join(
    [
        rf"(?:{_H16}:){{6}}{_LS32}",
        rf"::(?:{_H16}:){{5}}{_LS32}",
        rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
        rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
        rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
        rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
    ]
)
_HOST = rf"(?:\[(?:{_IPV6})\]|[A-Za-z0-9_\-.]+)"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5]?[0-9]{1,4})"
_PCHAR = r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]"
_URI_PARAMS = rf"(?:;{_PCHAR}+(?:={_PCHAR}+)?)*"
_HCHAR = r"[A-Za-z0-9\-_.!~*'()\[\]/?:+$%]"
_URI_HEADERS = rf"\?{_HCHAR}*={_HCHAR}*(?:&{_HCHAR}*={_HCHAR}*)*"
_SIP = r"(?i:sips?):"
_SIP_URI_BASE = rf"{_SIP}(?:{_USER}(?::{_PASSWORD})?@)?{_HOST}(?::{_PORT})?{_URI_PARAMS}"
_SIP_URI = rf"{_SIP_URI_BASE}(?:{_URI_HEADERS})?"
_SIP_URI_BARE = rf"{_SIP}(?:{_USER_BARE}(?::{_PASSWORD_BARE})?@)?{_HOST}(?::{_PORT})?"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*:"
_OTHER_URI = rf"(?!{_SIP}){_SCHEME}[^\s<>\"]+"
_OTHER_URI_BARE = rf"(?!{_SIP}){_SCHEME}[^\s<>\";,?]+"

_GEN_VALUE = rf"(?:[{TOKEN_CHARS}:\[\]]+|{_QUOTED})"
_PARAMS = rf"(?:{_LWS};{_LWS}{_TOKEN}(?:{_LWS}={_LWS}{_GEN_VALUE})?)*"
_DISPLAY = rf"(?:{_TOKEN}(?:[ \t]+{_TOKEN})*|{_QUOTED})"
_ANGLE = rf"<(?:{_SIP_URI}|{_OTHER_URI})>"
_NAME_ADDR = rf"(?:{_DISPLAY})?{_LWS}{_ANGLE}{_PARAMS}"
_ADDRESS = rf"(?:(?:{_DISPLAY})?{_LWS}{_ANGLE}|{_SIP_URI_BARE}|{_OTHER_URI_BARE}){_PARAMS}"
_COMMA = rf"{_LWS},{_LWS}"
_VIA_PARM = (
    rf"{_TOKEN}{_LWS}/{_LWS}{_TOKEN}{_LWS}/{_LWS}{_TOKEN}[ \t]+"
    rf"{_HOST}(?:{_LWS}:{_LWS}{_PORT})?{_PARAMS}"
)

TOKEN = re.compile(_TOKEN)
REQUEST_URI = re.compile(rf"{_SIP_URI_BASE}|{_OTHER_URI}")
SIP_URI = re.compile(_SIP_URI)
ADDRESS = re.compile(_ADDRESS)
CONTACTS = re.compile(rf"\*|{_ADDRESS}(?:{_COMMA}{_ADDRESS})*")
ROUTES = re.compile(rf"{_NAME_ADDR}(?:{_COMMA}{_NAME_ADDR})*")
VIA = re.compile(_VIA_PARM)
VIAS = re.compile(rf"{_VIA_PARM}(?:{_COMMA}{_VIA_PARM})*")
CSEQ = re.compile(rf"[0-9]+[ \t]+{_TOKEN}")
DIGITS = re.compile(r"[0-9]+")
CALL_ID = re.compile(
    r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(?:@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?"
)
MEDIA_TYPE = re.compile(rf"{_TOKEN}{_LWS}/{_LWS}{_TOKEN}{_PARAMS}")
SIP_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+")

# Fast paths: strict subsets of the grammar above, in the one shape trunks nearly always
# send (a quoted or no display name, <sip:...>, plain parameters). A value they match is
# valid; one they miss goes through the full grammar. tests/sip/test_grammar.py checks
# that every string they match, the full grammar matches too.
_PLAIN = r"[A-Za-z0-9_.!~*'()\-]"
_PLAIN_PARAMS = rf"(?:;[{TOKEN_CHARS}]+(?:=[{TOKEN_CHARS}]+)?)*"
FAST_VIA = re.compile(rf"SIP/2\.0/[A-Z]+ [A-Za-z0-9_.\-]+(?::{_PORT})?{_PLAIN_PARAMS}")
FAST_NAME_ADDR = re.compile(
    rf'(?:"[^"\\\x00-\x1f\x7f]*" ?)?<sips?:(?:[A-Za-z0-9_.!~*\'()&=+$,\-]+@)?[A-Za-z0-9_.\-]+'
    rf"(?::{_PORT})?(?:;{_PLAIN}+(?:={_PLAIN}+)?)*>{_PLAIN_PARAMS}"
)
