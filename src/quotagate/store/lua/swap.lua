-- Compare and set: KEYS[1] is replaced by ARGV[2] (with a time to live of ARGV[3] ms),
-- or deleted when ARGV[2] is empty, only while it still holds ARGV[1]. Answers 1 when
-- it did, 0 when the key held something else or nothing (another owner took it).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
