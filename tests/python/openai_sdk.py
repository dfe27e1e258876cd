"""The official `openai` SDK as a marathon client.

Run by crates/proxy/tests/sdk.rs against an in-process simulator and proxy:

    python openai_sdk.py failover  <proxy>/openai/v1
    python openai_sdk.py exhausted <proxy>/openai/v1

The SDK's own retries are off (`max_retries=0`), so any failover seen here was
marathon's. The script records what the SDK saw (texts, the proxy's
`x-marathon-*` headers, the error it raised) and prints it as one line
`SUMMARY {json}` for the Rust test to assert on. Anything unexpected — an
exception in `failover`, a missing exception or another error class in
`exhausted` — ends the script with a traceback and a non-zero status.
"""

import json
import sys

import openai

MODEL = "gpt-4.1-mini"
MESSAGES = [{"role": "user", "content": "Say hello."}]


def headers_of(h):
    return {
        "account": h.get("x-marathon-account"),
        "attempts": h.get("x-marathon-attempts"),
    }


def chat_json(client):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    completion = raw.parse()
    return {"call": "chat.completions.create", "status": raw.status_code,
            "text": completion.choices[0].message.content,
            "finish_reason": completion.choices[0].finish_reason, **headers_of(raw.headers)}


def chat_stream(client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    text = ""
    finish_reason = None
    usage = None
    for chunk in raw.parse():
        if chunk.usage is not None:
            usage = chunk.usage.total_tokens
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish_reason = choice.finish_reason or finish_reason
    return {"call": "chat.completions.create(stream=True)", "status": raw.status_code, "text": text,
            "finish_reason": finish_reason, "usage_total_tokens": usage, **headers_of(raw.headers)}


def responses_json(client):
    raw = client.responses.with_raw_response.create(model=MODEL, input="Say hello.")
    response = raw.parse()
    return {"call": "responses.create", "status": raw.status_code, "text": response.output_text,
            "response_status": response.status, **headers_of(raw.headers)}


def responses_stream(client):
    raw = client.responses.with_raw_response.create(model=MODEL, input="Say hello.", stream=True)
    events = []
    text = ""
    completed_text = None
    for event in raw.parse():
        events.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.completed":
            completed_text = event.response.output_text
    return {"call": "responses.create(stream=True)", "status": raw.status_code, "text": text,
            "final_text": completed_text, "events": events, **headers_of(raw.headers)}


def failover(client):
    # The quota runs out at the fourth call, a Responses stream: the 429 comes
    # before the stream starts, so marathon can move it to the next account.
    calls = [chat_json, chat_stream, responses_json, responses_stream, chat_stream, responses_json,
             chat_json]
    return {"calls": [call(client) for call in calls]}


def expect_rate_limit(label, thunk):
    try:
        thunk()
    except openai.RateLimitError as e:
        return {"call": label, "error": type(e).__name__, "status": e.status_code,
                "message": str(e), "body": e.body,
                "retry_after": e.response.headers.get("retry-after"),
                **headers_of(e.response.headers)}
    raise AssertionError(f"{label}: expected openai.RateLimitError, the call succeeded")


def exhausted(client):
    def chat_streamed():
        for _ in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            pass

    return {"errors": [
        expect_rate_limit("chat.completions.create",
                          lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES)),
        expect_rate_limit("chat.completions.create(stream=True)", chat_streamed),
        expect_rate_limit("responses.create",
                          lambda: client.responses.create(model=MODEL, input="Say hello.")),
    ]}


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("failover", "exhausted"):
        sys.exit("usage: openai_sdk.py failover|exhausted <proxy base URL>/openai/v1")
    scenario, base_url = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="anything", max_retries=0, timeout=15)
    summary = {"sdk": "openai", "version": openai.__version__, "scenario": scenario}
    summary.update(failover(client) if scenario == "failover" else exhausted(client))
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
