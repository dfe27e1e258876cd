-- wrk script: POST a small chat-completion request and print one JSON line
-- with exact percentiles (microseconds) for bench/proxy.sh to collect.
wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi."}]}'
wrk.headers["Content-Type"] = "application/json"
-- The client's own key: marathon replaces it with the account's; nginx and
-- the origin ignore it.
wrk.headers["Authorization"] = "Bearer sk-bench-client"

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"non2xx":%d,"errors":%d}\n',
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
      e.status, e.connect + e.read + e.write + e.timeout))
end
