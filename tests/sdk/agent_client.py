"""Drives a best-of-N answer of a reasoning model that calls tools with the official OpenAI
Python SDK, plain and streamed, and prints what the SDK read as JSON.

Usage: python3 agent_client.py BASE_URL MODEL
"""

import json
import sys

from openai import OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState


def message_view(message) -> dict:
    extra = message.model_extra or {}
    return {
        "content": message.content,
        "reasoning_content": extra.get("reasoning_content"),
        "reasoning": extra.get("reasoning"),
        "vendor_extra": extra.get("vendor_extra"),
        "tool_calls": [
            {"id": c.id, "type": c.type, "name": c.function.name, "arguments": c.function.arguments}
            for c in (message.tool_calls or [])
        ],
    }


def main() -> None:
    client = OpenAI(base_url=sys.argv[1], api_key="sk-test", max_retries=0)
    model = sys.argv[2]
    request = dict(
        model=model,
        seed=100,
        messages=[{"role": "user", "content": "What's the weather in Paris, and the time there?"}],
        tools=[
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
        ],
    )
    out = {}
    completion = client.chat.completions.create(**request)
    out["plain"] = message_view(completion.choices[0].message)
    out["plain"]["finish_reason"] = completion.choices[0].finish_reason
    out["plain"]["reasoning_tokens"] = completion.usage.completion_tokens_details.reasoning_tokens

    # Streamed: the SDK's own accumulation of the deltas into a completion, and the reasoning
    # read delta by delta as an application streaming it to a user would.
    state = ChatCompletionStreamState()
    reasoning_pieces, usage = [], None
    stream = client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        state.handle_chunk(chunk)
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens_details.reasoning_tokens
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            piece = extra.get("reasoning_content") or extra.get("reasoning")
            if piece:
                reasoning_pieces.append(piece)
    final = state.get_final_completion()
    out["stream"] = message_view(final.choices[0].message)
    out["stream"]["finish_reason"] = final.choices[0].finish_reason
    out["stream"]["reasoning_tokens"] = usage
    out["stream"]["reasoning_deltas"] = len(reasoning_pieces)
    out["stream"]["reasoning_read"] = "".join(reasoning_pieces)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
