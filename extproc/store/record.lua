-- Accounting: add spend to the current bucket and release the request's holds, for
-- all of a request's counters in one call (after _window.lua).
--
-- KEYS: per counter, its bucket hash, its hold zset, its writer hash and its record zset.
-- ARGV: now_ms ("" for Redis's clock), hold_id, writer, seq, low, then per counter: window_s, bucket_s, amount,
--       hold amount (the amount this request's hold was placed with, "0" if none).
--       writer "" means a record without an id: applied whatever came before.
-- Returns {counters, duplicates}: how many counters, and on how many the record id had
-- been applied already (its amount then added nothing).
--
-- Idempotence, per counter and writer: {tag}:w holds the writer's high-water mark H (every
-- seq <= H was applied or will never come), {tag}:r the applied seqs above it, as members
-- "writer:seq" (seq zero-padded to 16 digits, so one writer's members sort by seq). A seq
-- is applied when it is above H and not a member; `low` (the writer's promise that every
-- seq below it is confirmed) moves H up to low - 1 and trims the members below.

local hold_id = ARGV[2]
local writer, seq_arg, low_arg = ARGV[3], ARGV[4], ARGV[5]
local now_ms, now_arg = clock(ARGV[1])
local per = 4
local first = 5
local count = #KEYS / 4
local duplicates = 0

local function pad(n)
  return string.format('%016d', n)
end

-- Whether this record is new on this counter (and, if so, it is now marked applied).
local function first_time(wkey, rkey, retention_ms)
  if writer == '' then
    return true
  end
  local seq, low = tonumber(seq_arg), tonumber(low_arg)
  local high = tonumber(redis.call('HGET', wkey, writer) or '-1')
  local member = writer .. ':' .. pad(seq)
  local fresh = seq > high and redis.call('ZSCORE', rkey, member) == false
  if fresh then
    redis.call('ZADD', rkey, 0, member)
  end
  if low - 1 > high then
    redis.call('HSET', wkey, writer, fmt(low - 1))
    redis.call('ZREMRANGEBYLEX', rkey, '[' .. writer .. ':', '(' .. writer .. ':' .. pad(low))
  end
  -- As long as the spend they guard: a record older than its window adds nothing anyway.
  extend_ttl(wkey, retention_ms)
  extend_ttl(rkey, retention_ms)
  return fresh
end

for k = 1, count do
  local a = first + (k - 1) * per
  local w = open_window(KEYS[4 * k - 3], KEYS[4 * k - 2], now_ms, now_arg, ARGV[a + 1], ARGV[a + 2])
  local amount = ARGV[a + 3]
  if first_time(KEYS[4 * k - 1], KEYS[4 * k], w.retention_ms) then
    if tonumber(amount) > 0 then
      if not w.oldest then
        -- c - n, not c: a slightly late record (another replica's clock, a replay) still
        -- lands in its own bucket instead of being taken as aged out.
        w.oldest = w.c - w.n
        redis.call('HSET', w.bkey, 'o', fmt(w.oldest), 'g', w.geometry)
      end
      -- A bucket below `o` is older than the window already: it would not count anyway.
      if w.c >= w.oldest then
        redis.call('HINCRBY', w.bkey, fmt(w.c), amount)
        redis.call('HINCRBY', w.bkey, 't', amount)
        extend_ttl(w.bkey, w.retention_ms)
      end
    end
  else
    duplicates = duplicates + 1
  end
  local hold = ARGV[a + 4]
  -- ZREM answers 0 when the lease already expired and was purged: subtract only once.
  if tonumber(hold) > 0 and redis.call('ZREM', w.zkey, hold_id .. ':' .. hold) == 1 then
    add_held(w.bkey, '-' .. hold)
  end
end

return {count, duplicates}
