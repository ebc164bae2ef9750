-- The shared rate-limit store's one script (see rl_shared.h for the layout).
-- Every change to a key happens here, atomically. The change is published
-- as a delta: the new absolute values of the fields it touched, with the
-- key's new version, so a mirror that has every version before it applies
-- it in place, and one that missed a version reads the whole key again.
-- Work per change is proportional to what it touched, not to the window.
--
-- KEYS[1]  P rl:epoch       KEYS[2]  P rl:inst       KEYS[3..]  key hashes
-- ARGV[1]  op: count | apply | block | unblock (any op with no key: hello)
-- ARGV[2]  now, shared ms   ARGV[3]  origin (process id)
-- ARGV[4]  seq of the change at its origin    ARGV[5]  channel
-- ARGV[6]  flags: 1 touch the instances set (a process does every few
--          seconds), 2 reply with each key's whole state
-- count:   ARGV[7 .. 6+nk] the generation each key's headroom was seen at
--          (-1: the current one), then sreq stok (added to the headroom's
--          used_since when the generation matches), then items of four:
--          window (0 minute, 1 day), slot, requests, tokens (signed)
-- apply:   for d = 0..3: has limit remaining reset_at; then retry_until (0: none)
-- block:   field (rb | sb), until (-1: forever)
-- A process new to the instances set also publishes "N <n>".
-- Returns {epoch, n, one line per key}: the whole state when asked (flag 2)
-- or nothing changed,
--   S v epoch n origin seq g rb sb  ns {d limit remaining reset_at used}*ns
--   nw {window kind slot count}*nw
-- else "V v seq"; then a newline and the key's name. A changed key is
-- published as a delta, the same line as a state but starting with D and
-- listing only the slots it touched (count 0: gone).

local op, now, origin, seq, chan = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local flags = tonumber(ARGV[6])
local WIDTH = {[0] = 1000, [1] = 1440000}
local SLOTS = 60
local KEEP = 86400000 + 2 * 1440000
local LONGEST = 3 * 86400000 -- a hash never lives longer (but a block forever)
local SWEEP = 64             -- every SWEEPth version drops the key's old slots
local nk = #KEYS - 2

-- Redis's clock, for what is about real time rather than windows: the
-- epoch, and which processes ran a script in the last minute.
local epoch = redis.call('GET', KEYS[1])
local touch = flags % 2 == 1 or op == 'hello'
local t
if not epoch or touch then t = redis.call('TIME') end
if not epoch then
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', KEYS[1], epoch)
end
if touch then
  local rnow = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local joined = redis.call('ZADD', KEYS[2], rnow, origin)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', rnow - 60000)
  redis.call('PEXPIRE', KEYS[2], 120000)
  -- A process the others do not count yet: tell them how many there are now.
  if joined == 1 then
    redis.call('PUBLISH', chan, 'N ' .. string.format('%d', redis.call('ZCARD', KEYS[2])))
  end
end
local n = redis.call('ZCARD', KEYS[2])

local function int(x) return string.format('%d', x) end

local function first(w)
  local k = math.floor(now / WIDTH[w]) - SLOTS
  if k < 0 then return 0 end
  return k
end

