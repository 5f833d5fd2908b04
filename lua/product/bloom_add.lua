-- Add one id to a bloom filter kept as a Redis bitmap (this Redis has no bloom module).
-- KEYS[1]  the bitmap, hash-tagged per filter, e.g. mall:product:bloom:{sku}
-- ARGV     the id's k bit offsets, computed by the service (double hashing of the id)
-- returns  the number of bits set
-- Invariant kept atomically: an id is either wholly in the filter or not at all, so a
-- concurrent check never sees half an id (a false negative would 404 a real product).
for i = 1, #ARGV do
  redis.call('SETBIT', KEYS[1], ARGV[i], 1)
end
return #ARGV
