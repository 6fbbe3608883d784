-- Pace each wrk connection: wait 16 ms before every request, so 16 connections give about
-- 1000 req/s. wrk starts its latency clock when the request is written, so the wait is not
-- counted as latency.
function delay()
  return 16
end
