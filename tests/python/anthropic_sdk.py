"""The official `anthropic` SDK as a marathon client.

Run by crates/proxy/tests/sdk.rs against an in-process simulator and proxy:

    python anthropic_sdk.py failover  <proxy>/anthropic
    python anthropic_sdk.py exhausted <proxy>/anthropic
    python anthropic_sdk.py spent     <proxy>/anthropic
    python anthropic_sdk.py wait      <proxy>/anthropic
    python anthropic_sdk.py usage     <proxy>/anthropic [<access key>]

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

import anthropic

MODEL = "claude-sonnet-4-5"
MESSAGES = [{"role": "user", "content": "Say hello."}]


def headers_of(h):
    return {
        "account": h.get("x-marathon-account"),
        "attempts": h.get("x-marathon-attempts"),
    }


def create_json(client):
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    msg = raw.parse()
    text = "".join(block.text for block in msg.content if block.type == "text")
    return {"call": "messages.create", "status": raw.status_code, "text": text,
            "stop_reason": msg.stop_reason, **headers_of(raw.headers)}


def stream_helper(client):
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        status = stream.response.status_code
        hdrs = headers_of(stream.response.headers)
    final_text = "".join(block.text for block in final.content if block.type == "text")
    return {"call": "messages.stream", "status": status, "text": text, "final_text": final_text,
            "stop_reason": final.stop_reason, **hdrs}


def create_stream(client):
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)
    events = []
    text = ""
    for event in raw.parse():
        events.append(event.type)
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            text += event.delta.text
    return {"call": "messages.create(stream=True)", "status": raw.status_code, "text": text,
            "events": events, **headers_of(raw.headers)}


def failover(client):
    # The quota runs out at the third call, a stream: the 429 comes before the
    # stream starts, so marathon can move the request to the next account.
    calls = [create_json, stream_helper, create_stream, create_json, stream_helper]
    return {"calls": [call(client) for call in calls]}


def expect_rate_limit(label, thunk):
    try:
        thunk()
    except anthropic.RateLimitError as e:
        return {"call": label, "error": type(e).__name__, "status": e.status_code,
                "message": str(e), "body": e.body,
                "retry_after": e.response.headers.get("retry-after"),
                **headers_of(e.response.headers)}
    raise AssertionError(f"{label}: expected anthropic.RateLimitError, the call succeeded")


def exhausted(client):
    def streamed():
        for _ in client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True):
            pass

    return {"errors": [
        expect_rate_limit("messages.create", lambda: client.messages.create(
            model=MODEL, max_tokens=64, messages=MESSAGES)),
        expect_rate_limit("messages.create(stream=True)", streamed),
    ]}


def spent(client):
    # Every account spent for an hour: with the SDK's own retries on (its
    # defaults), the call must fail at once with marathon's message, not
    # retry for minutes.
    started = time.monotonic()
    result = expect_rate_limit("create", lambda: client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES))
    result["elapsed"] = time.monotonic() - started
    return {"errors": [result]}


def wait(client):
    # The soonest account is back in seconds: the SDK waits (its own
    # retries, honouring retry-after) and the call succeeds.
    started = time.monotonic()
    client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    return {"elapsed": time.monotonic() - started}


def usage_of(model, u):
    # Anthropic's input_tokens exclude the cache reads and writes.
    return {"model": model, "input": u.input_tokens, "output": u.output_tokens,
            "cache_read": u.cache_read_input_tokens or 0,
            "cache_write": u.cache_creation_input_tokens or 0}


def usage(client):
    # The usage the SDK parsed from each answer (JSON, and the stream helper's
    # final message: message_start's input, message_delta's output), for the
    # Rust test to compare with what marathon counted.
    # The first asks for prompt caching: the simulator then reads half the
    # prompt from its cache.
    system = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    msg = client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, system=system)
    calls = [{"call": "messages.create", **usage_of(msg.model, msg.usage)}]
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        for _ in stream.text_stream:
            pass
        final = stream.get_final_message()
    calls.append({"call": "messages.stream", **usage_of(final.model, final.usage)})
    return {"calls": calls}


SCENARIOS = {"failover": failover, "exhausted": exhausted, "spent": spent, "wait": wait,
             "usage": usage}


def main():
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in SCENARIOS:
        sys.exit("usage: anthropic_sdk.py failover|exhausted|spent|wait|usage <proxy base URL>/anthropic [<access key>]")
    scenario, base_url = sys.argv[1], sys.argv[2]
    api_key = sys.argv[3] if len(sys.argv) == 4 else "anything"
    # The SDK's own retries are off except where the scenario is about them.
    retries = {} if scenario in ("spent", "wait") else {"max_retries": 0}
    client = anthropic.Anthropic(base_url=base_url, api_key=api_key, timeout=60, **retries)
    summary = {"sdk": "anthropic", "version": anthropic.__version__, "scenario": scenario}
    summary.update(SCENARIOS[scenario](client))
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
