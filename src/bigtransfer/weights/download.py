"""Pretrained weights and label files: a local cache, resumable checked downloads, the timm hub as fallback.

The cache is ``$BIGTRANSFER_HOME`` (default ``~/.cache/bigtransfer``); a file is stored under the last
part of its URL, so a file fetched by hand can be dropped there. ``BIGTRANSFER_TIMEOUT`` (seconds,
default 15) bounds every network wait, so an offline machine fails at once rather than after minutes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import NO_ACCESS, NO_SPACE, BitError, DownloadError, error_errno
from .common import write_error

log = logging.getLogger("bigtransfer")

LABEL_URLS = {
    "imagenet21k": "https://storage.googleapis.com/bit_models/imagenet21k_wordnet_lemmas.txt",
    "imagenet1k": "https://storage.googleapis.com/bit_models/ilsvrc2012_wordnet_lemmas.txt",
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
HUB_FILE = "model.safetensors"
CHUNK = 1 << 20
_RESUMES = 3  # automatic resumes of an interrupted transfer within one call


def cache_dir() -> Path:
    """Where downloads are kept: ``$BIGTRANSFER_HOME`` or ``~/.cache/bigtransfer``."""
    home = os.environ.get("BIGTRANSFER_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "bigtransfer"


def _timeout() -> float:
    try:
        return float(os.environ.get("BIGTRANSFER_TIMEOUT", "15"))
    except ValueError:
        return 15.0


def cache_path(url: str) -> Path:
    """The cache file for ``url`` (its last path component)."""
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise DownloadError(f"cannot name a cache file after URL {url}; give a URL that ends in a file name")
    return cache_dir() / name


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def checksum_ok(digest: str, expected: str | None) -> bool:
    """A full expected digest must match; a shorter one (mindcv's 8 hex) is checked as a prefix."""
    return not expected or digest.lower().startswith(expected.lower())


class _Interrupted(Exception):
    pass


class _CannotWrite(DownloadError):
    """A local file or folder that cannot be written: no other source can help."""


def _write_error(e: OSError, path: str | os.PathLike) -> DownloadError:
    """A one-line error for a file that cannot be written; for the cache, the fix names BIGTRANSFER_HOME."""
    cache, target = cache_dir().resolve(), Path(path).resolve()
    in_cache = target == cache or cache in target.parents
    fix = None
    if in_cache and error_errno(e) in NO_ACCESS:
        fix = "set BIGTRANSFER_HOME to a writable folder or fix its permissions"
    elif in_cache and error_errno(e) in NO_SPACE:
        fix = "free disk space or set BIGTRANSFER_HOME to a folder on another disk, then run again"
    return write_error(e, path, fix, _CannotWrite)


def _request(url: str, start: int):
    req = urllib.request.Request(url, headers={"User-Agent": "bigtransfer"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(req, timeout=_timeout())  # noqa: S310 (scheme checked by the caller)


def _transfer(url: str, part: Path, progress: bool) -> None:
    """Fetch ``url`` into ``part``, continuing from its current size with a Range request."""
    start = part.stat().st_size if part.exists() else 0
    try:
        resp = _request(url, start)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing after ``start``: the part may already be whole
            total = (e.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == start:
                return
            part.unlink(missing_ok=True)
            return _transfer(url, part, progress)
        raise
    with resp:
        if start and getattr(resp, "status", 200) != 206:  # the server ignored the range: start over
            start = 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        try:
            out = open(part, "ab" if start else "wb")  # noqa: SIM115 (closed by the with below)
        except OSError as e:
            raise _write_error(e, part) from None
        done = start
        with out as f, tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=part.name.removesuffix(".part"), disable=not progress or None, leave=False) as bar:
            while True:
                try:
                    block = resp.read(CHUNK)
                except (OSError, urllib.error.URLError) as e:  # connection reset, timeout, IncompleteRead
                    raise _Interrupted(f"{type(e).__name__} after {done} bytes") from None
                try:
                    if block:
                        f.write(block)
                    f.flush()
                except OSError as e:  # a full disk: the bytes so far stay in ``part`` for the next try
                    raise _write_error(e, part) from None
                if not block:
                    break
                done += len(block)
                bar.update(len(block))
        if total is not None and done < total:
            raise _Interrupted(f"connection closed after {done} of {total} bytes")


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, *, allow_http: bool = False,
             progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part`` (resumed if present), check sha256, rename atomically."""
    dest = Path(dest)
    scheme = urllib.parse.urlparse(url).scheme
    if scheme == "http" and not allow_http:
        raise DownloadError(f"refusing plain-http URL {url}; use https (or pass allow_http=True for a trusted host)")
    if scheme not in ("http", "https"):
        raise DownloadError(f"unsupported URL scheme '{scheme}' in {url}; use https")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(e, dest.parent) from None
    part = dest.with_name(dest.name + ".part")
    for attempt in range(_RESUMES + 1):
        try:
            _transfer(url, part, progress)
            break
        except _Interrupted as e:
            if attempt == _RESUMES:
                raise DownloadError(f"download of {url} keeps breaking off ({e}); run again to resume "
                                    f"from {part}") from None
            log.info("download of %s interrupted (%s); resuming", url, e)
        except (urllib.error.URLError, OSError) as e:
            raise DownloadError(f"cannot download {url} ({_reason(e)})") from None
    digest = sha256_file(part)
    if not checksum_ok(digest, sha256):
        part.unlink(missing_ok=True)
        raise DownloadError(f"checksum mismatch for {url}: sha256 {digest[:16]}..., expected {sha256}; "
                            f"the corrupt file was removed, run again to re-download")
    try:
        os.replace(part, dest)
    except OSError as e:
        raise _write_error(e, dest) from None
    return dest


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        r = e.reason
        return f"network unreachable: {r.strerror if isinstance(r, OSError) and r.strerror else r}"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return f"no answer within {_timeout():g}s"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _hub_endpoint() -> urllib.parse.ParseResult:
    return urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def _hub_reachable() -> bool:
    """A quick TCP probe: the hub client itself retries for half a minute before giving up."""
    ep = _hub_endpoint()
    port = ep.port or (80 if ep.scheme == "http" else 443)
    try:
        socket.create_connection((ep.hostname or "", port), timeout=min(_timeout(), 5)).close()
        return True
    except OSError:
        return False


def _hub_cached(repo_id: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for cache in (cache_dir() / "huggingface", None):
        found = try_to_load_from_cache(repo_id, HUB_FILE, cache_dir=cache)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise DownloadError("HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        raise DownloadError(f"no connection to {_hub_endpoint().hostname or ''}")
    hub_cache = cache_dir() / "huggingface"
    try:
        hub_cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(e, hub_cache) from None
    return Path(hf_hub_download(repo_id, HUB_FILE, cache_dir=hub_cache, etag_timeout=_timeout()))


def cached_pretrained(cfg) -> Path | None:
    """The cached weights file of ``cfg`` when one is already on disk."""
    if cfg.url and cache_path(cfg.url).is_file():
        return cache_path(cfg.url)
    if cfg.hf_hub_id:
        return _hub_cached(cfg.hf_hub_id)
    return None


def fetch_pretrained(cfg, *, allow_http: bool = False, progress: bool = True) -> Path:
    """The weights of a model config: from the cache, else its URL, else its timm hub repo."""
    found = cached_pretrained(cfg)
    if found is not None:
        return found
    if not cfg.url and not cfg.hf_hub_id:
        raise DownloadError(f"{cfg.name} has no published weights; pass --no-pretrained (pretrained=False in "
                            f"Python) or --weights FILE")
    problems = []
    if cfg.url:
        try:
            return download(cfg.url, cache_path(cfg.url), cfg.sha256, allow_http=allow_http, progress=progress)
        except DownloadError as e:
            if isinstance(e, _CannotWrite) or not str(e).startswith("cannot download"):  # the hub is no cure
                raise
            problems.append(str(e))
    if cfg.hf_hub_id:
        try:
            path = _from_hub(cfg.hf_hub_id)
            log.info("%s: weights from the Hugging Face hub (%s)", cfg.name, cfg.hf_hub_id)
            return path
        except _CannotWrite:
            raise
        except Exception as e:  # the hub client raises many types; any failure here means "not available"
            if isinstance(e, OSError) and e.filename and e.errno in NO_ACCESS | NO_SPACE:  # a local file, not the net
                raise _write_error(e, e.filename) from None
            problems.append(f"the Hugging Face hub repo {cfg.hf_hub_id} is not reachable either ({_reason(e)})")
    where = cache_path(cfg.url) if cfg.url else cache_dir() / "huggingface"
    raise DownloadError(f"{cfg.name}: {'; '.join(problems)}; download the file by hand and save it as {where}, "
                        f"or pass --weights FILE (a local checkpoint) or --no-pretrained (weights=FILE or "
                        f"pretrained=False in Python)")


def fetch_labels(kind: str, *, progress: bool = True) -> list[str] | None:
    """Class names for ``imagenet21k``, ``imagenet1k`` or ``cifar10``; None with a notice when offline."""
    if kind == "cifar10":
        return list(CIFAR10_CLASSES)
    if kind not in LABEL_URLS:
        raise BitError(f"unknown label set '{kind}'; choose one of {', '.join([*LABEL_URLS, 'cifar10'])}")
    url = LABEL_URLS[kind]
    path = cache_path(url)
    if not path.is_file():
        try:
            download(url, path, progress=progress)
        except DownloadError as e:
            log.warning("class names for %s unavailable (%s); showing class indices. Save %s as %s to get names",
                        kind, e, url, path)
            return None
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


__all__ = ["cache_dir", "cache_path", "download", "fetch_pretrained", "fetch_labels", "cached_pretrained",
           "checksum_ok", "sha256_file", "CIFAR10_CLASSES", "LABEL_URLS"]
