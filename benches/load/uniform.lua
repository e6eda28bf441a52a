-- Requests <prefix>1 .. <prefix>N uniformly at random (a working set, not one key).
-- wrk -s uniform.lua URL -- PREFIX N
local n, prefix = 1, "/"
function init(args)
  prefix = args[1]
  n = tonumber(args[2])
  math.randomseed(os.time())
end
function request()
  return wrk.format("GET", prefix .. math.random(n))
end
