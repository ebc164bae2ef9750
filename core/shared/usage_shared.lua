-- Shared tenant usage's one script (see usage_shared.h for the layout and
-- the guarantees). Every change to a row happens here, atomically, and the
-- row's new absolute values are both returned and published, so a mirror
-- only ever takes values Redis actually had.
--
-- KEYS[1]  P usage:meta (hash: epoch, seeded)    ARGV[1]  op
-- hello    -> {epoch, seeded}
-- batch    KEYS[2] P usage:seq:<origin>, KEYS[3..] row hashes;
--          ARGV[2] prefix length, [3] channel, [4] origin, [5] seq, then
--          four deltas per row: requests input_tokens output_tokens
--          cost_micro_usd. Skipped when the origin's last applied seq is
--          >= seq (a retry of a batch Redis already ran).
--          -> {epoch, duplicate 0|1, state}
-- base     KEYS[2] P usage:writer, KEYS[3..] row hashes; ARGV[2] prefix
--          length, [3] channel, [4] origin, [5] mode, [6] see below, then
--          four values per row: a total the row had in an earlier epoch.
--          Each field's base becomes max(base, value) and the field grows
--          by what the base grew: deltas of this epoch stay on top.
--          mode restore: ARGV[6] the epoch the values are from (nothing
--            happens if that is still the epoch: nothing was lost);
--          mode seed: only the lease holder, only until the epoch is
--            seeded; ARGV[6] 1 on the last chunk marks it seeded.
--          Rows created in another epoch (they survived) are left alone.
--          -> {epoch, applied 0|1, state}
-- load     KEYS[2] a day set; ARGV[2] cursor, [3] count (SSCAN)
--          -> {epoch, next cursor, state}
-- lease    KEYS[2] P usage:writer; ARGV[2] origin, [3] ttl ms
--          -> {epoch, held 0|1, seeded}
-- release  KEYS[2] P usage:writer; ARGV[2] origin -> {epoch}
--
-- A state is a header line then one line per row:
--   U <epoch> <origin> <seq>
--   <v> <requests> <input_tokens> <output_tokens> <cost_micro_usd> <keylen> <key>
-- (the key is keylen bytes, whatever they are). Changed rows are published
-- on the channel as one message with the same text.

local op, meta = ARGV[1], KEYS[1]
local TTL = 62 * 86400
local F = {'requests', 'input_tokens', 'output_tokens', 'cost_micro_usd'}
local B = {'base_requests', 'base_input_tokens', 'base_output_tokens', 'base_cost_micro_usd'}

-- The epoch names this Redis's data: a new one means it lost what it had.
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  local t = redis.call('TIME')
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', meta, 'epoch', epoch)
end
local seeded = redis.call('HGET', meta, 'seeded') or '0'

local function row_text(key)
  local h = redis.call('HMGET', key, 'v', F[1], F[2], F[3], F[4])
  if not h[1] then return nil end
  return h[1] .. ' ' .. (h[2] or '0') .. ' ' .. (h[3] or '0') .. ' ' .. (h[4] or '0') ..
         ' ' .. (h[5] or '0') .. ' ' .. string.format('%d', string.len(key)) .. ' ' .. key .. '\n'
end

-- After a change: the row's epoch (if new), version, expiry, and its day
-- set (the key's first plen + 16 bytes: P usage:YYYY-MM-DD).
local function touch(key, plen)
  local set = string.sub(key, 1, plen + 16)
  redis.call('HSETNX', key, 'e', epoch)
  redis.call('HINCRBY', key, 'v', 1)
  redis.call('EXPIRE', key, TTL)
  redis.call('SADD', set, key)
  redis.call('EXPIRE', set, TTL)
end

local function base(key, j, plen)
  local e = redis.call('HGET', key, 'e')
  local changed = false
  if e and e ~= epoch then return false end
  for f = 1, 4 do
    local want = tonumber(ARGV[j + f - 1])
    local have = tonumber(redis.call('HGET', key, B[f]) or '0')
    if want > have then
      redis.call('HINCRBY', key, F[f], string.format('%d', want - have))
      redis.call('HSET', key, B[f], ARGV[j + f - 1])
      changed = true
    end
  end
  if changed then touch(key, plen) end
  return changed
end

if op == 'hello' then
  return {epoch, seeded}
elseif op == 'batch' then
  local plen, chan, origin, seq = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
  local head = 'U ' .. epoch .. ' ' .. origin .. ' ' .. seq .. '\n'
  local last = redis.call('GET', KEYS[2])
  local dup = last ~= false and tonumber(last) >= tonumber(seq)
  local out = {}
  for i = 3, #KEYS do
    local key = KEYS[i]
    if not dup then
      local j = 6 + (i - 3) * 4
      for f = 1, 4 do
        if ARGV[j + f - 1] ~= '0' then redis.call('HINCRBY', key, F[f], ARGV[j + f - 1]) end
      end
      touch(key, plen)
    end
    out[#out + 1] = row_text(key) or ''
  end
  local text = head .. table.concat(out)
  if dup then return {epoch, 1, text} end
  redis.call('SET', KEYS[2], seq, 'EX', 7 * 86400)
  redis.call('PUBLISH', chan, text)
  return {epoch, 0, text}
elseif op == 'base' then
  local plen, chan, origin, mode = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
  local head = 'U ' .. epoch .. ' ' .. origin .. ' 0\n'
  local out = {}
  if mode == 'seed' then
    if seeded == '1' or redis.call('GET', KEYS[2]) ~= origin then return {epoch, 0, head} end
  elseif ARGV[6] == epoch then
    return {epoch, 0, head}
  end
  for i = 3, #KEYS do
    if base(KEYS[i], 7 + (i - 3) * 4, plen) then out[#out + 1] = row_text(KEYS[i]) end
  end
  if mode == 'seed' and ARGV[6] == '1' then redis.call('HSET', meta, 'seeded', '1') end
  local text = head .. table.concat(out)
  if #out > 0 then redis.call('PUBLISH', chan, text) end
  return {epoch, 1, text}
elseif op == 'load' then
  local r = redis.call('SSCAN', KEYS[2], ARGV[2], 'COUNT', ARGV[3])
  local out = {}
  for _, key in ipairs(r[2]) do
    local t = row_text(key)
    if t then out[#out + 1] = t else redis.call('SREM', KEYS[2], key) end
  end
  return {epoch, r[1], 'U ' .. epoch .. ' - 0\n' .. table.concat(out)}
elseif op == 'lease' then
  local cur = redis.call('GET', KEYS[2])
  local held = 0
  if cur == ARGV[2] then
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    held = 1
  elseif not cur then
    redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
    held = 1
  end
  return {epoch, held, seeded}
elseif op == 'release' then
  if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
  return {epoch}
end
return redis.error_reply('usage_shared.lua: unknown op ' .. tostring(op))
