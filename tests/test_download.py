"""Downloads against a real HTTP server on 127.0.0.1: verification, atomicity, clear errors."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from offrl.data import DatasetInfo, download, is_present, load_dataset
from offrl.errors import OffrlError

PAYLOAD = np.random.default_rng(0).bytes(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def tiny_hdf5_bytes() -> bytes:
    """A 6-row D4RL-layout file, as bytes to serve."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["observations"] = np.arange(12, dtype=np.float32).reshape(6, 2)
        f["actions"] = np.zeros((6, 1), dtype=np.float32)
        f["rewards"] = np.ones(6, dtype=np.float32)
        f["terminals"] = np.array([0, 0, 1, 0, 0, 0], dtype=bool)
        f["timeouts"] = np.zeros(6, dtype=bool)
    return buf.getvalue()


HDF5 = tiny_hdf5_bytes()

ROUTES: dict[str, tuple[bytes, int | None]] = {  # path -> (body, Content-Length to announce)
    "/good.bin": (PAYLOAD, None),
    "/short.bin": (PAYLOAD[:-1000], None),  # truncated: wrong size
    "/tampered.bin": (PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 0xFF]), None),  # right size, wrong hash
    "/cut.bin": (PAYLOAD[:1000], len(PAYLOAD)),  # connection closes before Content-Length
    "/tiny.hdf5": (HDF5, None),
}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path not in ROUTES:
            self.send_error(404)
            return
        body, announced = ROUTES[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(announced if announced is not None else len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    """Serve ROUTES on an ephemeral 127.0.0.1 port for this module; stopped afterwards."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    path.mkdir()
    return path


def test_good_file_lands_in_cache(server, cache):
    dest = download(f"{server}/good.bin", cache / "good.bin", size=len(PAYLOAD), sha256=SHA, progress=False)
    assert dest == cache / "good.bin"
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in cache.iterdir()) == ["good.bin"]


def test_unknown_checksums_still_download(server, cache):
    download(f"{server}/good.bin", cache / "good.bin", progress=False)
    assert (cache / "good.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    "route, message",
    [
        ("/short.bin", rf"size mismatch \(expected {len(PAYLOAD)} bytes, got {len(PAYLOAD) - 1000}\)"),
        ("/tampered.bin", rf"sha256 mismatch \(expected {SHA}, got [0-9a-f]{{64}}\)"),
        ("/cut.bin", rf"size mismatch \(expected {len(PAYLOAD)} bytes, got 1000\)"),
        ("/missing.bin", r"HTTP 404 Not Found"),
    ],
)
def test_bad_download_leaves_nothing(server, cache, route, message):
    url = f"{server}{route}"
    with pytest.raises(OffrlError, match=rf"^download of {url} failed: {message}$"):
        download(url, cache / "file.bin", size=len(PAYLOAD), sha256=SHA, progress=False)
    assert list(cache.iterdir()) == []


def test_early_close_detected_without_known_size(server, cache):
    with pytest.raises(OffrlError, match=rf"connection closed after 1000 of {len(PAYLOAD)} bytes$"):
        download(f"{server}/cut.bin", cache / "cut.bin", progress=False)
    assert list(cache.iterdir()) == []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host(cache):
    url = f"http://127.0.0.1:{closed_port()}/x.hdf5"
    with pytest.raises(OffrlError, match=r"cannot reach 127\.0\.0\.1 .*may be offline.*put it at .*x\.hdf5") as err:
        download(url, cache / "x.hdf5", progress=False, timeout=5)
    assert "\n" not in str(err.value)
    assert list(cache.iterdir()) == []


# ------------------------------------------------------------------ through load_dataset
@pytest.fixture
def served_dataset(server, temp_register, data_dirs):
    def _register(sha256: str) -> str:
        temp_register(
            DatasetInfo(
                id="served-medium-v2", source="d4rl", env_id=None, ref_min_score=0.0, ref_max_score=1.0,
                obs_dim=2, act_dim=1, url=f"{server}/tiny.hdf5", size=len(HDF5), sha256=sha256,
            )
        )
        return "served-medium-v2"

    return _register


def test_load_dataset_downloads_when_absent(served_dataset, data_dirs):
    dataset_id = served_dataset(hashlib.sha256(HDF5).hexdigest())
    assert not is_present(dataset_id)
    with pytest.raises(OffrlError, match="downloading is disabled"):
        load_dataset(dataset_id, download=False)
    ds = load_dataset(dataset_id)
    assert is_present(dataset_id)
    assert sorted(p.name for p in data_dirs.d4rl.iterdir()) == ["tiny.hdf5"]
    assert len(ds) == 5 and ds.terminals.tolist() == [0, 0, 1, 0, 0]


def test_load_dataset_rejects_bad_checksum(served_dataset, data_dirs):
    dataset_id = served_dataset("0" * 64)
    with pytest.raises(OffrlError, match="sha256 mismatch"):
        load_dataset(dataset_id)
    assert list(data_dirs.d4rl.iterdir()) == []
