-- Adjust counters already consumed: ARGV per key: kind, a, delta, where a is the
-- interval µs (GCRA), "f:<window µs>" (fixed window) or a calendar spec
-- "c:<prev>:<start>:<end>:<next>" (µs, as admitted). Kind "r" (first, if present) settles
-- a reservation: ARGV kind, its ttl µs, member. If it is gone (a reaper took it: its
-- request was recorded unsettled) nothing is adjusted: -1. Otherwise its score
-- (admitted at + ttl) tells which window or calendar period the request was charged
-- in: a correction goes there or, if the counter has rolled over since, nowhere (never
-- to the new one); and the script answers that instant (µs), for the counters of other
-- slots (a Cluster), adjusted by a second call that passes it as one more ARGV.
-- Without a reservation or that ARGV, "admitted" is now. An old gateway's "0" spec
-- (fixed window) adjusts whatever window is stored.
-- A positive delta charges more, a negative one refunds; a refund never creates credit
-- beyond a full bucket or below zero. Used to compensate a cross-slot admission that a
-- later check denied, and by reserve-then-settle.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local at = tonumber(ARGV[#KEYS * 3 + 1]) or now  -- when the request was admitted
local settled = nil
for i = 1, #KEYS do
  local kind, spec = ARGV[i * 3 - 2], ARGV[i * 3 - 1]
  local interval, delta = tonumber(spec), tonumber(ARGV[i * 3])
  if kind == 'r' then
    local score = redis.call('ZSCORE', KEYS[i], ARGV[i * 3])
    if not score then return -1 end
    redis.call('ZREM', KEYS[i], ARGV[i * 3])
    at = tonumber(score) - interval
    settled = at
  elseif kind == 'c' then
    local h = redis.call('HMGET', KEYS[i], 'p', 'c')
    local used, charged = tonumber(h[2]), nil
    local pv, s, e = spec:match('^c:([^:]+):([^:]+):([^:]+):')
    if pv then  -- the period holding the admission instant
      pv, s, e = tonumber(pv), tonumber(s), tonumber(e)
      if at < s then charged = pv elseif at >= e then charged = e else charged = s end
    elseif spec:sub(1, 2) == 'f:' then  -- the fixed window holding the admission instant
      local w = tonumber(spec:sub(3))
      charged = math.floor(at / w) * w
    end
    if used and (charged == nil or tonumber(h[1]) == charged) then
      redis.call('HSET', KEYS[i], 'c', math.max(0, used + delta))
    end
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
return settled or #KEYS
