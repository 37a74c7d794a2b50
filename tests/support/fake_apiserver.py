"""A stand-in Kubernetes API server for running the real `sluice-vpa` binary in a test.

No API server can be installed on these machines. This one serves what the operator asks for at
start and in a reconcile, from fixtures, over real HTTP: lists (one StreamPipeline, no
Deployments), watches (held open, then closed: the watcher re-watches), GETs (the placement
ConfigMap, else 404), server-side applies (echoed back), the status subresource, events. Every
request is appended to a JSON-lines log for the test to read.

usage: fake_apiserver.py PORT_FILE LOG_FILE FIXTURES_JSON
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PORT_FILE, LOG_FILE, FIXTURES = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
LOCK = threading.Lock()


def not_found(path):
    return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                 "reason": "NotFound", "code": 404, "message": f"{path} not found"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self, body):
        url = urlparse(self.path)
        entry = {"method": self.command, "path": url.path, "query": parse_qs(url.query),
                 "content_type": self.headers.get("content-type"), "body": body}
        with LOCK, open(LOG_FILE, "a") as log:
            log.write(json.dumps(entry) + "\n")
        return url

    def reply(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def do_GET(self):
        url = self.record(None)
        query = parse_qs(url.query)
        if query.get("watch") == ["true"]:
            # Nothing changes: hold the watch a moment, then end it (an empty event stream).
            time.sleep(2)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if url.path in ("/apis/sluice.dev/v1alpha1/streampipelines",
                        "/apis/sluice.dev/v1alpha1/namespaces/pipelines/streampipelines"):
            return self.reply(200, {"apiVersion": "sluice.dev/v1alpha1", "kind": "StreamPipelineList",
                                    "metadata": {"resourceVersion": "100"},
                                    "items": [FIXTURES["pipeline"]]})
        if url.path in ("/apis/apps/v1/deployments", "/apis/apps/v1/namespaces/pipelines/deployments"):
            return self.reply(200, {"apiVersion": "apps/v1", "kind": "DeploymentList",
                                    "metadata": {"resourceVersion": "100"}, "items": []})
        if url.path == "/api/v1/namespaces/sluice-system/configmaps/sluice-placement":
            return self.reply(200, FIXTURES["placement"])
        return self.reply(*not_found(url.path))

    def do_PATCH(self):
        body = self.body()
        url = self.record(body)
        if url.path.endswith("/status"):
            pipeline = dict(FIXTURES["pipeline"])
            pipeline["status"] = body.get("status")
            return self.reply(200, pipeline)
        return self.reply(200, body)

    def do_POST(self):
        body = self.body()
        self.record(body)
        return self.reply(201, body)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
