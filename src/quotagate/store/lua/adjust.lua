-- Adjust GCRA counters already consumed: ARGV per key: interval µs, delta units.
-- A positive delta charges more, a negative one refunds (never below "now": a refund
-- cannot create credit beyond a full bucket). Used to compensate a cross-slot
-- admission that a later check denied, and by reserve-then-settle.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local interval, delta = tonumber(ARGV[i * 2 - 1]), tonumber(ARGV[i * 2])
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
return #KEYS
