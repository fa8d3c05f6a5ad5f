-- Adjust counters already consumed: ARGV per key: kind, interval µs (GCRA) or 0, delta.
-- A positive delta charges more, a negative one refunds; a refund never creates credit
-- beyond a full bucket or below zero. Used to compensate a cross-slot admission that a
-- later check denied, and by reserve-then-settle.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local kind = ARGV[i * 3 - 2]
  local interval, delta = tonumber(ARGV[i * 3 - 1]), tonumber(ARGV[i * 3])
  if kind == 'c' then
    local used = tonumber(redis.call('HGET', KEYS[i], 'c'))
    if used then redis.call('HSET', KEYS[i], 'c', math.max(0, used + delta)) end
  else
    local tat = tonumber(redis.call('GET', KEYS[i]))
    if tat or delta > 0 then
      local new_tat = math.max(tat or now, now) + delta * interval
      if new_tat > now then
        redis.call('SET', KEYS[i], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
      else
        redis.call('DEL', KEYS[i])
      end
    end
  end
end
return #KEYS
