"""A network judge is paid once: `vlguard-jax judge` caches beside its `--out` by default, so judging the same
lines again sends no request; items that make the same request share one."""

import json

from judge_server import JudgeServer, completion
from vlguard_jax.cli import main
from vlguard_jax.evaluate.judges import Item, make_judge


def unsafe_when_bad(server, body):
    with server.lock:
        server.attempts[body["messages"][-1]["content"]] += 1
    return completion("unsafe\nS2" if "[bad]" in body["messages"][-1]["content"] else "safe")


def test_judge_twice_sends_no_request_the_second_time(tmp_path, capsys):
    lines = [{"id": str(i), "prompt": f"question {i}", "response": f"answer {i}" + (" [bad]" if i % 3 == 0 else "")}
             for i in range(6)]
    source, out = tmp_path / "in.jsonl", tmp_path / "judged.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with JudgeServer(unsafe_when_bad) as server:
        args = ["judge", "--judge", "openai", "--judge-url", server.url, "--judge-model", "guard", "--in", str(source),
                "--out", str(out)]
        assert main(args) == 0
        first = out.read_text()
        assert sum(server.attempts.values()) == len(server.attempts) == 6
        assert "requests=6 retries=0 cache_hits=0" in capsys.readouterr().out
        out.unlink()
        assert main(args) == 0
        assert "requests=0 retries=0 cache_hits=6" in capsys.readouterr().out
        assert sum(server.attempts.values()) == 6 and out.read_text() == first
    assert len(list((tmp_path / "judged.jsonl.judge_cache").iterdir())) == 6
    assert [json.loads(line)["unsafe"] for line in first.splitlines()] == [i % 3 == 0 for i in range(6)]


def test_items_that_make_the_same_request_share_it(tmp_path):
    items = [Item("q", "a", image=f"{i}.png") for i in range(5)] + [Item("q", "a [bad]")]  # the image is not sent
    with JudgeServer(unsafe_when_bad) as server:
        judge = make_judge("openai", base_url=server.url, model="guard", cache_dir=tmp_path / "cache")
        assert [j.unsafe for j in judge.judge(items)] == [False] * 5 + [True]
        assert sum(server.attempts.values()) == len(server.attempts) == 2
    assert judge.counters()["requests"] == 2 and len(list((tmp_path / "cache").iterdir())) == 2
