"""What keeps another web site from acting through a signed-in person's browser.

The console changes things only through forms (today: the signed approval link's
form), so a page elsewhere must not be able to submit one for the person, nor frame
the console to trick a click. Three layers, each enough on its own for the cases
the other two miss:

* ``ConsoleSecurity`` (ASGI middleware, ``/ui`` only): every response carries the
  headers below, and every request that is not GET/HEAD/OPTIONS must come from the
  console's own origin (``Origin``, else ``Referer``, against the configured external
  URL, else the request's own Host). A foreign, ``null`` or absent origin is a 403
  before any handler runs, so nothing changes.
* ``FormTokens``: each form carries a token, HMAC-SHA256 under a key derived from the
  console's link key, bound to the path it posts to, the person signed in (the auth
  proxy's header) and when the page was made. A page elsewhere cannot read it (the
  same-origin policy), and one fetched by someone else names someone else.
* No cookies: the console keeps no session, so there is nothing for a cross-site
  request to ride on; who you are comes from the auth proxy, on every request.

Referrer-Policy is ``same-origin``, not ``no-referrer``, although approval URLs carry
their token: ``same-origin`` already keeps the URL from every other site, while
``no-referrer`` makes browsers send ``Origin: null`` on the page's own form POST,
which the origin check (rightly) refuses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/ui"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The console's own script, stylesheet and live-refresh fetches ('self'); no inline
# script or style anywhere, nothing from elsewhere, never framed, forms post home.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "object-src 'none'")
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)
FORM_FIELD = "form_token"
# A page's form works for an hour: long enough to read a diff and ask a colleague,
# short enough that a form token copied from a page is soon worth nothing.
FORM_MAX_AGE_SECONDS = 3600
MAX_FORM_BYTES = 8192  # the console's forms hold one token; anything bigger is not ours
_DEFAULT_PORTS = {"http": 80, "https": 443}


class RequestRefused(Exception):
    """A state-changing console request refused with 403; nothing was changed."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def safe_path(path: str) -> str:
    """The path for logs: an approval link's token is a secret, never logged."""
    if path.startswith(f"{PREFIX}/approve/"):
        return f"{PREFIX}/approve/<token>"
    return path


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{netloc}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host.lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def check_origin(method: str, headers: dict[str, str], expected: str | None) -> None:
    """Refuse unless the request comes from the console's origin. ``expected`` is the
    configured external URL; without one the request's own Host is the console."""
    origin = headers.get("origin")
    source = "Origin"
    if origin is None and (referer := headers.get("referer")):
        parts = urlsplit(referer)
        origin, source = f"{parts.scheme}://{parts.netloc}", "Referer"
    where = expected or f"this console ({headers.get('host', 'no Host header')})"
    hint = f"open the page at {expected or 'the console'} and use its form; requests from " \
           "other sites are refused"
    if not origin:
        raise RequestRefused(f"this {method} carries no Origin or Referer header, so it cannot "
                             f"be told from one made by another site; nothing was changed", hint)
    if origin == "null":
        raise RequestRefused(f"this {method} came from an opaque origin (Origin: null), not "
                             f"{where}; nothing was changed", hint)
    given = urlsplit(origin)
    got = _host_port(given.netloc, given.scheme)
    if expected:
        want_url = urlsplit(expected)
        want = _host_port(want_url.netloc, want_url.scheme)
        ok = got is not None and given.scheme == want_url.scheme and got == want
    else:
        # Behind a proxy that ends TLS the scheme seen here may differ: compare host
        # and port, the port defaulting by the origin's scheme on both sides.
        want = _host_port(headers.get("host", ""), given.scheme)
        ok = got is not None and got == want
    if not ok:
        raise RequestRefused(f"this {method} came from another origin ({source} {origin}), "
                             f"not {where}; nothing was changed", hint)


class ConsoleSecurity:
    """Pure ASGI (no per-request overhead outside ``/ui``, where the webhooks are)."""

    def __init__(self, app: ASGIApp, *, external_url: str | None,
                 refused: Callable[[RequestRefused], tuple[int, str]]) -> None:
        self.app, self.external_url, self.refused = app, external_url, refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k, v) for k, v in HEADERS if k not in have)]
            await send(message)

        method = scope["method"]
        if method not in SAFE_METHODS:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in scope.get("headers", [])}
            try:
                check_origin(method, headers, self.external_url)
            except RequestRefused as exc:
                log.warning("console %s %s refused: %s", method, safe_path(path), exc.message)
                status, page = self.refused(exc)
                body = page.encode()
                await with_headers({"type": "http.response.start", "status": status,
                                    "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                                (b"content-length", str(len(body)).encode()),
                                                (b"cache-control", b"no-store")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, with_headers)


class FormTokens:
    """``issue(path, who)`` for a page's form; ``check(path, who, body)`` on its POST."""

    def __init__(self, link_key: bytes, clock: Callable[[], float]) -> None:
        # Its own key, derived: a form token can never pass for a link signature.
        self._key = hmac.new(link_key, b"llm-incident console form tokens v1",
                             hashlib.sha256).digest()
        self.clock = clock

    def _sign(self, path: str, who: str, issued: int) -> str:
        message = f"form\n{path}\n{who}\n{issued}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, path: str, who: str) -> str:
        issued = int(self.clock())
        return f"{issued}.{self._sign(path, who, issued)}"

    def check(self, path: str, who: str, body: bytes) -> None:
        reload = "reload the page and submit its form again"
        if len(body) > MAX_FORM_BYTES:
            raise RequestRefused(f"the form is larger than {MAX_FORM_BYTES} bytes; nothing "
                                 "was changed", reload)
        values = parse_qs(body.decode("utf-8", "replace")).get(FORM_FIELD, [])
        if not values or not values[0]:
            raise RequestRefused(f"the form's page token ({FORM_FIELD}) is missing, so this "
                                 "request did not come from the console's page; nothing was "
                                 "changed", reload)
        stamp, _, signature = values[0].partition(".")
        if not stamp.isdigit() or not hmac.compare_digest(
                signature.encode(), self._sign(path, who, int(stamp)).encode()):
            raise RequestRefused("the form's page token does not match this page and the "
                                 f"person signed in ({who or 'nobody'}); nothing was changed",
                                 reload)
        if self.clock() - int(stamp) > FORM_MAX_AGE_SECONDS:
            raise RequestRefused(f"this page is more than {FORM_MAX_AGE_SECONDS // 60} minutes "
                                 "old, so its form no longer counts; nothing was changed",
                                 reload)
