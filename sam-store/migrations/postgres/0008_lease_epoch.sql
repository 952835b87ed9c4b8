-- Which claim a task's lease came from: every claim takes the next epoch, and a
-- write under a lease is fenced by it, so a driver that lost the lease can neither
-- write nor renew. Tasks written before this start at 0.
ALTER TABLE tasks ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
