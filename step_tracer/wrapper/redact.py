"""Masking secrets in command arguments, for `--record-args` (arguments are not recorded otherwise).

Masked: the value of any flag whose name looks secret (`--token=X`, `--password X`, `-p`-style short flags are
left alone), `NAME=VALUE` assignments with a secret-looking NAME, and the password in URLs
(`https://user:***@host`).
"""

from __future__ import annotations

MASK = "***"
_SECRET_WORDS = ("password", "passwd", "token", "key", "secret", "credential", "auth", "apikey")


def _looks_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _mask_url_password(arg: str) -> str:
    scheme_end = arg.find("://")
    if scheme_end < 0:
        return arg
    rest_start = scheme_end + 3
    at = arg.find("@", rest_start)
    slash = arg.find("/", rest_start)
    if at < 0 or (0 <= slash < at):
        return arg
    userinfo = arg[rest_start:at]
    user, sep, _password = userinfo.partition(":")
    if not sep:
        return arg
    return arg[:rest_start] + user + ":" + MASK + arg[at:]


def redact(args: list[str]) -> list[str]:
    out: list[str] = []
    mask_next = False
    for arg in args:
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        if arg.startswith("--"):
            name, eq, _value = arg.partition("=")
            if _looks_secret(name):
                if eq:
                    out.append(name + "=" + MASK)
                else:
                    out.append(arg)
                    mask_next = True
                continue
        elif "=" in arg and not arg.startswith("-"):
            name, _, _value = arg.partition("=")
            if name and "/" not in name and _looks_secret(name):
                out.append(name + "=" + MASK)
                continue
        out.append(_mask_url_password(arg))
    return out
