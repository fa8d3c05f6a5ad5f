-- Take reservations past their deadline from one reservation set: KEYS[1], ARGV[1] the
-- most to take. Removing them here makes each one reaped by exactly one instance.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
end
return due
