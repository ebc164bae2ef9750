-- The shared rate-limit store's one script (see rl_shared.h for the layout).
-- Every change to a key happens here, atomically, and is both returned and
-- published as the key's whole state, so a mirror is always replaced by a
-- state Redis actually had.
--
-- KEYS[1]  P rl:epoch       KEYS[2]  P rl:inst       KEYS[3..]  key hashes
-- ARGV[1]  op: count | apply | block | unblock (any op with no key: hello)
-- ARGV[2]  now, shared ms   ARGV[3]  origin (process id)
-- ARGV[4]  seq of the change at its origin    ARGV[5]  channel
-- count:   ARGV[6 .. 5+nk] the generation each key's headroom was seen at
--          (-1: the current one), then sreq stok (added to the headroom's
--          used_since when the generation matches), then items of four:
--          window (0 minute, 1 day), slot, requests, tokens (signed)
-- apply:   for d = 0..3: has limit remaining reset_at; then retry_until (0: none)
-- block:   field (rb | sb), until (-1: forever)
-- A process new to the instances set also publishes "N <n>".
-- Returns {epoch, n, state of each key}. A state is one line of numbers,
--   S v epoch n origin seq g rb sb  ns {d limit remaining reset_at used}*ns
--   nw {window kind slot count}*nw
-- then a newline and the key's name. Only changed keys are published.

local op, now, origin, seq, chan = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local WIDTH = {[0] = 1000, [1] = 1440000}
local SLOTS = 60
local KEEP = 86400000 + 2 * 1440000
local LONGEST = 3 * 86400000 -- a hash never lives longer (but a block forever)
local nk = #KEYS - 2

-- Redis's clock, for what is about real time rather than windows: the
-- epoch, and which processes ran a script in the last minute.
local t = redis.call('TIME')
local rnow = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', KEYS[1], epoch)
end
local joined = redis.call('ZADD', KEYS[2], rnow, origin)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', rnow - 60000)
redis.call('PEXPIRE', KEYS[2], 120000)
local n = redis.call('ZCARD', KEYS[2])
-- A process the others do not count yet: tell them how many there are now.
if joined == 1 then redis.call('PUBLISH', chan, 'N ' .. string.format('%d', n)) end

local function int(x) return string.format('%d', x) end

local function first(w)
  local k = math.floor(now / WIDTH[w]) - SLOTS
  if k < 0 then return 0 end
  return k
end

local function add(key, field, d)
  if redis.call('HINCRBY', key, field, d) <= 0 then redis.call('HDEL', key, field) end
end

local function adjust_headroom(key, sreq, stok)
  local any = false
  for d = 0, 3 do
    local s = redis.call('HGET', key, 's' .. d)
    local delta = stok
    if d < 2 then delta = sreq end
    if s and delta ~= 0 then
      local lim, rem, reset, used = string.match(s, '^(%d+) (%d+) (%d+) (%d+)$')
      used = tonumber(used) + delta
      if used < 0 then used = 0 end
      redis.call('HSET', key, 's' .. d, lim .. ' ' .. rem .. ' ' .. reset .. ' ' .. int(used))
      any = true
    end
  end
  return any
end

local function count(i)
  local key = KEYS[2 + i]
  local gen = tonumber(ARGV[5 + i])
  local sreq, stok = tonumber(ARGV[6 + nk]), tonumber(ARGV[7 + nk])
  local any = false
  local j = 8 + nk
  while j + 3 <= #ARGV do
    local w, slot = tonumber(ARGV[j]), tonumber(ARGV[j + 1])
    local dr, dt = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
    if slot >= first(w) then
      if dr ~= 0 then add(key, w .. 'r' .. int(slot), dr) any = true end
      if dt ~= 0 then add(key, w .. 't' .. int(slot), dt) any = true end
    end
    j = j + 4
  end
  if (sreq ~= 0 or stok ~= 0) and
     (gen < 0 or gen == tonumber(redis.call('HGET', key, 'g') or '0')) then
    if adjust_headroom(key, sreq, stok) then any = true end
  end
  return any
end

local function raise(key, field, untl)
  local cur = redis.call('HGET', key, field)
  if cur == '-1' then return end
  if untl == -1 or not cur or untl > tonumber(cur) then
    redis.call('HSET', key, field, int(untl))
  end
end

local function apply(key)
  local any = false
  for d = 0, 3 do
    local b = 6 + d * 4
    if ARGV[b] == '1' then
      redis.call('HSET', key, 's' .. d, ARGV[b + 1] .. ' ' .. ARGV[b + 2] .. ' ' .. ARGV[b + 3] .. ' 0')
      any = true
    end
  end
  if any then redis.call('HINCRBY', key, 'g', 1) end
  local ra = tonumber(ARGV[22])
  if ra ~= 0 then raise(key, 'rb', ra) end
end

-- The key's state; drops the slots and reports that have expired, and says
-- how long the key must live.
local function state(key, v)
  local h = redis.call('HGETALL', key)
  local slots, syn = {}, {}
  local g, rb, sb = '0', '0', '0'
  local ttl, forever = KEEP, false
  local f0, f1 = first(0), first(1)
  for j = 1, #h, 2 do
    local f, x = h[j], h[j + 1]
    local c = string.sub(f, 1, 1)
    if c == '0' or c == '1' then
      local slot = tonumber(string.sub(f, 3))
      local lo = f0
      if c == '1' then lo = f1 end
      if slot < lo then
        redis.call('HDEL', key, f)
      else
        slots[#slots + 1] = c .. ' ' .. string.sub(f, 2, 2) .. ' ' .. string.sub(f, 3) .. ' ' .. x
      end
    elseif string.match(f, '^s%d$') then
      local reset = tonumber(string.match(x, '^%d+ %d+ (%d+)'))
      if reset <= now then
        redis.call('HDEL', key, f)
      else
        syn[#syn + 1] = string.sub(f, 2) .. ' ' .. x
        if reset - now > ttl then ttl = reset - now end
      end
    elseif f == 'g' then
      g = x
    elseif f == 'rb' or f == 'sb' then
      local u = tonumber(x)
      if u ~= -1 and u <= now then
        redis.call('HDEL', key, f)
      else
        if u == -1 then forever = true elseif u - now > ttl then ttl = u - now end
        if f == 'rb' then rb = x else sb = x end
      end
    end
  end
  local out = {'S', v, epoch, int(n), origin, seq, g, rb, sb, int(#syn)}
  for _, s in ipairs(syn) do out[#out + 1] = s end
  if ttl > LONGEST then ttl = LONGEST end
  out[#out + 1] = int(#slots)
  for _, s in ipairs(slots) do out[#out + 1] = s end
  return table.concat(out, ' ') .. '\n' .. key, ttl, forever
end

local reply = {epoch, n}
for i = 1, nk do
  local key = KEYS[2 + i]
  local changed = false
  if op == 'count' then
    changed = count(i)
  elseif op == 'apply' then
    apply(key)
    changed = true
  elseif op == 'block' then
    raise(key, ARGV[6], tonumber(ARGV[7]))
    changed = true
  elseif op == 'unblock' then
    redis.call('HDEL', key, 'rb', 'sb')
    changed = true
  end
  local v
  if changed then
    v = int(redis.call('HINCRBY', key, 'v', 1))
  else
    v = redis.call('HGET', key, 'v') or '0'
  end
  local s, ttl, forever = state(key, v)
  if changed then
    if forever then
      redis.call('PERSIST', key)
    else
      redis.call('PEXPIRE', key, math.floor(ttl))
    end
    redis.call('PUBLISH', chan, s)
  end
  reply[#reply + 1] = s
end
return reply
