-- Release concurrency leases: KEYS[i] is a lease set, ARGV[i] the lease id.
for i = 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[i])
end
return #KEYS
