-- wrk script for run.sh: print one machine-readable line at the end of a run, so the
-- harness never has to parse wrk's human output (units vary: us, ms, s).
-- Latencies are in microseconds; `errors` are socket errors (connect/read/write/timeout),
-- `bad_status` responses with a status >= 400 (a proxy answering 502 fast is no win).
-- PACE_MS (run.sh): every connection waits that many milliseconds before each request,
-- so each contender gets the same offered load, below what saturates the client's core.
local pace = tonumber(os.getenv("PACE_MS") or "")
if pace and pace > 0 then
  delay = function() return pace end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d bad_status=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
