"""Security middlewares, on by default, outermost first (inside the error middleware of
:mod:`engine.api.errors`, so their refusals use the one error schema):

1. **Host check** (DNS-rebinding defence): when Loom listens on a loopback address, a request whose
   ``Host`` names anything but a loopback name or IP (any port) gets 403. A page on
   ``evil.example`` that rebinds its name to 127.0.0.1 still sends ``Host: evil.example``.
2. **Origin check** (CSRF defence): a request with an ``Origin`` header whose scheme-default-aware
   ``host:port`` differs from ``Host`` gets 403, unless the origin is in ``allowed_origins``
   (which also get CORS headers and preflight answers). Applies to every method and to the
   websocket upgrade. ``Origin: null`` (sandboxed frames, file://) counts as foreign.
3. **Auth**: with ``auth_token`` set, every request needs ``Authorization: Bearer <token>``; the
   websocket (``/ws``) and ``GET /view`` (``<img src>`` cannot send headers) may pass it as
   ``?token=``. Exempt: ``GET /`` and ``GET /frontend/...``, the editor's static files, so the
   editor can load and then ask for the token. Comparison uses :func:`hmac.compare_digest`.
   A browser signs in once by opening ``/?token=<token>``: the reply sets the token as an ``HttpOnly``,
   ``SameSite=Strict`` cookie (:data:`TOKEN_COOKIE`) and redirects to ``/``; the cookie then stands for the
   header on every request, the websocket included. This is how ComfyUI's own frontend, which knows nothing
   of tokens, runs on a server that requires one. The origin check above keeps other sites from riding it.

The access log (:class:`RedactingAccessLogger`) writes ``?token=`` and other credential query values
as ``REDACTED`` and never logs request headers such as ``Authorization``.

Also: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: SAMEORIGIN`` and
``Referrer-Policy: no-referrer`` on every response.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from urllib.parse import unquote_plus, urlsplit

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler, Middleware

from engine.api.comfyui_frontend import API_PREFIXES, comfyui_static_root, static_file
from engine.api.errors import error_response
from engine.settings import Settings, is_loopback

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_QUERY_TOKEN_PATHS = frozenset({"/ws", "/api/ws", "/view", "/api/view"})
#: The cookie a browser gets by opening ``/?token=<token>`` (see the module docstring).
TOKEN_COOKIE = "loom_token"
_CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
_CORS_HEADERS = "Authorization, Content-Type, Comfy-User"  # ComfyUI's frontend sends Comfy-User on every call
#: Query parameters whose values are credentials: the access log shows them as ``REDACTED``.
SECRET_QUERY_KEYS = frozenset({"token", "auth_token", "access_token", "api_key", "apikey", "key", "password"})


def is_editor_static(request: web.Request, comfyui_root: Path | None = None) -> bool:
    """The editor's static files, served without auth so the login-less editor can load: Loom's (``/``,
    ``/frontend/...``), and with ``--frontend comfyui`` the files of ComfyUI's frontend folder ``comfyui_root``."""
    if request.method not in ("GET", "HEAD"):
        return False
    path = request.path
    if path == "/" or path.startswith("/frontend/"):
        return True
    rel = path.lstrip("/")
    return comfyui_root is not None and not rel.startswith(API_PREFIXES) and static_file(comfyui_root, rel) is not None


# --------------------------------------------------------------------------- host / origin parsing


def split_host(value: str, default_port: int | None = None) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) -> (lower-case host without brackets, port or default)."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value.lower(), default_port
        host, rest = value[1:end], value[end + 1:]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, port_text = value.split(":", 1)
    else:
        host, port_text = value, ""
    port: int | None = default_port
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            port = -1
    return host.lower().rstrip("."), port


