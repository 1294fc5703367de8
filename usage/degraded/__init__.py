"""Degraded mode: what happens to usage while the database is away. The breaker sends batches to
this process's buffer file (`buffer`: the on-disk format and its writer), the drainer replays them
exactly once when the database returns (`drain`), and what neither can take becomes a marked log
line or a dead-letter file (`deadletter`)."""
