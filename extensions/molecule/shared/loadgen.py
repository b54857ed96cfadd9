"""Steady API traffic (through a load balancer or one host's nginx) while a test changes the fleet.

Every worker sends chat completions (streaming and not, in turn), back to back or `pause` seconds
apart, and records each outcome; a request counts as failed unless it gets HTTP 200 and a complete
answer (choices for a plain answer, a final `data: [DONE]` for a stream).
"""

from __future__ import annotations

import collections
import hashlib
import json
import ssl
import threading
import time
import urllib.error
import urllib.request


class LoadGenerator:
    def __init__(self, base_url, api_key, model, workers=4, max_tokens=8, pause=0.0, vary=False):
        self.base_url = base_url
        self.api_key = api_key
        self.model = model
        self.workers = workers
        self.max_tokens = max_tokens
        self.pause = pause
        # vary: every request's prompt starts differently (a routing key of its own at the edge, no shared prefix).
        self.vary = vary
        self.sent = 0
        self.context = ssl.create_default_context()
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE  # the load balancer's self-signed certificate
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []
        self.backends = collections.Counter()
        self.threads = []
        self.started = self.stopped = 0.0

    def prompt(self):
        if not self.vary:
            return "Count to three."
        with self.lock:
            self.sent += 1
            sent = self.sent
        # Mostly its own tokens: a prompt sharing little more than the chat template with the others.
        words = " ".join(hashlib.sha256(b"%d-%d" % (sent, i)).hexdigest()[:8] for i in range(24))
        return "Request %d: %s. Count to three." % (sent, words)

    def request(self, stream):
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompt()}],
            "max_tokens": self.max_tokens,
            "stream": stream,
        }
        req = urllib.request.Request(
            self.base_url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer " + self.api_key},
        )
        with urllib.request.urlopen(req, context=self.context, timeout=120) as answer:
            backend = answer.headers.get("X-Gpufleet-Backend", "?")
            payload = answer.read().decode()
            if stream:
                complete = payload.rstrip().endswith("data: [DONE]")
            else:
                complete = bool(json.loads(payload).get("choices"))
            return answer.status, complete, backend, payload

    def worker(self, index):
        stream = bool(index % 2)
        while not self.stop_event.wait(self.pause):
            started = time.monotonic()
            try:
                status, complete, backend, payload = self.request(stream)
                outcome = None if status == 200 and complete else "HTTP %s incomplete: %s" % (status, payload[-200:])
            except urllib.error.HTTPError as error:
                backend = error.headers.get("X-Gpufleet-Backend", "?")
                outcome = "HTTP %s: %s" % (error.code, error.read()[:200])
            except Exception as error:  # noqa: BLE001 - every kind of failure is counted
                backend, outcome = "?", "%s: %s" % (type(error).__name__, error)
            with self.lock:
                self.backends[backend] += 1
                if outcome is None:
                    self.ok += 1
                else:
                    self.failures.append("%.1fs stream=%s %s" % (started - self.started, stream, outcome))
            stream = not stream

    def start(self):
        self.started = time.monotonic()
        for index in range(self.workers):
            thread = threading.Thread(target=self.worker, args=(index,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self):
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=180)
        self.stopped = time.monotonic()

    def report(self, what="load through the load balancer"):
        seconds = self.stopped - self.started
        return (
            "%s: %d requests in %.0f s (%.1f/s), %d failed; by backend: %s%s"
            % (
                what,
                self.ok + len(self.failures),
                seconds,
                (self.ok + len(self.failures)) / max(seconds, 1e-9),
                len(self.failures),
                dict(self.backends),
                "".join("\n  " + failure for failure in self.failures[:20]),
            )
        )
