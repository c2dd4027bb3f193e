-- wrk script for run.sh (KEY=keys100k): every request carries one of KEYS (100,000)
-- distinct X-Device values in turn, so the proxy holds that many sessions and every
-- request is a lookup in a large table (a hit once each key has been seen: run.sh
-- warms up long enough for that).
local keys = tonumber(os.getenv("KEYS") or "100000")
local i = 0

setup = function(thread)
  thread:set("offset", math.random(0, keys - 1))
end

request = function()
  i = i + 1
  local k = ((tonumber(offset or 0) + i) % keys) + 1
  return wrk.format(nil, nil, { ["X-Device"] = "dev-" .. k })
end

-- PACE_MS (run.sh): every connection waits that many milliseconds before each request,
-- so each contender gets the same offered load, below what saturates the client's core.
local pace = tonumber(os.getenv("PACE_MS") or "")
if pace and pace > 0 then
  delay = function() return pace end
end

-- Same machine-readable line as report.lua.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d bad_status=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
