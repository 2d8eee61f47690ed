-- Schema version 2: deletions at the source (POP3 --delete-after).
--
-- a_gone: when postino deleted the source's copy of a message it had
-- safely copied (unix time), confirmed by a new listing after QUIT.
ALTER TABLE msg ADD COLUMN a_gone INTEGER;
