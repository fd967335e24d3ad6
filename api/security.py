"""Input checks for the API: API keys, server-side paths under configured roots, outbound URL targets.

All refusals raise `Refused(status, detail)`; the API turns them into JSON errors. Nothing here trusts the
client: paths are resolved (symlinks included) before the containment check, and URL hosts are resolved to
addresses that must all be public unless private targets are explicitly allowed.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from videotag.core.netguard import non_public_target

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class Refused(Exception):
    """A request input that the API will not act on (status 400/401/403/404/409/413/415/422)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def check_api_key(accepted: Sequence[str], given: str | None) -> None:
    """No keys configured = open (a laptop); otherwise the header must match one key (constant-time)."""
    if not accepted:
        return
    if not given:
        raise Refused(401, "missing API key: send it in the X-API-Key header (or as an HTTP Basic password)")
    ok = False
    for key in accepted:  # compare against every key so timing does not reveal which one nearly matched
        ok |= hmac.compare_digest(key.encode(), given.encode())
    if not ok:
        raise Refused(401, "invalid API key")


def resolve_server_path(raw: str, roots: Sequence[str | Path]) -> Path:
    """A client-named server file, only under one of `roots`: absolute, or relative to the first root.

    Refuses NUL bytes, `..` components and anything whose real path (after symlinks) leaves every root.
    The file need not exist: a missing file becomes the job's `missing` error like any other bad input.
    """
    if not roots:
        raise Refused(403, "server-side path inputs are disabled (no path_roots configured); upload the file instead")
    if not raw or "\x00" in raw:
        raise Refused(400, "path must be a non-empty string without NUL bytes")
    p = Path(raw)
    if ".." in p.parts:
        raise Refused(403, f"path {raw!r} contains '..': traversal is not allowed")
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    candidate = p if p.is_absolute() else Path(roots[0]) / p
    real = Path(os.path.realpath(candidate))
    for root in real_roots:
        if real == root or real.is_relative_to(root):
            return real
    raise Refused(403, f"path {raw!r} is outside the allowed roots")


def check_url(url: str, allow_urls: bool, allow_private: bool) -> str:
    """Validate an http(s) input URL; refuse loopback/private/link-local targets unless allowed. Returns it.

    Every address the host resolves to must be public (a name with one private address is refused), so the
    check cannot be dodged with a multi-address DNS name.
    """
    if not allow_urls:
        raise Refused(403, "URL inputs are disabled on this server (allow_urls=false)")
    try:
        u = urllib.parse.urlsplit(url)
        u.port  # noqa: B018  (raises ValueError for a malformed port)
    except ValueError as e:
        raise Refused(400, f"malformed URL: {e}") from None
    if u.scheme not in ("http", "https"):
        raise Refused(400, f"only http and https URLs are accepted, not {u.scheme or 'no scheme'!r}")
    if not u.hostname:
        raise Refused(400, "URL has no host")
    if u.username or u.password:
        raise Refused(400, "URLs with credentials are not accepted")
    if allow_private:
        return url
    problem = non_public_target(url)
    if problem:
        raise Refused(400 if problem.startswith("cannot resolve") else 403, problem)
    return url


def check_model_name(name: str | None, weights_dir: Path) -> str | None:
    """Clients name predictors by folder name under weights_dir only (never an arbitrary server directory)."""
    if name is None or name == "":
        return None
    if not MODEL_NAME.match(name) or name in (".", ".."):
        raise Refused(400, f"invalid model name {name!r}: use a model folder name (letters, digits, _ . -)")
    if _kind(Path(weights_dir) / name) != "predictor":
        have = sorted(p.name for p in Path(weights_dir).glob("*") if _kind(p) == "predictor")
        raise Refused(404, f"model {name!r} not found (installed predictors: {', '.join(have) or 'none'})")
    return name


def _kind(model_dir: Path) -> str | None:
    """The manifest's kind (predictor, backbone) or None when there is no readable manifest."""
    try:
        return json.loads((model_dir / "manifest.json").read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def check_model_lang(model: str, lang: str | None, weights_dir: Path) -> str | None:
    """422 when `lang` is given and the model has no class names in it (cheap: reads the manifest only)."""
    if not lang:
        return None
    from videotag.catalog import require_language
    from videotag.core.errors import ModelMismatchError

    try:
        require_language(Path(weights_dir) / model, lang)
    except ModelMismatchError as e:
        raise Refused(422, f"lang: {e}") from None
    return lang
