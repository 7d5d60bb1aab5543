-- wrk script: GET /api/post/get/details_info for random posts of the seeded 100,000, authorised.
-- wrk -t2 -c64 -d20s --latency -s scripts/bench/details.lua http://127.0.0.1:18080 -- <token>
local token
function init(args) token = args[1] end
function request()
  local id = math.random(1, 100000)
  return wrk.format("GET", "/api/post/get/details_info?postId=" .. id,
    { ["Authorization"] = "Bearer " .. token })
end
