-- Requests <prefix>1 .. <prefix>N once each, in order, then stops (a fill).
-- wrk -s fill.lua URL -- PREFIX N [QUERY]   (QUERY: "%d" is replaced by the index)
local n, prefix, query, counter, done = 0, "/", "", 0, 0
function init(args)
  prefix = args[1]
  n = tonumber(args[2])
  query = args[3] or ""
end
function request()
  counter = counter + 1
  local i = ((counter - 1) % n) + 1
  return wrk.format("GET", prefix .. i .. string.gsub(query, "%%d", tostring(i)))
end
function response()
  done = done + 1
  if done >= n then wrk.thread:stop() end
end
