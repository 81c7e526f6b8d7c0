"""A real HTTP server on 127.0.0.1 playing an OpenAI-compatible chat-completions judge, for tests.

`FakeJudgeServer(handler)` runs `http.server` in a thread on a free port. `handler(body, index)`
gets the decoded request JSON and the 0-based arrival index and returns a `Reply`. The server
records every request (body and headers) and the largest number of requests in flight at once.
"""
from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from typing import Any, Callable


@dataclasses.dataclass
class Reply:
  status: int = 200
  body: bytes = b""
  headers: dict[str, str] = dataclasses.field(default_factory=dict)
  delay_s: float = 0.0  # sleep before answering (concurrency, timeouts)


def chat_reply(*contents: str, delay_s: float = 0.0) -> Reply:
  """A well-formed chat-completions answer with one choice per content string."""
  choices = [{"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
             for i, c in enumerate(contents)]
  return Reply(200, json.dumps({"id": "x", "object": "chat.completion", "choices": choices}).encode(),
               {"Content-Type": "application/json"}, delay_s)


class FakeJudgeServer:
  def __init__(self, handler: Callable[[dict[str, Any], int], Reply]):
    self.handler = handler
    self.requests: list[dict[str, Any]] = []
    self.headers: list[dict[str, str]] = []
    self.max_in_flight = 0
    self._in_flight = 0
    self._lock = threading.Lock()
    owner = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_POST(self):
        with owner._lock:
          owner._in_flight += 1
          owner.max_in_flight = max(owner.max_in_flight, owner._in_flight)
          index = len(owner.requests)
          body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
          owner.requests.append(body)
          owner.headers.append(dict(self.headers))
        try:
          reply = owner.handler(body, index)
          time.sleep(reply.delay_s)
          self.send_response(reply.status)
          for k, v in reply.headers.items():
            self.send_header(k, v)
          self.send_header("Content-Length", str(len(reply.body)))
          self.end_headers()
          self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
          pass
        finally:
          with owner._lock:
            owner._in_flight -= 1

      def log_message(self, *args):  # keep test output quiet
        pass

    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._server.daemon_threads = True
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  @property
  def base_url(self) -> str:
    return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

  def __enter__(self) -> "FakeJudgeServer":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._server.shutdown()
    self._server.server_close()