def origin_key(origin: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an Origin header value, or None if it is not a URL origin."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    scheme = parts.scheme.lower()
    host, port = split_host(parts.netloc.rsplit("@", 1)[-1], _DEFAULT_PORTS.get(scheme))
    return scheme, host, port


def _normalised_origins(origins: tuple[str, ...]) -> tuple[bool, set[tuple[str, str, int | None]]]:
    allow_all = "*" in origins
    keys = {key for o in origins if o != "*" and (key := origin_key(o)) is not None}
    return allow_all, keys


# --------------------------------------------------------------------------- middlewares


def host_middleware(settings: Settings) -> Middleware:
    loopback_only = is_loopback(settings.host)

    @web.middleware
    async def host_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        host_header = request.headers.get(hdrs.HOST)
        if loopback_only and host_header is not None:
            host, _ = split_host(host_header)
            if not is_loopback(host):
                log.warning("refused %s %s with Host %r (DNS rebinding?)",
                            request.method, request.path, host_header)
                return error_response(
                    403, "forbidden_host", "Host not allowed",
                    f"this server listens on a loopback address and only answers requests for "
                    f"localhost, 127.0.0.1 or [::1]; got Host {host_header!r}")
        return await handler(request)

    return host_check


def origin_middleware(settings: Settings) -> Middleware:
    allow_all, allowed = _normalised_origins(settings.allowed_origins)

    @web.middleware
    async def origin_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return await handler(request)
        key = origin_key(origin)
        if key is not None and (allow_all or key in allowed):
            return await _with_cors(request, handler, origin)
        scheme = request.scheme
        host_header = request.headers.get(hdrs.HOST, "")
        same = key is not None and host_header and (
            key[1:] == split_host(host_header, _DEFAULT_PORTS.get(scheme, 80))
            and key[0] in ("http", "https")
        )
        if not same:
            log.warning("refused cross-origin %s %s from %r (Host %r)",
                        request.method, request.path, origin, host_header)
            return error_response(
                403, "forbidden_origin", "Cross-origin request refused",
                f"Origin {origin!r} does not match Host {host_header!r}; add the origin to "
                "allowed_origins to let that site use this server")
        return await handler(request)

    return origin_check


async def _with_cors(request: web.Request, handler: Handler, origin: str) -> web.StreamResponse:
    cors = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }
    if request.method == "OPTIONS" and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
        cors.update({
            "Access-Control-Allow-Methods": _CORS_METHODS,
            "Access-Control-Allow-Headers": _CORS_HEADERS,
            "Access-Control-Max-Age": "600",
        })
        return web.Response(status=204, headers=cors)
    response = await handler(request)
    if not response.prepared:
        response.headers.update(cors)
    return response


def auth_middleware(settings: Settings) -> Middleware:
    token = settings.auth_token
    expected = token.encode() if token else b""
    comfyui_root = comfyui_static_root(settings) if settings.frontend == "comfyui" else None

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected and request.path == "/" and "token" in request.query:
            return _sign_in(request, expected)
        if not expected or is_editor_static(request, comfyui_root):
            return await handler(request)
        if _presented_token_ok(request, expected):
            return await handler(request)
        return error_response(
            401, "unauthorized", "Authentication required",
            "send the server's token as 'Authorization: Bearer <token>' (or ?token=<token> on /ws)",
            headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="loom"'})

    return auth


def _sign_in(request: web.Request, expected: bytes) -> web.StreamResponse:
    """``/?token=``: a right token becomes the cookie and the browser goes on to ``/`` (the token leaves the
    address bar and its history); a wrong one is a 401."""
    token = request.query.get("token", "")
    if not hmac.compare_digest(token.encode(), expected):
        return error_response(401, "unauthorized", "Wrong token",
                              "open /?token=<token> with the token the server was started with")
    response = web.Response(status=303, headers={hdrs.LOCATION: "/", hdrs.CACHE_CONTROL: "no-store"})
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/",
                        secure=request.secure)
    return response


def _presented_token_ok(request: web.Request, expected: bytes) -> bool:
    cookie = request.cookies.get(TOKEN_COOKIE)
    if cookie and hmac.compare_digest(cookie.encode(), expected):
        return True
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return hmac.compare_digest(value.strip().encode(), expected)
    if request.method in ("GET", "HEAD") and request.path in _QUERY_TOKEN_PATHS:
        query_token = request.query.get("token")
        if query_token:
            return hmac.compare_digest(query_token.encode(), expected)
    return False


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: headers every response carries."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    response.headers.setdefault("Referrer-Policy", "no-referrer")


def security_middlewares(settings: Settings) -> list[Middleware]:
    """Host check, origin check and auth, in order (outermost first)."""
    return [host_middleware(settings), origin_middleware(settings), auth_middleware(settings)]


# --------------------------------------------------------------------------- access log


def redact_query_secrets(target: str) -> str:
    """A request target (``/view?filename=a.png&token=...``) with every credential value replaced."""
    path, sep, rest = target.partition("?")
    if not sep:
        return target
    query, hash_sep, fragment = rest.partition("#")
    pairs = [_redacted_pair(pair) for pair in query.split("&")]
    return f"{path}?{'&'.join(pairs)}{hash_sep}{fragment}"


def _redacted_pair(pair: str) -> str:
    key, eq, _ = pair.partition("=")
    if eq and unquote_plus(key).strip().lower() in SECRET_QUERY_KEYS:
        return f"{key}=REDACTED"
    return pair


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's access log line (client, request line, status, size, referer, user agent, seconds)
    with credential query values redacted: the editor passes the token as ``?token=`` on ``/view``."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        version = request.version
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d "%s" "%s" %.3fs',
            request.remote or "-", request.method, redact_query_secrets(request.raw_path),
            version.major, version.minor, response.status, response.body_length,
            redact_query_secrets(request.headers.get(hdrs.REFERER, "-")),
            request.headers.get(hdrs.USER_AGENT, "-"), time)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
