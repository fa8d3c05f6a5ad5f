-- Decide a batch of limit checks atomically, on the Redis server's clock.
-- KEYS[i]: the counter of check i. ARGV: four values per check: kind, a, b, c.
--   kind "g" (GCRA):        a = interval µs, b = capacity units, c = cost units
--   kind "l" (lease):       a = limit, b = lease ttl µs, c = lease id
--   kind "w" (sliding log): a = limit, b = window µs, c = entry id (one request)
--   kind "r" (reservation record, always allowed): a = ttl µs, b = 0, c = member
--   kind "c" (window counter): a = limit, b = cost, c = "f:<window µs>" (fixed windows
--                           aligned on the server clock) or "c:<prev start>:<start>:<end>:<next end>"
--                           (calendar: the previous, this and the next period, in µs;
--                           the server's now picks one)
-- All checks are evaluated first; only if every one allows are any written
-- (all-or-nothing: a denied request consumes nothing).
-- Returns {allowed 0/1, denied index (1-based, 0 if none), then per check:
--          remaining, reset µs, retry µs}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local out = {1, 0}
local writes = {}

for i = 1, n do
  local key, j = KEYS[i], (i - 1) * 4
  local kind, a, b = ARGV[j + 1], tonumber(ARGV[j + 2]), ARGV[j + 3]
  if kind == 'g' then
    local capacity, cost = tonumber(b), tonumber(ARGV[j + 4])
    local tat = tonumber(redis.call('GET', key)) or now
    local base = math.max(tat, now)
    local new_tat = base + cost * a
    local allow_at = new_tat - capacity * a
    local allowed = allow_at <= now
    local held = allowed and new_tat or base
    local remaining = math.floor((capacity * a - (held - now)) / a)
    remaining = math.max(0, math.min(capacity, remaining))
    out[#out + 1] = remaining
    out[#out + 1] = held - now
    out[#out + 1] = allowed and 0 or (allow_at - now)
    if allowed then writes[i] = new_tat elseif out[2] == 0 then out[1] = 0; out[2] = i end
  elseif kind == 'c' then
    local cost, spec, start, finish = tonumber(b), ARGV[j + 4], 0, 0
    if spec:sub(1, 1) == 'f' then
      local w = tonumber(spec:sub(3))
      start = math.floor(now / w) * w
      finish = start + w
    else
      -- The gateway's previous, current and next periods: the one holding the
      -- server's now is charged, whichever way the gateway's clock is off.
      local pv, s, e, nx = spec:match('^c:([^:]+):([^:]+):([^:]+):([^:]+)$')
      pv, s, e, nx = tonumber(pv), tonumber(s), tonumber(e), tonumber(nx)
      if now < s then start, finish = pv, s
      elseif now >= e then start, finish = e, nx
      else start, finish = s, e end
    end
    local h = redis.call('HMGET', key, 'p', 'c')
    local used = 0
    if tonumber(h[1]) == start then used = tonumber(h[2]) or 0 end
    local allowed = used + cost <= a
    out[#out + 1] = allowed and (a - used - cost) or math.max(0, a - used)
    out[#out + 1] = finish - now
    out[#out + 1] = allowed and 0 or (finish - now)
    if allowed then writes[i] = {start, used + cost, finish}
    elseif out[2] == 0 then out[1] = 0; out[2] = i end
  elseif kind == 'w' then
    local window = tonumber(b)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local held = redis.call('ZCARD', key)
    local allowed = held < a
    local oldest = tonumber((redis.call('ZRANGE', key, 0, 0, 'WITHSCORES'))[2] or now)
    local newest = allowed and now or
      tonumber((redis.call('ZRANGE', key, -1, -1, 'WITHSCORES'))[2] or now)
    out[#out + 1] = allowed and (a - held - 1) or 0
    out[#out + 1] = newest + window - now
    out[#out + 1] = allowed and 0 or (oldest + window - now)
    if allowed then writes[i] = now elseif out[2] == 0 then out[1] = 0; out[2] = i end
  elseif kind == 'r' then
    out[#out + 1] = 0
    out[#out + 1] = 0
    out[#out + 1] = 0
    writes[i] = now + a
  else
    local ttl = tonumber(b)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local held = redis.call('ZCARD', key)
    local allowed = held < a
    out[#out + 1] = allowed and (a - held - 1) or 0
    out[#out + 1] = 0
    out[#out + 1] = allowed and 0 or 1000000
    if allowed then writes[i] = now + ttl elseif out[2] == 0 then out[1] = 0; out[2] = i end
  end
end

if out[1] == 1 then
  for i = 1, n do
    local key, j = KEYS[i], (i - 1) * 4
    local kind = ARGV[j + 1]
    if kind == 'g' then
      redis.call('SET', key, writes[i], 'PX', math.ceil((writes[i] - now) / 1000) + 1)
    elseif kind == 'c' then
      local w = writes[i]
      redis.call('HSET', key, 'p', string.format('%.0f', w[1]), 'c', w[2])
      redis.call('PEXPIREAT', key, math.ceil(w[3] / 1000) + 1000)
    elseif kind == 'r' then
      -- Reaped, not expired: kept well past the deadline so a reaper always sees it.
      redis.call('ZADD', key, writes[i], ARGV[j + 4])
      redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[j + 2]) / 1000) * 4 + 60000)
    elseif kind == 'w' then
      redis.call('ZADD', key, now, ARGV[j + 4])
      redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[j + 3]) / 1000) + 1)
    else
      redis.call('ZADD', key, writes[i], ARGV[j + 4])
      redis.call('PEXPIRE', key, math.ceil((writes[i] - now) / 1000) + 1)
    end
  end
end
return out
