"""Prompts: the offline generator, the 22 viewpoint phrases, and the OpenAI-compatible path against a
local server that speaks the chat-completions protocol on 127.0.0.1."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hoi_factory.config import ConfigError, Settings, validate_run_config
from hoi_factory.context import StageContext
from hoi_factory.pipeline import PlanError
from tasks.chorus.prompts import VIEWPOINT_SUFFIXES, LLMConfig, LLMError, PromptsConfig, PromptsPipeline, llm_prompts


def test_viewpoint_phrases_are_the_papers_22():
    assert len(VIEWPOINT_SUFFIXES) == 22 and VIEWPOINT_SUFFIXES[0] == ""
    assert ", photo taken close to hand" in VIEWPOINT_SUFFIXES and ", face only" == VIEWPOINT_SUFFIXES[-1]


def test_offline_plan_is_deterministic_and_complete():
    config = PromptsConfig(categories=["cup", "bicycle"])
    context = StageContext(Settings())
    items = PromptsPipeline().plan(config, context)
    assert items == PromptsPipeline().plan(config, context)
    for category in ("cup", "bicycle"):
        bases = {i["base_prompt"] for i in items if i["category"] == category}
        assert 3 <= len(bases) <= 20  # the paper's random M
        assert all(category in b for b in bases)
        assert sum(i["category"] == category for i in items) == 22 * len(bases)
    cup_verbs = {i["base_prompt"].split(" a cup")[0].split()[-1] for i in items if i["category"] == "cup"}
    assert {"holding", "from"} <= cup_verbs  # every lexicon interaction is used


def test_unknown_categories_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"'cupp' \(did you mean 'cup'"):
        validate_run_config(PromptsConfig, {"categories": ["cup", "cupp"]})


class FakeLLM(BaseHTTPRequestHandler):
    answers: list = []
    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeLLM.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        status, content = FakeLLM.answers.pop(0) if FakeLLM.answers else (500, "")
        payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": content}}]}
        message = f"bad credentials {self.headers.get('Authorization')}" if content == "ECHO" else "overloaded"
        data = json.dumps(payload if status == 200 else {"error": {"message": message}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_llm():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeLLM.answers, FakeLLM.requests = [], []
    yield LLMConfig(base_url=f"http://127.0.0.1:{server.server_port}/v1", model="tiny", backoff_seconds=0.01)
    server.shutdown()


def test_llm_prompts_retry_until_exactly_m_lines(fake_llm):
    FakeLLM.answers = [(500, ""), (200, "1. a man holds a cup\n2. a woman holds a cup"),
                       (200, "1. a man holding a cup\n2. a woman drinking from a cup\n3. a boy washing a cup")]
    prompts = llm_prompts("cup", 3, fake_llm, api_key="sk-test-key")
    assert prompts == ["a man holding a cup", "a woman drinking from a cup", "a boy washing a cup"]
    assert len(FakeLLM.requests) == 3
    request = FakeLLM.requests[-1]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test-key"
    assert request["body"]["temperature"] == 1.0 and request["body"]["model"] == "tiny"
    assert "3 simple prompts" in request["body"]["messages"][0]["content"]


def test_llm_failure_ends_in_a_clear_error(fake_llm):
    with pytest.raises(LLMError, match=r"127\.0\.0\.1.*'tiny'.*'cup' after 5 attempts"):
        llm_prompts("cup", 3, fake_llm)
    assert len(FakeLLM.requests) == 5


def test_llm_generator_through_the_pipeline_plan(fake_llm):
    FakeLLM.answers = [(200, "a man holding a hat\na girl wearing a hat")]
    config = PromptsConfig(categories=["hat"], generator="llm", prompts_per_category=2, llm=fake_llm)
    items = PromptsPipeline().plan(config, StageContext(Settings(llm_api_key="sk-from-the-settings")))
    assert FakeLLM.requests[0]["auth"] == "Bearer sk-from-the-settings"  # the run's settings, not the environment
    assert [i["prompt"] for i in items[:2]] == ["a man holding a hat", "a man holding a hat, side view"]
    assert len(items) == 44 and {i["generator"] for i in items} == {"llm"}


def test_the_llm_key_comes_from_the_runs_settings_not_another_variable(fake_llm):
    config = PromptsConfig(categories=["hat"], generator="llm", prompts_per_category=2,
                           llm=fake_llm.model_copy(update={"api_key_env": "OPENAI_API_KEY"}))
    with pytest.raises(PlanError, match="HOI_LLM_API_KEY"):
        PromptsPipeline().plan(config, StageContext(Settings()))
    assert FakeLLM.requests == []  # refused before asking


def test_an_endpoint_echoing_the_key_does_not_leak_it(fake_llm):
    """A 401 whose body quotes the request's Authorization header: the error keeps the reason, not the key."""
    FakeLLM.answers = [(401, "ECHO")] * 5
    with pytest.raises(LLMError) as failure:
        llm_prompts("cup", 3, fake_llm.model_copy(update={"max_attempts": 1}), api_key="sk-live-0123456789")
    assert "bad credentials" in str(failure.value) and "0123456789" not in str(failure.value)
    assert FakeLLM.requests[0]["auth"] == "Bearer sk-live-0123456789"  # it was sent, and echoed
