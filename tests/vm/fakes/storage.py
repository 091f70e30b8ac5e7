"""Fake Cloud Storage upload and Cloud Monitoring timeSeries endpoints for the VM sandbox (vm/convex-export.sh).

Copied from Google's documentation:
- Resumable upload (https://cloud.google.com/storage/docs/performing-resumable-uploads, JSON API):
  POST /upload/storage/v1/b/<bucket>/o?uploadType=resumable with the object's JSON metadata answers 200 and
  a `Location` (the session URI); PUT of the bytes to it answers 200/201 with the object resource.
- Preconditions (https://cloud.google.com/storage/docs/request-preconditions): ifGenerationMatch=0 fails with
  412 when a live object of that name exists.
- Overwrite needs delete (https://cloud.google.com/storage/docs/access-control/iam-permissions: "to replace
  existing objects, both storage.objects.create and storage.objects.delete permissions are required"): the
  writer here holds storage.objects.create only (components/exports.py), so a replacement answers 403.
- Hashes (https://cloud.google.com/storage/docs/data-validation): an md5Hash given in the metadata that does
  not match the bytes fails the upload with 400 and no object is created.
- timeSeries.create (https://cloud.google.com/monitoring/api/ref_v3/rest/v3/projects.timeSeries/create):
  POST /v3/projects/<project>/timeSeries {"timeSeries": [...]} answers 200 with an empty body.
Every call needs a bearer token the metadata server issued (Tokens, shared with fakes/google.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from urllib.parse import parse_qs, urlsplit

from tests.fakes.serving import JsonHandler, LoopbackFake


class GoogleStorageServer(LoopbackFake):
    def __init__(self, tokens) -> None:
        self.tokens = tokens
        self.objects: dict[tuple[str, str], dict] = {}  # (bucket, name) -> {"data", "resource"}
        self.sessions: dict[str, dict] = {}
        self.series: list[dict] = []  # timeSeries written
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._listen(self._handler())

    def _handler(self):
        fake = self

        class Handler(JsonHandler):
            def _error(self, status: int, message: str) -> None:
                self._send(status, {"error": {"code": status, "message": message}})

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _accept(self, method: str):
                """The request's path, query and body, recorded; None (answered 401) without a valid token."""
                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                body = self._body()
                fake.requests.append((method, url.path))
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Bearer ") and fake.tokens.valid(auth[len("Bearer "):]):
                    return url, q, body
                self._error(401, "Invalid Credentials")
                return None

            def do_POST(self):  # noqa: N802
                accepted = self._accept("POST")
                if accepted is None:
                    return None
                url, q, body = accepted
                parts = url.path.split("/")
                if url.path.startswith("/v3/projects/") and url.path.endswith("/timeSeries"):
                    payload = json.loads(body)
                    with fake.lock:
                        fake.series.extend(payload["timeSeries"])
                    return self._send(200, "{}")
                if url.path.startswith("/upload/storage/v1/b/") and q.get("uploadType") == "resumable":
                    bucket = parts[5]
                    meta = json.loads(body)
                    with fake.lock:
                        exists = (bucket, meta["name"]) in fake.objects
                    if exists and q.get("ifGenerationMatch") == "0":
                        return self._error(412, "At least one of the pre-conditions you specified did not hold.")
                    if exists:
                        return self._error(403, "does not have storage.objects.delete access to the Google Cloud Storage object.")
                    sid = uuid.uuid4().hex
                    with fake.lock:
                        fake.sessions[sid] = {"bucket": bucket, "meta": meta, "length": self.headers.get("X-Upload-Content-Length")}
                    location = f"{fake.url}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&upload_id={sid}"
                    return self._send(200, b"", headers={"Location": location})
                return self._error(404, "Not Found")

            def do_PUT(self):  # noqa: N802
                accepted = self._accept("PUT")
                if accepted is None:
                    return None
                url, q, data = accepted
                with fake.lock:
                    session = fake.sessions.pop(q.get("upload_id", ""), None)
                if session is None:
                    return self._error(404, "No such upload session")
                meta = session["meta"]
                md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
                if meta.get("md5Hash") and meta["md5Hash"] != md5:
                    return self._error(400, f"Provided MD5 hash \"{meta['md5Hash']}\" doesn't match calculated MD5 hash \"{md5}\".")
                if session["length"] is not None and int(session["length"]) != len(data):
                    return self._error(400, "Upload size does not match X-Upload-Content-Length")
                resource = {**meta, "bucket": session["bucket"], "size": str(len(data)), "md5Hash": md5, "generation": "1"}
                with fake.lock:
                    fake.objects[(session["bucket"], meta["name"])] = {"data": data, "resource": resource}
                return self._send(200, resource)

        return Handler
