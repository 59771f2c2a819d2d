"""Verified, atomic HTTP downloads for dataset files.

A download streams into ``<dest>.part-<random>`` next to the destination, hashing as it goes, and
is renamed onto ``dest`` only after the byte count and SHA-256 (whichever are known) match. On any
failure the partial file is removed, so the cache never holds a half-written or unverified file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from offrl.errors import OffrlError

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30.0


def sha256_of(path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike,
    size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Download ``url`` to ``dest``, checking ``size`` (bytes) and ``sha256`` when given.

    The file only appears at ``dest`` once it is complete and verified. Raises :class:`OffrlError`
    with a one-line reason on any failure (unreachable host, HTTP error, short read, size or hash
    mismatch, disk error) and leaves no temporary file behind. ``KeyboardInterrupt`` also cleans
    up and is re-raised unchanged.
    """
    dest = Path(dest)
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or url
    tmp = dest.with_name(f"{dest.name}.part-{secrets.token_hex(6)}")
    failed = f"download of {url} failed"
    if parts.scheme not in ("http", "https"):
        raise OffrlError(f"{failed}: invalid URL (expected http:// or https://)")
    received, total = 0, size
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise OffrlError(f"{failed}: HTTP {e.code} {e.reason}") from None
        except ValueError as e:
            raise OffrlError(f"{failed}: invalid URL ({e})") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise OffrlError(
                f"cannot reach {host} to download {url} ({reason}); this machine may be offline. "
                f"Fetch the file on a connected machine and put it at {dest}"
            ) from None
        with response:
            total = size if size is not None else _content_length(response)
            digest = hashlib.sha256()
            with open(tmp, "wb") as out, tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                disable=not progress, leave=False,
            ) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        if size is not None and received != size:
            raise OffrlError(f"{failed}: size mismatch (expected {size} bytes, got {received})")
        if total is not None and received != total:
            raise OffrlError(f"{failed}: connection closed after {received} of {total} bytes")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise OffrlError(f"{failed}: sha256 mismatch (expected {sha256.lower()}, got {digest.hexdigest()})")
        os.replace(tmp, dest)
        return dest
    except OffrlError:
        raise
    except http.client.IncompleteRead:
        expected = f" of {total}" if total is not None else ""
        raise OffrlError(f"{failed}: connection closed after {received}{expected} bytes") from None
    except (socket.timeout, TimeoutError):
        raise OffrlError(f"{failed}: no data from {host} for {timeout:g} s") from None
    except (http.client.HTTPException, urllib.error.URLError, ConnectionError) as e:
        raise OffrlError(f"{failed}: {type(e).__name__}: {e}") from None
    except OSError as e:
        raise OffrlError(f"{failed}: cannot write {tmp} ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _content_length(response) -> int | None:
    """The ``Content-Length`` header as an int, or None when absent or malformed."""
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, TypeError, ValueError):
        return None


__all__ = ["download", "sha256_of"]
