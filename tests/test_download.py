"""Downloads against a local HTTP server: cache, Range resume, checksums, http refusal, fast offline errors."""

from __future__ import annotations

import hashlib
import http.server
import logging
import socket
import threading
import time
from dataclasses import replace

import pytest

import bigtransfer as bt
from bigtransfer.errors import DownloadError
from bigtransfer.weights import download as dl


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if srv.cut_next.pop(self.path, False):  # promise everything, send half, hang up
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture()
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.cut_next, srv.honour_range = {}, [], {}, True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGTRANSFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BIGTRANSFER_TIMEOUT", "3")
    return tmp_path / "home"


def payload(n: int = 300_000, seed: int = 0) -> bytes:
    return bytes((i * 7919 + seed) % 251 for i in range(n))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_checks_sha256_and_lands_in_the_cache(server, home):
    data = payload()
    server.files["/w/BiT-X.npz"] = data
    digest = hashlib.sha256(data).hexdigest()
    path = dl.download(server.url + "/w/BiT-X.npz", dl.cache_path("https://h/w/BiT-X.npz"), digest,
                       allow_http=True, progress=False)
    assert path == home / "BiT-X.npz" and path.read_bytes() == data
    assert not (home / "BiT-X.npz.part").exists()
    assert dl.checksum_ok(digest, digest[:8]) and not dl.checksum_ok(digest, "deadbeef")


def test_existing_part_file_is_resumed_with_a_range_request(server, home):
    data = payload()
    server.files["/f.bin"] = data
    home.mkdir(parents=True)
    (home / "f.bin.part").write_bytes(data[:123_456])
    path = dl.download(server.url + "/f.bin", home / "f.bin", hashlib.sha256(data).hexdigest(),
                       allow_http=True, progress=False)
    assert path.read_bytes() == data
    assert server.requests == [("/f.bin", "bytes=123456-")]


def test_truncated_transfer_is_resumed_to_the_right_bytes(server, home):
    data = payload(seed=3)
    server.files["/t.bin"] = data
    server.cut_next["/t.bin"] = True
    path = dl.download(server.url + "/t.bin", home / "t.bin", hashlib.sha256(data).hexdigest(),
                       allow_http=True, progress=False)
    assert path.read_bytes() == data
    assert server.requests[0] == ("/t.bin", None)
    assert server.requests[1] == ("/t.bin", f"bytes={len(data) // 2}-")


def test_server_ignoring_range_starts_over_cleanly(server, home):
    data = payload(seed=5)
    server.files["/r.bin"] = data
    server.honour_range = False
    home.mkdir(parents=True)
    (home / "r.bin.part").write_bytes(b"stale bytes from another file")
    path = dl.download(server.url + "/r.bin", home / "r.bin", hashlib.sha256(data).hexdigest(),
                       allow_http=True, progress=False)
    assert path.read_bytes() == data


def test_checksum_mismatch_removes_the_file(server, home):
    server.files["/bad.ckpt"] = payload()
    with pytest.raises(DownloadError, match="checksum mismatch") as err:
        dl.download(server.url + "/bad.ckpt", home / "bad.ckpt", "0" * 64, allow_http=True, progress=False)
    assert "\n" not in str(err.value)
    assert not (home / "bad.ckpt").exists() and not (home / "bad.ckpt.part").exists()


def test_plain_http_is_refused_unless_allowed(server, home):
    server.files["/x.npz"] = b"x"
    with pytest.raises(DownloadError, match="refusing plain-http"):
        dl.download(server.url + "/x.npz", home / "x.npz")
    assert server.requests == []


def test_fetch_pretrained_downloads_once_then_uses_the_cache(server, home):
    data = payload(seed=9)
    server.files["/bit/BiT-Q.npz"] = data
    cfg = replace(bt.get_config("BiT-S-R50x1"), url=server.url + "/bit/BiT-Q.npz",
                  sha256=hashlib.sha256(data).hexdigest()[:8], hf_hub_id=None)
    first = dl.fetch_pretrained(cfg, allow_http=True, progress=False)
    second = dl.fetch_pretrained(cfg, allow_http=True, progress=False)
    assert first == second == home / "BiT-Q.npz" and first.read_bytes() == data
    assert len(server.requests) == 1


def test_offline_is_one_fast_line_naming_url_and_cache_path(home, monkeypatch):
    port = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    cfg = replace(bt.get_config("BiT-M-R50x1"), url=f"https://127.0.0.1:{port}/bit_models/BiT-M-R50x1.npz")
    start = time.perf_counter()
    with pytest.raises(DownloadError) as err:
        dl.fetch_pretrained(cfg, progress=False)
    elapsed = time.perf_counter() - start
    msg = str(err.value)
    assert elapsed < 5, elapsed
    assert "\n" not in msg
    assert cfg.url in msg and str(home / "BiT-M-R50x1.npz") in msg and cfg.hf_hub_id in msg
    assert not list(home.glob("*.part"))


def test_hf_hub_offline_flag_skips_the_hub_at_once(home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = replace(bt.get_config("BiT-M-R50x1"), url=f"https://127.0.0.1:{closed_port()}/BiT-M-R50x1.npz")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE"):
        dl.fetch_pretrained(cfg, progress=False)


def test_labels_download_cache_and_offline_notice(server, home, monkeypatch, caplog):
    server.files["/labels.txt"] = b"tench\ngoldfish\n\ngreat white shark\n"
    monkeypatch.setitem(dl.LABEL_URLS, "imagenet1k", server.url + "/labels.txt")
    monkeypatch.setattr(dl, "download", lambda url, dest, *a, **k: _allow_http_download(url, dest))
    assert dl.fetch_labels("imagenet1k") == ["tench", "goldfish", "great white shark"]
    assert dl.fetch_labels("cifar10")[:3] == ["airplane", "automobile", "bird"]
    monkeypatch.setitem(dl.LABEL_URLS, "imagenet21k", f"http://127.0.0.1:{closed_port()}/lemmas.txt")
    with caplog.at_level(logging.WARNING, logger="bigtransfer"):
        assert dl.fetch_labels("imagenet21k") is None
    assert any("showing class indices" in r.message for r in caplog.records)


_real_download = dl.download


def _allow_http_download(url, dest):
    return _real_download(url, dest, allow_http=True, progress=False)


def test_hub_is_the_fallback_when_the_url_fails(home, monkeypatch, tmp_path):
    import huggingface_hub

    hub_file = tmp_path / "model.safetensors"
    hub_file.write_bytes(b"weights")
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("cache_dir")))
        return str(hub_file)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(dl, "_hub_reachable", lambda: True)
    cfg = replace(bt.get_config("BiT-M-R50x1"), url=f"https://127.0.0.1:{closed_port()}/BiT-M-R50x1.npz")
    assert dl.fetch_pretrained(cfg, progress=False) == hub_file
    assert calls == [("timm/resnetv2_50x1_bit.goog_in21k", "model.safetensors", home / "huggingface")]


def test_a_complete_part_file_is_finished_without_refetching(server, home):
    data = payload(seed=11)
    server.files["/c.bin"] = data
    home.mkdir(parents=True)
    (home / "c.bin.part").write_bytes(data)  # an earlier run stopped after the last byte, before the rename
    path = dl.download(server.url + "/c.bin", home / "c.bin", hashlib.sha256(data).hexdigest(),
                       allow_http=True, progress=False)
    assert path.read_bytes() == data and server.requests == [("/c.bin", f"bytes={len(data)}-")]
