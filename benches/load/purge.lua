-- A purge storm: tag purges of ever new tags through the admin API, one per
-- millisecond per connection. wrk -s purge.lua URL -- TOKEN
local token, counter = "", 0
function init(args)
  token = args[1]
end
function delay()
  return 1
end
function request()
  counter = counter + 1
  return wrk.format("POST", "/.lacquer/purge", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, '{"tags":["storm:' .. counter .. '"]}')
end
