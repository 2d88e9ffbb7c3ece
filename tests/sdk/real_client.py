"""Drives bestofn in front of a real llama-server with the official OpenAI SDK; prints JSON."""

import json
import sys

from openai import OpenAI


def main() -> None:
    client = OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=120)
    question = [{"role": "user", "content": "What is 7 + 5? Answer with just the number."}]
    out = {}
    r = client.chat.completions.create(model="smollm2", messages=question, max_tokens=24, temperature=0.8, seed=1)
    out["chat"] = {"content": r.choices[0].message.content, "bestofn": (r.model_extra or {}).get("bestofn"),
                   "usage": r.usage.model_dump() if r.usage else None}
    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(model="smollm2", messages=question, max_tokens=24, temperature=0.8,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    out["stream"] = {"content": "".join(pieces), "finish_reason": finish, "completion_tokens": usage}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
