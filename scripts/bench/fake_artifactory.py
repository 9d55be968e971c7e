#!/usr/bin/env python3
"""A streaming fake Artifactory for scripts/bench-publish.sh (stdlib only).

- PUT with `X-Checksum-Deploy: true`: 404 (the fake never knows the bytes).
- PUT /artifactory/{repo}/{path}[;k=v...]: reads the body in 1 MiB chunks,
  hashing md5/sha1/sha256 and discarding the bytes, then answers 201 with
  Artifactory's ItemCreated JSON (checksums the client verifies).
- PUT /artifactory/api/storage/...?properties=...: 204.
- Anything else: 404 in Artifactory's error shape.

With --trust-headers the body is not hashed; the X-Checksum-* request headers
are echoed instead (measures the client without the fake's hashing cost).

Usage: fake_artifactory.py [--port N] [--trust-headers]; prints `PORT <n>` once listening.
"""
import argparse
import hashlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

CHUNK = 1 << 20
TRUST_HEADERS = False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def reply(self, status, body=b"", ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def error(self, status, message):
        self.reply(status, json.dumps({"errors": [{"status": status, "message": message}]}).encode())

    def body_chunks(self):
        """Yields the request body in chunks of at most 1 MiB (Content-Length or chunked)."""
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                while size:
                    n = self.rfile.readinto(view[: min(size, CHUNK)])
                    if not n:
                        raise ConnectionError("body ended early")
                    size -= n
                    yield view[:n]
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                n = self.rfile.readinto(view[: min(left, CHUNK)])
                if not n:
                    raise ConnectionError("body ended early")
                left -= n
                yield view[:n]

    def do_PUT(self):
        raw = self.path
        path, _, _query = raw.partition("?")
        if not path.startswith("/artifactory/"):
            for _ in self.body_chunks():
                pass
            return self.error(404, "Not found")
        rest = path[len("/artifactory/"):]
        if rest.startswith("api/storage/"):
            for _ in self.body_chunks():
                pass
            return self.reply(204)
        item = unquote(rest.split(";")[0])
        repo, _, ipath = item.partition("/")
        if self.headers.get("X-Checksum-Deploy", "").lower() == "true":
            for _ in self.body_chunks():
                pass
            return self.error(404, "Checksum deploy failed: no binary with these checksums was found")
        md5, sha1, sha256 = hashlib.md5(), hashlib.sha1(), hashlib.sha256()
        size = 0
        for chunk in self.body_chunks():
            size += len(chunk)
            if not TRUST_HEADERS:
                md5.update(chunk)
                sha1.update(chunk)
                sha256.update(chunk)
        if TRUST_HEADERS:
            sums = {
                "sha1": self.headers.get("X-Checksum-Sha1", ""),
                "md5": self.headers.get("X-Checksum-Md5", ""),
                "sha256": self.headers.get("X-Checksum-Sha256", ""),
            }
        else:
            sums = {"sha1": sha1.hexdigest(), "md5": md5.hexdigest(), "sha256": sha256.hexdigest()}
        host = self.headers.get("Host", "127.0.0.1")
        uri = f"http://{host}/artifactory/{repo}/{ipath}"
        body = {
            "repo": repo,
            "path": "/" + ipath,
            "created": "2026-11-20T10:00:00.000Z",
            "createdBy": "bench",
            "downloadUri": uri,
            "mimeType": "application/octet-stream",
            "size": str(size),
            "checksums": sums,
            "originalChecksums": sums,
            "uri": uri,
        }
        self.reply(201, json.dumps(body).encode(),
                   "application/vnd.org.jfrog.artifactory.storage.ItemCreated+json")

    def do_GET(self):
        self.error(404, "Not found")

    do_DELETE = do_GET
    do_POST = do_GET


def main():
    global TRUST_HEADERS
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--trust-headers", action="store_true")
    a = ap.parse_args()
    TRUST_HEADERS = a.trust_headers
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    print(f"PORT {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
