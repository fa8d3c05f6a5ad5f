-- Compare and set: KEYS[1] is replaced by ARGV[2] (with a time to live of ARGV[3] ms),
-- or deleted when ARGV[2] is empty, unless it holds something other than ARGV[1] (an
-- expired key is replaced too: nobody else holds it). Answers 1 when it did, 0 when
-- another value held the key (another owner took it).
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
