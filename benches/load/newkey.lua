-- wrk script for scenarios.py (SCENARIO=redis, "new" run): every request carries a
-- fresh X-Device-Id, so every request is a new session key (a store miss, a pick and a
-- write). Ids are a random per-run prefix plus a per-thread counter, never repeated.
local counter = 0
local prefix

setup = function(thread)
  thread:set("tid", tostring(math.random(1, 1e9)))
end

init = function(args)
  math.randomseed(os.time() + tonumber(tid or "0"))
  prefix = string.format("d%x-%s-", math.random(0, 0x7fffffff), tid or "0")
end

request = function()
  counter = counter + 1
  return wrk.format(nil, nil, { ["X-Device-Id"] = prefix .. counter })
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
