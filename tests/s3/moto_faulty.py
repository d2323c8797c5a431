#!/usr/bin/env python3
# Written for this project (tests/s3.rs); serves moto's own app unchanged.
"""moto S3 server with a fault-injection switch (test helper, loopback only).

Usage:  python moto_faulty.py [-H 127.0.0.1] [-p PORT]

Everything is served by moto exactly as `moto_server` does, except requests
while a fault is armed. Control endpoint (not S3):

  POST   /__fault__?status=503&count=3            next 3 matching requests -> 503 SlowDown
  POST   /__fault__?status=500&seconds=2.5        all matching requests for 2.5 s -> 500 InternalError
  POST   /__fault__?status=503&count=2&method=PUT&prefix=/bucket/tenant=a/
                                                   only PUTs whose path starts with prefix
  POST   /__fault__?delay=3&count=1                  next request sleeps 3 s, then is served normally
  GET    /__fault__                               current state + number of faults served (JSON)
  DELETE /__fault__                               disarm

count and seconds may be combined (both must still hold); neither = until DELETE.
"""
import argparse
import io
import os
import json
import threading
import time
from urllib.parse import parse_qs

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

CODES = {500: "InternalError", 503: "SlowDown", 502: "BadGateway", 504: "GatewayTimeout",
         429: "SlowDown", 400: "BadRequest", 403: "AccessDenied"}


class FaultMiddleware:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.fault = None  # dict
        self.served = 0

    def _control(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        q = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        with self.lock:
            if method == "POST":
                f = {
                    "status": int(q["status"]) if "status" in q else None,
                    "delay": float(q.get("delay", 0)),
                    "count": int(q["count"]) if "count" in q else None,
                    "until": time.monotonic() + float(q["seconds"]) if "seconds" in q else None,
                    "method": q.get("method"),
                    "prefix": q.get("prefix", ""),
                }
                self.fault = f
                self.served = 0
            elif method == "DELETE":
                self.fault = None
            state = {"armed": self._active_locked(), "fault": self.fault, "served": self.served}
        body = json.dumps(state, default=str).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    def _active_locked(self):
        f = self.fault
        if f is None:
            return False
        if f["count"] is not None and f["count"] <= 0:
            return False
        if f["until"] is not None and time.monotonic() > f["until"]:
            return False
        return True

    def _take(self, environ):
        with self.lock:
            if not self._active_locked():
                return None
            f = self.fault
            if f["method"] and environ["REQUEST_METHOD"] != f["method"].upper():
                return None
            if not environ.get("PATH_INFO", "").startswith(f["prefix"]):
                return None
            if f["count"] is not None:
                f["count"] -= 1
            self.served += 1
            return dict(f)

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/__fault__":
            return self._control(environ, start_response)
        # An unsigned STS call (AssumeRoleWithWebIdentity) is recognised by
        # moto from its form body; object_store sends the parameters in the
        # query of an empty POST: hand them to moto as the form body.
        qs = environ.get("QUERY_STRING", "")
        if "Action=AssumeRoleWithWebIdentity" in qs and not int(environ.get("CONTENT_LENGTH") or 0):
            body = qs.encode()
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
            environ["QUERY_STRING"] = ""
        f = self._take(environ)
        if f is None:
            return self.app(environ, start_response)
        if f["delay"]:
            time.sleep(f["delay"])
        if f["status"] is None:  # delay only
            return self.app(environ, start_response)
        # Drain the request body so the client sees a clean response.
        length = int(environ.get("CONTENT_LENGTH") or 0)
        stream = environ["wsgi.input"]
        while length > 0:
            chunk = stream.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)
        code = f["status"]
        err = CODES.get(code, "InternalError")
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{err}</Code>'
                f'<Message>injected fault</Message><RequestId>fault</RequestId></Error>').encode()
        from http import HTTPStatus
        start_response(f"{code} {HTTPStatus(code).phrase}",
                       [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body] if environ["REQUEST_METHOD"] != "HEAD" else [b""]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-H", "--host", default="127.0.0.1")
    ap.add_argument("-p", "--port", type=int, default=5000)
    a = ap.parse_args()
    os.environ.setdefault("MOTO_PORT", str(a.port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(a.host, a.port, FaultMiddleware(app), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
