"""POST /classify with ``messages``: the profile's judged turn is what the backend reads (with the earlier
turns as context), bad conversations are 422s naming the problem and the fix, scores never reach a
``classify`` caller, and escalations carry the conversation (or its hash when redacted)."""

from __future__ import annotations

import hashlib
import json

import pytest

from guardcal.core.conversation import Conversation
from guardcal.serve import create_app

pytestmark = pytest.mark.anyio

PROMPT_RESPONSE = [
    {"role": "user", "content": "How do I pick a lock?"},
    {"role": "assistant", "content": "I will hurt you"},
]


def judged_table(kit):
    """Scores a conversation by its judged (last) turn's text, a plain text by itself; records what it saw."""
    seen: list = []

    def handler(items):
        seen.extend(items)
        texts = [i.text if isinstance(i, Conversation) else i for i in items]
        return kit.table_handler()(texts)

    return handler, seen


async def test_the_assistant_turn_is_judged_with_the_prompt_as_context(kit, make_settings):
    handler, seen = judged_table(kit)
    hook = kit.RecordingHook()
    app = create_app(make_settings(escalate_below=0.99), kit.backend(handler), hooks=[hook])
    async with kit.running(app) as client:
        r = await client.post("/classify", json={"messages": PROMPT_RESPONSE})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == "unsafe"  # "I will hurt you" scores 0.97: the assistant turn decided
        assert set(body) == {"id", "label", "action", "model_version", "policy_version"}  # no score
        conv = seen[-1]
        assert isinstance(conv, Conversation) and conv.judged.role == "assistant"
        assert conv.to_messages() == PROMPT_RESPONSE
        await kit.wait_for(lambda: hook.payloads)
    payload = hook.payloads[0]
    assert payload["messages"] == PROMPT_RESPONSE and payload["judged_role"] == "assistant"
    assert "input" not in payload


async def test_redacted_escalations_carry_the_conversation_hash(kit, make_settings):
    handler, _ = judged_table(kit)
    hook = kit.RecordingHook()
    app = create_app(make_settings(escalate_below=0.99, redact_input=True), kit.backend(handler), hooks=[hook])
    async with kit.running(app) as client:
        assert (await client.post("/classify", json={"messages": PROMPT_RESPONSE})).status_code == 200
        await kit.wait_for(lambda: hook.payloads)
    payload = hook.payloads[0]
    blob = json.dumps(PROMPT_RESPONSE, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert payload["messages_sha256"] == hashlib.sha256(blob.encode()).hexdigest()
    assert "messages" not in payload and "I will hurt you" not in json.dumps(payload)


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"messages": [{"role": "system", "content": "x"}]}, "'user' and 'assistant' turns only"),
        ({"messages": [{"role": "user", "content": "hi"}], "input": "hi"}, "got input and messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "name"),
        ({"messages": [{"role": "user", "content": "x" * 20_001}]}, "limit is 20000"),
    ],
)
async def test_bad_conversations_are_refused_with_the_fix(kit, make_settings, body, phrase):
    handler, seen = judged_table(kit)
    app = create_app(make_settings(), kit.backend(handler))
    async with kit.running(app) as client:
        r = await client.post("/classify", json=body)
    assert r.status_code in (413, 422), r.text
    assert phrase in r.json()["error"]["message"]
    assert not [s for s in seen if isinstance(s, Conversation)]  # nothing was scored


async def test_a_profile_judging_assistant_turns_refuses_a_prompt_only_conversation(kit, make_settings, tmp_path):
    import yaml

    from guardcal.core.profiles import PROMPTS_DIR

    data = yaml.safe_load((PROMPTS_DIR / "default.yaml").read_text())
    data["name"] = "responses"
    data["conversation"]["judge"] = "assistant"
    path = tmp_path / "responses.yaml"
    path.write_text(yaml.safe_dump(data))
    handler, _ = judged_table(kit)
    app = create_app(make_settings(prompt=str(path)), kit.backend(handler))
    async with kit.running(app) as client:
        r = await client.post("/classify", json={"messages": PROMPT_RESPONSE[:1]})
        assert r.status_code == 422 and "no 'assistant' turn" in r.json()["error"]["message"]
        ok = await client.post("/classify", json={"messages": [*PROMPT_RESPONSE, {"role": "user", "content": "hm"}]})
        assert ok.status_code == 200 and ok.json()["label"] == "unsafe"  # the last assistant turn decided


def test_a_bad_prompt_profile_is_refused_before_the_model_loads(make_settings, tmp_path):
    from guardcal.errors import ConfigError
    from guardcal.serve.settings import ServeSettings

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninstruction: y\nlabels: {safe: Yes, unsafe: No}\ntemplate: '{input}'\n")
    with pytest.raises(ConfigError, match="prompt: .*quote the word"):
        ServeSettings.load(None, bundle="none", escalate_below=0.9, prompt=str(bad))
    with pytest.raises(ConfigError, match="shipped calibration bundle was fitted with the default prompt profile"):
        ServeSettings.load(None, prompt="llama-guard-3")
