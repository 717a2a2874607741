-- The execution event log: every lifecycle change of an execution has a
-- per-execution sequence number from 1, with no gaps.
--
-- Numbers are handed out by a counter on the execution row, in the same
-- statements that make the changes (the claim, the step writes, the
-- finish, a retry's give-back, a cancel, a reap): the row is locked by
-- that update anyway, so numbering adds no round trip, no commit and no
-- lock of its own, and a statement fenced out by a lost lease numbers
-- nothing. `event_seq` is the last number given out; a new execution's
-- first event (queued, at created_at) is number 1.
ALTER TABLE executions ADD COLUMN event_seq integer NOT NULL DEFAULT 1;

-- Step events are the step rows themselves: the numbers of a step's
-- "started" and "finished" events are kept on its row (written with it),
-- and the event's content is read back from the row.
ALTER TABLE execution_steps ADD COLUMN started_event integer,
                            ADD COLUMN finished_event integer;

-- Status events after the first (running, queued again with the reason
-- and the retry's time, terminal), with their JSON as sent to clients.
-- The `done` event is the terminal execution itself, at `event_seq`.
-- Rows go with their execution (the retention job that deletes
-- executions deletes these in the same transaction, like step rows).
CREATE TABLE execution_events (
    execution_id  uuid        NOT NULL,
    seq           integer     NOT NULL,
    type          text        NOT NULL,
    data          jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, seq)
);
