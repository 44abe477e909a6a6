-- Publish a durable message: append to the channel's capped stream, then
-- publish it live with its offset, in one step so the live copy and the
-- stream agree on order.
-- KEYS[1] the stream; ARGV[1] max length (approximate trim), ARGV[2] live
-- channel, ARGV[3] headers (JSON), ARGV[4] payload
-- Returns the offset (stream id).
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'h', ARGV[3], 'p', ARGV[4])
redis.call('PUBLISH', ARGV[2], id .. '\n' .. ARGV[3] .. '\n' .. ARGV[4])
return id
