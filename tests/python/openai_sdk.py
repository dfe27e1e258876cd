"""The official `openai` SDK as a marathon client.

Run by crates/proxy/tests/sdk.rs against an in-process simulator and proxy:

    python openai_sdk.py failover  <proxy>/openai/v1
    python openai_sdk.py exhausted <proxy>/openai/v1
    python openai_sdk.py spent     <proxy>/openai/v1
    python openai_sdk.py wait      <proxy>/openai/v1
    python openai_sdk.py usage     <proxy>/openai/v1 [<access key>]

The SDK's own retries are off (`max_retries=0`), so any failover seen here was
marathon's — except in `spent` and `wait`, which are about them: every account
spent for an hour must make the SDK raise at once, a reset seconds away must
make it wait and succeed. The script records what the SDK saw (texts, the proxy's
`x-marathon-*` headers, the error it raised) and prints it as one line
`SUMMARY {json}` for the Rust test to assert on. Anything unexpected — an
exception in `failover`, a missing exception or another error class in
`exhausted` — ends the script with a traceback and a non-zero status.
"""

import json
import sys
import time

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


def spent(client):
    # Every account spent for an hour: with the SDK's own retries on (its
    # defaults), the call must fail at once with marathon's message, not
    # retry for minutes.
    started = time.monotonic()
    result = expect_rate_limit("create", lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES))
    result["elapsed"] = time.monotonic() - started
    return {"errors": [result]}


def wait(client):
    # The soonest account is back in seconds: the SDK waits (its own
    # retries, honouring retry-after) and the call succeeds.
    started = time.monotonic()
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    return {"elapsed": time.monotonic() - started}


def usage_of(call, model, input_tokens, output_tokens, details):
    # OpenAI's prompt/input counts include the cached part.
    cached = (details.cached_tokens or 0) if details is not None else 0
    return {"call": call, "model": model, "input": input_tokens - cached,
            "output": output_tokens, "cache_read": cached, "cache_write": 0}


def usage(client):
    # The usage the SDK parsed from each answer, for the Rust test to compare
    # with what marathon counted: Chat JSON, a Chat stream's usage chunk
    # (stream_options.include_usage), Responses JSON and response.completed.
    # The first asks for prompt caching: the simulator then reads half the
    # prompt from its cache.
    c = client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                       extra_body={"prompt_cache_key": "usage-test"})
    u = c.usage
    calls = [usage_of("chat.completions.create", c.model, u.prompt_tokens, u.completion_tokens,
                      u.prompt_tokens_details)]
    last = None
    for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage is not None:
            last = chunk
    u = last.usage
    calls.append(usage_of("chat.completions.create(stream=True)", last.model, u.prompt_tokens,
                          u.completion_tokens, u.prompt_tokens_details))
    r = client.responses.create(model=MODEL, input="Say hello.")
    calls.append(usage_of("responses.create", r.model, r.usage.input_tokens,
                          r.usage.output_tokens, r.usage.input_tokens_details))
    completed = None
    for event in client.responses.create(model=MODEL, input="Say hello.", stream=True,
                                         extra_body={"prompt_cache_key": "usage-test"}):
        if event.type == "response.completed":
            completed = event.response
    u = completed.usage
    calls.append(usage_of("responses.create(stream=True)", completed.model, u.input_tokens,
                          u.output_tokens, u.input_tokens_details))
    return {"calls": calls}


SCENARIOS = {"failover": failover, "exhausted": exhausted, "spent": spent, "wait": wait,
             "usage": usage}


def main():
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in SCENARIOS:
        sys.exit("usage: openai_sdk.py failover|exhausted|spent|wait|usage <proxy base URL>/openai/v1 [<access key>]")
    scenario, base_url = sys.argv[1], sys.argv[2]
    api_key = sys.argv[3] if len(sys.argv) == 4 else "anything"
    # The SDK's own retries are off except where the scenario is about them.
    retries = {} if scenario in ("spent", "wait") else {"max_retries": 0}
    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=60, **retries)
    summary = {"sdk": "openai", "version": openai.__version__, "scenario": scenario}
    summary.update(SCENARIOS[scenario](client))
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
