-- wrk script: single-entity lookups of random entities u1..u<ENTITIES> (GET /v1/features/{entity}),
-- or, with BATCH > 0, POST /v1/features with BATCH random entities per request.
local entities = tonumber(os.getenv("ENTITIES") or "1000000")
local batch = tonumber(os.getenv("BATCH") or "0")
local at = os.getenv("AT") or "2026-01-01T12:00:00Z"

request = function()
  if batch == 0 then
    return wrk.format("GET", "/v1/features/u" .. math.random(1, entities) .. "?at=" .. at)
  end
  local ids = {}
  for k = 1, batch do ids[k] = '"u' .. math.random(1, entities) .. '"' end
  local body = '{"entities":[' .. table.concat(ids, ",") .. '],"at":"' .. at .. '"}'
  return wrk.format("POST", "/v1/features", {["Content-Type"] = "application/json"}, body)
end
