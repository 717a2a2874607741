#!/usr/bin/env python3
"""The small local tool `make run` serves: `POST /tools/word_count` with
`{"text": "..."}` answers `{"words": N, "characters": M, "lines": L}`.

No network beyond 127.0.0.1, no dependencies beyond the standard library.
It logs each call's Idempotency-Key, so a repeated call is visible.

Usage: scripts/demo-tool.py [PORT]   (default 8082)
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        if self.path != "/tools/word_count":
            return self.answer(404, {"error": "unknown tool"})
        length = int(self.headers.get("Content-Length") or 0)
        try:
            args = json.loads(self.rfile.read(length) or b"{}")
            text = args["text"]
            if not isinstance(text, str):
                raise TypeError("text must be a string")
        except (ValueError, KeyError, TypeError) as e:
            return self.answer(400, {"error": f"bad arguments: {e}"})
        self.answer(200, {
            "words": len(text.split()),
            "characters": len(text),
            "lines": len(text.splitlines()) or 1,
        })

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        key = self.headers.get("Idempotency-Key", "-") if self.headers else "-"
        sys.stderr.write("[demo-tool] %s key=%s\n" % (fmt % args, key))


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8082
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
