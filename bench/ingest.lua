-- wrk script: POST /v1/ingest with a fixed body of JSON lines read from the file in BODY_FILE.
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()
request = function()
  return wrk.format("POST", "/v1/ingest", {["Content-Type"] = "application/x-ndjson"}, body)
end

-- With REQUESTS_PER_SECOND set, each connection waits so that all of them together send about that many.
local rps = tonumber(os.getenv("REQUESTS_PER_SECOND") or "0")
local connections = tonumber(os.getenv("CONNECTIONS") or "1")
if rps > 0 then
  delay = function() return 1000 * connections / rps end
end
