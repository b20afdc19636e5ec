-- wrk script: POST /v1/ingest with a fixed body of JSON lines read from the file in BODY_FILE.
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()
request = function()
  return wrk.format("POST", "/v1/ingest", {["Content-Type"] = "application/x-ndjson"}, body)
end

-- With REQUESTS_PER_SECOND set, requests follow a schedule: the k-th goes out at start + k / rate, on
-- whichever of the thread's connections is free (wrk with -t1). A connection that finds its slot already
-- past sends at once, so the rate holds while the server keeps up, instead of adding each request's
-- latency to a fixed pause (which made 200 requests/s over 2 connections read as 175).
local rps = tonumber(os.getenv("REQUESTS_PER_SECOND") or "0")
if rps > 0 then
  local ffi = require("ffi")
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } freshet_timespec;
    int clock_gettime(int clock, freshet_timespec* out);
  ]]
  local now_ts = ffi.new("freshet_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, now_ts)  -- CLOCK_MONOTONIC
    return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
  end
  local interval = 1000 / rps
  local next_slot = nil
  delay = function()
    local now = now_ms()
    if next_slot == nil then next_slot = now end
    local wait = next_slot - now
    next_slot = next_slot + interval
    if wait < 0 then return 0 end
    return math.floor(wait)
  end
end