-- touched: the slot fields a change wrote, "w kind slot" -> new count
local function add(key, touched, w, kind, slot, d)
  local f = w .. kind .. int(slot)
  local v = redis.call('HINCRBY', key, f, d)
  if v <= 0 then
    redis.call('HDEL', key, f)
    v = 0
  end
  touched[#touched + 1] = w .. ' ' .. kind .. ' ' .. int(slot) .. ' ' .. int(v)
end

local function adjust_headroom(key, sreq, stok)
  local any = false
  for d = 0, 3 do
    local delta = stok
    if d < 2 then delta = sreq end
    if delta ~= 0 then
      local s = redis.call('HGET', key, 's' .. d)
      if s then
        local lim, rem, reset, used = string.match(s, '^(%d+) (%d+) (%d+) (%d+)$')
        used = tonumber(used) + delta
        if used < 0 then used = 0 end
        redis.call('HSET', key, 's' .. d, lim .. ' ' .. rem .. ' ' .. reset .. ' ' .. int(used))
        any = true
      end
    end
  end
  return any
end

local function count(i, touched)
  local key = KEYS[2 + i]
  local gen = tonumber(ARGV[6 + i])
  local sreq, stok = tonumber(ARGV[7 + nk]), tonumber(ARGV[8 + nk])
  local any = false
  local j = 9 + nk
  while j + 3 <= #ARGV do
    local w, slot = tonumber(ARGV[j]), tonumber(ARGV[j + 1])
    local dr, dt = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
    if slot >= first(w) then
      if dr ~= 0 then add(key, touched, w, 'r', slot, dr) any = true end
      if dt ~= 0 then add(key, touched, w, 't', slot, dt) any = true end
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
    local b = 7 + d * 4
    if ARGV[b] == '1' then
      redis.call('HSET', key, 's' .. d, ARGV[b + 1] .. ' ' .. ARGV[b + 2] .. ' ' .. ARGV[b + 3] .. ' 0')
      any = true
    end
  end
  if any then redis.call('HINCRBY', key, 'g', 1) end
  local ra = tonumber(ARGV[23])
  if ra ~= 0 then raise(key, 'rb', ra) end
end

-- The key's small fields (generation, blocks, provider headroom), dropping
-- those that expired: {g, rb, sb, syn lines}, how long the key must live,
-- and whether a block holds it forever.
local function header(key)
  local h = redis.call('HMGET', key, 'g', 'rb', 'sb', 's0', 's1', 's2', 's3')
  local g, rb, sb, syn = h[1] or '0', '0', '0', {}
  local ttl, forever = KEEP, false
  for i = 2, 3 do
    local x = h[i]
    if x then
      local u = tonumber(x)
      if u ~= -1 and u <= now then
        redis.call('HDEL', key, i == 2 and 'rb' or 'sb')
      else
        if u == -1 then forever = true elseif u - now > ttl then ttl = u - now end
        if i == 2 then rb = x else sb = x end
      end
    end
  end
  for d = 0, 3 do
    local x = h[4 + d]
    if x then
      local reset = tonumber(string.match(x, '^%d+ %d+ (%d+)'))
      if reset <= now then
        redis.call('HDEL', key, 's' .. d)
      else
        syn[#syn + 1] = int(d) .. ' ' .. x
        if reset - now > ttl then ttl = reset - now end
      end
    end
  end
  if ttl > LONGEST then ttl = LONGEST end
  return g, rb, sb, syn, ttl, forever
end

-- Every live slot of the key, dropping the old ones.
local function all_slots(key)
  local h = redis.call('HGETALL', key)
  local slots = {}
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
    end
  end
  return slots
end

local function line(kind, key, v, g, rb, sb, syn, slots)
  local out = {kind, v, epoch, int(n), origin, seq, g, rb, sb, int(#syn)}
  for _, s in ipairs(syn) do out[#out + 1] = s end
  out[#out + 1] = int(#slots)
  for _, s in ipairs(slots) do out[#out + 1] = s end
  return table.concat(out, ' ') .. '\n' .. key
end

local reply = {epoch, n}
for i = 1, nk do
  local key = KEYS[2 + i]
  local changed = false
  local touched = {}
  if op == 'count' then
    changed = count(i, touched)
  elseif op == 'apply' then
    apply(key)
    changed = true
  elseif op == 'block' then
    raise(key, ARGV[7], tonumber(ARGV[8]))
    changed = true
  elseif op == 'unblock' then
    redis.call('HDEL', key, 'rb', 'sb')
    changed = true
  end
  local v
  if changed then
    v = redis.call('HINCRBY', key, 'v', 1)
  else
    v = tonumber(redis.call('HGET', key, 'v') or '0')
  end
  local g, rb, sb, syn, ttl, forever = header(key)
  if changed then
    if forever then
      redis.call('PERSIST', key)
    else
      redis.call('PEXPIRE', key, math.floor(ttl))
    end
    if v % SWEEP == 0 then all_slots(key) end
    redis.call('PUBLISH', chan, line('D', key, int(v), g, rb, sb, syn, touched))
  end
  if not changed or math.floor(flags / 2) % 2 == 1 then
    reply[#reply + 1] = line('S', key, int(v), g, rb, sb, syn, all_slots(key))
  else
    reply[#reply + 1] = 'V ' .. int(v) .. ' ' .. seq .. '\n' .. key
  end
end
return reply
