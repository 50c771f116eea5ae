"""A stand-in for Google Drive's download endpoints, on 127.0.0.1, reached the way Drive is.

gdown is given the production URL (https://drive.google.com/uc?id=ID). The process's HTTPS_PROXY
points at this server, which answers the CONNECT tunnel itself, with a certificate for Drive's
hosts signed by a throwaway CA that REQUESTS_CA_BUNDLE names. So gdown runs its real Drive code
(the "can't scan for viruses" confirmation form, the redirect to drive.usercontent.google.com,
Content-Disposition, the permission and quota pages) and nothing leaves the machine.

The pages follow what Drive serves (2026): only the parts gdown reads are kept, each element on
one line, as gdown parses the page line by line.
"""

from __future__ import annotations

import ssl
import subprocess
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DRIVE = "drive.google.com"
CONTENT = "drive.usercontent.google.com"
HOSTS = (DRIVE, CONTENT, "docs.google.com")

CONFIRM_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive can't scan this file for viruses.</p>
<p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id={id}">{name}</a> ({size})</span> is too large for Google to scan for viruses. Would you still like to download this file?</p>
<form id="download-form" action="https://drive.usercontent.google.com/download" method="get"><input type="submit" id="uc-download-link" value="Download anyway"/><input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="5b2a9c1e-0000-4000-8000-{id_tail}"></form>
</div></div></body></html>
"""
SIGN_IN_PAGE = """<!DOCTYPE html><html><head><title>Google Drive: Sign-in</title></head><body>
<div>You need access. Ask for access, or switch to an account with access.</div>
</body></html>
"""
QUOTA_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>
<div class="uc-main"><div id="uc-text"><p class="uc-error-caption">Sorry, you can't view or download this file at this time.</p>
<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please try accessing the file again later.</p>
</div></div></body></html>
"""


@dataclass
class DriveFile:
    name: str
    body: bytes
    access: str = "shared"  # shared | private | quota
    large: bool = True  # large files get the confirmation page; small ones a redirect
    hits: int = 0  # downloads of the body


@dataclass
class DriveStandIn:
    folder: Path
    files: dict[str, DriveFile] = field(default_factory=dict)
    port: int = 0
    tunnels: list[str] = field(default_factory=list)  # hosts asked for through CONNECT

    @property
    def ca(self) -> Path:
        return self.folder / "drive-ca.pem"

    def environment(self) -> dict[str, str]:
        """What a process needs to reach this server as Drive."""
        proxy = f"http://127.0.0.1:{self.port}"
        return {
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
            "REQUESTS_CA_BUNDLE": str(self.ca),
            "NO_PROXY": "",
            "no_proxy": "",
        }

    def share(self, file_id: str, name: str, body: bytes, **options) -> DriveFile:
        self.files[file_id] = DriveFile(name, body, **options)
        return self.files[file_id]


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A throwaway CA and a certificate for Drive's hosts that it signs (openssl)."""
    ca_key, ca, key, request, cert = (
        folder / name for name in ("ca.key", "drive-ca.pem", "drive.key", "drive.csr", "drive.pem")
    )
    run = lambda *args: subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)  # noqa: E731
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        "2",
        "-subj",
        "/CN=stand-in CA",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", f"/CN={DRIVE}")
    extensions = folder / "drive.ext"
    extensions.write_text("subjectAltName=" + ",".join(f"DNS:{host}" for host in HOSTS) + "\n")
    run("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
        "-extfile", extensions)  # fmt: skip
    return cert, key


def start(folder: Path) -> tuple[DriveStandIn, ThreadingHTTPServer]:
    folder.mkdir(parents=True, exist_ok=True)
    drive = DriveStandIn(folder)
    cert, key = _certificate(folder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_CONNECT(self) -> None:
            host = self.path.rsplit(":", 1)[0]
            drive.tunnels.append(host)
            if host not in HOSTS:
                self.send_error(403, "the stand-in only plays Google Drive")
                return
            self.send_response(200, "Connection Established")
            self.end_headers()
            self.wfile.flush()
            tls = context.wrap_socket(self.connection, server_side=True)
            self.connection = tls
            self.rfile = tls.makefile("rb")
            self.wfile = tls.makefile("wb", buffering=0)
            self.close_connection = False
            while not self.close_connection:
                self.handle_one_request()

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            host = (self.headers.get("Host") or "").split(":")[0]
            entry = drive.files.get(query.get("id", ""))
            if host == DRIVE and url.path == "/uc":
                if entry is None or entry.access == "private":
                    self._send(200, SIGN_IN_PAGE.encode(), "text/html; charset=utf-8")
                elif entry.access == "quota":
                    self._send(200, QUOTA_PAGE.encode(), "text/html; charset=utf-8")
                elif entry.large:
                    page = CONFIRM_PAGE.format(
                        id=query["id"], id_tail=query["id"][-12:].rjust(12, "0"), name=entry.name, size="3.5M"
                    )
                    self._send(200, page.encode(), "text/html; charset=utf-8")
                else:
                    target = f"https://{CONTENT}/download?id={query['id']}&export=download"
                    self._send(303, b"", "text/html", {"Location": target})
            elif host == CONTENT and url.path == "/download" and entry is not None and entry.access == "shared":
                if entry.large and query.get("confirm") != "t":
                    self._send(
                        200,
                        CONFIRM_PAGE.format(id=query["id"], id_tail="0" * 12, name=entry.name, size="3.5M").encode(),
                        "text/html",
                    )
                    return
                entry.hits += 1
                disposition = (
                    f"attachment; filename=\"{entry.name}\"; filename*=UTF-8''{urllib.parse.quote(entry.name)}"
                )
                self._send(200, entry.body, "application/octet-stream", {"Content-Disposition": disposition})
            else:
                self._send(404, b"Not Found", "text/plain")

        def _send(self, status: int, body: bytes, kind: str, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    drive.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return drive, httpd
