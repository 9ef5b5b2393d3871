"""The `openai` judge against a local chat-completions server that throttles, fails and stalls before answering:
every judgment arrives once and in order, retries are counted, odd replies are `unparseable`, and a re-run over
the same inputs is answered from the cache without a request."""

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vlguard_jax.cli import main
from vlguard_jax.evaluate.judges import Item, JudgeError, make_judge

FAST = {"timeout": 1.0, "backoff_base": 0.01, "backoff_max": 0.05}


class JudgeServer(ThreadingHTTPServer):
    """Replies from the response text in the request: `[429]`, `[500]` and `[slow]` fail their first attempt
    (`[slow]` by answering after the client's timeout); then `[bad]` → unsafe, `[junk]` → prose, else safe."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.attempts, self.lock = Counter(), threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):  # a stalled reply written after the client left
        pass


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions" and body["temperature"] == 0
        text = body["messages"][-1]["content"]
        agent = text.split("Agent: ", 1)[1].split("<END CONVERSATION>")[0]
        with self.server.lock:
            self.server.attempts[agent] += 1
            first = self.server.attempts[agent] == 1
        if first and "[429]" in agent:
            return self._send(429, {"error": "slow down"})
        if first and "[500]" in agent:
            return self._send(500, {"error": "oops"})
        if first and "[slow]" in agent:
            time.sleep(1.5)
        reply = "unsafe\nS2" if "[bad]" in agent else "I'd say it is fine." if "[junk]" in agent else "Safe"
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": reply}}],
                         "usage": {"prompt_tokens": 100, "completion_tokens": 3}})

    def _send(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    server = JudgeServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_every_judgment_once_in_order_through_failures_then_from_the_cache(server, tmp_path):
    markers = ["", "[bad]", "[429]", "[500] [bad]", "[slow]", "[junk]", "[429] [junk]", "[bad] [slow]"] * 3
    items = [Item(f"question {i}", f"answer {i} {m}") for i, m in enumerate(markers)]
    judge = make_judge("openai", base_url=server.url, model="guard", cache_dir=tmp_path / "cache",
                       max_concurrency=4, **FAST)
    judgments = judge.judge(items)
    expected = ["unsafe" if "[bad]" in m else "unparseable" if "[junk]" in m else "safe" for m in markers]
    assert [j.label for j in judgments] == expected
    assert [j.unsafe for j in judgments] == [{"safe": False, "unsafe": True}.get(e) for e in expected]
    assert judgments[1].raw == "unsafe\nS2" and all(j.refused is None for j in judgments)
    counts = judge.counters()
    failing = sum(any(f in m for f in ("[429]", "[500]", "[slow]")) for m in markers)
    assert counts["retries"] == failing > 0
    assert counts["requests"] == sum(server.attempts.values()) == len(items) + failing
    assert counts["unparseable"] == expected.count("unparseable") == 6
    assert counts["prompt_tokens"] == 100 * len(items) and counts["cache_hits"] == 0

    again = make_judge("openai", base_url=server.url, model="guard", cache_dir=tmp_path / "cache", **FAST)
    assert again.judge(items) == judgments
    assert again.counters()["requests"] == 0 and again.counters()["cache_hits"] == len(items)
    assert sum(server.attempts.values()) == len(items) + failing


def test_a_server_that_keeps_failing_raises_after_the_retries(server):
    judge = make_judge("openai", base_url=server.url, model="guard", max_retries=0, **FAST)
    with pytest.raises(JudgeError, match="no reply after 1 attempts; last: HTTP 500"):
        judge.judge([Item("q", "a [500]")])


def test_judge_command_with_an_openai_judge(server, tmp_path, capsys):
    lines = [{"id": "a", "prompt": "how?", "response": "Step 1 [bad]"}, {"id": "b", "prompt": "hi", "response": "Hi!"},
             {"id": "c", "prompt": "x", "response": "[junk]"}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ["judge", "--judge", "openai", "--judge-url", server.url, "--judge-model", "guard", "--rubric", "harmful",
            "--in", str(source), "--out", str(tmp_path / "out.jsonl"), "--judge-cache", str(tmp_path / "cache"),
            "--judge-concurrency", "2"]
    assert main(args) == 0
    judged = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(j["id"], j["unsafe"], j["judge_label"]) for j in judged] == [
        ("a", True, "unsafe"), ("b", False, "safe"), ("c", None, "unparseable")]
    assert "refusal" not in judged[0] and judged[1]["judge_raw"] == "Safe"
    assert ("judge=openai n=3 unsafe=50.00% (of 2 decided) skipped=0 requests=3 retries=0 cache_hits=0 "
            "prompt_tokens=300 completion_tokens=9 unparseable=1") in capsys.readouterr().out
    assert main(args) == 0
    assert "requests=0 retries=0 cache_hits=3 prompt_tokens=0" in capsys.readouterr().out
    assert main(["judge", "--judge", "openai", "--in", str(source), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "judge 'openai': missing a required argument: 'base_url'" in capsys.readouterr().err
