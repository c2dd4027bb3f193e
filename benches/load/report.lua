-- wrk script for run.sh: print one machine-readable line at the end of a run, so the
-- harness never has to parse wrk's human output (units vary: us, ms, s).
-- Latencies are in microseconds; `errors` are socket errors (connect/read/write/timeout),
-- `bad_status` responses with a status >= 400 (a proxy answering 502 fast is no win).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d bad_status=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
