"""Masking secrets in command arguments, for `--record-args` (arguments are not recorded otherwise).

Only the secret value becomes `***`; the flag, header name, user name and the rest of the command stay, so the
recorded command still says what ran. The rules, each applied to every argument (and to every word of a shell
script given with `sh -c`/`bash -c`, where a masked value ends at the word's end and the rest of the script
stays):

1. a flag whose name looks secret (contains password, passwd, pass, token, key, secret, credential, auth,
   apikey; `-`, `--`, Go's single-dash long flags): `--token=X`, `--password X`, `-pass X` mask X;
2. a header flag (`-H`, `--header`) whose header name looks secret or is a cookie:
   `-H 'Authorization: Bearer X'` becomes `-H 'Authorization: ***'`;
3. a user flag (`-u`, `--user`, `-U`, `--proxy-user`, curl's `user:password`): `-u me:X` becomes `-u me:***`;
4. `-p X` (a password to mysql, sshpass and friends; a port or "parents" elsewhere, masked anyway: a lost
   port number costs less than a leaked password). Not `-pX`: it cannot be told from a flag like `-parallel`;
5. `NAME=VALUE` with a secret-looking NAME: `TOKEN=X make` becomes `TOKEN=*** make`;
6. the password of a URL: `https://user:***@host`.
Stdlib string operations only: this module is imported by the wrapper.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the wrapper does not import typing
if TYPE_CHECKING:
    from collections.abc import Callable

MASK = "***"
_SECRET_WORDS = ("password", "passwd", "token", "key", "secret", "credential", "auth", "apikey")
_SECRET_PARTS = frozenset({"pass", "pw", "pwd"})
_SECRET_HEADERS = frozenset({"cookie"})
_HEADER_FLAGS = frozenset({"-H", "--header"})
_USER_FLAGS = frozenset({"-u", "--user", "-U", "--proxy-user"})
_SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "busybox"})
# Characters that end a shell word outside quotes (kept as they are in the output).
_SHELL_BREAKS = frozenset(" \t\n;&|<>()")
_QUOTES = "'\""


def _looks_secret(name: str) -> bool:
    lowered = name.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        return True
    for sep in "-_.":
        lowered = lowered.replace(sep, " ")
    return not _SECRET_PARTS.isdisjoint(lowered.split())


def _unquote(word: str) -> tuple[str, str]:
    """(the quote character or "", the text inside): a shell word quoted as a whole."""
    if len(word) >= 2 and word[0] in _QUOTES and word[-1] == word[0]:
        return word[0], word[1:-1]
    return "", word


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


def _mask_header(word: str) -> str:
    quote, text = _unquote(word)
    name, colon, value = text.partition(":")
    if not colon or not value.strip():
        return word
    stripped = name.strip()
    if stripped.lower() in _SECRET_HEADERS or _looks_secret(stripped):
        return quote + name + ": " + MASK + quote
    return word


def _mask_user(word: str) -> str:
    quote, text = _unquote(word)
    user, colon, _password = text.partition(":")
    return quote + user + ":" + MASK + quote if colon else word


def _mask_value(word: str) -> str:
    return MASK


class _Redactor:
    """The rules over a sequence of words; a flag that takes its value from the next word sets `pending`."""

    def __init__(self) -> None:
        self.pending: Callable[[str], str] | None = None

    def word(self, arg: str) -> str:
        pending = self.pending
        if pending is not None:
            self.pending = None
            return pending(arg)
        if arg.startswith("-") and len(arg) > 1:
            return self._flag(arg)
        name, eq, _value = arg.partition("=")
        if eq and name and "/" not in name and _looks_secret(name):
            return name + "=" + MASK
        return _mask_url_password(arg)

    def _flag(self, arg: str) -> str:
        name, eq, value = arg.partition("=")
        if name in _HEADER_FLAGS:
            if eq:
                return name + "=" + _mask_header(value)
            self.pending = _mask_header
            return arg
        if name in _USER_FLAGS:
            if eq:
                return name + "=" + _mask_user(value)
            self.pending = _mask_user
            return arg
        if name == "-p":
            self.pending = _mask_value
            return arg
        if not arg.startswith("--"):
            if arg.startswith("-H") and not eq:
                return "-H" + _mask_header(arg[2:])
            if arg.startswith("-u"):
                return "-u" + _mask_user(arg[2:])
        if len(name.lstrip("-")) > 1 and _looks_secret(name):
            if eq:
                return name + "=" + MASK
            self.pending = _mask_value
            return arg
        return _mask_url_password(arg)


def _shell_words(script: str) -> list[tuple[bool, str]]:
    """The script cut into (is a word, text) pieces that join back to it: words, and what separates them."""
    pieces: list[tuple[bool, str]] = []
    i, n = 0, len(script)
    while i < n:
        start = i
        if script[i] in _SHELL_BREAKS:
            while i < n and script[i] in _SHELL_BREAKS:
                i += 1
            pieces.append((False, script[start:i]))
            continue
        while i < n and script[i] not in _SHELL_BREAKS:
            c = script[i]
            if c == "\\":
                i += 2
            elif c in _QUOTES:
                close = script.find(c, i + 1)
                i = n if close < 0 else close + 1
            else:
                i += 1
        pieces.append((True, script[start : min(i, n)]))
    return pieces


def _redact_script(script: str) -> str:
    redactor = _Redactor()
    out = []
    for is_word, text in _shell_words(script):
        if not is_word:
            if text.strip(" \t"):  # ; & | newline...: a flag waiting for its value does not get one
                redactor.pending = None
            out.append(text)
        else:
            out.append(redactor.word(text))
    return "".join(out)


def _is_shell(program: str) -> bool:
    return program.rpartition("/")[2] in _SHELLS


def redact(args: list[str]) -> list[str]:
    """`args` with the secret values masked (see the module docstring for the rules)."""
    redactor = _Redactor()
    out: list[str] = []
    script_next = False
    for i, arg in enumerate(args):
        if script_next:
            script_next = False
            out.append(_redact_script(arg))
            continue
        # `sh -c SCRIPT`, `bash -ec SCRIPT`: the script is a command line of its own.
        if (
            i > 0
            and _is_shell(args[0])
            and redactor.pending is None
            and arg.startswith("-")
            and not arg.startswith("--")
            and arg.endswith("c")
        ):
            script_next = True
            out.append(arg)
            continue
        out.append(redactor.word(arg))
    return out
