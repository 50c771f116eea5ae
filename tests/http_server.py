"""A real HTTP server on 127.0.0.1 for download tests: routes, hit counts, truncation."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    truncate_to: int | None = None  # send only this many bytes while announcing the full length
    rate: int | None = None  # bytes per second, for a download slow enough to be interrupted
    hits: int = 0


@dataclass
class Server:
    routes: dict[str, Route] = field(default_factory=dict)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes = b"", **kwargs) -> Route:
        self.routes[path] = Route(body, **kwargs)
        return self.routes[path]


def start() -> tuple[Server, ThreadingHTTPServer]:
    server = Server()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            route = server.routes.get(self.path.split("?")[0]) or server.routes.get(self.path)
            if route is None:
                self.send_error(404, "Not Found")
                return
            route.hits += 1
            self.send_response(route.status)
            self.send_header("Content-Length", str(len(route.body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            body = route.body if route.truncate_to is None else route.body[: route.truncate_to]
            if route.rate is None:
                self.wfile.write(body)
            else:
                step = max(route.rate // 20, 1)
                try:
                    for start in range(0, len(body), step):
                        self.wfile.write(body[start : start + step])
                        time.sleep(step / route.rate)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client was killed mid-transfer

            if route.truncate_to is not None:
                self.wfile.flush()
                self.close_connection = True

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return server, httpd
