-- Whether submit reserved tokens or spend for an execution (its
-- organisation has a token budget or a spend cap): only those are settled
-- when they finish, so executions under no budget cost no Redis round trip.
ALTER TABLE executions ADD COLUMN reserved boolean NOT NULL DEFAULT false;
