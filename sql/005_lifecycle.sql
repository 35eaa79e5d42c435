-- 005: what the lifecycle job (server/lifecycle.py) looks sessions up by.
-- Sessions soft-deleted, or expired, longer ago than HARD_DELETE_AFTER_DAYS are purged in batches.
create index chat_sessions_deleted_idx on chat_sessions (deleted_at) where deleted_at is not null;
create index chat_sessions_expired_idx on chat_sessions (expired_at) where status = 'expired';
