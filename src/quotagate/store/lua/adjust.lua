-- Adjust counters already consumed, in groups: one call carries any number of them
-- (the settlements of many requests, batched by the store). Each group is
--   ARGV: n, at, then per key of the group (n KEYS, in order): kind, a, delta
-- where a is the interval µs (GCRA), "f:<window µs>" (fixed window) or a calendar spec
-- "c:<prev>:<start>:<end>:<next>" (µs, as admitted), and at is when the request was
-- admitted (µs; "" for now). Kind "r" (a group's first key, if present) settles a
-- reservation: a is its ttl µs, delta its member. If it is gone (a reaper took it: its
-- request was recorded unsettled) nothing of its group is adjusted: -1. Otherwise its
-- score (admitted at + ttl) tells which window or calendar period the request was
-- charged in: a correction goes there or, if the counter has rolled over since,
-- nowhere (never to the new one); and the group answers that instant (µs), for the
-- counters of other slots (a Cluster), adjusted by a second call that passes it as at.
-- A group without a reservation answers 0. An old gateway's "0" spec (fixed window)
-- adjusts whatever window is stored.
-- A positive delta charges more, a negative one refunds; a refund never creates credit
-- beyond a full bucket or below zero. Used to compensate a cross-slot admission that a
-- later check denied, and by reserve-then-settle. Answers one integer per group; -2
-- for a group one of whose commands failed (a key of the wrong type): the groups of
-- other requests in the same call are not held back by it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- A group reads every key first and writes only once all reads succeeded: a failing
-- read (WRONGTYPE) leaves its group untouched, the reservation there to be reaped.
local function group(k, a, n, at)  -- KEYS before the group, its first ARGV, its size
  local answer, reservation, writes = 0, nil, {}
  for i = k + 1, k + n do
    local j = a + 2 + (i - k - 1) * 3
    local kind, spec = ARGV[j], ARGV[j + 1]
    local interval, delta = tonumber(spec), tonumber(ARGV[j + 2])
    if kind == 'r' then  -- first in its group
      local score = redis.call('ZSCORE', KEYS[i], ARGV[j + 2])
      if not score then
        return -1  -- the reservation was gone: its group stays as it is
      end
      reservation = {KEYS[i], ARGV[j + 2]}
      at = tonumber(score) - interval
      answer = at
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
        writes[#writes + 1] = {'HSET', KEYS[i], 'c', math.max(0, used + delta)}
      end
    else
      local tat = tonumber(redis.call('GET', KEYS[i]))
      if tat or delta > 0 then
        local new_tat = math.max(tat or now, now) + delta * interval
        if new_tat > now then
          writes[#writes + 1] =
            {'SET', KEYS[i], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1}
        else
          writes[#writes + 1] = {'DEL', KEYS[i]}
        end
      end
    end
  end
  if reservation then
    redis.call('ZREM', reservation[1], reservation[2])
  end
  for _, write in ipairs(writes) do
    redis.call(unpack(write))
  end
  return answer
end

local answers = {}
local k, a = 0, 1
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local ok, answer = pcall(group, k, a, n, tonumber(ARGV[a + 1]) or now)
  answers[#answers + 1] = ok and answer or -2
  k, a = k + n, a + 2 + n * 3
end
return answers
