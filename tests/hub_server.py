"""A loopback server speaking the parts of the Hugging Face Hub API that an upload uses.

No real Hub is reachable here, so push tests point HF_ENDPOINT at this server: it answers repo
creation, the card-metadata check, the pre-upload check (asking for every file inline, "regular" mode) and the commit, and
records the requests and the files it received.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RecordingHub:
    """Start with `with RecordingHub() as hub:`; `hub.url` is the endpoint."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.repos: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                hub.requests.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
                self._reply(404, {"error": f"not served by the recording hub: GET {self.path}"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                hub.requests.append({"method": "POST", "path": self.path, "auth": self.headers.get("Authorization"), "body": raw})
                if self.path == "/api/repos/create":
                    spec = json.loads(raw)
                    hub.repos.append(spec)
                    name = f"{spec.get('organization')}/{spec['name']}" if spec.get("organization") else spec["name"]
                    return self._reply(200, {"url": f"{hub.url}/{name}", "name": name})
                if self.path == "/api/validate-yaml":  # the Hub checks the model card's metadata header
                    return self._reply(200, {"errors": [], "warnings": []})
                if re.fullmatch(r"/api/models/[^/]+/[^/]+/preupload/[^/]+", self.path):
                    files = json.loads(raw)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
                commit = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/[^/]+", self.path)
                if commit:
                    for line in raw.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    oid = "0" * 40
                    return self._reply(200, {"commitUrl": f"{hub.url}/{commit.group(1)}/commit/{oid}", "commitOid": oid})
                self._reply(404, {"error": f"not served by the recording hub: POST {self.path}"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "RecordingHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
