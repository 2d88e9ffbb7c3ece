"""Drives bestofn with the official OpenAI Python SDK and prints what it saw as JSON.

Usage: python3 chat_client.py BASE_URL
"""

import json
import sys

import openai
from openai import OpenAI


def main() -> None:
    client = OpenAI(base_url=sys.argv[1], api_key="sk-test", max_retries=0)
    out = {}

    raw = client.chat.completions.with_raw_response.create(
        model="fake-model",
        messages=[{"role": "user", "content": "What is 2+2?"}],
        seed=40,
        extra_body={"bestofn": {"n": 5, "return_candidates": True}},
    )
    completion = raw.parse()
    out["content"] = completion.choices[0].message.content
    out["finish_reason"] = completion.choices[0].finish_reason
    out["bestofn"] = (completion.model_extra or {}).get("bestofn")
    out["usage"] = completion.usage.model_dump() if completion.usage else None
    out["header_chosen"] = raw.headers.get("x-bestofn-chosen")

    top2 = client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "again"}],
        n=2,
        extra_headers={"x-bestofn-scorer": "tei"},
    )
    out["top2"] = [c.message.content for c in top2.choices]

    try:
        client.chat.completions.create(model="fake-model", messages=[])
        out["error"] = None
    except openai.BadRequestError as e:
        out["error"] = {"status": e.status_code, "param": e.param, "message": e.message}

    out["models"] = [m.id for m in client.models.list().data]

    stream = client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "stream it"}],
        seed=40,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"bestofn": {"n": 5}},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.prompt_tokens
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    out["stream"] = {"content": "".join(pieces), "finish_reason": finish, "usage_prompt_tokens": usage}

    legacy = client.completions.create(model="fake-model", prompt="Once", best_of=5, n=1, seed=40)
    out["legacy"] = legacy.choices[0].text
    legacy_stream = client.completions.create(model="fake-model", prompt="Once", seed=40, stream=True, extra_body={"bestofn": {"n": 5}})
    out["legacy_stream"] = "".join(c.choices[0].text for c in legacy_stream if c.choices)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
